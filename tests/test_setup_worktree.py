"""setup-worktree against real repositories: CONTRACT.md §2.3 with defects 17, 20, 27, 28 fixed."""

import os
import re

import pytest

from tests.conftest import branches, commit_file, git, worktree_paths


@pytest.fixture
def wtbase(tmp_path, monkeypatch):
    base = tmp_path / "wtbase"
    monkeypatch.setenv("AUTO_WORKTREE_BASE", str(base))
    return base


def ok_line(r):
    assert r.code == 0, r
    assert len(r.lines) == 1, r
    path, branch = r.out.strip().split("|")
    return path, branch


def test_creates_worktree_and_prints_last_line(sw, repo, wtbase):
    os.makedirs(".claude")
    open(".claude/project-profile.yaml", "w").write("p: 1\n")
    open(".claude/auto-context.yaml", "w").write("parallelization:\n  enabled: true\n")
    open(".claude/auto-state-machine.yaml", "w").write("current_state: EXECUTE\n")
    path, branch = ok_line(sw("task-1"))
    assert (path, branch) == (str(wtbase / "task-1"), "auto/task-1")
    assert git(path, "symbolic-ref", "--short", "HEAD") == "auto/task-1"
    assert os.path.exists(os.path.join(path, ".claude/project-profile.yaml"))
    assert os.path.exists(os.path.join(path, ".claude/auto-context.yaml"))
    assert not os.path.exists(os.path.join(path, ".claude/auto-state-machine.yaml"))  # one shared state
    assert oct(os.stat(wtbase).st_mode & 0o777) == "0o700"
    assert git(path, "status", "--porcelain") == ""


def test_default_task_id_and_tmpdir_base(sw, repo, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path) + "/")
    path, branch = ok_line(sw())
    task = branch[len("auto/"):]
    assert re.fullmatch(r"task-\d+-\d+-[a-z0-9]{6}", task)
    assert path == os.path.join(str(tmp_path), f"auto-worktrees-{os.getuid()}", task)


def test_not_a_repository_no_side_effects(sw, tmp_path, wtbase):
    r = sw("task-1")
    assert (r.code, r.out, r.err) == (1, "", "[ERROR] Not in a git repository\n")
    assert not wtbase.exists() and not os.path.exists(".claude")


@pytest.mark.parametrize("task", ["../../etc", "-rf", "a b", "$(touch p)", "ünï", "a/b", "..", "x.lock"])
def test_hostile_task_ids(sw, repo, wtbase, task):
    before = branches(repo)
    r = sw(task)
    assert r.code == 1 and r.out == "" and len(r.err.splitlines()) == 1
    assert not wtbase.exists() and branches(repo) == before and not os.path.exists("p")


def test_bases_branch_tag_commit_remote_and_detached(sw, repo, wtbase, tmp_path):
    first = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "v1")
    second = commit_file(repo, "b.txt", "b\n")
    assert git(ok_line(sw("t-tag", "v1"))[0], "rev-parse", "HEAD") == first
    assert git(ok_line(sw("t-sha", first))[0], "rev-parse", "HEAD") == first
    assert git(ok_line(sw("t-main", "main"))[0], "rev-parse", "HEAD") == second
    # a remote-only branch becomes a local branch
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    git(repo, "branch", "feature", first)
    git(clone, "fetch", "-q", "origin")
    os.chdir(clone)
    assert git(ok_line(sw("t-remote", "feature"))[0], "rev-parse", "HEAD") == first
    assert "feature" in branches(clone)
    # detached HEAD: the current commit is the base
    os.chdir(repo)
    git(repo, "checkout", "-q", "--detach", first)
    assert git(ok_line(sw("t-detached"))[0], "rev-parse", "HEAD") == first
    r = sw("t-bad", "nope")
    assert (r.code, r.err) == (1, "[ERROR] Base branch does not exist: nope\n")


def test_repository_without_commits(sw, sealed_env, wtbase):
    git(sealed_env, "init", "-q", "-b", "main")
    r = sw("t1")
    assert r.code == 1 and "no commits" in r.err and not wtbase.exists()


def test_existing_branch_with_work_reused_never_deleted(sw, repo, wtbase):
    git(repo, "checkout", "-q", "-b", "auto/t1")
    sha = commit_file(repo, "earlier.txt", "attempt 1\n")
    git(repo, "checkout", "-q", "main")
    r = sw("t1")
    path, _ = ok_line(r)
    assert git(path, "rev-parse", "HEAD") == sha and "Reusing existing branch" in r.err


def test_existing_worktree_reused_and_strays_refused(sw, repo, wtbase):
    path, _ = ok_line(sw("t1"))
    r = sw("t1")
    assert ok_line(r)[0] == path and "Reusing existing worktree" in r.err
    os.makedirs(wtbase / "t2")
    (wtbase / "t2" / "precious").write_text("x")
    r = sw("t2")
    assert r.code == 1 and "is not a worktree of this repository" in r.err
    assert (wtbase / "t2" / "precious").read_text() == "x"


def test_branch_checked_out_elsewhere_refused(sw, repo, wtbase):
    git(repo, "checkout", "-q", "-b", "auto/t1")
    r = sw("t1")
    assert r.code == 1 and "is checked out in" in r.err
    assert len(worktree_paths(repo)) == 1
