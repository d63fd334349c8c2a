"""Run the Streamlit app with the project's settings (`loan-desk serve`, and the last step of `loan-desk`)."""

from __future__ import annotations

import os
import subprocess
import sys

from bootstrap.config import ROOT, export_feast_env


def streamlit_command(port: int, address: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(ROOT / "streamlit_app.py"),
        "--server.port",
        str(port),
        "--server.address",
        address,
    ]


def serve(port: int = 8501, address: str = "127.0.0.1") -> int:
    export_feast_env()
    cmd = streamlit_command(port, address)
    print(f"serving Loan Desk on http://{address}:{port}  (Ctrl-C stops it)", file=sys.stderr, flush=True)
    os.chdir(ROOT)  # .streamlit/config.toml is read from the working directory
    if os.name == "posix":
        # Become the server: signals (Ctrl-C, a supervisor's SIGTERM) reach Streamlit directly,
        # and no orphaned server is left behind when this process is stopped.
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(cmd[0], cmd)
    try:
        return subprocess.call(cmd, cwd=ROOT, env=os.environ.copy())
    except KeyboardInterrupt:
        return 0
