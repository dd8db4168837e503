"""Git's worktree records (`.git/worktrees/<id>/`) half written. While a `git worktree add`
runs, its admin files (commondir, gitdir, a transient `locked`) are written non-atomically,
and every git command that looks at all worktrees dies on them for an instant: those are
retried, whatever the command. A record left half written for good (the add killed at that
instant, or a crash that lost the unsynced file) wedged the repository: it is mended."""

import os
import shutil
import threading
import time

from engine import git
from tests.conftest import git as git_cli


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


def half_written_worktree(repo, name="ghost"):
    """What a `git worktree add` has written at the instant another command looks: its admin
    directory with HEAD and `locked`, but `commondir` still empty."""
    admin = os.path.join(str(repo), ".git", "worktrees", name)
    os.makedirs(admin)
    with open(os.path.join(admin, "HEAD"), "w") as fh:
        fh.write("0" * 40)
    with open(os.path.join(admin, "locked"), "w") as fh:
        fh.write("initializing")
    with open(os.path.join(admin, "gitdir"), "w") as fh:
        fh.write(os.path.join(str(repo), "..", name, ".git") + "\n")
    open(os.path.join(admin, "commondir"), "w").close()
    return admin


def finish_soon(admin, delay=0.15):
    """The add goes on: commondir written, then (as after a failed add) its admin dir gone."""
    def finish():
        with open(os.path.join(admin, "commondir"), "w") as fh:
            fh.write("../..")
        shutil.rmtree(admin)

    timer = threading.Timer(delay, finish)
    timer.start()
    return timer


def test_every_command_that_looks_at_all_worktrees_waits_out_a_half_written_one(repo, tmp_path):
    """Not only the listing: in git 2.39 `branch -D`, a checkout of an existing branch, a
    rebase naming its branch and `worktree add/remove` all die on another worktree's half-
    written admin files ("failed to read .../commondir: Success"). The merge queue deletes
    branches, a hand-over checks out a branch, a conflict retry rebases while the first wave's
    slots are still being added (or another process acquires one); each must wait it out, not
    fail a merge, a task or an attempt."""
    repo = str(repo)
    for name in ("doomed", "other"):
        git.run(repo, "branch", name)
    slot = str(tmp_path / "slot")
    git.run(repo, "worktree", "add", "-q", "-b", "task", slot)
    commands = [(repo, ("branch", "-D", "--", "doomed")),
                (slot, ("checkout", "-q", "-f", "other", "--")),
                (slot, ("rebase", "-q", "main", "task")),
                (repo, ("worktree", "add", "-q", "--no-checkout", "-B", "fresh", str(tmp_path / "fresh"), "main")),
                (repo, ("worktree", "remove", "--force", str(tmp_path / "fresh")))]
    for cwd, args in commands:
        timer = finish_soon(half_written_worktree(repo))
        try:
            assert git.run(cwd, *args, check=False).returncode == 0, args
        finally:
            timer.join()
    assert git.branch_tips(repo, "doomed") == {} and len(git.worktrees(repo)) == 2


def age(path, seconds=10):
    """Make a file look untouched for SECONDS (no add has been writing it meanwhile)."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_record_an_interrupted_add_left_half_written_is_removed_and_nothing_is_wedged(repo, pm):
    """Before: `pool-manager acquire`, `health` and `health --repair` all failed with an
    internal error (git dies on the record; `worktree prune` keeps it while it is `locked`)."""
    assert pm("init", "2").code == 0
    admin = half_written_worktree(repo, "interrupted")
    age(os.path.join(admin, "commondir"))
    report = pm("health")
    assert report.code != 0 and "'interrupted' has an empty commondir" in report.err
    assert os.path.isdir(admin)  # health without --repair changes nothing
    acquired = pm("acquire", "x")
    assert acquired.code == 0, acquired
    assert acquired.lines[0].endswith("|auto/x")
    assert "left half written by an interrupted `git worktree add`: removed" in acquired.err
    assert not os.path.exists(admin) and pm("health").code == 0


def test_a_finished_record_whose_commondir_a_crash_emptied_is_restored_by_health_repair(repo, pm):
    """A crash can leave a registered slot's commondir empty (its contents never synced): the
    slot and the agent's work in it come back as they were."""
    assert pm("init", "2").code == 0
    path = pm("acquire", "x").lines[0].split("|")[1]
    with open(os.path.join(path, "work.txt"), "w") as fh:
        fh.write("the agent's work\n")
    commondir = os.path.join(str(repo), ".git", "worktrees", os.path.basename(path), "commondir")
    open(commondir, "w").close()
    age(commondir)
    assert pm("health").code != 0
    repaired = pm("health", "--repair")
    assert repaired.code == 0, repaired
    with open(commondir) as fh:
        assert fh.read() == "../..\n"
    assert git_cli(path, "status", "--porcelain") == "?? work.txt"
    assert git_cli(path, "symbolic-ref", "--short", "HEAD") == "auto/x"


def test_a_record_being_written_right_now_is_never_mended(repo):
    """A young record may be a live add's (it fills commondir microseconds later): hands off."""
    admin = half_written_worktree(repo, "young")
    assert git.broken_worktree_records(str(repo)) == [] and git.repair_worktree_records(str(repo)) == []
    age(os.path.join(admin, "commondir"))
    assert git.broken_worktree_records(str(repo)) == [(admin, False)]


def test_a_fifo_or_a_link_in_a_record_neither_blocks_nor_is_followed(repo, tmp_path):
    """An agent can write under .git/worktrees: a fifo named HEAD must not hang the mend, a
    fifo named commondir is not a half-written file, and a link is never followed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine\n")
    admin = half_written_worktree(repo, "fifo-head")
    os.unlink(os.path.join(admin, "HEAD"))
    os.mkfifo(os.path.join(admin, "HEAD"))
    age(os.path.join(admin, "commondir"))
    other = os.path.join(str(repo), ".git", "worktrees", "fifo-commondir")
    os.makedirs(other)
    os.mkfifo(os.path.join(other, "commondir"))
    age(os.path.join(other, "commondir"))
    os.symlink(str(outside), os.path.join(str(repo), ".git", "worktrees", "linked"))
    assert git.broken_worktree_records(str(repo)) == [(admin, False)]
    git.repair_worktree_records(str(repo))
    assert not os.path.exists(admin) and os.path.exists(other)
    assert (outside / "keep.txt").read_text() == "mine\n"
