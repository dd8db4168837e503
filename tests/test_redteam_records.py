"""Red-team pass on the half-written worktree record mend (engine/git.py `run` ->
`repair_worktree_records`, pool_health). Real repositories, real git processes, no mocks.

Each test here failed on 46e4134 and passes with the fix that followed it."""

import os
import subprocess
import threading
import time

from tests.conftest import PYTHON, git as git_cli, python_env
from tests.test_worktree_listing_race import age, half_written_worktree


def _ghost(repo, aged=True):
    """The record a `git worktree add` killed between creating and writing commondir leaves."""
    admin = half_written_worktree(repo)
    if aged:
        age(os.path.join(admin, "commondir"))
    return admin


def test_a_command_run_inside_the_worktree_whose_own_record_is_broken_does_not_recurse(repo, tmp_path):
    """`run(slot, ...)` fails on the slot's own empty commondir; the mend asks `common_dir(slot)`,
    which (uncached) runs `git rev-parse` in that same slot, which fails the same way and
    mends again: unbounded recursion, ~1 s of retries per level, RecursionError after ~3 min.
    The orchestrator hangs in it (scheduler._commit_leftovers -> git.status(slot))."""
    slot = str(tmp_path / "slot")
    git_cli(str(repo), "worktree", "add", "-q", "-b", "task", slot)
    commondir = os.path.join(str(repo), ".git", "worktrees", "slot", "commondir")
    open(commondir, "w").close()
    age(commondir)
    code = ("import sys; from engine import git\n"
            "p = git.run(sys.argv[1], 'status', '--porcelain', check=False)\n"
            "print(p.returncode)\n")
    try:
        proc = subprocess.run([PYTHON, "-c", code, slot], cwd=slot, env=python_env(), capture_output=True,
                              text=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError("git.run in a worktree whose own record is broken hung (mend recursion)")
    assert "RecursionError" not in proc.stderr
    assert proc.stdout.strip() == "0", proc.stderr[-2000:]
    with open(commondir) as fh:
        assert fh.read() == "../..\n"


def test_every_concurrent_caller_survives_one_broken_record(repo):
    """Several threads (the scheduler's workers, the merge queue) hit the same aged broken record
    at once: the first to mend it re-runs its command, but the others' mends then find nothing
    and `run` raises the stale failure although the repository is fine again."""
    repo = str(repo)
    _ghost(repo)
    from engine import git

    git.common_dir(repo)  # as in a running orchestrator: cached
    results, barrier = [], threading.Barrier(4)

    def call():
        barrier.wait()
        results.append(git.run(repo, "worktree", "list", "--porcelain", check=False))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [p.returncode for p in results] == [0, 0, 0, 0], [p.stderr for p in results]


def test_a_finished_slot_with_a_symlinked_head_is_restored_not_removed(repo, pm):
    """With core.preferSymlinkRefs (documented git config) a worktree's HEAD is a symlink
    (`HEAD -> refs/heads/auto/x`). `_record_file` never follows links, so a finished slot whose
    commondir a crash emptied counts as an interrupted add: its admin dir (index, reflog,
    rebase state) is rmtree'd, and the pool then re-creates the slot from scratch, deleting the
    agent's uncommitted work."""
    git_cli(str(repo), "config", "core.preferSymlinkRefs", "true")
    assert pm("init", "2").code == 0
    path = pm("acquire", "x").lines[0].split("|")[1]
    admin = os.path.join(str(repo), ".git", "worktrees", os.path.basename(path))
    assert os.path.islink(os.path.join(admin, "HEAD"))
    with open(os.path.join(path, "work.txt"), "w") as fh:
        fh.write("the agent's work\n")
    commondir = os.path.join(admin, "commondir")
    open(commondir, "w").close()
    age(commondir)
    from engine import git

    assert git.broken_worktree_records(str(repo)) == [(admin, True)]
    repaired = pm("health", "--repair")
    assert repaired.code == 0, repaired
    assert os.path.exists(os.path.join(path, "work.txt")), repaired
    assert git_cli(path, "status", "--porcelain") == "?? work.txt"


def test_a_record_that_turns_two_seconds_old_during_the_retries_is_still_mended(repo):
    """The retries last ~1.05 s, the grace is 2 s: a record left broken 0.5 s before a call is
    still "young" when the retries end, so the call fails (an orchestrator run stops with
    "git worktree list failed ...; then `orchestrator resume`", `pool-manager health` exits 70
    with an internal error) instead of waiting the remaining second and mending."""
    repo = str(repo)
    from engine import git

    git.common_dir(repo)
    _ghost(repo, aged=False)
    time.sleep(0.5)
    proc = git.run(repo, "worktree", "list", "--porcelain", check=False)
    assert proc.returncode == 0, proc.stderr


def test_a_slot_whose_commondir_a_crash_zero_filled_keeps_the_agents_work(repo, pm):
    """The other shape of "a crash lost the unsynced commondir": some filesystems (XFS) keep the
    size and lose the data, leaving NUL bytes. Git then refuses the slot ("not a git
    repository"); the mend takes only a size-0 file, so `health --repair` goes down the
    busy-without-worktree path and deletes the slot with the agent's uncommitted work instead
    of restoring commondir. (A gap the change leaves, not a regression.)"""
    assert pm("init", "2").code == 0
    path = pm("acquire", "x").lines[0].split("|")[1]
    with open(os.path.join(path, "work.txt"), "w") as fh:
        fh.write("the agent's work\n")
    commondir = os.path.join(str(repo), ".git", "worktrees", os.path.basename(path), "commondir")
    with open(commondir, "wb") as fh:
        fh.write(b"\0" * 6)
    age(commondir)
    repaired = pm("health", "--repair")
    assert repaired.code == 0, repaired
    assert os.path.exists(os.path.join(path, "work.txt")), repaired
