"""Plans: formats, validation (refused clearly, nothing created), layering properties."""

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import plan as plans
from engine.plan import PlanError


def parse(text, source="p.yaml", max_agents=5):
    return plans.parse(text, source, max_agents)


def test_yaml_plan_fields_and_groups():
    p = parse("""
work_type: FRONTEND
base: main
agent: my-agent
e2e: npm run e2e
tasks:
  - {id: a, description: A, files: [x.ts], verify: make a, expected_output: ok, complexity: S, timeout: 30}
  - {id: b, depends_on: [a]}
  - {id: c}
""")
    assert p.order == ["a", "b", "c"] and p.groups == [["a", "c"], ["b"]]
    assert (p.work_type, p.base, p.agent, p.e2e) == ("FRONTEND", "main", "my-agent", "npm run e2e")
    a = p.tasks["a"]
    assert (a.verify, a.expected_output, a.complexity, a.timeout, a.branch) == ("make a", "ok", "S", 30, "auto/a")


def test_json_and_features_formats():
    p = parse(json.dumps({"tasks": [{"id": "a"}, {"id": "b", "depends_on": ["a"]}]}), "p.json")
    assert p.groups == [["a"], ["b"]]
    p = parse("features:\n  - {id: login, description: Login form}\n  - {name: signup, depends_on: [login]}\n")
    assert p.order == ["login", "signup"] and p.tasks["login"].description == "Login form"


def test_markdown_task_list():
    p = parse("""# Implementation plan

### Task 1: Create the API
- Depends on: none
- Files: src/api.py, tests/test_api.py
- Done when: `pytest tests/test_api.py` passes
- Complexity: M

### Task 2: Add the UI
- Depends on: Task 1
- Files: src/ui.py

## Task 3: Docs
- Depends on: Task 1 and Task 2
""", "plan.md")
    assert p.order == ["task-1", "task-2", "task-3"]
    assert p.tasks["task-1"].verify == "pytest tests/test_api.py" and p.tasks["task-1"].complexity == "M"
    assert p.tasks["task-1"].files == ["src/api.py", "tests/test_api.py"]
    assert p.tasks["task-3"].depends_on == ["task-1", "task-2"]
    assert p.groups == [["task-1"], ["task-2"], ["task-3"]]


def test_shared_files_made_sequential():
    p = parse("tasks:\n  - {id: a, files: [shared.py]}\n  - {id: b, files: [other.py]}\n"
              "  - {id: c, files: [shared.py, x]}\n  - {id: d, files: [x]}\n")
    assert p.tasks["c"].implicit_deps == ["a"] and p.tasks["d"].implicit_deps == ["c"]
    assert p.groups == [["a", "b"], ["c"], ["d"]]


def test_groups_capped_by_max_agents():
    p = parse("tasks:\n" + "".join(f"  - {{id: t{i}}}\n" for i in range(7)), max_agents=3)
    assert [len(g) for g in p.groups] == [3, 3, 1]


@pytest.mark.parametrize("text,message", [
    ("tasks: []", "has no tasks"),
    ("{}", "has no tasks"),
    ("tasks: [{id: a}, {id: a}]", "duplicate task id 'a'"),
    ("tasks: [{id: a, depends_on: [zz]}]", "depends on unknown task 'zz'"),
    ("tasks: [{id: a, depends_on: [a]}]", "depends on itself"),
    ("tasks: [{id: a, depends_on: [b]}, {id: b, depends_on: [a]}]", "dependency cycle: a -> b -> a"),
    ("tasks: [{id: '../x'}]", "invalid task id"),
    ("tasks: [{id: 'a b'}]", "invalid task id"),
    ("tasks: [{id: '-rf'}]", "invalid task id"),
    ("tasks: [{id: '$(touch p)'}]", "invalid task id"),
    ("tasks: [{id: 'ünï'}]", "invalid task id"),
    ("tasks: [{description: no id}]", "has no id"),
    ("tasks: [{id: a, timeout: -1}]", "timeout"),
    ("tasks: [{id: a, depends_on: {x: 1}}]", "must be a list"),
    ("tasks: [a, b]", "is not a mapping"),
    ("- [unclosed", "cannot parse"),
    ("just a string", "must be a mapping"),
    ("tasks: [{id: true}]", "task #1 in p.yaml: `id` must be a string, got true (quote it in YAML)"),
    ("tasks: [{id: 7}]", "`id` must be a string, got integer 7"),
    ("tasks: [{id: a, timeout: .nan}]", "task a: `timeout` must be a number of seconds from 1 to 2592000, got nan"),
    ("tasks: [{id: a, timeout: .inf}]", "got inf"),
    ("tasks: [{id: a, timeout: 0}]", "got 0"),
    ("tasks: [{id: a, verify: true}]", "task a: `verify` must be a string, got true"),
    ("tasks: [{id: a, depends_on: [1]}]", "`depends_on` must be a list of strings"),
    ("tasks: [{id: a, agent: [x]}]", "task a: `agent` must be a command string, got a list"),
    ("tasks: [{id: a}]\nbase: '-x'", "plan `base` is not a branch name"),
    ("tasks: [{id: a, allow_empty: maybe}]", "task a: `allow_empty` must be true or false"),
])
def test_invalid_plans_refused(text, message):
    with pytest.raises(PlanError) as info:
        parse(text)
    assert message in info.value.line and info.value.line.startswith("ERROR: ")
    assert "\n" not in info.value.line


def test_cycle_among_many_is_named():
    text = "tasks:\n  - {id: a}\n  - {id: b, depends_on: [a, d]}\n  - {id: c, depends_on: [b]}\n  - {id: d, depends_on: [c]}\n"
    with pytest.raises(PlanError) as info:
        parse(text)
    cycle = info.value.line.split("dependency cycle: ")[1].split(" -> ")
    assert cycle[0] == cycle[-1] and set(cycle) == {"b", "c", "d"}


@st.composite
def dags(draw):
    n = draw(st.integers(1, 30))
    tasks = []
    for i in range(n):
        deps = draw(st.lists(st.integers(0, max(0, i - 1)), max_size=3, unique=True)) if i else []
        files = draw(st.lists(st.sampled_from(["f1", "f2", "f3"]), max_size=2, unique=True))
        tasks.append({"id": f"t{i}", "depends_on": [f"t{d}" for d in deps], "files": files})
    order = draw(st.permutations(tasks))
    return order, draw(st.integers(1, 6))


@settings(max_examples=150, deadline=None)
@given(dags())
def test_layering_properties(case):
    tasks, max_agents = case
    p = plans.build({"tasks": tasks}, tasks, "gen", max_agents)
    flat = [t for g in p.groups for t in g]
    assert sorted(flat) == sorted(t["id"] for t in tasks)  # every task exactly once
    assert all(1 <= len(g) <= max_agents for g in p.groups)
    group = {t: n for n, g in enumerate(p.groups) for t in g}
    for t in p.order:
        for dep in p.tasks[t].all_deps:
            assert group[dep] < group[t]  # dependencies (and shared-file order) come first
    by_file = {}
    for t in p.order:
        for f in p.tasks[t].files:
            by_file.setdefault(f, []).append(group[t])
    for groups_of_file in by_file.values():
        assert len(groups_of_file) == len(set(groups_of_file))  # never two writers of a file at once


def test_validate_and_run_refuse_clearly_nothing_created(repo, tmp_path):
    from engine.cli.orchestrator import cli
    from tests.conftest import invoke

    bad = tmp_path / "bad.yaml"
    for text in ("tasks: []", "tasks: [{id: a, depends_on: [b]}, {id: b, depends_on: [a]}]",
                 "tasks: [{id: a}, {id: a}]", "tasks: [{id: a, depends_on: [x]}]", "tasks: [{id: '../evil'}]",
                 "tasks: [{id: a}]\nagent: [not, a, string]", ": : :"):
        bad.write_text(text)
        for command in ("validate", "run"):
            r = invoke(cli, "orchestrator", command, str(bad))
            assert r.code == 1 and r.out == "" and len(r.err.splitlines()) == 1, (text, command, r)
            assert "Traceback" not in r.err
        assert not os.path.exists(".claude")
    r = invoke(cli, "orchestrator", "run", str(tmp_path / "missing.yaml"))
    assert r.code == 1 and "plan not found" in r.err


def test_timeout_in_range_kept():
    assert parse("tasks: [{id: a, timeout: 90}, {id: b, timeout: '2.5'}]").tasks["b"].timeout == 2.5


def _check(repo, text, agent=None, require_repo=True, name="p.yaml"):
    from engine.paths import Layout

    path = repo / name
    path.write_text(text)
    return plans.check_for_run(str(path), Layout(str(repo)), agent=agent, require_repo=require_repo)


def test_check_for_run_agent_from_task_plan_or_option(repo):
    with pytest.raises(PlanError, match="no agent command for task b"):
        _check(repo, "tasks: [{id: a, agent: x}, {id: b}]")
    plan, settings, base = _check(repo, "tasks: [{id: a, agent: x}, {id: b}]", agent="y")
    assert (base, settings.max_agents, plan.order) == ("main", 5, ["a", "b"])
    assert _check(repo, "agent: z\ntasks: [{id: a}]")[2] == "main"


def test_check_for_run_groups_with_the_plans_work_type(repo):
    from tests.conftest import git

    (repo / ".claude").mkdir()
    (repo / ".claude" / "auto-context.yaml").write_text("overrides: {BACKEND: {max_agents: 1}}\n")
    plan, settings, _ = _check(repo, "work_type: BACKEND\nagent: x\ntasks: [{id: a}, {id: b}]")
    assert settings.max_agents == 1 and plan.groups == [["a"], ["b"]]
    git(repo, "branch", "-q", "release")
    assert _check(repo, "base: release\nagent: x\ntasks: [{id: a}]")[2] == "release"


def test_check_for_run_refuses_what_git_would_refuse(repo):
    from tests.conftest import git

    good = "agent: x\ntasks: [{id: a}, {id: b}]"
    git(repo, "checkout", "-q", "--detach")
    with pytest.raises(PlanError, match="HEAD is detached"):
        _check(repo, good)
    git(repo, "checkout", "-q", "main")
    git(repo, "branch", "auto/b/old")
    with pytest.raises(PlanError, match="task b: branch auto/b cannot be created beside the existing auto/b/old"):
        _check(repo, good)
    git(repo, "branch", "-D", "auto/b/old")
    git(repo, "checkout", "-q", "-b", "auto/a")
    with pytest.raises(PlanError, match="task a: branch auto/a is checked out in "):
        _check(repo, good)
    git(repo, "checkout", "-q", "main")
    git(repo, "branch", "-q", "-D", "auto/a")
    git(repo, "branch", "auto")
    with pytest.raises(PlanError, match="a branch named `auto` exists"):
        _check(repo, good)


def test_validate_outside_a_repository_skips_only_the_git_checks(sealed_env):
    from engine.cli.orchestrator import cli
    from tests.conftest import invoke

    (sealed_env / "p.yaml").write_text("agent: x\ntasks: [{id: a}]\n")
    r = invoke(cli, "orchestrator", "validate", "p.yaml")
    assert r.code == 0 and "not in a git repository: base not checked" in r.out
    r = invoke(cli, "orchestrator", "validate", "--agent", "x", "p.yaml")
    assert r.code == 0
    with pytest.raises(Exception, match="Not in a git repository"):
        _check(sealed_env, "agent: x\ntasks: [{id: a}]")


def test_booleans_take_the_usual_words():
    p = parse("tasks: [{id: a, allow_empty: 'yes'}, {id: b, allow_empty: off}, {id: c}]")
    assert [p.tasks[t].allow_empty for t in "abc"] == [True, False, False]
