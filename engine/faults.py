"""Crash points for the crash-exactness tests: `ORCH_CRASHPOINT=NAME` (or `NAME:K`) makes the
orchestrator SIGKILL itself the first (K-th) time it passes the named point, so a test can
land a kill exactly inside the merge queue or a conflict retry instead of hoping a random
one does. Unset (always, outside tests) it costs one dictionary lookup."""

import os
import signal
import threading

_counts = {}
_lock = threading.Lock()


def crashpoint(name):
    wanted = os.environ.get("ORCH_CRASHPOINT")
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point != name:
        return
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        if _counts[name] >= int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)
