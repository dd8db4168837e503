"""Agent kinds (engine/agent_kinds.py): a new kind is one class and one PRESETS line, and the
scheduler runs it unchanged; the budget is asked before every attempt of any kind; a goal's
planned tasks get the planner's agent. Real runs of the demo repository."""

import os
import sys

import pytest
import yaml

from engine import agent_kinds, demo
from engine.errors import OrchestratorError
from tests.conftest import invoke


def orch(*args):
    from engine.cli.orchestrator import cli

    return invoke(cli, "orchestrator", *args)


class EchoAgent:
    """A toy kind: a shell command of its own making (it writes and commits the task's file),
    recording what the run's limits gave it."""

    name = "echo"
    seen = []

    def __init__(self, setting):
        self.word = setting.get("word", "hi") if isinstance(setting, dict) else "hi"

    @staticmethod
    def validate(setting, where):
        if isinstance(setting, dict) and not isinstance(setting.get("word", ""), str):
            raise OrchestratorError(f"ERROR: {where}: `word` must be a string")
        return setting

    def run(self, backend, attempt, task, limits):
        EchoAgent.seen.append((task.id, attempt.n, limits.budget_usd, limits.cancel is not None))
        attempt.command = (f"echo {self.word} > \"$TASK_ID.txt\" && git add -A && "
                           "git -c user.name=e -c user.email=e@e commit -qm \"$TASK_ID\"")
        return backend.run_attempt(attempt)

    def recover(self, backend, attempt, task):
        return backend.recover(attempt)


@pytest.fixture
def echo_kind(monkeypatch):
    EchoAgent.seen = []
    sys.modules[__name__].EchoAgent = EchoAgent
    monkeypatch.setitem(agent_kinds.PRESETS, "echo", f"{__name__}:EchoAgent")
    return EchoAgent


@pytest.fixture
def demo_repo(tmp_path, monkeypatch):
    repo = demo.make_repo(str(tmp_path / "d"))
    monkeypatch.chdir(repo)
    return repo


def write(path, data):
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def test_a_new_kind_runs_through_the_unchanged_scheduler(echo_kind, demo_repo, tmp_path):
    plan = write(tmp_path / "plan.yaml", {"agent": {"preset": "echo", "word": "hello"}, "max_budget_usd": 5,
                                          "tasks": [{"id": "a"}, {"id": "b", "depends_on": ["a"]}]})
    r = orch("run", "--all-groups", plan)
    assert r.code == 0, r
    assert [s[:2] for s in echo_kind.seen] == [("a", 1), ("b", 1)]
    assert all(budget == 5 and cancel for _, _, budget, cancel in echo_kind.seen)  # the run's limits reached it
    assert open(os.path.join(demo_repo, "b.txt")).read() == "hello\n"
    bad = write(tmp_path / "bad.yaml", {"agent": {"preset": "echo", "word": 3}, "tasks": [{"id": "a"}]})
    r = orch("validate", bad)
    assert r.code != 0 and "`word` must be a string" in r.err and len(r.err.splitlines()) == 1
    unknown = write(tmp_path / "unknown.yaml", {"agent": {"preset": "nope"}, "tasks": [{"id": "a"}]})
    r = orch("validate", unknown)
    assert r.code != 0 and "unknown preset 'nope'" in r.err


def test_a_retry_is_not_started_once_the_run_budget_is_spent(demo_repo, tmp_path, monkeypatch):
    """The fake `claude` costs $0.6 an attempt; QA rejects the first: with a $0.5 run budget the
    retry is refused before it starts, the task keeps its status and the session ends saying so."""
    from tests.fake_claude import install

    install(str(tmp_path / "bin"))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.setenv("FAKE_CLAUDE_COST", "0.6")
    monkeypatch.setenv("FAKE_CLAUDE_FLAKY", "cli")
    demo.write_plan(str(tmp_path / "plan.yaml"), agent="{preset: claude, stagger_seconds: 0}")
    data = yaml.safe_load(open(tmp_path / "plan.yaml"))
    data["tasks"] = [t for t in data["tasks"] if t["id"] == "cli"]
    data["tasks"][0].pop("depends_on", None)
    data["max_budget_usd"] = 0.5
    plan = write(tmp_path / "plan.yaml", data)
    r = orch("run", "--all-groups", plan)
    progress = yaml.safe_load(open(os.path.join(".claude", "auto-progress.yaml")))
    task = progress["tasks"]["cli"]
    assert len(task["attempts"]) == 1 and task["status"] == "rejected", task
    assert "run budget of $0.50 spent ($0.60)" in r.out + r.err


def test_run_goal_with_a_shell_planner_needs_an_agent_before_anything_runs(demo_repo):
    before = sorted(os.listdir(os.path.join(demo_repo, ".claude")))
    r = orch("run", "--goal", "do things", "--planner", "cat plan.yaml")
    assert r.code == 1 and "pass --agent for the planned tasks" in r.err and len(r.err.splitlines()) == 1
    assert sorted(os.listdir(os.path.join(demo_repo, ".claude"))) == before
