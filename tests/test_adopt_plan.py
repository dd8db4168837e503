"""`resume --adopt-plan` (issue 20): every task not yet merged takes the adopted plan's data,
dependencies and also `files`, `verify`, `expected_output`, in the progress file (and so in
`status --json`) and in what runs; a merged task keeps what it was checked and merged with.
A real run with a task whose agent exits 1, the plan edited, the real CLI."""

import glob
import json
import os
import subprocess

import yaml

from tests.conftest import PYTHON, git, python_env

WORK = "echo $TASK_ID > $TASK_ID.txt && git add -A && git commit -qm $TASK_ID"


def orchestrator(repo, *args):
    return subprocess.run([PYTHON, "-m", "engine.cli.orchestrator", *args], cwd=repo, capture_output=True, text=True,
                          env=python_env(), timeout=120)


def write_plan(repo, a, b):
    (repo / "plan.yaml").write_text(yaml.safe_dump({"agent": WORK, "tasks": [dict(id="a", **a), dict(id="b", **b)]},
                                                   sort_keys=False))


def tasks(repo):
    with open(repo / ".claude" / "auto-progress.yaml") as fh:
        return yaml.safe_load(fh)["tasks"]


def test_an_adopted_plan_replaces_the_files_and_checks_of_every_unmerged_task(repo):
    (repo / ".claude").mkdir()
    (repo / ".claude" / "auto-context.yaml").write_text("parallelization:\n  retry_on_failure: 0\n")
    old_a = {"files": ["a.txt"], "verify": "echo a-old-check", "expected_output": "a-old-check"}
    write_plan(repo, old_a, {"agent": "exit 1", "files": ["b-old.txt"], "verify": "echo b-old-check"})
    first = orchestrator(repo, "run", "--all-groups", "--quiet", "plan.yaml")
    assert first.returncode == 1, first  # a merged, b failed (its agent exits 1)
    before = tasks(repo)
    assert (before["a"]["status"], before["b"]["status"]) == ("merged", "failed")
    assert (before["b"].get("files"), before["b"].get("verify")) == (["b-old.txt"], "echo b-old-check")

    # the plan fixed: b gets an agent that works, other files, another check; a's entry edited too
    new_b = {"files": ["b-new.txt", "shared/b.txt"], "verify": "echo b-new-check-ran", "expected_output": "new-check"}
    write_plan(repo, {"files": ["elsewhere.txt"], "verify": "echo a-new-check"}, new_b)
    assert orchestrator(repo, "retry", "b").returncode == 0
    done = orchestrator(repo, "resume", "--adopt-plan", "--all-groups", "--quiet")
    assert done.returncode == 0, done

    after = tasks(repo)
    assert after["b"]["status"] == "merged"
    assert {k: after["b"].get(k) for k in new_b} == new_b  # the adopted plan's
    assert {k: after["a"].get(k) for k in old_a} == old_a  # merged before: untouched
    report = json.loads(orchestrator(repo, "status", "--json").stdout)
    assert {k: report["tasks"]["b"].get(k) for k in new_b} == new_b
    assert {k: report["tasks"]["a"].get(k) for k in old_a} == old_a
    # and the adopted check is the one that ran on b
    logs = sorted(glob.glob(os.path.join(repo, ".claude", "auto-logs", "b.qa-*.log")))
    assert logs, os.listdir(repo / ".claude" / "auto-logs")
    ran = open(logs[-1]).read()
    assert "b-new-check-ran" in ran and "b-old-check" not in ran
    assert git(repo, "show", "main:b.txt") == "b"
