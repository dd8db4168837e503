"""The REAL pinned Claude Code CLI through our commands, its model calls answered by the scripted
stand-in of the Messages API (tests/standin_api.py). What the fake `claude` models is shown here
with the real thing: its permission rules (not ours) decide what an agent may write, its stream
is what we parse, its sessions are what a retry resumes and forks, its cost is what the budget
counts. Runs under `make plugin-check` (the CLI installed into .tools/; CLAUDE_BIN), which
`.ci/run` runs; skipped when the CLI is not installed.

Each agent's script is picked by the marker "task is `ID`" of the system prompt the orchestrator
gives it; its Write calls name a file in its own worktree, read from that prompt."""

import json
import os
import re
import subprocess
import sys
import time

import pytest
import yaml

from engine.paths import ENGINE_POOL_REL
from tests.conftest import git, invoke
from tests.standin_api import StandIn, Turn, cli_env, latest_prompt, system_text, text, tool
from tests.test_claude_cli import CLI

pytestmark = pytest.mark.skipif(CLI is None, reason="the real Claude Code CLI is not installed "
                                "(`make plugin-check` installs it into .tools/)")

WORKDIR = re.compile(r"Work only inside (\S+) \(a git worktree")
OPUS = {"in": 4.0, "out": 20.0}  # $/Mtok the pinned CLI charges for its default model (measured)


def orch(*args):
    from engine.cli.orchestrator import cli

    return invoke(cli, "orchestrator", *args)


@pytest.fixture
def api(tmp_path, monkeypatch):
    """The stand-in, and this process's environment pointed at it (the orchestrator's agents
    inherit it): a throwaway HOME, the real CLI first on PATH as `claude`."""
    with StandIn() as server:
        env = cli_env(tmp_path / "home", server.url)
        for key in set(os.environ) - set(env):
            monkeypatch.delenv(key)
        for key, value in env.items():
            if os.environ.get(key) != value:
                monkeypatch.setenv(key, value)
        bindir = tmp_path / "clibin"
        bindir.mkdir()
        os.symlink(CLI, bindir / "claude")
        monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
        yield server
        # a script the CLI loops on (a misread turn) must fail its test, not pass on the cap
        assert len(server.requests) < server.MAX_REQUESTS, "the stand-in's request limit was reached"


@pytest.fixture
def project(repo):
    """A repository with one commit on main, as the cwd (conftest's `repo`)."""
    return repo


def write_plan(path, tasks, **top):
    data = dict(top, agent=top.get("agent", "claude"), tasks=tasks)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def workdir_of(body):
    """Where the agent is told to work, as a model reads it: the latest prompt's instruction
    (a resumed session keeps its first system prompt), else the system prompt's."""
    found = WORKDIR.search(latest_prompt(body)) or WORKDIR.search(system_text(body))
    return found.group(1)


def in_worktree(name, content):
    """A Write of NAME in the agent's own worktree (where it is told to work)."""
    def blocks(body):
        return [tool("Write", {"file_path": os.path.join(workdir_of(body), name), "content": content})]
    return blocks


def commit(message):
    return [tool("Bash", {"command": f"git add -A && git commit -qm '{message}'"})]


def work_script(task_id, name=None, usage=((1000, 100), (2000, 200), (3000, 50))):
    """Write a file, commit it, say done: three turns with the given (input, output) usage."""
    name = name or f"{task_id}.txt"
    (u0, u1, u2) = ({"input_tokens": i, "output_tokens": o} for i, o in usage)
    return [Turn(in_worktree(name, f"{task_id}\n"), u0), Turn(commit(f"{task_id}: add {name}"), u1),
            Turn([text(f"{task_id} done")], u2)]


def progress():
    with open(os.path.join(".claude", "auto-progress.yaml")) as fh:
        return yaml.safe_load(fh)


def result_event(path):
    with open(path) as fh:
        return [json.loads(line) for line in fh if '"type":"result"' in line.replace(" ", "")][-1]


def requests_for(api, task_id):
    return [r for r in api.requests if r["marker"] == f"task is `{task_id}`"]


# --------------------------------------------------------------------------- the main path
def test_default_configuration_merges_every_task_with_the_agents_commits(api, project, tmp_path):
    """`agent: claude` and nothing else: three tasks, one depending on another; every agent writes
    with the Write tool in its slot and commits with git; all merged; each attempt record holds
    exactly the tokens the stand-in sent and the cost the CLI computed from them."""
    usage = {"a": ((1000, 100), (2000, 200), (3000, 50)), "b": ((1500, 10), (500, 20), (700, 30)),
             "c": ((4000, 400), (100, 10), (100, 10))}
    for t in usage:
        api.script(f"task is `{t}`", work_script(t, usage=usage[t]))
    plan = write_plan(tmp_path / "plan.yaml", [
        {"id": "a", "description": "Add a.txt", "verify": "test -f a.txt"},
        {"id": "b", "description": "Add b.txt", "depends_on": ["a"], "verify": "test -f a.txt && test -f b.txt"},
        {"id": "c", "description": "Add c.txt", "verify": "test -f c.txt"}])
    r = orch("run", "--all-groups", plan)
    assert r.code == 0, r
    data = progress()
    assert {t: e["status"] for t, e in data["tasks"].items()} == {"a": "merged", "b": "merged", "c": "merged"}
    log = git(project, "log", "main", "--format=%s")
    for t in usage:
        assert f"{t}: add {t}.txt" in log  # the agent's own commit reached main
        assert (project / f"{t}.txt").read_text() == f"{t}\n"
        (attempt,) = data["tasks"][t]["attempts"]
        sent_in, sent_out = (sum(u[0] for u in usage[t]), sum(u[1] for u in usage[t]))
        assert (attempt["tokens_in"], attempt["tokens_out"], attempt["turns"]) == (sent_in, sent_out, 3)
        event = result_event(os.path.join(project, attempt["stream"]))
        assert attempt["cost_usd"] == pytest.approx(event["total_cost_usd"])
        assert attempt["cost_usd"] == pytest.approx((sent_in * OPUS["in"] + sent_out * OPUS["out"]) / 1e6)
        assert attempt["result_subtype"] == "success" and attempt["session_id"] == event["session_id"]
        # it ran in a slot outside .claude/, where the CLI lets it write
        assert f"/{ENGINE_POOL_REL}/wt-" in WORKDIR.search(system_text(requests_for(api, t)[0]["body"])).group(1)
    assert data["cost_usd"] == pytest.approx(sum(data["tasks"][t]["cost_usd"] for t in usage))


def test_a_rejected_attempt_is_resumed_and_forked_with_the_qa_feedback(api, project, tmp_path):
    api.script("task is `r`", work_script("r", name="wrong.txt"))
    api.script("task is `r`", work_script("r", name="fixed.txt", usage=((700, 70), (800, 80), (900, 90))),
               on_prompt="QA feedback")
    plan = write_plan(tmp_path / "plan.yaml", [
        {"id": "r", "description": "Add fixed.txt", "verify": "test -f fixed.txt || { echo 'fixed.txt is missing'; exit 1; }"}])
    r = orch("run", "--all-groups", plan)
    assert r.code == 0, r
    entry = progress()["tasks"]["r"]
    assert entry["status"] == "merged" and [a["n"] for a in entry["attempts"]] == [1, 2]
    first, second = entry["attempts"]
    forked = [q for q in requests_for(api, "r") if q["turn"] == 0 and len(q["body"]["messages"]) > 3]
    assert len(forked) == 1, [len(q["body"]["messages"]) for q in requests_for(api, "r")]
    request = forked[0]
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert headers["x-claude-code-session-id"] == second["session_id"] != first["session_id"]
    prompt = request["body"]["messages"][-1]["content"]
    prompt = prompt if isinstance(prompt, str) else " ".join(b.get("text", "") for b in prompt)
    assert "QA feedback" in prompt and "fixed.txt is missing" in prompt
    # the first session's conversation is carried: its Write of wrong.txt is in the fork's messages
    assert "wrong.txt" in json.dumps(request["body"]["messages"][:-1])
    # the fork's own numbers: the CLI's total for a fork includes its parent; we record each once
    assert (second["tokens_in"], second["tokens_out"]) == (2400, 240)
    assert second["cost_usd"] == pytest.approx((2400 * OPUS["in"] + 240 * OPUS["out"]) / 1e6)
    assert result_event(os.path.join(project, second["stream"]))["total_cost_usd"] == pytest.approx(
        first["cost_usd"] + second["cost_usd"])
    assert entry["cost_usd"] == pytest.approx(first["cost_usd"] + second["cost_usd"])
    assert (project / "fixed.txt").exists()


def test_a_denied_tool_blocks_its_task_with_tool_input_and_hint_while_the_others_merge(api, project, tmp_path):
    """A command outside the allow-list and a write outside the worktree: both tasks blocked,
    naming what was refused and the rule to add; the third merges. Then the hint, followed to
    the letter (the rule added to the plan, `retry`, `resume --adopt-plan`), lets the first finish."""
    api.script("task is `d`", [Turn([tool("Bash", {"command": "touch cleaned.txt"})]), Turn([text("Done.")])])

    def escape(body):  # a write into the main checkout, outside its worktree
        return [tool("Write", {"file_path": str(project / "escape.txt"), "content": "x"})]
    api.script("task is `w`", [Turn(escape), Turn([text("I could not.")])])
    api.script("task is `ok`", work_script("ok"))
    tasks = [{"id": "d", "description": "Clean", "verify": "test -f cleaned.txt"},
             {"id": "w", "description": "Escape", "verify": "true"},
             {"id": "ok", "description": "Add ok.txt", "verify": "test -f ok.txt"}]
    plan = write_plan(tmp_path / "plan.yaml", tasks)
    r = orch("run", "--all-groups", plan)
    tasks_now = progress()["tasks"]
    assert tasks_now["ok"]["status"] == "merged"
    d = tasks_now["d"]
    assert d["status"] == "blocked_permission" and d["permission_denials"] == ["Bash: touch cleaned.txt"]
    assert d["hint"] == ('add "Bash(touch cleaned.txt)" to the agent\'s `allowed_tools` in the plan, then '
                         '`orchestrator retry d` and `orchestrator resume --adopt-plan`')
    escaped = f"Write: {project}/escape.txt"
    assert tasks_now["w"]["status"] == "blocked_permission" and tasks_now["w"]["permission_denials"] == [escaped]
    assert tasks_now["w"]["hint"] == f'add "Edit(/{project}/escape.txt)" to the agent\'s `allowed_tools` in the plan, then `orchestrator retry w` and `orchestrator resume --adopt-plan`'
    assert not (project / "escape.txt").exists()  # the agent's writes are confined to its worktree
    assert len(d["attempts"]) == 1 and r.code == 1
    status = orch("status")
    assert "Bash: touch cleaned.txt" in status.out and escaped in status.out and d["hint"] in status.out
    assert json.loads(orch("status", "--json").out)["tasks"]["d"]["hint"] == d["hint"]
    # the hint, to the letter
    tasks[0]["agent"] = {"preset": "claude", "allowed_tools": ["Bash(touch cleaned.txt)"]}
    write_plan(tmp_path / "plan.yaml", tasks)
    assert orch("retry", "d").code == 0
    r = orch("resume", "--adopt-plan", "--all-groups")
    d = progress()["tasks"]["d"]
    assert d["status"] == "merged" and len(d["attempts"]) == 2, (r, d)
    assert (project / "cleaned.txt").exists()


def test_the_run_budget_stops_retries_and_the_attempt_in_flight_is_capped(api, project, tmp_path):
    """`max_budget_usd: 1`, one agent at a time: the first attempt is started with
    `--max-budget-usd 1` (what is left), the CLI stops it past that; no retry, no next task."""
    (project / ".claude").mkdir(exist_ok=True)
    (project / ".claude" / "auto-context.yaml").write_text("parallelization:\n  max_agents: 1\n")
    api.script("task is `big`", [Turn(in_worktree("big.txt", "x"), {"input_tokens": 300_000, "output_tokens": 10})]
               + work_script("big")[1:])
    api.script("task is `next`", work_script("next"))
    plan = write_plan(tmp_path / "plan.yaml", [
        {"id": "big", "description": "Big", "verify": "true"},
        {"id": "next", "description": "Next", "verify": "true"}], max_budget_usd=1)
    r = orch("run", "--all-groups", plan)
    data = progress()
    big = data["tasks"]["big"]
    assert len(big["attempts"]) == 1 and big["attempts"][0]["result_subtype"] == "error_max_budget_usd"
    assert big["status"] == "pending" and "attempts" not in data["tasks"]["next"]
    # the error result's `usage` is all zeros: the tokens come from its modelUsage
    assert (big["attempts"][0]["tokens_in"], big["attempts"][0]["tokens_out"]) == (300_000, 10)
    assert big["attempts"][0]["cost_usd"] == pytest.approx(1.2002)
    assert len(requests_for(api, "big")) == 1 and not requests_for(api, "next")
    argv = json.load(open(os.path.join(project, big["attempts"][0]["stream"]).replace(".jsonl", ".argv.json")))
    assert argv["argv"][argv["argv"].index("--max-budget-usd") + 1] == "1"
    assert r.code == 0 and "run budget of $1.00 spent ($1.20)" in r.out + r.err


def test_a_task_budget_fails_that_task_only(api, project, tmp_path):
    api.script("task is `big`", [Turn(in_worktree("big.txt", "x"), {"input_tokens": 300_000, "output_tokens": 10})])
    api.script("task is `small`", work_script("small"))
    plan = write_plan(tmp_path / "plan.yaml", [
        {"id": "big", "description": "Big", "verify": "true", "max_budget_usd": 0.5},
        {"id": "small", "description": "Small", "verify": "test -f small.txt"}])
    orch("run", "--all-groups", plan)
    tasks = progress()["tasks"]
    assert tasks["small"]["status"] == "merged"
    assert tasks["big"]["status"] == "failed" and tasks["big"]["failure"].startswith("task budget of $0.50 spent")
    assert len(tasks["big"]["attempts"]) == 1 and len(requests_for(api, "big")) == 1
    argv = json.load(open(os.path.join(project, tasks["big"]["attempts"][0]["stream"]).replace(".jsonl", ".argv.json")))
    assert argv["argv"][argv["argv"].index("--max-budget-usd") + 1] == "0.5"


# --------------------------------------------------------------------------- planning from a goal
PLANNER = "You are the planner of parallel-orchestrator"


def test_run_goal_as_the_readme_shows_plans_then_merges_with_the_planners_agent(api, project):
    plan_text = ("```yaml\ntasks:\n  - id: health\n    description: Add health.txt\n    files: [health.txt]\n"
                 "    verify: test -f health.txt\n  - id: version\n    description: Add version.txt\n"
                 "    files: [version.txt]\n    verify: test -f version.txt\n```")
    api.script(PLANNER, [Turn([text(plan_text)], {"input_tokens": 5000, "output_tokens": 500})])
    api.script("task is `health`", work_script("health"))
    api.script("task is `version`", work_script("version"))
    r = orch("run", "--all-groups", "--goal", "Add /health and /version endpoints, each with tests")
    assert r.code == 0, r
    data = progress()
    assert {t: e["status"] for t, e in data["tasks"].items()} == {"health": "merged", "version": "merged"}
    assert data["agent"] == "claude" and data["planner_cost_usd"] == pytest.approx((5000 * 4 + 500 * 20) / 1e6)
    assert data["cost_usd"] == pytest.approx(data["planner_cost_usd"] + sum(
        e["cost_usd"] for e in data["tasks"].values()))
    assert len([q for q in api.requests if q["marker"] == PLANNER]) == 1
    planner_argv = json.load(open(os.path.join(".claude", "auto-logs", "planner", "attempt-1.argv.json")))["argv"]
    allowed = planner_argv[planner_argv.index("--allowedTools") + 1:]
    assert "Read" in allowed and not {"Write", "Edit"} & {rule.split("(")[0] for rule in allowed}  # read-only


def test_the_planner_round_is_refused_once_the_budget_is_spent(api, project):
    api.script(PLANNER, [Turn([text("not a plan")], {"input_tokens": 300_000, "output_tokens": 10})])
    r = orch("run", "--goal", "Something big", "--max-budget-usd", "1")
    assert r.code != 0 and "planning budget of $1.00 is spent" in r.err
    assert len([q for q in api.requests if q["marker"] == PLANNER]) == 1


# --------------------------------------------------------------------------- the plugin
CHECK = "PLUGIN-CHECK"


def session(plugin_dir=None, cwd=None, prompt=CHECK, skill_allowed=False):
    """One `claude -p` session (the plugin loaded with --plugin-dir, or as installed); with
    SKILL_ALLOWED, in the default mode with only the skill allowed, as the README says for print
    mode (its own allowed-tools do the rest); else dontAsk with the two commands allowed."""
    argv = [CLI, "-p", "--output-format", "stream-json", "--verbose"] + (
        ["--allowedTools", "Skill(parallel-orchestrator:parallel-orchestrator)"] if skill_allowed else
        ["--permission-mode", "dontAsk", "--allowedTools", "Bash(orchestrator *)", "Bash(state-transition *)"])
    if plugin_dir:
        argv[1:1] = ["--plugin-dir", str(plugin_dir)]
    proc = subprocess.run(argv + ["--", prompt], cwd=cwd, capture_output=True, text=True, timeout=600)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc, events


def tool_results(events):
    """{command: tool_result text} of the session's Bash calls, from its stream."""
    calls = {b["id"]: b["input"].get("command") for e in events if e.get("type") == "assistant"
             for b in e["message"]["content"] if b.get("type") == "tool_use"}
    results = {}
    for e in events:
        if e.get("type") != "user":
            continue
        for b in e["message"]["content"]:
            if isinstance(b, dict) and b.get("type") == "tool_result":
                content = b.get("content")
                content = content if isinstance(content, str) else " ".join(c.get("text", "") for c in content or [])
                results[calls.get(b["tool_use_id"])] = (content, b.get("is_error"))
    return results


def check_session(api, proc, events, data_dir):
    """The hook built the venv (first session) or stayed silent; the skill is offered; both
    commands ran from the Bash tool with the plugin's engine."""
    assert proc.returncode == 0, proc.stderr
    venv_stamp = data_dir / "venv" / ".plugin-version"
    assert venv_stamp.exists(), list(data_dir.parent.iterdir()) if data_dir.parent.exists() else "no data dir"
    results = tool_results(events)
    help_text, help_error = results["orchestrator --help"]
    assert not help_error and "Usage: orchestrator" in help_text and "run" in help_text, help_text
    state, state_error = results["state-transition state"]
    assert not state_error and state.strip() == "IDLE", state
    body = [q for q in api.requests if q["marker"] == CHECK][0]["body"]
    assert "parallel-orchestrator:parallel-orchestrator" in json.dumps(body)  # the skill is offered
    return venv_stamp.stat().st_mtime_ns


def test_the_plugin_with_plugin_dir_and_installed_from_a_local_marketplace(api, project, tmp_path):
    from tests.test_plugin import plugin_copy

    api.script(CHECK, [Turn([tool("Bash", {"command": "orchestrator --help"})]),
                       Turn([tool("Bash", {"command": "state-transition state"})]), Turn([text("checked")])])
    plugin = plugin_copy(tmp_path)  # as Claude Code gets it: no .venv (the hook builds one)
    data = tmp_path / "home" / ".claude" / "plugins" / "data"

    proc, events = session(plugin_dir=plugin, cwd=project)
    built = check_session(api, proc, events, data / "parallel-orchestrator-inline")
    api.requests.clear()
    proc, events = session(plugin_dir=plugin, cwd=project)
    assert check_session(api, proc, events, data / "parallel-orchestrator-inline") == built  # once

    for step in (["plugin", "marketplace", "add", str(plugin)],
                 ["plugin", "install", "parallel-orchestrator@parallel-orchestrator"]):
        r = subprocess.run([CLI, *step], cwd=project, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (step, r.stdout, r.stderr)
    api.requests.clear()
    proc, events = session(cwd=project)
    check_session(api, proc, events, data / "parallel-orchestrator-parallel-orchestrator")


# --------------------------------------------------------------------------- the README, verbatim
README_PROMPT = "Use parallel-orchestrator to add a /health endpoint and a /version endpoint, each with tests."
README_RUN = "orchestrator validate plan.yaml && orchestrator run plan.yaml && orchestrator status"  # by hand


def test_the_readme_use_from_claude_code_walkthrough(api, project, tmp_path):
    """README "Use from Claude Code", as written: the marketplace and install steps (their CLI
    form), the first prompt, the skill, and the terminal line the skill runs; the agents the run
    starts are the real CLI too. Nothing here but the model's answers is scripted. In print mode
    nobody approves the Skill tool, so the session allows it (the README says so); the skill's
    own `allowed-tools` then allow its commands and its plan file."""
    from tests.test_plugin import plugin_copy

    plugin = plugin_copy(tmp_path)
    for step in (["plugin", "marketplace", "add", str(plugin)],
                 ["plugin", "install", "parallel-orchestrator@parallel-orchestrator"]):
        r = subprocess.run([CLI, *step], cwd=project, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (step, r.stdout, r.stderr)
    plan = yaml.safe_dump({"agent": "claude", "tasks": [
        {"id": "health", "description": "Add health.txt", "files": ["health.txt"], "verify": "test -f health.txt"},
        {"id": "version", "description": "Add version.txt", "files": ["version.txt"], "verify": "test -f version.txt"},
        {"id": "docs", "description": "Add docs.txt", "depends_on": ["health", "version"], "files": ["docs.txt"],
         "verify": "test -f docs.txt"}]}, sort_keys=False)
    api.script("Use parallel-orchestrator", [  # what the skill says to do, step by step
        Turn([tool("Skill", {"skill": "parallel-orchestrator:parallel-orchestrator"})]),
        Turn([tool("Write", {"file_path": str(project / "plan.yaml"), "content": plan})]),
        Turn([tool("Bash", {"command": "orchestrator validate plan.yaml"})]),
        Turn([tool("Bash", {"command": "orchestrator run --detach --all-groups plan.yaml"})]),
        Turn([tool("Bash", {"command": "orchestrator wait --timeout 540"})]),
        Turn([tool("Bash", {"command": "orchestrator status --json"})]),
        Turn([text("All three tasks are merged.")])])
    for t in ("health", "version", "docs"):
        api.script(f"task is `{t}`", work_script(t))
    proc = subprocess.run([CLI, "-p", "--output-format", "stream-json", "--verbose", "--allowedTools",
                           "Skill(parallel-orchestrator:parallel-orchestrator)", "--", README_PROMPT],
                          cwd=project, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    results = tool_results(events)
    assert not any(error for _, error in results.values()), results
    assert results["orchestrator validate plan.yaml"][0].startswith("Plan OK: 3 tasks")
    assert results["orchestrator run --detach --all-groups plan.yaml"][0].startswith("Detached: run ")
    assert results["orchestrator wait --timeout 540"][0].startswith("complete: ")
    status = json.loads(results["orchestrator status --json"][0])
    assert {t: e["status"] for t, e in status["tasks"].items()} == {t: "merged" for t in ("health", "version", "docs")}
    assert status["status"] == "complete"
    for t in ("health", "version", "docs"):
        assert (project / f"{t}.txt").exists() and f"{t}: add {t}.txt" in git(project, "log", "main", "--format=%s")
    # and the README's terminal line, by hand, in a fresh clone of the result
    clone = tmp_path / "by-hand"
    git(tmp_path, "clone", "-q", str(project), str(clone))
    for t in ("health", "version", "docs"):
        api.script(f"task is `{t}`", work_script(t, name=f"{t}-2.txt"))
    (clone / "plan.yaml").write_text(plan.replace(".txt", "-2.txt"))
    r = subprocess.run(["bash", "-c", README_RUN], cwd=clone, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"))
    assert r.returncode == 0 and "Plan OK" in r.stdout and "State: " in r.stdout, r.stderr


# --------------------------------------------------------------------------- a run outlives its session
def test_a_detached_run_outlives_session_one_and_session_two_picks_it_up(api, project, tmp_path):
    """Session 1 starts a detached run whose agents take longer than its Bash tool's timeout,
    waits a little, and ends; the agents go on; session 2 hears of the run from the plugin's
    SessionStart hook, waits, and the run completes with every task merged once."""
    from tests.test_plugin import plugin_copy

    plugin = plugin_copy(tmp_path)
    agent = "sleep 30 && echo $TASK_ID > $TASK_ID.txt && git add -A && git commit -qm $TASK_ID"
    (project / "plan.yaml").write_text(yaml.safe_dump({"agent": agent, "tasks": [
        {"id": t, "files": [f"{t}.txt"]} for t in ("a", "b", "c")]}, sort_keys=False))
    git(project, "add", "plan.yaml")
    git(project, "commit", "-qm", "plan")
    skill = Turn([tool("Skill", {"skill": "parallel-orchestrator:parallel-orchestrator"})])
    api.script("SESSION-ONE", [skill,
                               Turn([tool("Bash", {"command": "orchestrator run --detach --all-groups plan.yaml",
                                                   "timeout": 8000})]),
                               Turn([tool("Bash", {"command": "orchestrator wait --timeout 3", "timeout": 8000})]),
                               Turn([text("The run goes on in the background.")])])
    api.script("SESSION-TWO", [skill,
                               Turn([tool("Bash", {"command": "orchestrator wait --timeout 540"})]),
                               Turn([tool("Bash", {"command": "orchestrator status --json"})]),
                               Turn([text("All three tasks are merged.")])])
    one, events = session(plugin_dir=plugin, cwd=project, prompt="SESSION-ONE", skill_allowed=True)
    assert one.returncode == 0, one.stderr
    results = tool_results(events)
    assert results["orchestrator run --detach --all-groups plan.yaml"][0].startswith("Detached: run ")
    waited = results["orchestrator wait --timeout 3"][0]
    assert waited.startswith("Exit code 2\ntimeout: ") and "is running" in waited  # (the CLI adds the first line)
    data = yaml.safe_load(open(project / ".claude" / "auto-progress.yaml"))
    from engine.procs import alive

    assert alive(data["orchestrator_pid"], data["orchestrator_pid_start"])
    running = [t for t, e in data["tasks"].items() if e.get("status") == "running"]
    assert running == ["a", "b", "c"]  # session 1 is over; its agents are not

    api.requests.clear()
    two, events = session(plugin_dir=plugin, cwd=project, prompt="SESSION-TWO", skill_allowed=True)
    assert two.returncode == 0, two.stderr
    first = [q for q in api.requests if q["marker"] == "SESSION-TWO"][0]["body"]
    heard = re.search(r"parallel-orchestrator: run (run-[0-9-]+) is running in \w+ \([^)]*\); its process is alive "
                      r"\(pid (\d+)\)\. Next: `orchestrator wait --timeout 540`", json.dumps(first))
    assert heard and int(heard.group(2)) == data["orchestrator_pid"], "the hook's line is not in session 2's context"
    results = tool_results(events)
    assert results["orchestrator wait --timeout 540"][0].startswith("complete: ")
    status = json.loads(results["orchestrator status --json"][0])
    assert {t: e["status"] for t, e in status["tasks"].items()} == {t: "merged" for t in "abc"}
    log = git(project, "log", "main", "--format=%s").splitlines()
    assert all(log.count(t) == 1 for t in "abc")
    assert all(len(e["attempts"]) == 1 for e in status["tasks"].values())  # each agent ran once


def test_a_merge_conflict_goes_back_to_the_real_agent_on_the_moved_base(api, project, tmp_path):
    """Two agents write the same file from the same base: the second merge conflicts, its work
    is set aside, and the real CLI runs again (resuming its session) with the conflict as its
    feedback, on the base that has the first one's file; both merged, the file holds both."""
    for t, slow in (("one", 0), ("two", 1)):
        turns = [Turn(in_worktree("shared.txt", f"{t}\n")), Turn(commit(f"{t}: shared")), Turn([text("done")])]
        if slow:  # its first answer comes later, so `one` merges first
            turns[0] = Turn(lambda body, t=t: (time.sleep(2), in_worktree("shared.txt", f"{t}\n")(body))[1])
        api.script(f"task is `{t}`", turns)
    api.script("task is `two`", [Turn(in_worktree("shared.txt", "one\ntwo\n")), Turn(commit("two: shared, both")),
                                 Turn([text("done")])], on_prompt="MERGE CONFLICT")
    plan = write_plan(tmp_path / "plan.yaml", [{"id": t, "description": f"Write {t}", "verify": "test -f shared.txt"}
                                               for t in ("one", "two")])
    (project / ".claude").mkdir(exist_ok=True)
    (project / ".claude" / "auto-context.yaml").write_text("parallelization:\n  min_tasks: 1\n")
    r = orch("run", "--all-groups", plan)
    assert r.code == 0, r
    two = progress()["tasks"]["two"]
    assert two["status"] == "merged" and two["conflict_files"] == ["shared.txt"] and two["conflict_with"] == ["one"]
    tries = [a for a in two["attempts"] if a["kind"] == "agent"]
    assert len(tries) == 2 and tries[1]["base_commit"] == progress()["tasks"]["one"]["merged_commit"]
    resumed = [q for q in requests_for(api, "two") if "MERGE CONFLICT" in latest_prompt(q["body"])]
    assert resumed and len(resumed[0]["body"]["messages"]) > 3  # the same conversation, forked
    assert (project / "shared.txt").read_text() == "one\ntwo\n"
