"""Concurrent hands on the pool: init, cleanup and reset refuse while a live process holds a
slot (nothing changed), and a slot is handed out clean of any rebase, merge, cherry-pick,
revert, am or bisect left in progress. Real processes, real half-done git operations."""

import json
import os
import signal
import subprocess
import time

import pytest

from tests.conftest import PYTHON, branches, git, python_env, worktree_paths

STATE = ".claude/pool-state.json"


def snapshot(repo, slot_path):
    with open(os.path.join(repo, STATE), "rb") as fh:
        state = fh.read()
    return (state, branches(repo), worktree_paths(repo), git(repo, "for-each-ref"),
            git(slot_path, "status", "--porcelain"), sorted(os.listdir(slot_path)))


@pytest.fixture
def holder():
    """A real process to hold leases; SIGKILLed at the end."""
    proc = subprocess.Popen(["sleep", "300"])
    yield proc
    proc.kill()
    proc.wait()


def lease(pm, monkeypatch, task, pid):
    monkeypatch.setenv("POOL_OWNER_PID", str(pid))
    r = pm("acquire", task)
    monkeypatch.delenv("POOL_OWNER_PID")
    assert r.code == 0, r
    return r.out.strip().split("|")


def test_live_lease_refuses_init_cleanup_reset_nothing_changed(pm, repo, monkeypatch, holder):
    pm("init", "2")
    slot, path, branch = lease(pm, monkeypatch, "a", holder.pid)
    owner = json.load(open(STATE))["worktrees"][0]["owner"]
    assert owner["pid"] == holder.pid and owner["start"]  # the lease records pid and start time
    with open(os.path.join(path, "half.py"), "w") as fh:
        fh.write("def half(")  # an agent mid-write
    before = snapshot(repo, path)
    for args in (("cleanup",), ("reset",), ("reset", "3"), ("init",), ("init", "4")):
        r = pm(*args)
        assert r.code == 1 and r.out == "", (args, r)
        assert r.err == (f"[ERROR] Cannot {'re-initialise' if args[0] == 'init' else 'clean up'} the pool: wt-1 is "
                         f"leased to task a by running pid {holder.pid}; stop it first (`orchestrator abort`) or "
                         "use --force\n"), r.err
        assert snapshot(repo, path) == before, args
    assert git(repo, "log", "--oneline", "main..auto/a") == ""  # the half-written file was not committed


def test_dead_owner_or_reused_pid_does_not_block(pm, repo, monkeypatch, holder):
    pm("init", "2")
    _, path, _ = lease(pm, monkeypatch, "a", holder.pid)
    data = json.load(open(STATE))
    data["worktrees"][0]["owner"]["start"] = "1"  # same pid, another process: a reused pid
    with open(STATE, "w") as fh:
        json.dump(data, fh)
    assert pm("cleanup").code == 0
    _, path, _ = lease(pm, monkeypatch, "b", holder.pid)
    open(os.path.join(path, "wip.txt"), "w").write("work\n")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    r = pm("cleanup")
    assert r.code == 0, r
    assert git(repo, "show", "auto/b:wip.txt") == "work"  # released as before: leftovers kept on the branch


def test_force_and_own_leases(pm, repo, monkeypatch, holder):
    pm("init", "2")
    lease(pm, monkeypatch, "a", holder.pid)
    r = pm("reset", "--force", "3")
    assert (r.code, r.out) == (0, "Pool initialized: 3 slots available\n"), r
    _, path, _ = lease(pm, monkeypatch, "b", holder.pid)
    assert pm("cleanup", "--force").code == 0
    assert worktree_paths(repo) == [str(repo)]
    pm("init", "2")
    lease(pm, monkeypatch, "c", holder.pid)
    assert pm("init", "--force", "2").code == 0
    lease(pm, monkeypatch, "d", os.getpid())  # the caller's own lease (POOL_OWNER_PID=$$) is not in the way
    assert pm("cleanup").code == 0


def test_cleanup_during_a_live_run_is_refused_and_the_run_completes(sealed_env, tmp_path):
    from engine import demo

    repo = demo.make_repo(str(tmp_path / "d"))
    plan = os.path.join(repo, "..", "plan.yaml")
    demo.write_plan(plan)
    env = dict(python_env(), DEMO_AGENT_SLEEP="3")
    run = subprocess.Popen([PYTHON, "-m", "engine.cli.orchestrator", "run", "--all-groups", "--quiet", plan],
                           cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        state = os.path.join(repo, STATE)
        deadline = time.time() + 60
        busy = []
        while time.time() < deadline and not busy:
            time.sleep(0.1)
            try:
                slots = json.load(open(state))["worktrees"]
            except (OSError, ValueError):
                continue
            busy = [s for s in slots if s["status"] == "busy" and not s.get("preparing")
                    and (s.get("owner") or {}).get("pid") == run.pid]
        assert busy, "the run never leased a slot"
        for args in (("cleanup",), ("reset",), ("init", "2")):
            r = subprocess.run([PYTHON, "-m", "engine.cli.pool_manager", *args], cwd=repo, env=env,
                               capture_output=True, text=True)
            assert r.returncode == 1 and r.stdout == "", (args, r)
            assert r.stderr.startswith("[ERROR] Cannot ") and f"by running pid {run.pid}" in r.stderr
            assert len(r.stderr.splitlines()) == 1
        out, _ = run.communicate(timeout=180)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, out
    for task in ("models", "utils", "config", "api", "cli", "tests", "docs"):
        assert git(repo, "show", f"main:app/{task}.py").endswith(f'return "{task} ok"')
    assert "WIP" not in git(repo, "log", "--all", "--format=%s")


# ------------------------------------------------------------------ operations left in progress
def conflicting_branches(repo):
    """auto/x and main both change f.txt differently (so rebase/merge/cherry-pick stop)."""
    for branch, text in (("side", "side\n"),):
        git(repo, "checkout", "-q", "-b", branch)
        open(os.path.join(repo, "f.txt"), "w").write(text)
        git(repo, "add", "f.txt")
        git(repo, "commit", "-q", "-m", f"{branch} f")
        git(repo, "checkout", "-q", "main")
    open(os.path.join(repo, "f.txt"), "w").write("main\n")
    git(repo, "add", "f.txt")
    git(repo, "commit", "-q", "-m", "main f")


def start_operation(path, kind):
    """Leave KIND half done in the worktree at PATH, exactly as an interrupted agent would."""
    commands = {
        "rebase": [["rebase", "side"]],
        "merge": [["merge", "side"]],
        "cherry-pick": [["cherry-pick", "side"]],
        "revert": [["commit", "-q", "-am", "one"], ["revert", "--no-edit", "HEAD~1"]],  # f.txt changed since
        "am": [["am", "--3way", os.path.join(path, "..", "side.patch")]],
        "bisect": [["bisect", "start", "HEAD", "HEAD~1"]],
        "squash": [["merge", "--squash", "side"]],
    }
    if kind == "revert":
        open(os.path.join(path, "f.txt"), "w").write("one\n")
        git(path, "commit", "-q", "-am", "f is one")
        open(os.path.join(path, "f.txt"), "w").write("two\n")
    if kind == "am":
        with open(os.path.join(path, "..", "side.patch"), "w") as fh:
            fh.write(git(path, "format-patch", "-1", "--stdout", "side") + "\n")
    for argv in commands[kind]:
        git(path, *argv, check=False)
    from engine import git as engine_git

    expected = {"squash": "merge --squash"}.get(kind, kind)
    assert engine_git.operations_in_progress(path) == [expected], (kind, os.listdir(engine_git.worktree_git_dir(path)))


KINDS = ["rebase", "merge", "cherry-pick", "revert", "am", "bisect", "squash"]


def half_done_slot(pm, repo, kind):
    """A one-slot pool whose slot holds auto/a with KIND left in progress in it."""
    conflicting_branches(repo)
    pm("init", "1")
    slot, path, _ = pm("acquire", "a").out.strip().split("|")
    start_operation(path, kind)
    return slot, path


@pytest.mark.parametrize("kind", KINDS)
def test_slot_handed_out_clean_after_acquire(pm, repo, kind):
    from engine import git as engine_git

    # the previous lease-holder leaves it half done and the slot is marked idle behind the
    # pool's back (a crash, a hand-edited state): acquire alone must make it clean
    slot, path = half_done_slot(pm, repo, kind)
    data = json.load(open(STATE))
    data["worktrees"][0] = {"id": slot, "status": "idle", "task_id": None, "path": data["worktrees"][0]["path"],
                            "branch": None, "acquired_at": None}
    with open(STATE, "w") as fh:
        json.dump(data, fh)
    r = pm("acquire", "b")
    assert r.code == 0, r
    assert engine_git.operations_in_progress(path) == []
    assert git(path, "status", "--porcelain") == "" and git(path, "branch", "--show-current") == "auto/b"
    assert git(path, "for-each-ref", "refs/bisect") == ""
    gitdir = engine_git.worktree_git_dir(path)
    assert not any(os.path.exists(os.path.join(gitdir, f)) for f in ("MERGE_MSG", "SQUASH_MSG", "MERGE_HEAD"))
    open(os.path.join(path, "new.txt"), "w").write("x\n")
    git(path, "add", "new.txt")
    git(path, "commit", "-q", "-m", "b's work")
    assert git(path, "log", "--format=%P", "-1").count(" ") == 0  # a plain commit, no stale merge parent


@pytest.mark.parametrize("kind", KINDS)
def test_release_ends_the_operation_and_keeps_the_work(pm, repo, kind):
    from engine import git as engine_git

    slot, path = half_done_slot(pm, repo, kind)
    tip = git(repo, "rev-parse", "auto/a")
    r = pm("release", slot)
    assert r.code == 0 and r.out == f"RELEASED:{slot}\n", r
    assert engine_git.operations_in_progress(path) == []
    assert git(path, "status", "--porcelain") == ""
    if "auto/a" in branches(repo):
        assert git(repo, "rev-parse", "auto/a") == tip  # the branch itself is not rewritten by the quit
    if kind != "bisect":  # the conflicted files are kept in a stash, not committed to the branch
        assert f"left in {slot} at release" in git(repo, "stash", "list")
        assert "<<<<<<<" in git(repo, "show", "stash@{0}:f.txt")
    r = pm("health")
    assert r.code == 0, r


def test_health_finds_and_repairs_an_operation_in_an_idle_slot(pm, repo):
    from engine import git as engine_git

    conflicting_branches(repo)
    pm("init", "1")
    slot, path, _ = pm("acquire", "a").out.strip().split("|")
    pm("release", slot)
    git(path, "checkout", "-q", "--detach", "side")
    git(path, "rebase", "main", check=False)
    r = pm("health")
    assert r.code == 1 and "idle slot wt-1 has a rebase left in progress" in r.err
    r = pm("health", "--repair")
    assert "Repaired: operation-in-progress: wt-1" in r.out
    assert engine_git.operations_in_progress(path) == []


def test_worktree_list_rides_out_a_half_written_worktree(repo):
    """A concurrent `worktree add` leaves commondir empty for an instant; the listing waits for
    it. One that stays empty (a finished record: HEAD written, no `locked`) is mended once it is
    RECORD_GRACE old, never answered with a silent empty list."""
    import threading

    from engine import git as engine_git

    admin = repo / ".git" / "worktrees" / "half"
    admin.mkdir(parents=True)
    (admin / "gitdir").write_text(str(repo.parent / "half" / ".git") + "\n")
    (admin / "HEAD").write_text("ref: refs/heads/main\n")
    (admin / "commondir").write_text("")
    finisher = threading.Timer(0.05, lambda: (admin / "commondir").write_text("../..\n"))
    finisher.start()
    try:
        paths = [e["path"] for e in engine_git.worktrees(str(repo))]
    finally:
        finisher.join()
    assert paths[0] == str(repo) and paths[1].endswith("/half")
    (admin / "commondir").write_text("")  # now for good
    paths = [e["path"] for e in engine_git.worktrees(str(repo))]
    assert paths[0] == str(repo) and paths[1].endswith("/half")
    assert (admin / "commondir").read_text() == "../..\n"


def test_cleanup_refused_while_a_killed_runs_agent_still_works_in_its_slot(sealed_env, tmp_path):
    """The orchestrator is SIGKILLed; its agent lives on in the slot. The lease owner is dead,
    but the agent is not: cleanup refuses (naming the agent), and goes ahead once it is gone."""
    import yaml

    from engine import demo
    from engine.procs import alive, stop_group

    repo = demo.make_repo(str(tmp_path / "d"))
    plan = os.path.join(repo, "..", "plan.yaml")
    demo.write_plan(plan)
    env = dict(python_env(), DEMO_AGENT_SLEEP="30")
    run = subprocess.Popen([PYTHON, "-m", "engine.cli.orchestrator", "run", "--quiet", plan], cwd=repo, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    agents = {}
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(agents) < 3:  # group 1: models, utils, config
            time.sleep(0.1)
            try:
                tasks = yaml.safe_load(open(os.path.join(repo, ".claude", "auto-progress.yaml")))["tasks"]
            except (OSError, TypeError, KeyError, yaml.YAMLError):
                continue
            agents = {t: (v["pid"], v.get("pid_start")) for t, v in tasks.items() if v.get("pid")}
        assert len(agents) == 3, agents
        run.send_signal(signal.SIGKILL)
        run.wait()
        assert any(alive(pid, start) for pid, start in agents.values())
        r = subprocess.run([PYTHON, "-m", "engine.cli.pool_manager", "cleanup"], cwd=repo, env=env,
                           capture_output=True, text=True)
        assert r.returncode == 1 and "its agent, pid " in r.stderr and "which is still running" in r.stderr, r
        assert len(r.stderr.splitlines()) == 1
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        tasks = yaml.safe_load(open(os.path.join(repo, ".claude", "auto-progress.yaml")))["tasks"]
        for v in tasks.values():  # every agent the killed run left behind
            if v.get("pid"):
                stop_group(v["pid"], v.get("pid_start"), grace=1.0)
    r = subprocess.run([PYTHON, "-m", "engine.cli.pool_manager", "cleanup"], cwd=repo, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r


def test_a_lease_taken_after_cleanups_check_keeps_its_worktree(pm, repo, monkeypatch, holder):
    """The race: a live process leases a slot between cleanup's refusal check and its removal
    of the worktrees (simulated by skipping the check). That slot survives the cleanup."""
    from engine.pool import Pool

    class LateLease(Pool):
        def refuse_live_leases(self, data, what):  # the lease "arrives" after this check
            return None

    pm("init", "2")
    _, live_path, _ = lease(pm, monkeypatch, "live", holder.pid)
    _, dead_path, _ = lease(pm, monkeypatch, "dead", 999999999)
    LateLease().cleanup()
    slots = {s["id"]: s for s in json.load(open(STATE))["worktrees"]}
    assert slots["wt-1"]["status"] == "busy" and slots["wt-1"]["task_id"] == "live"
    assert slots["wt-2"]["status"] == "idle"
    assert os.path.isdir(live_path) and not os.path.exists(dead_path)
