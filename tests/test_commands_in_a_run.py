"""Agents and checks through a real run (the scheduler's use of engine.procs/agent_env).

Issue 9, task data: a NUL byte and a 140,000-character description, and a verify whose output
(fed back as QA_FEEDBACK) is a 200,000-character line with a NUL: the task still runs, gets
cleaned and bounded values plus the whole texts in files, and is merged along with its
sibling; no exit 70, no `Argument list too long`.

Issue 8, process hygiene: a verify that exits 0 while a `setsid` child it started still holds
its output open is judged by its exit status, the run does not wait for the child, and the
child is gone afterwards; an agent's leftover child likewise."""

import os
import time

import yaml

from engine import demo
from engine.agent_env import VALUE_LIMIT
from tests.conftest import git, invoke

LONG = 60
COMMIT = 'echo "x = 1" > app/$TASK_ID.py && git add -A && git commit -qm "$TASK_ID"'


def run_plan(tmp_path, monkeypatch, agent, tasks):
    """Run a plan of TASKS with AGENT in a fresh demo repository; (repo, result, task states)."""
    from engine.cli.orchestrator import cli

    repo = demo.make_repo(str(tmp_path / "d"))
    monkeypatch.chdir(repo)
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({"work_type": "BACKEND", "base": "main", "agent": agent, "tasks": tasks}))
    r = invoke(cli, "orchestrator", "run", "--all-groups", "--quiet", str(path))
    with open(".claude/auto-progress.yaml") as fh:
        return repo, r, yaml.safe_load(fh)["tasks"]


def test_nul_and_huge_task_data_through_a_run(sealed_env, tmp_path, monkeypatch):
    seen = tmp_path / "seen"
    seen.mkdir()
    agent = (f'if [ -n "$QA_FEEDBACK" ]; then printf %s "$QA_FEEDBACK" | wc -c > {seen}/$TASK_ID.fb-env; '
             f'wc -c < "$QA_FEEDBACK_FILE" > {seen}/$TASK_ID.fb-file; touch fixed; fi; '
             f'printf %s "$TASK_DESCRIPTION" | wc -c > {seen}/$TASK_ID.desc-env; '
             f'wc -c < "$TASK_DESCRIPTION_FILE" > {seen}/$TASK_ID.desc-file; ' + COMMIT)
    flood = "python3 -c \"import sys; sys.stdout.write('y' * 200000 + chr(0) + 'END')\""
    repo, r, tasks = run_plan(tmp_path, monkeypatch, agent, [
        {"id": "hostile", "description": "fix\0it " + "d" * 140000, "files": ["app/hostile.py"],
         "verify": f"test -f fixed || {{ {flood}; exit 1; }}"},
        {"id": "plain", "description": "a plain task", "files": ["app/plain.py"], "verify": "true"},
    ])
    assert r.code == 0, r
    assert {t: v["status"] for t, v in tasks.items()} == {"hostile": "merged", "plain": "merged"}
    assert tasks["hostile"]["iterations"] == 2  # rejected once with the flood as feedback

    def number(name):
        return int((seen / name).read_text())

    assert number("hostile.desc-env") <= VALUE_LIMIT and number("hostile.desc-file") > 140000
    assert number("hostile.fb-env") <= VALUE_LIMIT and number("hostile.fb-file") > 0
    assert git(repo, "show", "main:app/hostile.py") == "x = 1"
    assert os.path.exists(os.path.join(repo, ".claude", "auto-logs", "hostile.log"))


def test_verify_with_a_setsid_child_holding_output(sealed_env, tmp_path, monkeypatch):
    pids = tmp_path / "pids"
    pids.mkdir()
    agent = f"setsid sh -c 'echo $$ > {pids}/agent-child; exec sleep {LONG}' & " + COMMIT
    # prints "checked" while its text (echoed in the QA log's header) does not hold that word
    verify = (f"setsid sh -c 'echo $$ > {pids}/verify-child; echo from-child; exec sleep {LONG}' & "
              f"while [ ! -s {pids}/verify-child ]; do sleep 0.01; done; echo che\"\"cked")
    started = time.monotonic()
    _, r, tasks = run_plan(tmp_path, monkeypatch, agent, [
        {"id": "t", "description": "one task", "files": ["app/t.py"], "verify": verify, "expected_output": "checked"}])
    assert r.code == 0, r
    assert time.monotonic() - started < LONG * 0.75  # nobody waited for the children
    assert tasks["t"]["status"] == "merged"
    for name in ("agent-child", "verify-child"):
        assert not os.path.exists(f"/proc/{int((pids / name).read_text())}"), name
