"""Regression found by a red-team pass over the progress file's group commit: a change whose
caller was interrupted while waiting is dropped, never applied later behind its back."""

import os
import signal
import threading
import time

from engine import store
from engine.paths import Layout
from engine.progress import Progress


def test_a_change_whose_caller_was_interrupted_is_not_applied_later(tmp_path):
    """Ctrl-C / `orchestrator abort`'s SIGTERM (raised as KeyboardInterrupt in the main thread)
    while the main thread waits for the progress lock: its update() raises, so the caller
    believes nothing was written. But its change stays in the queue and the next writer,
    whoever it is, applies it later (out of order, after the caller has moved on)."""
    root = tmp_path / "p"
    (root / ".claude").mkdir(parents=True)
    progress = Progress(Layout(str(root)))
    progress.update(lambda d: d.update(n=0))
    inside, release = threading.Event(), threading.Event()

    def slow(data):  # a worker's change being applied while the main thread comes along
        inside.set()
        release.wait(10)
        data["worker"] = 1

    worker = threading.Thread(target=progress.update, args=(slow,))
    worker.start()
    inside.wait(10)

    def interrupt():
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.3)
        release.set()

    # Ctrl-C must raise here even when pytest was started with SIGINT ignored (a background
    # job of a shell without job control inherits SIG_IGN, and Python then keeps it).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=interrupt).start()
    interrupted = False
    try:
        progress.update(lambda d: d.update(main="applied"))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGINT, previous)
    worker.join(10)
    release.set()
    assert interrupted
    progress.update(lambda d: d.update(later=1))  # any later write (another task event)
    on_disk, _ = store.load_yaml_mapping(progress.path)
    assert "main" not in on_disk, "the interrupted caller's change was applied behind its back"
