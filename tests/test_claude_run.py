"""The `claude` preset as a task's agent in real runs (the fake CLI, real git, real processes):
usage captured per attempt and summed per task and run, a retry resumes the previous session
with the QA feedback, denials block the task naming the tool, `error_max_turns` fails it with
that reason, the run budget ends the session at a boundary, a SIGKILL of the orchestrator
mid-stream keeps the session id and the attempt count, and `run --goal` plans once."""

import json
import os
import signal
import subprocess
import sys

import pytest
import yaml

from engine import claude, demo
from tests.conftest import ROOT, invoke, wait_until
from tests.test_claude import fake  # noqa: F401  (the fixture)


TASKS = ["models", "utils", "config", "api", "cli", "tests", "docs"]
PRESET = "{preset: claude, stagger_seconds: 0}"


def orch(*args):
    from engine.cli.orchestrator import cli

    return invoke(cli, "orchestrator", *args)


@pytest.fixture
def claude_repo(sealed_env, tmp_path, monkeypatch, fake):
    """The demo app and plan, its agent the claude preset (the fake CLI on PATH)."""
    repo = demo.make_repo(str(tmp_path / "d"))
    plan = str(tmp_path / "d" / "plan.yaml")
    demo.write_plan(plan, agent=PRESET)
    monkeypatch.chdir(repo)
    return repo, plan, fake


def progress():
    with open(".claude/auto-progress.yaml") as fh:
        return yaml.safe_load(fh)


def set_plan(plan, **top):
    data = yaml.safe_load(open(plan))
    data.update(top)
    with open(plan, "w") as fh:
        yaml.safe_dump(data, fh, sort_keys=False)


def test_preset_runs_the_plan_capturing_usage_and_resuming_on_retry(claude_repo, monkeypatch):
    repo, plan, calls = claude_repo
    monkeypatch.setenv("FAKE_CLAUDE_FLAKY", "cli")
    monkeypatch.setenv("FAKE_CLAUDE_COST", "0.1")
    r = orch("run", "--all-groups", plan)
    assert r.code == 0, r
    data = progress()
    tasks = data["tasks"]
    assert {t: v["status"] for t, v in tasks.items()} == {t: "merged" for t in TASKS}
    for t in TASKS:
        first = tasks[t]["attempts"][0]
        assert first["session_id"] and first["cost_usd"] == 0.1 and first["turns"] == 2
        assert (first["tokens_in"], first["tokens_out"], first["result_subtype"]) == (230, 40, "success")
        assert os.path.exists(f".claude/auto-logs/{t}.attempt-1.jsonl")
    cli = tasks["cli"]
    # (QA rejected its first attempt after the base had moved: rebased, QA again, then the agent)
    tries = [a for a in cli["attempts"] if a["kind"] == "agent"]
    assert [a["n"] for a in tries] == [1, 2] and cli["cost_usd"] == pytest.approx(0.2)
    by_session = {c["session_id"]: c for c in calls()}
    retry = by_session[tries[1]["session_id"]]
    assert retry["resume"] == tries[0]["session_id"] and retry["fork"]
    assert "QA feedback" in retry["prompt"] and "bug" in retry["prompt"]  # the verify output went back
    assert data["cost_usd"] == pytest.approx(0.8)  # 8 attempts
    assert len(calls()) == 8
    status = orch("status")
    assert status.code == 0 and "$0.20" in status.out and "$0.80" in status.out, status.out


def test_agent_claude_from_the_command_line_with_staggered_start_ups(claude_repo):
    repo, plan, calls = claude_repo
    data = yaml.safe_load(open(plan))
    del data["agent"]  # the plan names no agent: --agent claude is the preset with its defaults
    yaml.safe_dump(data, open(plan, "w"), sort_keys=False)
    r = orch("run", "--agent", "claude", plan)  # group 1: three tasks at once
    assert r.code == 0, r
    made = calls()
    assert len(made) == 3 and all(c["permission_mode"] == "dontAsk" for c in made)
    starts = sorted(c["t"] for c in made)
    stagger = claude.ClaudeOptions().stagger_seconds
    assert all(b - a >= stagger - 0.3 for a, b in zip(starts, starts[1:]))  # spaced by the stagger (less start-up jitter)


def test_permission_denial_blocks_the_task_naming_the_tool(claude_repo, monkeypatch):
    repo, plan, calls = claude_repo
    monkeypatch.setenv("FAKE_CLAUDE_DENY", "Bash")
    orch("run", plan)
    data = progress()
    first_group = ["models", "utils", "config"]
    for t in first_group:
        entry = data["tasks"][t]
        assert entry["status"] == "blocked_permission", entry
        assert entry["permission_denials"] == ["Bash: npm test"] and "Bash: npm test" in entry["failure"]
        assert entry["hint"] == f'add "Bash(npm test)" to the agent\'s `allowed_tools` in the plan, then `orchestrator retry {t}` and `orchestrator resume --adopt-plan`'
        assert len(entry["attempts"]) == 1  # no blind retry
    assert "Bash: npm test" in orch("status").out


def test_max_turns_fails_with_that_reason(claude_repo, monkeypatch):
    repo, plan, calls = claude_repo
    monkeypatch.setenv("FAKE_CLAUDE_MAX_TURNS", "1")
    orch("run", plan)
    entry = progress()["tasks"]["models"]
    assert entry["status"] == "failed" and "error_max_turns" in entry["failure"], entry
    assert entry["attempts"][-1]["result_subtype"] == "error_max_turns"


def test_run_budget_stops_new_attempts_at_a_boundary(claude_repo, monkeypatch):
    repo, plan, calls = claude_repo
    monkeypatch.setenv("FAKE_CLAUDE_COST", "0.3")
    set_plan(plan, max_budget_usd=0.5)
    r = orch("run", "--all-groups", plan)
    assert "budget" in (r.out + r.err), r
    data = progress()
    assert data["status"] == "stopped" and data["cost_usd"] >= 0.5
    started = len(calls())
    assert started < 8
    r = orch("resume", "--all-groups")
    assert "budget" in (r.out + r.err) and len(calls()) == started  # still nothing new


def _orchestrator(*args, log):
    return subprocess.Popen([sys.executable, "-m", "engine.cli.orchestrator", *args], stdout=open(log, "a"),
                            stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=ROOT))


def _session_of(task):
    try:
        return (progress()["tasks"].get(task) or {}).get("session_id")
    except (FileNotFoundError, yaml.YAMLError, TypeError, AttributeError, KeyError):
        return None


def test_sigkill_mid_stream_then_resume_keeps_session_and_attempt_count(claude_repo, monkeypatch, tmp_path):
    repo, plan, calls = claude_repo
    monkeypatch.setenv("FAKE_CLAUDE_SLEEP", "0.3")
    log = str(tmp_path / "orch.log")
    proc = _orchestrator("run", plan, log=log)
    wait_until(step=0.05, check=lambda: _session_of("models"))
    recorded = _session_of("models")
    wait_until(step=0.05, check=lambda: os.path.exists(".claude/auto-logs/models.attempt-1.jsonl")
                and os.path.getsize(".claude/auto-logs/models.attempt-1.jsonl") > 0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert progress()["tasks"]["models"]["status"] == "running"
    monkeypatch.setenv("FAKE_CLAUDE_SLEEP", "0")
    r = orch("resume")
    assert r.code == 0, (r, open(log).read())
    entry = progress()["tasks"]["models"]
    assert entry["status"] == "merged" and entry["session_id"] == recorded
    assert [a["n"] for a in entry["attempts"]] == [1] and entry["attempts"][0]["session_id"] == recorded
    assert entry["attempts"][0]["cost_usd"] == 0.01
    assert [c["session_id"] for c in calls() if c["task"] == "models"] == [recorded]


def planned():
    """The fake planner's answer: two of the demo's tasks, with the demo's verify commands."""
    check = demo.check_command().replace('\\"', '"')  # the demo's is escaped for a double-quoted YAML string
    tasks = [{"id": "models", "description": "Data models", "files": ["app/models.py"],
              "verify": f"{check} models", "expected_output": "models ok"},
             {"id": "api", "description": "HTTP API", "depends_on": ["models"], "files": ["app/api.py"],
              "verify": f"{check} api", "expected_output": "api ok"}]
    return "Here it is:\n```yaml\n" + yaml.safe_dump({"tasks": tasks}, sort_keys=False) + "```\n"


@pytest.mark.parametrize("when", ["during", "after"])
def test_run_goal_plans_once_across_a_sigkill(claude_repo, monkeypatch, tmp_path, when):
    repo, plan, calls = claude_repo
    answers = tmp_path / "answers"
    answers.mkdir()
    (answers / "1").write_text(planned())
    monkeypatch.setenv("FAKE_CLAUDE_RESULTS", str(answers))
    monkeypatch.setenv("FAKE_CLAUDE_SLEEP", "0.3" if when == "during" else "0")
    log = str(tmp_path / "orch.log")
    proc = _orchestrator("run", "--all-groups", "--agent", "claude", "--goal", "Models and an API", log=log)
    if when == "during":
        wait_until(step=0.05, check=lambda: any(c["task"] is None for c in calls()))  # the planner is answering
    else:
        wait_until(step=0.05, check=lambda: os.path.exists(".claude/auto-plan.yaml"))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    monkeypatch.setenv("FAKE_CLAUDE_SLEEP", "0")
    r = orch("resume", "--all-groups")
    assert r.code == 0, (r, open(log).read())
    planner_calls = [c for c in calls() if c["task"] is None]
    assert len(planner_calls) == 1
    data = progress()
    assert {t: v["status"] for t, v in data["tasks"].items()} == {"models": "merged", "api": "merged"}
    assert json.loads(orch("status", "--json").out)["plan_file"].endswith("auto-plan.yaml")
