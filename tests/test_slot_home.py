"""Where the engine's slots live: outside `.claude/` (Claude Code never lets its file tools write
under a `.claude` directory in print mode), kept out of the main tree's `git status`; a pool
made where the contract puts it (`pool-manager init`, or an earlier version) moves there with
its slots' work; the drop-in commands keep the contract's paths for a pool they make, and see
the engine's slots once it has moved. Real repositories, real runs of the demo agent."""

import json
import os
import subprocess

import yaml

from engine.paths import ENGINE_POOL_REL
from tests.conftest import PYTHON, git, invoke
from tests.test_handover import demo_plan

CONTRACT_DIR = os.path.join(".claude", "worktree-pool")


def orch(*args):
    from engine.cli.orchestrator import cli

    return invoke(cli, "orchestrator", *args)


def pm(*args):
    from engine.cli.pool_manager import cli

    return invoke(cli, "pool-manager", *args)


def pool_state(repo):
    with open(os.path.join(repo, ".claude", "pool-state.json")) as fh:
        return json.load(fh)


def worktree_dirs(repo):
    out = git(repo, "worktree", "list", "--porcelain")
    return [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("worktree ")][1:]


def test_a_run_keeps_its_slots_outside_dot_claude_and_out_of_git_status(tmp_path, monkeypatch):
    repo, plan = demo_plan(tmp_path, "".join(f"  - {{id: t{i}, description: task {i}}}\n" for i in range(3)))
    monkeypatch.chdir(repo)
    seen = tmp_path / "cwds"
    # the agent notes where it runs (its cwd), then does the demo work
    agent = (f"pwd >> {seen} && {PYTHON} " + os.path.join(os.path.dirname(__import__('engine').__file__),
                                                          "demo_agent.py"))
    r = orch("run", "--all-groups", "--agent", agent, str(plan))
    assert r.code == 0, r
    cwds = open(seen).read().split()
    assert len(cwds) == 3 and all(f"{os.sep}{ENGINE_POOL_REL}{os.sep}wt-" in c for c in cwds), cwds
    assert not any(f"{os.sep}.claude{os.sep}" in c for c in cwds)
    assert pool_state(repo)["pool_dir"] == ENGINE_POOL_REL
    assert git(repo, "status", "--porcelain", "--untracked-files=all", "--", ".orchestrator") == ""


def test_an_earlier_pool_under_dot_claude_moves_with_a_leased_slots_uncommitted_work(repo, monkeypatch, tmp_path):
    """A pool made the contract's way (`pool-manager init`), one slot leased by a shell that is
    gone and holding uncommitted work: the engine's next run moves every slot, the work with
    it, and the drop-in commands then see the slots where they are."""
    assert pm("init", "3").code == 0
    state = pool_state(repo)
    assert state["pool_dir"] == CONTRACT_DIR and state["worktrees"][0]["path"] == f"{CONTRACT_DIR}/wt-1"
    acquired = pm("acquire", "keep")
    slot, path, branch = acquired.lines[-1].split("|")
    assert path == str(repo / CONTRACT_DIR / "wt-1")
    (repo / CONTRACT_DIR / "wt-1" / "draft.txt").write_text("uncommitted work\n")

    from engine.context import RunContext
    from engine.paths import Layout

    ctx = RunContext(Layout(str(repo)))
    ctx.slots.ensure(3)
    state = pool_state(repo)
    assert state["pool_dir"] == ENGINE_POOL_REL
    assert [s["path"] for s in state["worktrees"]] == [f"{ENGINE_POOL_REL}/wt-{n}" for n in (1, 2, 3)]
    moved = repo / ENGINE_POOL_REL / "wt-1"
    assert (moved / "draft.txt").read_text() == "uncommitted work\n"
    assert git(moved, "rev-parse", "--abbrev-ref", "HEAD") == "auto/keep"
    assert not (repo / CONTRACT_DIR).exists()
    assert worktree_dirs(repo) == [str(moved)]  # the one slot with a worktree, and only there
    # the drop-ins now work on the moved pool
    status = pm("status")
    assert status.code == 0 and "keep" in status.out
    health = pm("health")
    assert health.code == 0, health
    released = pm("release", "wt-1")
    assert released.code == 0 and released.lines[-1] == "RELEASED:wt-1"
    again = pm("acquire", "next")
    assert again.code == 0 and f"{ENGINE_POOL_REL}/wt-" in again.lines[-1]
    assert git(repo, "status", "--porcelain", "--untracked-files=all", "--", ".orchestrator") == ""


def test_a_slot_held_by_a_live_shell_keeps_the_pool_where_it_is(repo, monkeypatch):
    assert pm("init", "2").code == 0
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        monkeypatch.setenv("POOL_OWNER_PID", str(sleeper.pid))
        assert pm("acquire", "busy").code == 0
        monkeypatch.delenv("POOL_OWNER_PID")
        from engine.context import RunContext
        from engine.paths import Layout

        lines = []
        ctx = RunContext(Layout(str(repo)))
        ctx.reporter.line = lines.append
        ctx.slots.ensure(2)
        assert pool_state(repo)["pool_dir"] == CONTRACT_DIR and (repo / CONTRACT_DIR / "wt-1").is_dir()
        assert len(lines) == 1 and lines[0].startswith("[WARN] the pool stays in .claude/worktree-pool") \
            and f"pid {sleeper.pid}" in lines[0]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_pool_dir_still_wins_and_is_never_moved(repo, monkeypatch):
    monkeypatch.setenv("POOL_DIR", "custom-pool")
    assert pm("init", "2").code == 0
    from engine.context import RunContext
    from engine.paths import Layout

    ctx = RunContext(Layout(str(repo)))
    ctx.slots.ensure(2)
    assert pool_state(repo)["pool_dir"] == "custom-pool"
    assert pm("acquire", "x").lines[-1].split("|")[1] == str(repo / "custom-pool" / "wt-1")


def test_a_pool_state_naming_a_foreign_directory_is_not_followed(repo):
    """The recorded directory is taken from the file only when it is one of the two we make."""
    assert pm("init", "1").code == 0
    state_path = repo / ".claude" / "pool-state.json"
    state = json.loads(state_path.read_text())
    state["pool_dir"] = "../../elsewhere"
    state_path.write_text(json.dumps(state))
    from engine.pool import Pool
    from engine.paths import Layout

    assert Pool(Layout(str(repo)), env={}).dir == str(repo / CONTRACT_DIR)


def test_the_engine_resumes_a_run_whose_slots_were_under_dot_claude(tmp_path, monkeypatch):
    """An earlier version's interrupted run (progress file, slots leased under .claude): resume
    moves the pool and finishes every task."""
    repo, plan = demo_plan(tmp_path, "".join(f"  - {{id: t{i}, description: task {i}}}\n" for i in range(3)))
    monkeypatch.chdir(repo)
    monkeypatch.setenv("POOL_DIR", CONTRACT_DIR)  # the earlier version's place, as it would have made it
    monkeypatch.setenv("ORCH_CRASHPOINT", "approved")
    proc = subprocess.run([PYTHON, "-m", "engine.cli.orchestrator", "run", "--all-groups", str(plan)], cwd=repo,
                          capture_output=True, text=True, env=dict(os.environ))
    assert proc.returncode < 0  # killed at the first approval
    monkeypatch.delenv("ORCH_CRASHPOINT")
    monkeypatch.delenv("POOL_DIR")
    state = pool_state(repo)
    assert state.pop("pool_dir") == CONTRACT_DIR  # an earlier version wrote no pool_dir: slot paths tell
    with open(os.path.join(repo, ".claude", "pool-state.json"), "w") as fh:
        json.dump(state, fh)
    assert any(s["status"] == "busy" for s in state["worktrees"])
    r = orch("resume", "--all-groups")
    assert r.code == 0, r
    progress = yaml.safe_load(open(os.path.join(repo, ".claude", "auto-progress.yaml")))
    assert {t: e["status"] for t, e in progress["tasks"].items()} == {f"t{i}": "merged" for i in range(3)}
    assert pool_state(repo)["pool_dir"] == ENGINE_POOL_REL
