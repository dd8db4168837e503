"""The `claude` preset with the fake CLI (tests/fake_claude.py): options, argv, the exec entry,
the stream parser (live and after the fact) and the outcome mapping. The real CLI's --help and
argv acceptance are in test_claude_cli.py."""

import json
import os
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st

from engine import claude
from engine.executor import AgentSpec, run_agent
from engine.plan import Task
from tests import fake_claude
from tests.conftest import git

VERIFY = "python -m pytest -q tests/test_a.py"


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """The fake `claude` first on PATH, its calls logged, its sessions in a temp config dir."""
    bindir = tmp_path / "fakebin"
    fake_claude.install(str(bindir))
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path / "claude-config"))
    log = tmp_path / "fake-calls.jsonl"
    monkeypatch.setenv("FAKE_CLAUDE_LOG", str(log))
    for knob in ("DENY", "MAX_TURNS", "CRASH", "COST", "SLEEP", "FLAKY", "RESULTS"):
        monkeypatch.delenv(f"FAKE_CLAUDE_{knob}", raising=False)
    return lambda: [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def attempt(repo, task, n, session_id, resume=None, feedback=None, options=None, timeout=60):
    """One attempt exactly as the orchestrator runs it: the executor, the preset command, the env."""
    options = options or claude.ClaudeOptions(stagger_seconds=0)
    argv = claude.build_argv(options, task, n, session_id=session_id, resume_session=resume, feedback=feedback,
                             workdir=str(repo), verify=VERIFY)
    logs = os.path.join(str(repo), ".claude", "auto-logs")
    stream = os.path.join(logs, f"{task.id}.attempt-{n}.jsonl")
    env = dict(claude.attempt_env(argv, stream), TASK_ID=task.id)
    result = run_agent(AgentSpec(task.id, claude.command(), str(repo), env, os.path.join(logs, f"{task.id}.log"),
                                 timeout, exit_path=os.path.join(logs, f"{task.id}.attempt-{n}.exit")))
    return result, claude.read_summary(stream), stream


# --------------------------------------------------------------------------- options
def test_options_defaults_and_mapping():
    assert claude.is_preset("claude") and claude.is_preset({"preset": "claude"})
    assert not claude.is_preset('claude -p "$TASK_DESCRIPTION"')  # a plain command stays a command
    default = claude.options_from("claude")
    assert default.permission_mode == "dontAsk" and "Bash(git *)" in default.allowed_tools
    assert default.stagger_seconds > 0
    opts = claude.options_from({"preset": "claude", "model": "sonnet", "max_budget_usd": 2,
                                "allowed_tools": ["Bash(npm test)"], "append_system_prompt": "Be brief.",
                                "stagger_seconds": 0, "permission_mode": "acceptEdits"})
    assert (opts.model, opts.max_budget_usd, opts.permission_mode, opts.stagger_seconds) == ("sonnet", 2.0,
                                                                                             "acceptEdits", 0.0)
    assert opts.allowed_tools[-1] == "Bash(npm test)" and "Edit" in opts.allowed_tools


@pytest.mark.parametrize("value, message", [
    ({"preset": "claude", "max_turns": 5}, "no --max-turns flag"),
    ({"preset": "claude", "modle": "x"}, "unknown option `modle`"),
    ({"preset": "codex"}, "unknown preset 'codex'"),
    ({"preset": "claude", "permission_mode": "yolo"}, "`permission_mode` must be one of"),
    ({"preset": "claude", "max_budget_usd": 0}, "`max_budget_usd` must be a positive number"),
    ({"preset": "claude", "max_budget_usd": True}, "`max_budget_usd` must be a positive number"),
    ({"preset": "claude", "stagger_seconds": -1}, "`stagger_seconds` must be a non-negative number"),
    ({"preset": "claude", "allowed_tools": [1]}, "`allowed_tools` must be a list"),
    ({"preset": "claude", "model": ""}, "`model` must be a non-empty string"),
    (["claude"], "must be a command string or a mapping"),
])
def test_options_refused_with_one_line(value, message):
    with pytest.raises(claude.PresetError) as info:
        claude.options_from(value, "task t1: agent")
    line = info.value.line
    assert message in line and "\n" not in line and line.startswith("ERROR: task t1: agent")


# --------------------------------------------------------------------------- argv
def test_first_attempt_argv():
    task = Task(id="api", description="Build the API")
    sid = claude.new_session_id()
    argv = claude.build_argv(claude.ClaudeOptions(model="opus", max_budget_usd=1.5), task, 1, session_id=sid,
                             workdir="/w/wt-1", verify=VERIFY)
    assert argv[:5] == ["claude", "-p", "--output-format", "stream-json", "--verbose"]
    assert argv[argv.index("--session-id") + 1] == sid and "--resume" not in argv
    assert argv[argv.index("--permission-mode") + 1] == "dontAsk"
    assert argv[argv.index("--permission-prompts") + 1] == "none"
    tools = argv[argv.index("--allowedTools") + 1:argv.index("--model")]
    assert f"Bash({VERIFY})" in tools and f"Bash({VERIFY} *)" in tools and "Bash(git *)" in tools
    assert argv[argv.index("--max-budget-usd") + 1] == "1.5"
    system = argv[argv.index("--append-system-prompt") + 1]
    assert "/w/wt-1" in system and "commit" in system and VERIFY in system and "auto/api" in system
    assert argv[-2:] == ["--", "Build the API"]


def test_retry_argv_resumes_and_forks_with_feedback():
    task = Task(id="api", description="Build the API")
    argv = claude.build_argv(claude.ClaudeOptions(), task, 2, session_id="new-id", resume_session="old-id",
                             feedback="test_a failed: expected 2", workdir="/w", verify=VERIFY)
    assert argv[argv.index("--session-id") + 1] == "new-id"
    assert argv[argv.index("--resume") + 1] == "old-id" and "--fork-session" in argv
    assert "test_a failed: expected 2" in argv[-1] and "QA feedback" in argv[-1]
    fresh = claude.build_argv(claude.ClaudeOptions(), task, 2, session_id="n", feedback="bad", workdir="/w",
                              verify=None)
    assert "--resume" not in fresh and fresh[-1].startswith("Build the API") and "bad" in fresh[-1]


@settings(max_examples=60, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1))
def test_any_description_is_one_argv_element_never_in_the_command(text):
    argv = claude.build_argv(claude.ClaudeOptions(), Task(id="t", description=text), 1, session_id="s",
                             workdir="/w", verify=None)
    assert argv[-1] == text and argv[-2] == "--"
    env = claude.attempt_env(argv, "/tmp/s.jsonl")
    assert json.loads(env[claude.ARGV_ENV]) == argv  # the command line itself takes no task data


# --------------------------------------------------------------------------- real runs of the fake
def test_attempt_captures_session_cost_tokens_turns(repo, fake, monkeypatch):
    monkeypatch.setenv("FAKE_CLAUDE_COST", "0.37")
    hostile = 'Build it; $(touch /tmp/pwned-by-task) `id` "quoted" \'single\' \n second line'
    task = Task(id="t1", description=hostile)
    sid = claude.new_session_id()
    result, summary, stream = attempt(repo, task, 1, sid)
    assert result.exit_code == 0
    assert (summary["session_id"], summary["model"], summary["cost_usd"]) == (sid, "claude-fake-1", 0.37)
    assert (summary["turns"], summary["tokens_in"], summary["tokens_out"]) == (2, 230, 40)
    assert summary["result_subtype"] == "success" and summary["permission_denials"] == []
    assert claude.outcome(summary, result.exit_code, changed=True).status == "success"
    call, = fake()
    assert call["prompt"] == hostile and call["cwd"] == str(repo) and call["session_id"] == sid
    assert call["permission_mode"] == "dontAsk" and f"Bash({VERIFY})" in call["allowed_tools"]
    assert not os.path.exists("/tmp/pwned-by-task")
    assert git(repo, "log", "-1", "--format=%s") == "t1: implement"
    # the stream file holds exactly the CLI's events, one JSON object per line
    kinds = [json.loads(line)["type"] for line in open(stream)]
    assert kinds[0] == "system" and kinds[-1] == "result"


def test_retry_resumes_the_previous_session_with_feedback(repo, fake):
    task = Task(id="t1", description="do it")
    first = claude.new_session_id()
    _, summary, _ = attempt(repo, task, 1, first)
    second = claude.new_session_id()
    result, summary2, _ = attempt(repo, task, 2, second, resume=claude.resumable(summary),
                                  feedback="QA: expected 'ok', got 'bug'")
    assert result.exit_code == 0 and summary2["session_id"] == second
    calls = fake()
    assert calls[1]["resume"] == first and calls[1]["fork"] and calls[1]["session_id"] == second
    assert "expected 'ok', got 'bug'" in calls[1]["prompt"]


def test_permission_denial_blocks_naming_the_tool(repo, fake, monkeypatch):
    monkeypatch.setenv("FAKE_CLAUDE_DENY", "Bash")
    result, summary, _ = attempt(repo, Task(id="t1", description="x"), 1, claude.new_session_id())
    assert result.exit_code == 0 and summary["permission_denials"] == ["Bash"]
    verdict = claude.outcome(summary, result.exit_code, changed=False)
    assert (verdict.status, verdict.denied, verdict.reason) == ("blocked_permission", ["Bash"],
                                                                "permission denied: Bash")
    # a denial on the way to a clean, productive finish is left to QA
    assert claude.outcome(summary, 0, changed=True).status == "success"


def test_max_turns_is_a_failure_with_that_reason(repo, fake, monkeypatch):
    monkeypatch.setenv("FAKE_CLAUDE_MAX_TURNS", "1")
    result, summary, _ = attempt(repo, Task(id="t1", description="x"), 1, claude.new_session_id())
    assert result.exit_code == 1
    verdict = claude.outcome(summary, result.exit_code)
    assert (verdict.status, verdict.reason) == ("failure", "error_max_turns")


def test_crash_mid_stream_keeps_the_session_resumable(repo, fake, monkeypatch):
    monkeypatch.setenv("FAKE_CLAUDE_CRASH", "2")
    sid = claude.new_session_id()
    result, summary, _ = attempt(repo, Task(id="t1", description="x"), 1, sid)
    assert result.exit_code == -9 or result.exit_code == 137
    assert summary["session_id"] == sid and summary["result_subtype"] is None
    verdict = claude.outcome(summary, result.exit_code)
    assert verdict.status == "failure" and "without a result" in verdict.reason
    monkeypatch.delenv("FAKE_CLAUDE_CRASH")
    assert claude.resumable(summary) == sid
    result, summary2, _ = attempt(repo, Task(id="t1", description="x"), 2, claude.new_session_id(), resume=sid,
                                  feedback="the previous attempt crashed")
    assert result.exit_code == 0 and summary2["result_subtype"] == "success"


def test_resume_of_an_unknown_session_fails_and_is_not_resumable(repo, fake):
    result, summary, _ = attempt(repo, Task(id="t1", description="x"), 2, claude.new_session_id(),
                                 resume=claude.new_session_id(), feedback="f")
    assert result.exit_code == 1
    verdict = claude.outcome(summary, result.exit_code)
    assert verdict.status == "failure" and "No conversation found" in verdict.reason
    assert claude.resumable(summary) is None


def test_missing_cli_is_one_line_and_127(repo, fake):
    opts = claude.ClaudeOptions(bin="claude-not-installed-here")
    result, summary, _ = attempt(repo, Task(id="t1", description="x"), 1, claude.new_session_id(), options=opts)
    assert result.exit_code == 127
    log = open(os.path.join(str(repo), ".claude", "auto-logs", "t1.log")).read()
    assert "cannot run the Claude Code CLI" in log and "Traceback" not in log


def test_follow_reports_while_the_stream_grows(repo, fake, monkeypatch):
    monkeypatch.setenv("FAKE_CLAUDE_SLEEP", "0.3")
    sid = claude.new_session_id()
    stream = os.path.join(str(repo), ".claude", "auto-logs", "t1.attempt-1.jsonl")
    updates, done = [], threading.Event()
    watcher = threading.Thread(target=lambda: updates.append(claude.follow(stream, done, updates.append, 0.05)))
    watcher.start()
    try:
        attempt(repo, Task(id="t1", description="x"), 1, sid)
    finally:
        done.set()
        watcher.join()
    assert updates[0]["session_id"] == sid and updates[0]["result_subtype"] is None  # known before the end
    assert updates[-1]["result_subtype"] == "success" and updates[-1]["cost_usd"] == 0.01
    assert updates[-1] == claude.read_summary(stream)


def test_parser_tolerates_unknown_and_torn_lines(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"type":"system","subtype":"init","session_id":"a","model":"m"}\nnot json\n'
                    '{"type":"weird","x":1}\n[1,2]\n{"type":"assistant","message":{"id":"m1","usage":{"output_tokens":3}}}\n'
                    '{"type":"assistant","message":{"id":"m1","usage":{"output_tokens":3}}}\n'
                    '{"type":"result","subtype":"success","is_err')
    summary = claude.read_summary(str(path))
    assert (summary["session_id"], summary["model"], summary["turns"], summary["tokens_out"]) == ("a", "m", 1, 3)
    assert summary["result_subtype"] is None  # the torn last line is not read


def test_stagger_spaces_out_start_ups():
    stagger, stamps = claude.Stagger(), []

    def start():
        stagger.wait(0.2)
        stamps.append(time.monotonic())

    threads = [threading.Thread(target=start) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stamps.sort()
    assert all(b - a >= 0.19 for a, b in zip(stamps, stamps[1:]))
