"""`orchestrator plan GOAL -o plan.yaml` with the fake claude (and with a shell planner): a valid
plan is written, a refused one goes back with the validator's errors (resuming the session),
the bound ends it with one line and nothing written."""

import json
import os
import subprocess
import sys

import pytest

from engine.cli.orchestrator import cli
from tests.conftest import ROOT, invoke, wait_until
from tests.test_claude import fake  # noqa: F401  (the fixture)

VALID = """Here is the plan.

```yaml
tasks:
  - id: health
    description: Add a /health endpoint returning ok
    files: [app/health.py]
    verify: python -c "import app.health"
  - id: version
    description: Add a /version endpoint
    depends_on: [health]
    files: [app/version.py]
    verify: python -c "import app.version"
```
"""
CYCLE = """```yaml
tasks:
  - {id: a, description: A, verify: "true", depends_on: [b]}
  - {id: b, description: B, verify: "true", depends_on: [a]}
```"""
NO_VERIFY = "```yaml\ntasks:\n  - {id: a, description: A}\n```"


def orchestrator(*args):
    return invoke(cli, "orchestrator", *args)


@pytest.fixture
def answers(tmp_path, monkeypatch):
    """The fake's answers, in order (the last one repeats)."""
    def set_answers(*texts):
        d = tmp_path / "answers"
        d.mkdir(exist_ok=True)
        for n, text in enumerate(texts, 1):
            (d / str(n)).write_text(text)
        monkeypatch.setenv("FAKE_CLAUDE_RESULTS", str(d))
    return set_answers


def test_plan_writes_a_valid_plan(repo, fake, answers):
    answers(VALID)
    goal = 'Add /health and /version; $(touch pwned) "quoted"'
    r = orchestrator("plan", goal, "-o", "plan.yaml")
    assert (r.code, r.out) == (0, "Plan written: plan.yaml\n"), r.err
    text = open("plan.yaml").read()
    assert text.startswith("# Planned by `orchestrator plan` for the goal:\n#   Add /health")
    v = orchestrator("validate", "plan.yaml", "--agent", "claude")
    assert v.code == 0 and "Plan OK: 2 tasks, 2 groups" in v.out
    call, = fake()
    assert goal in call["prompt"] and "verify:" in call["prompt"] and "README.md" in call["prompt"]  # schema, layout
    assert call["resume"] is None and "Bash(git ls-files *)" in call["allowed_tools"]
    assert "Edit" not in call["allowed_tools"] and "Write" not in call["allowed_tools"]  # the planner only reads
    assert not os.path.exists("pwned")
    assert os.path.exists(".claude/auto-logs/planner/attempt-1.jsonl")


def test_refused_plan_goes_back_with_the_errors_resuming_the_session(repo, fake, answers):
    answers(CYCLE, NO_VERIFY, VALID)
    r = orchestrator("plan", "goal", "-o", "plan.yaml")
    assert r.code == 0, r.err
    first, second, third = fake()
    assert "dependency cycle: a -> b -> a" in second["prompt"] and second["resume"] == first["session_id"]
    assert second["fork"] and second["session_id"] != first["session_id"]
    assert "task a has no verify command" in third["prompt"] and third["resume"] == second["session_id"]
    assert "answer 1 refused: dependency cycle" in r.err
    assert orchestrator("validate", "plan.yaml", "--agent", "claude").code == 0


def test_gives_up_after_the_bound_with_one_line_and_writes_nothing(repo, fake, answers):
    answers(CYCLE)
    r = orchestrator("plan", "goal", "-o", "plan.yaml", "--retries", "1", "--quiet")
    assert r.code == 1 and r.out == ""
    assert r.err == ("ERROR: the planner gave no valid plan in 2 attempts; last problem: dependency cycle: "
                     "a -> b -> a (answers in .claude/auto-logs/planner/)\n")
    assert len(fake()) == 2 and not os.path.exists("plan.yaml")


def test_shell_planner_gets_the_goal_only_in_its_environment(repo, tmp_path):
    script = tmp_path / "planner.py"
    script.write_text(
        "import os, json\n"
        "open(os.environ['PLAN_OUTPUT'] if os.environ['PLAN_ATTEMPT'] == '2' else '/dev/null', 'w').write(\n"
        "    'tasks:\\n  - id: t1\\n    description: ' + json.dumps(os.environ['PLAN_GOAL']) + '\\n    verify: \"true\"\\n')\n"
        "print('tasks: [' if os.environ['PLAN_ATTEMPT'] == '1' else '')\n"
        "open(os.environ['PLAN_OUTPUT'] + '.feedback', 'w').write(os.environ['PLAN_FEEDBACK'])\n")
    goal = "it's $(touch pwned) `id` \"x\"\nsecond line"
    r = orchestrator("plan", goal, "-o", "out.yml", "--planner", f"python3 {script}")
    assert r.code == 0, r.err
    import yaml

    assert yaml.safe_load(open("out.yml"))["tasks"][0]["description"] == goal
    assert not os.path.exists("pwned")
    feedback = open(".claude/auto-logs/planner/attempt-2.yaml.feedback").read()
    assert feedback.startswith("cannot parse the plan: line 2")


@pytest.mark.parametrize("args, message", [
    (["", "-o", "p.yaml"], "ERROR: the goal is empty"),
    (["g", "-o", "p.md"], "ERROR: the plan file must end in .yaml or .yml: p.md"),
    (["g", "-o", "exists.yaml"], "ERROR: exists.yaml exists (pass --force to replace it)"),
    (["g", "-o", "nodir/p.yaml"], "ERROR: no such directory:"),
    (["g", "--planner", "sh x", "--model", "m"], "ERROR: --model only applies to the claude planner"),
])
def test_bad_input_is_one_line_and_changes_nothing(repo, fake, args, message):
    open("exists.yaml", "w").write("keep\n")
    before = sorted(os.listdir("."))
    r = orchestrator("plan", *args)
    assert r.code == 1 and r.err.startswith(message) and r.err.count("\n") == 1, r.err
    assert sorted(os.listdir(".")) == before and open("exists.yaml").read() == "keep\n"
    assert fake() == []


def test_missing_claude_cli_is_one_line(repo, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    if any(os.path.exists(os.path.join(p, "claude")) for p in ("/usr/bin", "/bin")):
        pytest.skip("a claude is installed system-wide")
    r = orchestrator("plan", "goal", "-o", "p.yaml")
    assert r.code == 1 and r.err.startswith("ERROR: cannot run the planner: `claude` not found")
    assert not os.path.exists("p.yaml")


def test_answers_are_logged_per_attempt(repo, fake, answers):
    answers(CYCLE, VALID)
    assert orchestrator("plan", "goal", "-o", "p.yaml").code == 0
    logs = ".claude/auto-logs/planner"
    results = [json.loads(line) for line in open(f"{logs}/attempt-1.jsonl")]
    assert results[-1]["type"] == "result" and "a -> b" not in results[-1]["result"]
    assert os.path.exists(f"{logs}/attempt-2.jsonl")


def _planning_process(root, output, log):
    code = ("import sys; from engine import planner; "
            "planner.plan_once(sys.argv[1], 'Add health and version', sys.argv[2], reporter=print)")
    return subprocess.Popen([sys.executable, "-c", code, root, output], cwd=root, stdout=open(log, "a"),
                            stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=ROOT))


@pytest.mark.parametrize("when", ["during", "after"])
def test_plan_once_across_a_sigkill(repo, fake, answers, monkeypatch, when):
    """The orchestrator dies while the planner agent answers (it outlives us and is collected) or
    just after the plan is written: planning again asks nobody."""
    answers(VALID)
    monkeypatch.setenv("FAKE_CLAUDE_SLEEP", "0.4" if when == "during" else "0")
    output = os.path.join(str(repo), ".claude", "auto-plan.yaml")
    state = os.path.join(str(repo), ".claude", "auto-logs", "planner", "state.json")
    proc = _planning_process(str(repo), output, str(repo.parent / "planning.log"))
    if when == "during":
        wait_until(step=0.05, check=lambda: os.path.exists(state) and '"pid"' in open(state).read())
        wait_until(step=0.05, check=lambda: len(fake()) == 1)
    else:
        wait_until(step=0.05, check=lambda: os.path.exists(output))
    proc.kill()
    proc.wait()
    assert not (when == "during" and os.path.exists(output))
    again = _planning_process(str(repo), output, str(repo.parent / "planning.log"))
    assert again.wait(60) == 0, open(repo.parent / "planning.log").read()
    assert len(fake()) == 1  # planned once
    assert orchestrator("validate", output, "--agent", "claude").code == 0
    if when == "during":
        assert "collected from before the restart" in open(repo.parent / "planning.log").read() or \
            "waiting for attempt 1" in open(repo.parent / "planning.log").read()
