"""A kill inside git never wedges a run: the orchestrator's process group SIGKILLed while its own
git children run (mid-merge, mid-checkout, mid-rebase, mid-branch-delete), at many points, each
followed by `resume` -> no resume ever fails, every task merged exactly once, no lock file, branch
or worktree left over. Before engine.git_locks, a git killed with the orchestrator left its
index.lock in a leased slot and every `resume` exited 70 ("remove the file manually to
continue") until a person repaired the pool.

And the rule that makes removing a lock safe: one a live process has open is never removed,
one nobody holds is removed (with one warning line) wherever the run owns it."""

import os
import random
import subprocess
import sys

import pytest
import yaml

from engine import demo, git_locks
from tests.conftest import PYTHON, branches, git, python_env, worktree_paths
from tests.killing import run_with_kills_inside_git

TASKS = ["models", "utils", "config", "api", "cli", "tests", "docs"]
KILLS = 24


def progress(repo):
    with open(os.path.join(repo, ".claude", "auto-progress.yaml")) as fh:
        return yaml.safe_load(fh)


def leftover_locks(repo):
    return git_locks.lock_files(os.path.join(repo, ".git"))


def conflicting_demo(tmp_path, name):
    """The demo plan whose agents all also write one shared file: conflicts, set-asides and
    rebases, so the kills land in every kind of git command the run uses."""
    repo = demo.make_repo(str(tmp_path / name))
    plan = str(tmp_path / name / "plan.yaml")
    demo.write_plan(plan)
    with open(os.path.join(repo, ".claude", "auto-context.yaml"), "w") as fh:
        fh.write("parallelization:\n  min_tasks: 3\n  max_agents: 3\n  retry_on_failure: 10\n")
    return repo, plan


def test_kills_inside_git_commands_never_wedge_a_run(tmp_path):
    env = dict(python_env(), DEMO_AGENT_SLEEP="0.05", DEMO_CONFLICT_FILE="shared.txt")
    rng = random.Random(20)
    landed, runs = [], 0
    while len(landed) < KILLS:
        runs += 1
        repo, plan = conflicting_demo(tmp_path, f"r{runs}")
        landed += run_with_kills_inside_git([PYTHON, "-m", "engine.cli.orchestrator"], repo, plan, env, rng,
                                            KILLS - len(landed), lambda r: progress(r).get("status") == "complete",
                                            options=["--quiet"])
        data = progress(repo)
        assert {t: v["status"] for t, v in data["tasks"].items()} == dict.fromkeys(TASKS, "merged")
        subjects = git(repo, "log", "--format=%s", "--merges", "main").splitlines()
        assert sorted(subjects) == sorted(f"feat: Merge auto/{t}" for t in TASKS)  # each exactly once
        for t in TASKS:
            assert git(repo, "show", f"main:app/{t}.py").endswith(f'return "{t} ok"')
        assert branches(repo) == ["main"] and worktree_paths(repo) == [repo]
        assert leftover_locks(repo) == []
    kinds = sorted({w.split()[0] for w in landed})
    print(f"\n{len(landed)} kills inside git over {runs} run(s), in: {kinds}")
    assert len(kinds) >= 3, landed  # spread over several kinds of git command, not one


def hold_open(path):
    """A live process that has PATH open (as git holds its lock while it works)."""
    code = f"import sys,time; f=open({path!r}, 'a'); print('ok', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ok"
    return proc


def aged(path, seconds=10):
    with open(path, "w"):
        pass
    old = os.stat(path).st_mtime - seconds
    os.utime(path, (old, old))
    return path


def test_a_held_lock_stays_and_an_unheld_one_goes(tmp_path):
    repo = demo.make_repo(str(tmp_path / "r"))
    refs = os.path.join(repo, ".git", "refs", "heads")
    held = aged(os.path.join(refs, "held.lock"))
    dead = aged(os.path.join(refs, "dead.lock"))
    young = os.path.join(refs, "young.lock")
    holder = hold_open(held)
    try:
        assert git_locks.find_stale(git_locks.lock_files(os.path.join(repo, ".git"))) == [dead]
        with open(young, "w"):
            pass
        removed = git_locks.clear_stale(git_locks.lock_files(os.path.join(repo, ".git")), grace=0.3)
        assert sorted(lock.path for lock in removed) == sorted([dead, young])  # the young one after its grace
        assert all(lock.removed and "no process has it open" in lock.line() for lock in removed)
        assert os.path.exists(held)
    finally:
        holder.kill()
        holder.wait()
    assert [lock.path for lock in git_locks.clear_stale([held], grace=0)] == [held]


@pytest.mark.parametrize("where", ["HEAD", "main ref", "main index", "packed-refs"])
def test_resume_clears_a_lock_left_by_a_killed_git_with_one_warning(tmp_path, where):
    """A run stopped with a task failed; a dead git's lock planted in the main repository (the
    campaign above covers the slots');  `retry` + `resume` finishes with one warning line naming the lock."""
    repo = demo.make_repo(str(tmp_path / "r"))
    plan = str(tmp_path / "r" / "plan.yaml")
    demo.write_plan(plan)
    env = dict(python_env(), DEMO_AGENT_SLEEP="0", DEMO_BROKEN="cli")
    run = subprocess.run([PYTHON, "-m", "engine.cli.orchestrator", "run", "--all-groups", "--quiet", plan],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert progress(repo)["tasks"]["cli"]["status"] == "failed", (run.stdout[-800:], run.stderr[-800:])
    gitdir = os.path.join(repo, ".git")
    lock = aged({"HEAD": os.path.join(gitdir, "HEAD.lock"),
                 "main ref": os.path.join(gitdir, "refs", "heads", "main.lock"),
                 "main index": os.path.join(gitdir, "index.lock"),
                 "packed-refs": os.path.join(gitdir, "packed-refs.lock")}[where])
    env.pop("DEMO_BROKEN")
    subprocess.run([PYTHON, "-m", "engine.cli.orchestrator", "retry", "cli"], cwd=repo, env=env, check=True,
                   capture_output=True)
    done = subprocess.run([PYTHON, "-m", "engine.cli.orchestrator", "resume", "--all-groups", "--quiet"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-1500:]
    warnings = [line for line in done.stderr.splitlines() if "stale git lock" in line]
    assert warnings == [f"[WARN] removed stale git lock {os.path.relpath(lock, repo)} (no process has it open)"]
    assert not os.path.exists(lock)
    assert {t: v["status"] for t, v in progress(repo)["tasks"].items()} == dict.fromkeys(TASKS, "merged")
