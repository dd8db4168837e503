"""Crash exactness: the demo plan with slightly slow agents, the orchestrator SIGKILLed at
random moments 30 times across the run and resumed after each; the result must equal an
uninterrupted run file for file, with nothing merged twice and nothing corrupt or orphaned."""

import json
import os
import random
import signal
import subprocess
import time

import pytest
import yaml

from engine import demo
from tests.conftest import PYTHON, branches, git, python_env, worktree_paths

TASKS = ["models", "utils", "config", "api", "cli", "tests", "docs"]


def orchestrator(repo, *args, env):
    return subprocess.Popen([PYTHON, "-m", "engine.cli.orchestrator", *args], cwd=repo, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def check_claude_files(repo):
    """Every state file under .claude parses; journals may only have a torn last line."""
    for dirpath, _, names in os.walk(os.path.join(repo, ".claude")):
        if "worktree-pool" in dirpath:
            continue
        for name in names:
            path = os.path.join(dirpath, name)
            if name.endswith((".yaml", ".last-good")) and not name.endswith(".json.last-good"):
                with open(path) as fh:
                    yaml.safe_load(fh)
            elif name.endswith(".json"):
                with open(path) as fh:
                    json.load(fh)
            elif name.endswith(".jsonl"):
                with open(path) as fh:
                    lines = fh.read().split("\n")
                for line in lines[:-1]:
                    json.loads(line)


def setup(tmp_path, name):
    repo = demo.make_repo(str(tmp_path / name))
    plan = str(tmp_path / name / "plan.yaml")
    demo.write_plan(plan)
    return repo, plan


def crash_run(repo, plan, env, rng, kill_budget):
    """Run PLAN to completion, SIGKILLing the orchestrator at random moments (at most
    `kill_budget` times) and resuming after each; returns (kills, states seen at kill time)."""
    kills, first, states = 0, True, set()
    while True:
        args = ["run", "--all-groups", "--quiet", plan] if first else ["resume", "--all-groups", "--quiet"]
        proc = orchestrator(repo, *args, env=env)
        killed = False
        if kills < kill_budget:
            time.sleep(rng.uniform(0.1, 1.4))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)  # the orchestrator only: its agents live on as orphans
                kills += 1
                killed = True
                state_file = os.path.join(repo, ".claude/auto-state-machine.yaml")
                if os.path.exists(state_file):  # (a kill during `run`'s first steps may precede it)
                    with open(state_file) as fh:
                        states.add(yaml.safe_load(fh)["current_state"])
                else:
                    states.add("(before the state file)")
        code = proc.wait(timeout=180)
        err = proc.stderr.read()
        proc.stderr.close()
        # killed before `run` recorded anything: a person runs it again (there is nothing to resume)
        first = not os.path.exists(os.path.join(repo, ".claude/auto-progress.yaml"))
        check_claude_files(repo)
        if first:
            continue
        with open(os.path.join(repo, ".claude/auto-progress.yaml")) as fh:
            if (yaml.safe_load(fh) or {}).get("status") == "complete":
                # (a kill may land after `complete` is on disk, before the process exits)
                assert code == 0 or (killed and code == -signal.SIGKILL), err
                return kills, states


@pytest.mark.parametrize("progress_log", ["snapshot every event", "change log"])
def test_sigkill_and_resume_equals_uninterrupted(tmp_path, progress_log):
    """Every task event goes through the progress file's change log (engine.deltalog), so the
    kills land mid-append and mid-compaction; with "snapshot every event" the whole file is
    also written again (in its timer thread) after each one, so they land mid-snapshot too."""
    env = dict(python_env(), DEMO_FLAKY="cli", DEMO_AGENT_SLEEP="0.6")
    if progress_log == "snapshot every event":
        env["ORCH_PROGRESS_SNAPSHOT_LAG"] = "0"
    clean_repo, clean_plan = setup(tmp_path, "clean")
    p = orchestrator(clean_repo, "run", "--all-groups", "--quiet", clean_plan, env=env)
    assert p.wait(timeout=120) == 0, p.stderr.read()
    p.stderr.close()
    expected_tree = git(clean_repo, "rev-parse", "main^{tree}")

    rng = random.Random(7)
    total, states_hit, runs = 0, set(), 0
    while total < 30:  # as many interrupted runs as it takes to land 30 kills
        runs += 1
        repo, plan = setup(tmp_path, f"crashy{runs}")
        kills, states = crash_run(repo, plan, env, rng, min(10, 30 - total))
        total += kills
        states_hit |= states
        assert git(repo, "rev-parse", "main^{tree}") == expected_tree  # file for file
        subjects = git(repo, "log", "--format=%s", "--merges", "main").splitlines()
        assert sorted(subjects) == sorted(f"feat: Merge auto/{t}" for t in TASKS)  # nothing merged twice
        assert branches(repo) == ["main"] and worktree_paths(repo) == [repo]  # no orphan branch or worktree
        with open(os.path.join(repo, ".claude/auto-progress.yaml")) as fh:
            data = yaml.safe_load(fh)  # (the YAML file alone: compacted when the last run ended)
        assert {t: v["status"] for t, v in data["tasks"].items()} == {t: "merged" for t in TASKS}
    print(f"\n{total} kills over {runs} run(s); states at kill time: {sorted(states_hit)}")
