"""Crash exactness at the streaming flow's most delicate moments: a SIGKILL exactly inside the
merge queue (before and after the base moved), right after an approval, in the middle of a
slot's hand-over from an approved task to the next, and in the middle of a conflict retry (after the old attempt was set aside, after a rebase), each followed by
`resume` -> every task merged exactly once, no orphan worktree or branch, and where the
result is deterministic the same `main` tree as an uninterrupted run."""

import os
import subprocess

import pytest

from engine import demo
from tests.conftest import PYTHON, branches, git, python_env, worktree_paths

TASKS = ["models", "utils", "config", "api", "cli", "tests", "docs"]
AGENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "streaming_agent.py")


def orchestrator(repo, *args, env):
    return subprocess.run([PYTHON, "-m", "engine.cli.orchestrator", *args, "--quiet"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)


def demo_project(tmp_path, name):
    repo = demo.make_repo(str(tmp_path / name))
    plan = str(tmp_path / name / "plan.yaml")
    demo.write_plan(plan)
    return repo, plan


def progress(repo):
    """The progress file as every reader of ours sees it: after a kill, the YAML file alone
    is a snapshot its change log rolls forward."""
    from engine.paths import Layout
    from engine.progress import Progress

    return Progress(Layout(os.path.join(repo))).load()


def crash_then_resume(repo, plan, env, point):
    """Run with the crash point armed (the orchestrator must die there), then resume clean."""
    first = orchestrator(repo, "run", "--all-groups", plan, env=dict(env, ORCH_CRASHPOINT=point))
    assert first.returncode == -9, (point, first.stdout[-500:], first.stderr[-500:])
    done = orchestrator(repo, "resume", "--all-groups", env=env)
    unfinished = {t: (v.get("status"), v.get("failure")) for t, v in progress(repo)["tasks"].items()
                  if v.get("status") != "merged"}
    assert done.returncode == 0, (point, unfinished, done.stderr[-800:])


def assert_clean_and_once(repo, tasks):
    data = progress(repo)
    assert {t: v["status"] for t, v in data["tasks"].items()} == dict.fromkeys(tasks, "merged")
    subjects = git(repo, "log", "--format=%s", "--merges", "main").splitlines()
    assert sorted(subjects) == sorted(f"feat: Merge auto/{t}" for t in tasks)  # each exactly once
    assert branches(repo) == ["main"] and worktree_paths(repo) == [repo]
    assert git(repo, "for-each-ref", "refs/orchestrator/") == ""  # no set-aside attempt of a merged task
    assert git(repo, "status", "--porcelain", "--untracked-files=no") == ""


@pytest.fixture(scope="module")
def expected_tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("clean")
    repo, plan = demo_project(base, "clean")
    env = dict(python_env(), DEMO_FLAKY="cli", DEMO_AGENT_SLEEP="0")
    assert orchestrator(repo, "run", "--all-groups", plan, env=env).returncode == 0
    return git(repo, "rev-parse", "main^{tree}")


@pytest.mark.parametrize("point", ["merge-intent", "merge-moved", "approved", "merge-intent:3", "handed-over",
                                   "handed-over:2", "merged-recorded", "merged-recorded:6"])
def test_a_kill_inside_the_merge_queue_resumes_exactly(tmp_path, expected_tree, point):
    repo, plan = demo_project(tmp_path, "p")
    env = dict(python_env(), DEMO_FLAKY="cli", DEMO_AGENT_SLEEP="0")
    crash_then_resume(repo, plan, env, point)
    assert git(repo, "rev-parse", "main^{tree}") == expected_tree
    assert_clean_and_once(repo, TASKS)


@pytest.mark.parametrize("point", ["merge-moved", "approved", "merged-recorded:6", "handed-over:2"])
def test_a_kill_inside_the_merge_queue_resumes_exactly_with_a_snapshot_after_every_event(tmp_path, expected_tree,
                                                                                         point):
    """The same kills while the progress file's snapshot is also written again after every
    event (its timer thread racing the events' appends): whichever of the two a kill lands
    in, `resume` reads back every event before it."""
    repo, plan = demo_project(tmp_path, "p")
    env = dict(python_env(), DEMO_FLAKY="cli", DEMO_AGENT_SLEEP="0", ORCH_PROGRESS_SNAPSHOT_LAG="0")
    crash_then_resume(repo, plan, env, point)
    assert git(repo, "rev-parse", "main^{tree}") == expected_tree
    assert_clean_and_once(repo, TASKS)


@pytest.mark.parametrize("point", ["set-aside", "merge-moved:2", "merged-recorded:2", "merged-recorded:4"])
def test_a_kill_during_a_conflict_retry_resumes_exactly(tmp_path, point):
    """Siblings writing one shared file: the later ones conflict, are set aside and re-run.
    (Every task writes it, so a re-run can collide again with whatever merged meanwhile:
    enough retries to converge.)"""
    repo, plan = demo_project(tmp_path, "p")
    with open(os.path.join(repo, ".claude", "auto-context.yaml"), "w") as fh:
        fh.write("parallelization:\n  min_tasks: 3\n  max_agents: 3\n  retry_on_failure: 8\n")
    env = dict(python_env(), DEMO_AGENT_SLEEP="0", DEMO_CONFLICT_FILE="shared.txt")
    crash_then_resume(repo, plan, env, point)
    assert_clean_and_once(repo, TASKS)
    for t in TASKS:  # every task's own work is in main, whichever wrote shared.txt last
        assert git(repo, "show", f"main:app/{t}.py").endswith(f'return "{t} ok"')
    assert git(repo, "show", "main:shared.txt").startswith("written by ")


def test_a_kill_right_after_a_rebase_resumes_exactly(tmp_path):
    repo = demo.make_repo(str(tmp_path / "p"))
    with open(os.path.join(repo, ".claude", "auto-context.yaml"), "w") as fh:
        fh.write("parallelization:\n  min_tasks: 1\n  max_agents: 3\n")
    with open(os.path.join(repo, "notes.txt"), "w") as fh:
        fh.write("typo\n")
    git(repo, "add", "notes.txt")
    git(repo, "commit", "-qm", "notes")
    plan = str(tmp_path / "p" / "plan.yaml")
    with open(plan, "w") as fh:
        fh.write(f"base: main\nagent: {PYTHON} {AGENT}\ntasks:\n  - {{id: first}}\n  - {{id: same}}\n")
    env = dict(python_env(), AGENT_MODE="first=fix,same=fix-then-more", AGENT_SLEEP="first=0.1,same=1.5")
    crash_then_resume(repo, plan, env, "rebased")
    assert_clean_and_once(repo, ["first", "same"])
    assert git(repo, "show", "main:notes.txt") == "better"
    assert progress(repo)["tasks"]["same"]["iterations"] == 1  # the agent never ran again
