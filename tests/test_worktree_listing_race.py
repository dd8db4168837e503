"""`git worktree list` while other threads add worktrees: the streaming scheduler lists (merge,
acquire) while workers acquire slots, and git writes a new worktree's admin files (commondir,
gitdir, a transient `locked`) non-atomically. The listing must retry, never fail the run."""

import os
import threading

from engine import git


def test_listing_during_concurrent_worktree_adds_never_fails(repo, tmp_path):
    errors, done = [], threading.Event()

    def add_many():
        try:
            for i in range(25):
                git.run(str(repo), "worktree", "add", "-q", "-b", f"race-{i}", str(tmp_path / f"wt-{i}"))
        finally:
            done.set()

    def list_until_done():
        while not done.is_set():
            try:
                git.worktrees(str(repo))
            except Exception as exc:  # noqa: BLE001 - collected, asserted below
                errors.append(exc)

    threads = [threading.Thread(target=add_many)] + [threading.Thread(target=list_until_done) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert len(git.worktrees(str(repo))) == 26 and os.path.isdir(tmp_path / "wt-24")
