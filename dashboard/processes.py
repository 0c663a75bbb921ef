"""Stopping a child process: ask it with a signal, and kill it if it does not go in time."""
from __future__ import annotations

import signal
import subprocess


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> bool:
    """Send `sig` to a running process and wait up to `timeout` s for it; SIGKILL it if it hangs.

    Returns whether it had to be killed. A process that has already exited is only reaped."""
    if process.poll() is not None:
        return False
    process.send_signal(sig)
    try:
        process.wait(timeout)
        return False
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)
        return True
