"""Regressions found by a red-team pass over the slot hand-over and the fewer-git-calls change
(ddd0b0e..54040ce), each fixed in the commit that adds it: a fresh slot prunes a deleted
worktree that still holds its branch, a failed acquire never leaves its slot `preparing`, and
a hand-over refuses a branch checked out elsewhere as an acquire does."""

import os
import shutil

import pytest

from tests.conftest import branches, git


def test_a_fresh_slot_is_acquired_when_the_branch_sits_in_a_deleted_worktree(repo, pool, tmp_path):
    """auto/t was checked out in a worktree whose directory is gone (a setup-worktree dir under
    /tmp after a reboot, an `rm -rf`): git lists it as prunable and `worktree add -B auto/t`
    refuses it until a prune. `acquire` used to prune first (the discard before every add);
    since ddd0b0e a fresh slot skips the discard, so the acquire fails."""
    gone = str(tmp_path / "gone")
    git(repo, "worktree", "add", "-q", "-b", "auto/t", gone, "main")
    shutil.rmtree(gone)
    slot, path, branch = pool.acquire("t", "main")
    assert branch == "auto/t"
    assert git(path, "symbolic-ref", "--short", "HEAD") == "auto/t"


def test_a_failed_acquire_leaves_the_slot_idle_not_preparing(repo, pool, tmp_path):
    """Same setup: whatever the acquire's outcome, the slot must not be left `busy` +
    `preparing` under this (live) process, which nothing but its death would ever undo.
    Today the rollback's own `branch -D auto/t` fails (git: checked out in the prunable
    worktree; git.checked_out_at skips prunable entries) and raises before mark_idle."""
    import json

    gone = str(tmp_path / "gone")
    git(repo, "worktree", "add", "-q", "-b", "auto/t", gone, "main")
    shutil.rmtree(gone)
    try:
        pool.acquire("t", "main")
    except Exception:
        pass
    with open(os.path.join(str(repo), ".claude/pool-state.json")) as fh:
        slots = json.load(fh)["worktrees"]
    stuck = [s["id"] for s in slots if s.get("preparing")]
    assert stuck == []


def test_a_hand_over_refuses_a_branch_checked_out_elsewhere_like_an_acquire(repo, pool, tmp_path):
    """`acquire` refuses `auto/b` while another worktree (a `setup-worktree b`, a person's
    inspection checkout) has it checked out. The hand-over skips that check on the belief
    that "git itself refuses a branch checked out elsewhere" (pool.py, take_over branch), but
    `git checkout -f -B auto/b <base>` does not refuse (git 2.39): the branch ends up checked
    out twice, and the agent's commits move it under the other checkout."""
    from engine.errors import OrchestratorError

    slot, path, _ = pool.acquire("a", "main")
    outside = str(tmp_path / "outside")
    git(repo, "worktree", "add", "-q", "-b", "auto/b", outside, "main")
    with pytest.raises(OrchestratorError, match="checked out"):
        pool.acquire("b", "main")  # the normal acquire refuses it
    with pytest.raises(OrchestratorError):
        pool.acquire("b", "main", take_over=slot)
    listing = git(repo, "worktree", "list", "--porcelain")
    assert listing.count("branch refs/heads/auto/b") == 1, listing
