"""pool-manager against real repositories: every row of CONTRACT.md §2.2, with §6 fixed."""

import json
import os
import re
import subprocess

import pytest

from tests.conftest import branches, commit_file, git, worktree_paths

STATE = ".claude/pool-state.json"
NOT_INIT = "[ERROR] Pool not initialized. Run: ./pool-manager.sh init\n"


def state():
    with open(STATE) as fh:
        return json.load(fh)


def acquire_ok(pm, task, *extra):
    r = pm("acquire", task, *extra)
    assert r.code == 0, r
    assert len(r.lines) == 1, r  # the parseable line is the only stdout line
    slot, path, branch = r.out.strip().split("|")
    assert os.path.isabs(path) and branch == f"auto/{task}"
    return slot, path, branch


# ----------------------------------------------------------------------------- basics
def test_not_initialised_and_usage(pm, repo):
    for args in ((), ("status",), ("acquire", "t"), ("release", "wt-1")):
        r = pm(*args)
        assert (r.code, r.out, r.err) == (1, "", NOT_INIT), args
    r = pm("frobnicate")
    assert r.code == 1 and r.lines[0].startswith("Usage: pool-manager {init|acquire|release|status|cleanup|reset|")


def test_init_schema_exclude_and_default_size(pm, repo, monkeypatch):
    monkeypatch.setenv("POOL_SIZE", "3")
    r = pm("init")
    assert (r.code, r.out) == (0, "Pool initialized: 3 slots available\n")
    data = state()
    assert data["version"] == "1.0" and data["pool_size"] == 3
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", data["created_at"])
    assert data["worktrees"] == [{"id": f"wt-{n}", "status": "idle", "task_id": None,
                                  "path": f".claude/worktree-pool/wt-{n}", "branch": None, "acquired_at": None}
                                 for n in (1, 2, 3)]
    assert pm("init", "5").out == "Pool initialized: 5 slots available\n"
    acquire_ok(pm, "a")
    assert "/.claude/worktree-pool/" in open(".git/info/exclude").read()
    assert ".claude/worktree-pool" not in git(repo, "status", "--porcelain")


@pytest.mark.parametrize("size", ["0", "-1", "abc", "257", "1.5", "$(touch p)"])
def test_init_rejects_bad_size(pm, repo, size):
    r = pm("init", size)
    assert r.code == 1 and r.out == "" and len(r.err.splitlines()) == 1
    assert not os.path.exists(STATE) and not os.path.exists("p")


def test_reinit_with_busy_slots_refused_unless_forced(pm, repo):
    pm("init", "2")
    _, path, _ = acquire_ok(pm, "a")
    commit_file(path, "a.txt", "work\n")
    before = open(STATE).read()
    r = pm("init", "4")
    assert r.code == 1 and "busy slots: wt-1 (a)" in r.err
    assert open(STATE).read() == before
    r = pm("init", "--force", "4")
    assert r.code == 0
    assert "auto/a" in branches(repo)  # unmerged work kept
    assert all(s["status"] == "idle" for s in state()["worktrees"])


def test_not_a_git_repository(pm):
    r = pm("init")
    assert r.code == 1 and r.err == "[ERROR] Not in a git repository\n"
    assert not os.path.exists(".claude")


# ----------------------------------------------------------------------------- acquire
def test_acquire_one_line_worktree_branch_and_state(pm, repo):
    os.makedirs(".claude", exist_ok=True)
    with open(".claude/project-profile.yaml", "w") as fh:
        fh.write("language: python\n")
    pm("init", "2")
    slot, path, branch = acquire_ok(pm, "task-a")
    assert slot == "wt-1" and path == str(repo / ".claude/worktree-pool/wt-1")
    assert git(path, "symbolic-ref", "--short", "HEAD") == "auto/task-a"
    assert open(os.path.join(path, ".claude/project-profile.yaml")).read() == "language: python\n"
    assert git(path, "status", "--porcelain") == ""  # the copy does not dirty the slot
    s = state()["worktrees"][0]
    assert (s["status"], s["task_id"], s["branch"], s["path"]) == ("busy", "task-a", "auto/task-a",
                                                                  ".claude/worktree-pool/wt-1")
    assert s["acquired_at"] and "preparing" not in s
    assert s["owner"]["host"] and s["owner"]["since"] and s["owner"]["pid"] is None  # no lease pid named


def test_acquire_requires_task_and_exhaustion(pm, repo):
    pm("init", "1")
    r = pm("acquire")
    assert (r.code, r.err) == (1, "[ERROR] Task ID required\n")
    acquire_ok(pm, "a")
    before = open(STATE).read()
    r = pm("acquire", "b")
    assert (r.code, r.out, r.err) == (1, "POOL_EXHAUSTED\n", "[ERROR] No available worktrees in pool\n")
    assert open(STATE).read() == before
    assert "auto/b" not in branches(repo)


@pytest.mark.parametrize("task", ["../x", "a b", "$(touch p)", "-rf", "ünï", "", "a..b", "x\"|.pool_size=99",
                                  "a/b", ".hidden", "x.lock", "tab\there", "new\nline", "a" * 101, "HEAD~1", "a:b"])
def test_hostile_task_ids_refused_nothing_touched(pm, repo, task):
    pm("init", "2")
    before = open(STATE, "rb").read()
    before_branches = branches(repo)
    r = pm("acquire", task)
    assert r.code == 1 and r.out == ""
    assert len(r.err.splitlines()) == 1 and "Traceback" not in r.err
    assert open(STATE, "rb").read() == before
    assert branches(repo) == before_branches
    assert not os.path.exists("p") and not os.path.exists("../x")
    assert len(worktree_paths(repo)) == 1


def test_same_task_twice_refused(pm, repo):
    pm("init", "2")
    acquire_ok(pm, "a")
    r = pm("acquire", "a")
    assert r.code == 1 and "already holds wt-1" in r.err


def test_acquire_base_argument(pm, repo):
    first = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "v1")
    commit_file(repo, "later.txt", "x\n")
    git(repo, "branch", "other", first)
    pm("init", "4")
    for task, base in (("t-tag", "v1"), ("t-sha", first), ("t-branch", "other")):
        _, path, _ = acquire_ok(pm, task, base)
        assert git(path, "rev-parse", "HEAD") == first
    _, path, _ = acquire_ok(pm, "t-default")
    assert os.path.exists(os.path.join(path, "later.txt"))
    r = pm("acquire", "t-x", "no-such-base")
    assert r.code == 1 and r.err == "[ERROR] Base branch does not exist: no-such-base\n"


def test_existing_branch_with_work_is_reused_not_deleted(pm, repo):
    git(repo, "checkout", "-q", "-b", "auto/t1")
    sha = commit_file(repo, "previous.txt", "earlier attempt\n")
    git(repo, "checkout", "-q", "main")
    pm("init", "2")
    _, path, _ = acquire_ok(pm, "t1")
    assert git(path, "rev-parse", "HEAD") == sha


def test_slots_are_reused_not_recreated(pm, repo):
    with open(".gitignore", "w") as fh:
        fh.write("cache/\n")
    commit_file(repo, ".gitignore", "cache/\n")
    pm("init", "1")
    _, path, _ = acquire_ok(pm, "a")
    os.makedirs(os.path.join(path, "cache"))
    open(os.path.join(path, "cache", "warm"), "w").close()
    open(os.path.join(path, "junk.txt"), "w").close()
    gitfile = os.stat(os.path.join(path, ".git")).st_ino
    pm("release", "--force", "wt-1")
    _, path2, _ = acquire_ok(pm, "b")
    assert path2 == path
    assert os.stat(os.path.join(path, ".git")).st_ino == gitfile  # same worktree, not re-added
    assert os.path.exists(os.path.join(path, "cache", "warm"))  # ignored build caches survive
    assert not os.path.exists(os.path.join(path, "junk.txt"))  # but the slot is clean
    assert git(path, "status", "--porcelain") == ""


def test_worktreeinclude_and_setup_command(pm, repo):
    commit_file(repo, ".gitignore", ".env\n*.local\n")
    commit_file(repo, ".worktreeinclude", ".env\n")
    open(".env", "w").write("SECRET=1\n")
    open("x.local", "w").write("not included\n")
    os.makedirs(".claude", exist_ok=True)
    with open(".claude/auto-context.yaml", "w") as fh:
        fh.write("worktree:\n  setup_command: 'echo \"$TASK_ID $BRANCH\" > .setup-ran'\n")
    commit_file(repo, ".gitignore", ".env\n*.local\n.setup-ran\n")
    pm("init", "2")
    _, path, _ = acquire_ok(pm, "t1")
    assert open(os.path.join(path, ".env")).read() == "SECRET=1\n"
    assert not os.path.exists(os.path.join(path, "x.local"))
    assert open(os.path.join(path, ".setup-ran")).read() == "t1 auto/t1\n"


def test_failing_setup_command_hands_out_nothing(pm, repo):
    os.makedirs(".claude", exist_ok=True)
    with open(".claude/auto-context.yaml", "w") as fh:
        fh.write("parallelization:\n  setup_command: 'echo broken >&2; exit 3'\n")
    pm("init", "2")
    r = pm("acquire", "t1")
    assert r.code == 1 and r.out == ""
    assert "Setup command failed (exit 3)" in r.err and "broken" in r.err
    assert all(s["status"] == "idle" for s in state()["worktrees"])
    assert "auto/t1" not in branches(repo)


# ----------------------------------------------------------------------------- release
def test_release_merged_branch_deleted_unmerged_kept(pm, repo):
    pm("init", "3")
    _, p1, _ = acquire_ok(pm, "done")
    _, p2, _ = acquire_ok(pm, "wip")
    commit_file(p1, "done.txt", "x\n")
    commit_file(p2, "wip.txt", "y\n")
    git(repo, "merge", "-q", "--no-ff", "auto/done", "-m", "merge done")
    r = pm("release", "wt-1")
    assert (r.code, r.out, r.err) == (0, "RELEASED:wt-1\n", "")
    assert "auto/done" not in branches(repo)
    r = pm("release", "wt-2")
    assert (r.code, r.out) == (0, "RELEASED:wt-2\n")
    assert "Keeping branch auto/wip: 1 commit(s) not in main" in r.err
    assert "auto/wip" in branches(repo)
    assert [s["status"] for s in state()["worktrees"]] == ["idle", "idle", "idle"]
    assert git(p2, "status", "--porcelain") == "" and "HEAD" in git(p2, "rev-parse", "--abbrev-ref", "HEAD")


def test_release_force_deletes_unmerged(pm, repo):
    pm("init", "1")
    _, p, _ = acquire_ok(pm, "t")
    commit_file(p, "t.txt", "x\n")
    assert pm("release", "--force", "wt-1").code == 0
    assert "auto/t" not in branches(repo)


def test_release_commits_uncommitted_work(pm, repo):
    pm("init", "1")
    _, p, _ = acquire_ok(pm, "t")
    open(os.path.join(p, "forgotten.txt"), "w").write("precious\n")
    r = pm("release", "wt-1")
    assert r.code == 0 and "Committed uncommitted work" in r.err
    assert git(repo, "show", "auto/t:forgotten.txt") == "precious"


@pytest.mark.parametrize("wtid", ["../../x", "wt-1/../..", "wt-0", "wt-01", "wt-9", "wt-", "x", "wt-1 ", "-rf",
                                  "$(touch p)"])
def test_release_hostile_ids_refused(pm, repo, tmp_path, wtid):
    victim = tmp_path / "x"
    victim.mkdir(exist_ok=True)
    (victim / "keep").write_text("keep")
    pm("init", "2")
    acquire_ok(pm, "a")
    before = open(STATE, "rb").read()
    r = pm("release", wtid)
    assert r.code == 1 and r.out == "" and len(r.err.splitlines()) == 1
    assert open(STATE, "rb").read() == before
    assert (victim / "keep").read_text() == "keep"
    assert not os.path.exists("p")


def test_release_missing_id_and_idle_slot(pm, repo):
    pm("init", "1")
    assert pm("release").err == "[ERROR] Worktree ID required\n"
    r = pm("release", "wt-1")
    assert (r.code, r.out) == (0, "RELEASED:wt-1\n") and "already idle" in r.err


# ----------------------------------------------------------------------------- status / cleanup / reset
def test_status_table_and_json(pm, repo):
    pm("init", "2")
    acquire_ok(pm, "a")
    r = pm()
    assert r.code == 0 and r.lines[0] == "Pool Size: 2 | Busy: 1 | Idle: 1 | Error: 0"
    assert any("wt-1" in line and "BUSY" in line and "auto/a" in line for line in r.lines)
    data = json.loads(pm("status", "--json").out)
    assert (data["busy"], data["idle"], data["worktrees"][0]["task_id"]) == (1, 1, "a")


def test_status_corrupt_state_file(pm, repo):
    pm("init", "1")
    open(STATE, "w").write('{"version": "1.0", "worktrees": [')
    r = pm("status")
    assert r.code == 1 and r.err.startswith(f"[ERROR] cannot parse {repo / STATE}: line 1")


def test_cleanup_only_pool_things_and_slots_idle(pm, repo):
    git(repo, "branch", "auto/users-own")
    pm("init", "3")
    _, p1, _ = acquire_ok(pm, "a")
    acquire_ok(pm, "b")
    commit_file(p1, "a.txt", "work\n")
    r = pm("cleanup")
    assert r.code == 0 and r.lines == ["Pool cleaned: 2 released, 2 worktrees removed, 1 branches kept"]
    assert "auto/users-own" in branches(repo)
    assert "auto/a" in branches(repo) and "auto/b" not in branches(repo)
    assert worktree_paths(repo) == [str(repo)]
    assert all(s["status"] == "idle" for s in state()["worktrees"])
    acquire_ok(pm, "c")  # the next acquire works


def test_reset_resizes(pm, repo):
    pm("init", "2")
    acquire_ok(pm, "a")
    r = pm("reset", "4")
    assert r.code == 0 and r.out == "Pool initialized: 4 slots available\n"
    assert state()["pool_size"] == 4 and all(s["status"] == "idle" for s in state()["worktrees"])


def test_merge_busy_branches_into_target(pm, repo):
    pm("init", "3")
    _, p1, _ = acquire_ok(pm, "a")
    _, p2, _ = acquire_ok(pm, "b")
    commit_file(p1, "a.txt", "a\n")
    commit_file(p2, "b.txt", "b\n")
    git(repo, "checkout", "-q", "-b", "other")
    r = pm("merge", "main")
    assert r.code == 0, r
    assert "Merged: auto/a auto/b" in r.out and r.lines[-1] == "Status: ✅ ALL MERGED SUCCESSFULLY"
    assert git(repo, "show", "main:a.txt") == "a" and git(repo, "show", "main:b.txt") == "b"
    assert git(repo, "log", "-1", "--format=%s", "main") == "Merge auto/b (Agent Pool)"
    assert git(repo, "rev-parse", "other") != git(repo, "rev-parse", "main")  # HEAD branch untouched


def test_merge_failure_exits_nonzero(pm, repo):
    pm("init", "3")
    _, p1, _ = acquire_ok(pm, "a")
    _, p2, _ = acquire_ok(pm, "b")
    commit_file(p1, "same.txt", "a\n")
    commit_file(p2, "same.txt", "b\n")
    r = pm("merge")
    assert r.code == 1 and "Failed: auto/b" in r.out and "Conflicts in: same.txt" in r.out
    assert r.lines[-2:] == ["Status: ⚠️  SOME MERGES FAILED", "  - wt-2:auto/b"]
    assert git(repo, "show", "main:same.txt") == "a"
    assert not os.path.exists(".git/MERGE_HEAD")


# ----------------------------------------------------------------------------- health
def test_health_ok(pm, repo):
    pm("init", "2")
    acquire_ok(pm, "a")
    r = pm("health")
    assert (r.code, r.lines) == (0, ["✅ Pool health: OK", "   Git worktrees in pool: 1"])


def test_health_missing_state(pm, repo):
    r = pm("health")
    assert r.code == 1 and "State file missing" in r.err
    assert pm("health", "--repair").code == 0
    assert state()["pool_size"] == 8


def test_health_finds_and_repairs_every_drift(pm, repo, monkeypatch):
    pm("init", "4")
    _, p1, _ = acquire_ok(pm, "gone")
    monkeypatch.setenv("POOL_OWNER_PID", "999999")  # a lease owner that does not exist
    _, p2, _ = acquire_ok(pm, "orphaned")
    assert state()["worktrees"][1]["owner"]["pid"] == 999999
    monkeypatch.delenv("POOL_OWNER_PID")
    commit_file(p2, "o.txt", "work\n")
    subprocess.run(["rm", "-rf", p1], check=True)  # busy slot without worktree (and a stale entry)
    git(repo, "worktree", "add", "-q", "--detach", str(repo / ".claude/worktree-pool/wt-9"))  # no slot
    r = pm("health")
    assert r.code == 1 and "issues found" in r.out
    for needle in ("marked busy but path", "pid 999999", "belongs to no slot", "which is gone"):
        assert needle in r.err, needle
    r = pm("health", "--repair")
    assert r.code == 0, r
    assert pm("health").code == 0
    assert "auto/orphaned" in branches(repo)  # the dead owner's work is kept
    s = {x["id"]: x for x in state()["worktrees"]}
    assert s["wt-2"]["status"] == "idle"
    assert s["wt-1"]["status"] == "busy" and os.path.isdir(p1)  # re-created on its branch
    assert str(repo / ".claude/worktree-pool/wt-9") not in worktree_paths(repo)


def test_health_repairs_corrupt_state(pm, repo):
    pm("init", "2")
    acquire_ok(pm, "a")
    open(STATE, "w").write("{ not json")
    r = pm("health")
    assert r.code == 1 and "cannot parse" in r.err
    assert pm("health", "--repair").code == 0
    slots = state()["worktrees"]
    assert slots[0]["task_id"] == "a" and slots[0]["status"] == "busy" and slots[1]["status"] == "idle"
    assert os.path.exists(STATE + ".corrupt")
