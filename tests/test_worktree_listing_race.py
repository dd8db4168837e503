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
    assert report.code != 0 and "'interrupted' is half written" in report.err
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


def add_killed_after_its_placeholder_head(repo, tmp_path, name="cut"):
    """What the Ray kill-inside-git campaign left (CI and here): a `git worktree add` killed
    after writing its placeholder HEAD (the null commit) and before pointing it at its branch.
    The record is copied from that run: commondir "../..", HEAD forty zeros, `locked` still
    "initializing", the worktree's own directory holding only its `.git` file."""
    path = tmp_path / name
    git.run(str(repo), "worktree", "add", "-q", "--detach", str(path))
    admin = os.path.join(str(repo), ".git", "worktrees", name)
    with open(os.path.join(admin, "HEAD"), "w") as fh:
        fh.write("0" * 40 + "\n")
    with open(os.path.join(admin, "locked"), "w") as fh:
        fh.write("initializing\n")
    for entry in os.listdir(path):
        if entry != ".git":
            shutil.rmtree(path / entry) if (path / entry).is_dir() else os.unlink(path / entry)
    for entry in os.listdir(admin):  # (that record held nothing else: no index, no logs)
        if entry not in ("HEAD", "commondir", "gitdir", "locked"):
            shutil.rmtree(os.path.join(admin, entry)) if os.path.isdir(os.path.join(admin, entry)) \
                else os.unlink(os.path.join(admin, entry))
    return admin


def _remote_with_a_ref(repo, tmp_path):
    remote = tmp_path / "remote.git"
    git.run(str(tmp_path), "init", "-q", "--bare", str(remote))
    head = git.out(str(repo), "rev-parse", "HEAD")
    git.run(str(repo), "push", "-q", str(remote), f"{head}:refs/orchestrator/r/t/base-1")
    return str(remote), head


def test_a_fetch_is_not_wedged_by_an_add_killed_after_its_placeholder_head(repo, tmp_path, capfd):
    """Before: every `git fetch` in the repository failed ("fatal: bad object worktrees/cut/HEAD",
    "did not send all necessary objects"), so a Ray run's resume exited 1 on every try
    (tests/ray/test_ray_pipeline.py's kill campaign). `worktree prune` keeps such a record."""
    remote, head = _remote_with_a_ref(repo, tmp_path)
    admin = add_killed_after_its_placeholder_head(repo, tmp_path)
    for name in ("HEAD", "locked", "commondir", "gitdir"):
        age(os.path.join(admin, name))
    git_cli(str(repo), "worktree", "prune")
    assert os.path.isdir(admin)  # (prune keeps it)
    fetch = ["fetch", "-q", remote, "+refs/orchestrator/r/t/base-1:refs/orchestrator/r/t/base-1"]
    assert "bad object worktrees/cut/HEAD" in git_cli_fails(repo, *fetch)  # the wedge, by git alone
    assert git.fetch_ref(str(repo), remote, "refs/orchestrator/r/t/base-1") == head
    assert not os.path.exists(admin)
    assert "interrupted `git worktree add`: removed" in capfd.readouterr().err


def test_health_reports_and_repairs_an_add_killed_after_its_placeholder_head(repo, tmp_path, pm):
    assert pm("init", "2").code == 0
    remote, _ = _remote_with_a_ref(repo, tmp_path)
    admin = add_killed_after_its_placeholder_head(repo, tmp_path, "killed")
    for name in ("HEAD", "locked", "commondir", "gitdir"):
        age(os.path.join(admin, name))
    fetch = ["fetch", "-q", remote, "+refs/orchestrator/r/t/base-1:refs/orchestrator/r/t/base-1"]
    assert "bad object worktrees/killed/HEAD" in git_cli_fails(repo, *fetch)
    report = pm("health")
    assert report.code != 0 and "'killed' is half written" in report.err
    assert os.path.isdir(admin)  # health without --repair changes nothing
    assert pm("health", "--repair").code == 0
    assert not os.path.exists(admin)
    assert git.run(str(repo), *fetch, check=False).returncode == 0


def test_a_live_add_between_its_placeholder_head_and_its_branch_is_left_alone(repo, tmp_path):
    """For a few milliseconds a live add's record looks the same: a young one is never touched
    (what decides is its newest file, not its commondir alone)."""
    admin = add_killed_after_its_placeholder_head(repo, tmp_path, "live")
    age(os.path.join(admin, "commondir"))
    assert git.broken_worktree_records(str(repo)) == [] and git.repair_worktree_records(str(repo)) == []
    for name in ("HEAD", "locked", "gitdir"):
        age(os.path.join(admin, name))
    assert git.broken_worktree_records(str(repo)) == [(admin, False)]


def git_cli_fails(repo, *args):
    """The stderr of a git command expected to fail, run without engine.git's mend."""
    import subprocess

    proc = subprocess.run(["git", *args], cwd=str(repo), capture_output=True, text=True)
    assert proc.returncode != 0, proc
    return proc.stderr


def test_a_record_whose_worktree_a_live_process_works_in_is_left_alone(repo, tmp_path):
    """Whatever its files say and however old they are: a process working in the worktree (a
    person's shell there, an add's own children, whose GIT_WORK_TREE names it) means the
    record is in use. Gone that process, the abandoned add's record is mended."""
    import subprocess

    admin = add_killed_after_its_placeholder_head(repo, tmp_path, "busy")
    for name in ("HEAD", "locked", "commondir", "gitdir"):
        age(os.path.join(admin, name))
    shell = subprocess.Popen(["sleep", "60"], cwd=str(tmp_path / "busy"))
    try:
        assert git.broken_worktree_records(str(repo)) == []
    finally:
        shell.kill()
        shell.wait()
    named = subprocess.Popen(["sleep", "60"], env=dict(os.environ, GIT_WORK_TREE=str(tmp_path / "busy")))
    try:
        assert git.broken_worktree_records(str(repo)) == []
    finally:
        named.kill()
        named.wait()
    assert git.broken_worktree_records(str(repo)) == [(admin, False)]
