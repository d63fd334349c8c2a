"""Run the Streamlit app with the project's settings (`loan-desk serve`, and the last step of `loan-desk`).

It serves asgi.py: Streamlit's st.App running streamlit_app.py, with the routes that set the
HttpOnly session cookie.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from runtime.settings import ROOT


def streamlit_command(port: int, address: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(ROOT / "asgi.py"),  # streamlit_app.py plus the session-cookie routes
        "--server.port",
        str(port),
        "--server.address",
        address,
    ]


def serve(port: int = 8501, address: str = "127.0.0.1", replace_process: bool = True) -> int:
    """Serve until stopped. With ``replace_process`` this process becomes the server; without
    it the server runs as a child (so the caller can clean up after it, e.g. stop the
    embedded servers) and SIGTERM / Ctrl-C are passed on to it."""
    cmd = streamlit_command(port, address)
    print(f"serving Loan Desk on http://{address}:{port}  (Ctrl-C stops it)", file=sys.stderr, flush=True)
    os.chdir(ROOT)  # .streamlit/config.toml is read from the working directory
    if replace_process and os.name == "posix":
        # Become the server: signals (Ctrl-C, a supervisor's SIGTERM) reach Streamlit directly,
        # and no orphaned server is left behind when this process is stopped.
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(cmd[0], cmd)
    # Its own session: Streamlit signals its whole process group when it stops, which would
    # otherwise end this process before it can clean up. Ctrl-C reaches us and is passed on.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=os.environ.copy(), start_new_session=True)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))
    try:
        return proc.wait()
    except KeyboardInterrupt:  # the terminal sent SIGINT to both; wait for the server to finish
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
