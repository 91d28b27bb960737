"""Stopping child processes politely: SIGTERM, then SIGKILL if they do not exit in time."""

import signal
import subprocess


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int | None:
    """Send SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; return the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode
