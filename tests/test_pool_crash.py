"""SIGKILL pool-manager (and the git it runs) during acquire and release, 36 times at random
moments; after each kill `health --repair` brings the pool back to a consistent state and
no slot is lost."""

import json
import os
import random
import signal
import subprocess
import time

import pytest

from tests.conftest import PYTHON, branches, git, python_env


def locks(repo):
    return [str(p.relative_to(repo)) for p in (repo / ".git").rglob("*.lock")]


def consistent(repo, size):
    with open(repo / ".claude/pool-state.json") as fh:
        state = json.load(fh)
    slots = state["worktrees"]
    assert [s["id"] for s in slots] == [f"wt-{n}" for n in range(1, size + 1)]  # no slot lost
    held = set()
    for s in slots:
        assert s["status"] in ("idle", "busy") and "preparing" not in s and "releasing" not in s, s
        path = repo / ".claude/worktree-pool" / s["id"]
        if s["status"] == "busy":
            assert git(path, "symbolic-ref", "--short", "HEAD") == s["branch"]
            held.add(s["branch"])
        elif path.exists():
            assert git(path, "symbolic-ref", "-q", "HEAD", check=False) == ""  # detached, holds no branch
    for branch in branches(repo):
        if branch.startswith("auto/"):
            assert branch in held, f"orphan branch {branch}"
    return state


def test_sigkill_during_acquire_and_release(pm, repo):
    for i in range(300):  # enough files that a checkout takes a moment
        (repo / f"src/f{i}.txt").parent.mkdir(exist_ok=True)
        (repo / f"src/f{i}.txt").write_text(f"{i}\n" * 20)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "files")
    size = 4
    assert pm("init", str(size)).code == 0
    rng = random.Random(42)
    kills = 0
    task_no = 0
    killed_in = {"acquire": 0, "release": 0}
    repaired = {}
    for _ in range(40):
        state = consistent(repo, size)
        busy = [s["id"] for s in state["worktrees"] if s["status"] == "busy"]
        idle = [s["id"] for s in state["worktrees"] if s["status"] == "idle"]
        if idle and (not busy or rng.random() < 0.55):
            task_no += 1
            args, op = ["acquire", f"t{task_no}"], "acquire"
        else:
            args, op = ["release", rng.choice(busy)], "release"
        proc = subprocess.Popen([PYTHON, "-m", "engine.cli.pool_manager", *args], cwd=repo, env=python_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(rng.uniform(0.05, 0.15))
        try:
            os.killpg(proc.pid, signal.SIGKILL)
            kills += 1
            killed_in[op] += 1
        except ProcessLookupError:
            pass  # finished first: also a moment worth checking
        proc.wait()
        r = pm("health", "--repair")
        if r.code or "FAILED" in r.out:
            print(r.out, r.err, locks(repo))
        assert r.code == 0 and "FAILED" not in r.out, (r.out, r.err, locks(repo))
        for line in r.lines:
            if line.startswith("Repaired: "):
                kind = line[len("Repaired: "):].split(":")[0]
                repaired[kind] = repaired.get(kind, 0) + 1
        assert pm("health").code == 0
    consistent(repo, size)
    print(f"\n{kills} kills ({killed_in}); repairs needed: {repaired}")
    assert kills >= 30


@pytest.mark.parametrize("cut", ["after locked", "after the worktree's .git", "after the placeholder HEAD"])
def test_an_acquire_killed_inside_git_worktree_add_is_repaired_at_once(pm, repo, cut):
    """git's `worktree add` writes its record in turns (`locked` "initializing", `gitdir`, the
    worktree's `.git`, a placeholder HEAD, `commondir`); killed in between, the record is one
    `worktree remove` does not know and `prune` keeps (locked). The repair of the dead acquire
    removes it at once (it holds the worktree lock: no add of ours is at work), where before
    it was left until two seconds old, and the next `health` found it broken (the random kill
    campaign above, about one run in fifteen on a loaded machine)."""
    assert pm("init", "2").code == 0
    assert pm("acquire", "t1").code == 0
    path = repo / ".claude/worktree-pool/wt-1"
    git(repo, "worktree", "remove", "--force", str(path))
    git(repo, "branch", "-D", "auto/t1")
    admin = repo / ".git/worktrees/wt-1"
    admin.mkdir(parents=True)
    (admin / "locked").write_text("initializing\n")
    if cut != "after locked":
        (admin / "gitdir").write_text(f"{os.path.realpath(path)}/.git\n")
        path.mkdir()
        (path / ".git").write_text(f"gitdir: {os.path.realpath(admin)}\n")
    if cut == "after the placeholder HEAD":
        (admin / "HEAD").write_text("0" * 40 + "\n")
    dead = subprocess.Popen(["true"])
    dead.wait()
    state_file = repo / ".claude/pool-state.json"
    state = json.loads(state_file.read_text())
    slot = next(s for s in state["worktrees"] if s["id"] == "wt-1")
    slot.update(preparing=True, owner={"pid": dead.pid, "host": slot["owner"]["host"], "since": slot["owner"]["since"],
                                       "start": None})
    state_file.write_text(json.dumps(state))
    r = pm("health", "--repair")
    assert r.code == 0 and "interrupted-acquire: wt-1" in r.out, (r.out, r.err)
    assert not admin.exists()  # gone now, not two seconds from now
    assert pm("health").code == 0
    consistent(repo, 2)
    assert pm("acquire", "t2").code == 0
    assert git(path, "symbolic-ref", "--short", "HEAD") == "auto/t2"
