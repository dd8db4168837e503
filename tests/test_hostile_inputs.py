"""Hostile input across every command: one clear line on stderr, a non-zero exit, no
traceback, and nothing changed on disk (the .claude tree, refs and worktrees)."""

import hashlib
import os

import pytest

from tests.conftest import git, invoke

HOSTILE = ["../x", "a b", "$(touch p)", "-rf", "ünïcødé", "x" * 5000, "a\nb", "..", "/etc/passwd", "`id`"]


def snapshot(repo):
    files = {}
    for dirpath, _, names in os.walk(repo / ".claude"):
        for name in names:
            path = os.path.join(dirpath, name)
            if name.endswith(".lock"):
                continue
            with open(path, "rb") as fh:
                files[os.path.relpath(path, repo)] = hashlib.sha256(fh.read()).hexdigest()
    return files, git(repo, "for-each-ref"), git(repo, "worktree", "list", "--porcelain")


@pytest.fixture
def ready(repo, st, pm):
    st("init", "EXECUTE")
    pm("init", "2")
    return repo


def cli(name):
    from importlib import import_module

    return import_module(f"engine.cli.{name}").cli


CASES = []
for bad in HOSTILE:
    CASES += [
        ("state_transition", ["init", bad]),
        ("state_transition", ["transition", bad]),
        ("state_transition", ["tokens", bad]),
        ("pool_manager", ["acquire", bad]),
        ("pool_manager", ["release", bad]),
        ("pool_manager", ["init", bad]),
        ("pool_manager", ["reset", bad]),
        ("setup_worktree", [bad]),
        ("checkpoint_manager", ["group", bad, "pre"]),
        ("checkpoint_manager", ["write", bad, "summary"]),
        ("checkpoint_manager", ["task", bad, "learning"]),
        ("checkpoint_manager", ["restore", "--id", bad]),
        ("orchestrator", ["validate", bad]),
    ]


@pytest.mark.parametrize("command,args", CASES, ids=[f"{c}-{a[0]}-{i}" for i, (c, a) in enumerate(CASES)])
def test_refused_cleanly_nothing_changed(ready, command, args):
    before = snapshot(ready)
    r = invoke(cli(command), command.replace("_", "-"), *args)
    assert r.code != 0, r
    assert r.out in ("", "POOL_EXHAUSTED\n")
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err, r.err
    assert snapshot(ready) == before
    assert not os.path.exists(ready / "p") and not os.path.exists(ready.parent / "x")


# ---------------------------------------------------------------------------- plans and configs
GOOD_TASKS = "agent: 'true'\ntasks:\n  - {id: a}\n  - {id: b, depends_on: [a]}\n"
BAD_PLANS = [
    "tasks: [{id: true}]", "tasks: [{id: 1}]", "tasks: [{id: null}]", "tasks: [{id: [a]}]",
    "tasks: [{id: a, timeout: .nan}]", "tasks: [{id: a, timeout: .inf}]", "tasks: [{id: a, timeout: 1e20}]",
    "tasks: [{id: a, timeout: 0}]", "tasks: [{id: a, timeout: '60; rm -rf ~'}]", "tasks: [{id: a, timeout: true}]",
    "tasks: [{id: a, verify: true}]", "tasks: [{id: a, verify: [make]}]", "tasks: [{id: a, depends_on: [1]}]",
    "tasks: [{id: a, files: [{x: 1}]}]", "tasks: [{id: a, agent: 5}]", "tasks: [{id: a}]\nagent: {x: 1}",
    "tasks: [{id: a}]",  # no agent anywhere
    "tasks: [{id: a}]\nagent: '   '",
    "tasks: [{id: a}]\nagent: x\nbase: no-such-branch", "tasks: [{id: a}]\nagent: x\nbase: '-rf'",
    "tasks: [{id: a}]\nagent: x\nwork_type: [BACKEND]", "tasks: [{id: a}]\nagent: x\ne2e: 3",
    "agent: x\ntasks: {a: 1}", "agent: x\ntasks: [{id: a}, {id: a}]", "\x00\x01",
    "tasks: [{id: a}]\nagent: x\nwork_type: \"A\\nB\"", "tasks: [{id: a}]\nagent: x\nwork_type: " + "W" * 5000,
    "tasks: [{id: a}]\nagent: \"x\\0\"", "tasks: [{id: a, verify: \"ok\\0\"}]\nagent: x",
    "tasks: [{id: a}]\nagent: x\ne2e: \"run\\0\"",
]
BAD_CONFIGS = [
    "parallelization: {qa_timeout: .inf}", "parallelization: {qa_timeout: 1e20}", "parallelization: {qa_timeout: 0}",
    "parallelization: {agent_timeout: .nan}", "parallelization: {max_agents: 300}",
    "parallelization: {max_agents: 0}", "parallelization: {enabled: perhaps}", "parallelization: {min_tasks: x}",
    "parallelization: {retry_on_failure: -1}", "parallelization: {auto_cleanup: 7}",
    "overrides: {BACKEND: {max_agents: 0}}", "overrides: {OTHER_TYPE: {qa_timeout: .inf}}",
    "overrides: {BACKEND: 3}", "overrides: 3", "parallelization: 3", "parallelization: {max_agents: [",
    "- a list", "worktree: {setup_command: [npm, ci]}",
]


def _validate_and_run_refuse(repo, tmp_path, plan_text):
    from engine.cli.orchestrator import cli as orchestrator

    plan = tmp_path / "plan.yaml"
    plan.write_text(plan_text)
    before = snapshot(repo)
    for command in ("validate", "run"):
        r = invoke(orchestrator, "orchestrator", command, str(plan))
        assert r.code == 1 and r.out == "", (command, r)
        assert len(r.err.strip().splitlines()) == 1 and r.err.startswith("ERROR: ") and "Traceback" not in r.err, r
        assert snapshot(repo) == before
    return r.err


@pytest.mark.parametrize("text", BAD_PLANS, ids=range(len(BAD_PLANS)))
def test_bad_plan_refused_by_validate_and_run(ready, tmp_path, text):
    _validate_and_run_refuse(ready, tmp_path, text + "\n")


@pytest.mark.parametrize("text", BAD_CONFIGS, ids=range(len(BAD_CONFIGS)))
def test_bad_config_refused_by_validate_and_run(ready, tmp_path, text):
    (ready / ".claude" / "auto-context.yaml").write_text(text + "\n")
    err = _validate_and_run_refuse(ready, tmp_path, "work_type: BACKEND\n" + GOOD_TASKS)
    assert "auto-context.yaml" in err


@pytest.mark.parametrize("name,value", [("AUTO_PARALLEL_QA_TIMEOUT", "inf"), ("AUTO_PARALLEL_MAX_AGENTS", "300"),
                                        ("AUTO_PARALLEL_AGENT_TIMEOUT", "nan"), ("AUTO_PARALLEL_ENABLED", "2")])
def test_bad_environment_refused_by_validate_and_run(ready, tmp_path, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    assert name in _validate_and_run_refuse(ready, tmp_path, GOOD_TASKS)


def test_good_plan_and_config_validate(ready, tmp_path):
    from engine.cli.orchestrator import cli as orchestrator

    (ready / ".claude" / "auto-context.yaml").write_text(
        "parallelization: {max_agents: 256, qa_timeout: 2592000, enabled: 'yes'}\noverrides: {BACKEND: {max_agents: 1}}\n")
    plan = tmp_path / "plan.yaml"
    plan.write_text("work_type: BACKEND\n" + GOOD_TASKS)
    r = invoke(orchestrator, "orchestrator", "validate", str(plan))
    assert r.code == 0 and r.lines[0] == "Plan OK: 2 tasks, 2 groups (max_agents 1), base main", r


EXECUTOR_CASES = [("", "executor: mars"), ("", "executor: ray"), ("", "ray: {address: 5}"),
                  ("executor: mars", ""), ("ray: [a]", ""), ("executor: ray\nray: {address: 'http://h:8265'}", "")]


@pytest.mark.parametrize("context,plan_extra", EXECUTOR_CASES, ids=range(len(EXECUTOR_CASES)))
def test_bad_executor_settings_refused_by_validate_and_run(ready, tmp_path, monkeypatch, context, plan_extra):
    """Checked without contacting any cluster."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (ready / ".claude" / "auto-context.yaml").write_text(context + "\n")
    err = _validate_and_run_refuse(ready, tmp_path, GOOD_TASKS + plan_extra + "\n")
    assert "executor" in err or "ray" in err
