"""Run the Streamlit app with the project's settings."""

from __future__ import annotations

import os
import subprocess
import sys

from bootstrap.config import ROOT, export_feast_env


def serve(port: int = 8501, address: str = "127.0.0.1") -> int:
    export_feast_env()
    cmd = [
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
    print(f"serving Loan Desk on http://{address}:{port}  (Ctrl-C stops it)", file=sys.stderr, flush=True)
    try:
        return subprocess.call(cmd, cwd=ROOT, env=os.environ.copy())
    except KeyboardInterrupt:
        return 0
