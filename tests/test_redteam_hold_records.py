"""Red-team tests for two changes: the scheduler's hold for a merge under way (17ddc34) and
the mend of a worktree record an add left with its placeholder HEAD (0c52025).

Each test names one defect and failed on the code as of 0c52025 (fixed in the commit
that adds this file). Git is real everywhere: the
kills are real SIGKILLs, delivered by strace at one exact syscall of `git worktree add`."""

import os
import shutil
import subprocess
import time

import pytest

from engine import git
from engine.tasks import TaskStatus as S
from tests.conftest import git as git_cli
from tests.test_scheduler_unit import _scheduler

NULL = "0" * 40


def _age(admin, seconds=10):
    """Make every file of a record look untouched for SECONDS (as if that long had passed)."""
    then = time.time() - seconds
    for name in os.listdir(admin):
        os.utime(os.path.join(admin, name), (then, then), follow_symlinks=False)


def _read(path):
    with open(path) as fh:
        return fh.read().strip()


# --------------------------------------------------------------------------- change 2: records

@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to kill git at one syscall")
def test_an_add_killed_between_its_placeholder_head_and_its_commondir_is_mended(repo, tmp_path):
    """Defect: git 2.39's `worktree add` writes `locked`, `gitdir`, HEAD (forty zeros), and only
    then creates `commondir`. SIGKILLed in between (a real kill here, at its `openat` of
    commondir), it leaves a record with a null HEAD and no commondir. Git is wedged exactly as
    in the case 0c52025 fixes ("fatal: bad object worktrees/cut/HEAD" on `rev-list --all`,
    `gc`, a fetch's connectivity check) and `worktree prune` keeps it (locked); but
    `_broken_records` skips every record without a commondir, so neither `health --repair`,
    run/resume's repair nor `engine.git.run`'s mend ever removes it."""
    git_cli(str(repo), "branch", "b")
    admin = os.path.join(str(repo), ".git", "worktrees", "cut")
    proc = subprocess.run(
        ["strace", "-qq", "-f", "-o", os.devnull, "-P", ".git/worktrees/cut/commondir",
         "-P", os.path.join(admin, "commondir"), "-e", "trace=openat", "-e", "inject=openat:signal=KILL",
         "git", "worktree", "add", "-q", "--no-checkout", str(tmp_path / "cut"), "b"],
        cwd=str(repo), capture_output=True)
    if proc.returncode not in (-9, 137) and b"ptrace" in proc.stderr:
        pytest.skip("strace may not trace here: " + proc.stderr.decode(errors="replace").strip()[:200])
    assert proc.returncode in (-9, 137), proc
    assert _read(os.path.join(admin, "HEAD")) == NULL and not os.path.exists(os.path.join(admin, "commondir"))
    _age(admin)
    git_cli(str(repo), "worktree", "prune")
    wedged = subprocess.run(["git", "rev-list", "--all"], cwd=str(repo), capture_output=True, text=True)
    assert "bad object worktrees/cut/HEAD" in wedged.stderr  # the wedge, by git alone
    git.repair_worktree_records(str(repo))
    git_cli(str(repo), "worktree", "prune")
    assert git.run(str(repo), "rev-list", "--all", check=False).returncode == 0


def test_a_live_add_whose_head_update_outlasts_the_grace_keeps_its_record(repo, tmp_path):
    """Defect: the only thing that tells a live add from a killed one is the 2 s grace on the
    mtimes of commondir, HEAD and `locked`. A live `git worktree add --detach` (what
    engine/git.py and the Ray worker's fallback run) points its HEAD with `update-ref`, whose
    ref transaction runs the repository's `reference-transaction` hook while HEAD is still
    null; a hook slower than 2 s (or a stalled child) makes the record look abandoned. Any
    engine.git.run call that meets "bad object worktrees/X/HEAD" meanwhile (here `rev-list
    --all`; a fetch on the Ray path) waits until the record is 2 s old and removes it: the
    live add then fails ("update_ref failed for ref 'HEAD'") and its worktree is gone.
    (`_newest_change` ignores the HEAD.lock the live child holds.)"""
    hook = os.path.join(str(repo), ".git", "hooks", "reference-transaction")
    with open(hook, "w") as fh:
        fh.write('#!/bin/sh\n[ "$1" = prepared ] && [ -n "$SLOW_REF_HOOK" ] && sleep 4\nexit 0\n')
    os.chmod(hook, 0o755)
    admin = os.path.join(str(repo), ".git", "worktrees", "live")
    add = subprocess.Popen(["git", "worktree", "add", "-q", "--detach", str(tmp_path / "live"), "HEAD"],
                           cwd=str(repo), env=dict(os.environ, SLOW_REF_HOOK="1"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(os.path.join(admin, "HEAD.lock")) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _read(os.path.join(admin, "HEAD")) == NULL  # the add is alive, in its hook
        git.run(str(repo), "rev-list", "--all", check=False)  # an orchestrator git call meets it
    finally:
        _, err = add.communicate(timeout=30)
    assert add.returncode == 0, err
    assert os.path.isdir(admin) and (tmp_path / "live" / "README.md").exists()


def test_a_locked_worktree_whose_head_a_crash_emptied_keeps_its_index(repo, tmp_path):
    """Defect (data loss): `_record_finished` calls a record unfinished when `locked` exists
    and HEAD is null, empty or missing. A person's worktree locked with `git worktree lock`
    (e.g. on a removable disk) whose HEAD a crash left empty (the unsynced-data loss the
    README already handles for commondir) is then removed whole by `health --repair` and
    run/resume's repair, though git is not wedged by it (`rev-list --all`, `gc` exit 0): its
    index (staged work), reflog (the one place that still names its branch) and lock go, and
    the lock the person set is ignored. An unfinished add never has an index; this record
    says it finished."""
    path = tmp_path / "usb"
    git_cli(str(repo), "worktree", "add", "-q", str(path), "-b", "usb-work")
    git_cli(str(repo), "worktree", "lock", "--reason", "on a usb disk", str(path))
    (path / "notes.txt").write_text("staged, not committed\n")
    git_cli(str(path), "add", "notes.txt")
    admin = os.path.join(str(repo), ".git", "worktrees", "usb")
    open(os.path.join(admin, "HEAD"), "w").close()  # what a crash that lost HEAD's data leaves
    _age(admin)
    assert subprocess.run(["git", "rev-list", "--all"], cwd=str(repo), capture_output=True).returncode == 0
    git.repair_worktree_records(str(repo))
    assert os.path.exists(os.path.join(admin, "index")), "the locked worktree's record was removed"


# --------------------------------------------------------------------------- change 1: the hold

def test_the_hold_is_armed_again_for_a_dependency_approved_again_after_a_conflict():
    """Defect: `held_since` is dropped only when a scan reaches the held task and finds it no
    longer waiting on a merge. When its dependency's merge conflicts, the dependency itself
    (ranked above it) takes the free worker, the scan stops before the held task, and no scan
    runs at all while every worker is busy; so its first hold's start survives. When the
    dependency is approved again (rebased and verified, seconds later), the new merge under
    way holds nothing: the stale start makes the hold look spent, a short task takes the
    worker (`_approve`'s `_ready_to_start` even keeps the merge back for it) and the head of
    the longest chain waits a whole agent run: the case 17ddc34 set out to fix (bench_dag
    seed 4), back whenever the dependency had a conflict."""
    tasks = [{"id": "a", "complexity": "M"}, {"id": "b", "depends_on": ["a"], "complexity": "XL"},
             {"id": "short", "complexity": "S"}]
    statuses = {"a": S.APPROVED, "b": S.PENDING, "short": S.PENDING}
    s = _scheduler(tasks, statuses)
    s.hold_for_merge = 0.2
    assert s._startable(1) == []  # a's merge under way: b keeps the free worker
    statuses["a"] = S.CONFLICTED  # the merge conflicted: a goes back to a worker (rebase, QA)
    assert s._startable(1) == ["a"]
    s.jobs = {"a": object()}
    time.sleep(0.3)  # the rebase and QA take a while (no scan: no worker is free)
    statuses["a"] = S.APPROVED  # approved again: `_approve` asks `_ready_to_start` from a's worker
    assert s._startable(1) == []  # a new merge is under way: b keeps the worker again
