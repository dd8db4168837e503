"""Processes we may not have started ourselves: is it still the same process (pid reuse is
guarded by the kernel's start time), stop it with everything it started, wait for it."""

import os
import signal
import time


def process_start_time(pid):
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def alive(pid, start=None):
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return start is None or process_start_time(pid) == start


def stop_group(pid, start=None, grace=2.0):
    """Stop a process and its session (TERM, then KILL after `grace`)."""
    if not alive(pid, start):
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        deadline = time.time() + grace
        while time.time() < deadline:
            if not alive(pid, start):
                return True
            time.sleep(0.05)
    return True


def wait_for(pid, start=None, timeout=None, poll=0.1):
    """Wait for a process we did not start (an orphan of a dead run); True if it ended."""
    deadline = None if timeout is None else time.time() + timeout
    while alive(pid, start):
        if deadline is not None and time.time() > deadline:
            return False
        time.sleep(poll)
    return True
