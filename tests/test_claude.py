"""The `claude` preset with the fake CLI (tests/fake_claude.py): options, argv, the exec entry,
the stream parser (live and after the fact) and the outcome mapping. The real CLI's --help and
argv acceptance are in test_claude_cli.py."""

import json
import os
import tempfile
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
    assert default.permission_mode == "dontAsk" and "Bash(git commit *)" in default.allowed_tools
    assert "Bash(git *)" not in default.allowed_tools  # `git -C <main checkout> ...` is not the agent's to run
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
    assert f"Bash({VERIFY})" in tools and f"Bash({VERIFY} *)" in tools and "Bash(git add *)" in tools
    assert "Edit(./**)" in tools and "Edit" not in tools and "Write" not in tools  # edits stay in the worktree
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
    with tempfile.TemporaryDirectory() as d:
        env = claude.attempt_env(argv, os.path.join(d, "t.attempt-1.jsonl"))
        spec = json.load(open(env[claude.SPEC_ENV]))
        assert spec["argv"] == argv[:-2]  # the command line and the argv take no task text: stdin does
        with open(spec["prompt_file"], encoding="utf-8", errors="surrogateescape", newline="") as fh:
            assert fh.read() == text


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


def test_a_prompt_larger_than_one_argv_string_may_be(repo, fake):
    """The kernel refuses one argv string over 128 KiB; the prompt goes on stdin, so size is no limit."""
    big = "x" * 300_000 + " end"
    result, summary, _ = attempt(repo, Task(id="t1", description=big), 1, claude.new_session_id())
    assert result.exit_code == 0 and summary["result_subtype"] == "success"
    assert fake()[0]["prompt"] == big


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
    assert result.exit_code == 0 and summary["permission_denials"] == ["Bash: npm test"]
    verdict = claude.outcome(summary, result.exit_code, changed=False)
    assert (verdict.status, verdict.denied, verdict.reason) == ("blocked_permission", ["Bash: npm test"],
                                                                "permission denied: Bash: npm test")
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


def test_a_stream_file_that_is_a_link_is_refused(repo, fake, tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("keep\n")
    logs = repo / ".claude" / "auto-logs"
    logs.mkdir(parents=True)
    os.symlink(target, logs / "t1.attempt-1.jsonl")
    result, summary, _ = attempt(repo, Task(id="t1", description="x"), 1, claude.new_session_id())
    assert result.exit_code == 2 and target.read_text() == "keep\n" and fake() == []
    log = (logs / "t1.log").read_text()
    assert "symbolic link" in log and "Traceback" not in log


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


# --------------------------------------------------------------------------- one attempt through a backend
class FakeAttempt:
    """The scheduler's Attempt as announced (task_id, n, command, cwd, env, log_path, exit_path,
    timeout, base_commit, entry, record)."""

    def __init__(self, repo, task_id, n, entry=None):
        logs = os.path.join(os.path.dirname(str(repo)), "auto-logs")  # outside the worktree, as for a pool slot
        self.task_id, self.n, self.cwd, self.command, self.env = task_id, n, str(repo), None, {"TASK_ID": task_id}
        self.log_path = os.path.join(logs, f"{task_id}.log")
        self.exit_path = os.path.join(logs, f"{task_id}.attempt-{n}.exit")
        self.timeout, self.entry = 60, entry or {}
        self.base_commit = git(repo, "rev-parse", "HEAD")
        self.records = []

    def record(self, **fields):
        self.records.append(dict(fields, _started=os.path.exists(self.exit_path)))


class RunAgentBackend:
    """What LocalBackend does: run_agent in attempt.cwd."""

    def __init__(self):
        self.seen = []

    def run_attempt(self, attempt):
        self.seen.append((attempt.command, dict(attempt.env)))
        return run_agent(AgentSpec(attempt.task_id, attempt.command, attempt.cwd, attempt.env, attempt.log_path,
                                   attempt.timeout, exit_path=attempt.exit_path))

    def recover(self, attempt):
        from engine.executor import AgentResult, read_exit

        code = read_exit(attempt.exit_path)
        return None if code is None else AgentResult(attempt.task_id, code, False, 0.0)


def test_run_attempt_records_the_session_first_then_live_fields_then_details(repo, fake, monkeypatch):
    monkeypatch.setenv("FAKE_CLAUDE_COST", "0.5")
    monkeypatch.setenv("FAKE_CLAUDE_SLEEP", "0.1")
    task = Task(id="t1", description="do it", verify="true")
    backend, a1 = RunAgentBackend(), FakeAttempt(repo, "t1", 1)
    r1 = claude.run_attempt(backend, a1, claude.ClaudeOptions(model="opus"), task, claude.Stagger())
    first = a1.records[0]
    assert set(first) == {"session_id", "model", "stream", "_started"} and first["_started"] is False  # before the start
    assert first["stream"].endswith("t1.attempt-1.jsonl")  # the record names its stream file
    assert any(rec.get("cost_usd") == 0.5 for rec in a1.records[1:])
    assert r1.exit_code == 0 and r1.denied == () and r1.reason is None
    assert r1.details["session_id"] == first["session_id"] and r1.details["cost_usd"] == 0.5
    assert r1.details["turns"] == 2 and r1.details["tokens_in"] == 230 and r1.details["result_subtype"] == "success"
    command, env = backend.seen[0]
    spec = json.load(open(env[claude.SPEC_ENV]))
    assert command == claude.command() and "do it" not in command and open(spec["prompt_file"]).read() == "do it"
    # attempt 2, after QA said no: resumes attempt 1's session with the feedback
    a2 = FakeAttempt(repo, "t1", 2, entry={"qa_feedback": "verify failed: expected ok"})
    r2 = claude.run_attempt(backend, a2, claude.ClaudeOptions(), task)
    call = fake()[-1]
    assert call["resume"] == first["session_id"] and call["session_id"] == a2.records[0]["session_id"]
    assert "verify failed: expected ok" in call["prompt"] and r2.exit_code == 0


def test_run_attempt_denial_and_max_turns(repo, fake, monkeypatch):
    task = Task(id="t1", description="x")
    monkeypatch.setenv("FAKE_CLAUDE_DENY", "Bash")
    r = claude.run_attempt(RunAgentBackend(), FakeAttempt(repo, "t1", 1), claude.ClaudeOptions(), task)
    assert r.denied == ("Bash: npm test",) and r.reason == "permission denied: Bash: npm test" and r.exit_code == 1
    assert r.details["permission_denials"] == ["Bash: npm test"]
    assert r.hint == 'add "Bash(npm test)" to the agent\'s `allowed_tools` in the plan, then `orchestrator retry t1` and `orchestrator resume --adopt-plan`'
    monkeypatch.delenv("FAKE_CLAUDE_DENY")
    monkeypatch.setenv("FAKE_CLAUDE_MAX_TURNS", "1")
    r = claude.run_attempt(RunAgentBackend(), FakeAttempt(repo, "t1", 2), claude.ClaudeOptions(), task)
    assert r.denied == () and r.reason == "error_max_turns" and r.exit_code == 1


def test_crashed_attempt_then_the_next_resumes_its_session(repo, fake, monkeypatch):
    task = Task(id="t1", description="x")
    monkeypatch.setenv("FAKE_CLAUDE_CRASH", "2")
    a1 = FakeAttempt(repo, "t1", 1)
    r1 = claude.run_attempt(RunAgentBackend(), a1, claude.ClaudeOptions(), task)
    assert r1.reason.startswith("the CLI stopped without a result") and r1.details["session_id"] == a1.records[0]["session_id"]
    monkeypatch.delenv("FAKE_CLAUDE_CRASH")
    r2 = claude.run_attempt(RunAgentBackend(), FakeAttempt(repo, "t1", 2), claude.ClaudeOptions(), task)
    assert r2.exit_code == 0 and fake()[-1]["resume"] == a1.records[0]["session_id"]
    # an orphan's result is collected with its stream's details
    rec = claude.recover_attempt(RunAgentBackend(), FakeAttempt(repo, "t1", 2), task)
    assert rec.details["session_id"] == r2.details["session_id"] and rec.reason is None


# --------------------------------------------------------------------------- measured with the real CLI
def test_an_error_results_tokens_come_from_model_usage():
    """2.1.332's `error_max_budget_usd` result: `usage` all zeros, the counts under modelUsage."""
    parser = claude.StreamParser()
    parser.feed({"type": "result", "subtype": "error_max_budget_usd", "is_error": True, "total_cost_usd": 8.0002,
                 "usage": {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0},
                 "modelUsage": {"claude-opus-5-5": {"inputTokens": 2000000, "outputTokens": 10,
                                                    "cacheReadInputTokens": 5, "cacheCreationInputTokens": 0},
                                "claude-haiku-5-5": {"inputTokens": 100, "outputTokens": 1}}})
    s = parser.summary
    assert (s["tokens_in"], s["tokens_out"], s["cost_usd"]) == (2000105, 11, 8.0002)


def test_a_forks_cost_is_its_own_the_cli_total_includes_what_it_resumed():
    parent = {"session_cost_usd": 0.00042, "model_tokens": [30, 15]}
    parser = claude.StreamParser(parent)
    parser.feed({"type": "result", "subtype": "success", "total_cost_usd": 0.01842,
                 "usage": {"input_tokens": 3000, "output_tokens": 300},
                 "modelUsage": {"m": {"inputTokens": 3030, "outputTokens": 315, "costUSD": 0.01842}}})
    s = parser.summary
    assert s["cost_usd"] == pytest.approx(0.018) and s["session_cost_usd"] == 0.01842
    assert (s["tokens_in"], s["tokens_out"]) == (3000, 300)  # `usage` is the fork's own
    errored = claude.StreamParser(parent)
    errored.feed({"type": "result", "subtype": "error_max_budget_usd", "total_cost_usd": 1.00042,
                  "usage": {"input_tokens": 0, "output_tokens": 0},
                  "modelUsage": {"m": {"inputTokens": 250030, "outputTokens": 25}}})
    assert (errored.summary["tokens_in"], errored.summary["tokens_out"]) == (250000, 10)
    assert errored.summary["cost_usd"] == pytest.approx(1.0)


@pytest.mark.parametrize("tool_name, tool_input, text, rule", [
    ("Bash", {"command": "rm -rf build"}, "Bash: rm -rf build", "Bash(rm -rf build)"),
    ("Write", {"file_path": "/w/x.txt", "content": "x"}, "Write: /w/x.txt", "Edit(//w/x.txt)"),
    ("Edit", {"file_path": "rel.txt", "old_string": "a"}, "Edit: rel.txt", "Edit(rel.txt)"),
    ("Read", {"file_path": "/etc/passwd"}, "Read: /etc/passwd", "Read(//etc/passwd)"),
    ("WebFetch", {"url": "https://example.com"}, "WebFetch: https://example.com", "WebFetch(https://example.com)"),
    ("Mystery", None, "Mystery", "Mystery"),
    ("Bash", {"command": "echo " + "x" * 500}, "Bash: echo " + "x" * 154 + "…", "Bash(echo " + "x" * 500 + ")"),
    ("Bash", {"command": "touch  two  spaces"}, "Bash: touch two spaces", "Bash(touch  two  spaces)"),  # as it was
    ("Bash", {"command": "make " + "y" * 1200}, "Bash: make " + "y" * 154 + "…", "Bash(make *)"),
    ("Bash", {"command": "make a &&\nmake b"}, "Bash: make a && make b", "Bash(make *)"),
])
def test_a_denial_names_what_was_refused_and_the_rule_that_allows_it(tool_name, tool_input, text, rule):
    assert claude.denial_text(tool_name, tool_input) == text
    assert claude.allow_rule(tool_name, tool_input) == rule


def test_the_hint_for_a_protected_directory_says_no_rule_helps():
    hint = claude.denial_hint(["Edit(//r/.claude/worktree-pool/wt-1/a.txt)"], "t")
    assert "refuses file edits under .claude" in hint and "add " not in hint
    assert claude.denial_hint(["Bash(make)", "Edit(//w/a)"], "t") == \
        'add "Bash(make)", "Edit(//w/a)" to the agent\'s `allowed_tools` in the plan, then `orchestrator retry t` and `orchestrator resume --adopt-plan`'


def test_the_file_tools_are_confined_to_the_worktree():
    opts = claude.options_from({"preset": "claude", "allowed_tools": ["Bash(npm test)"]})
    for workdir in ("/r/.orchestrator/worktree-pool/wt-2", "/odd (dir)/[x]*/wt-1"):  # any path: the rule names none
        rules = claude.allowed_tools(opts, "make check", workdir)
        assert "Edit" not in rules and "Write" not in rules and rules.count("Edit(./**)") == 1
        assert {"Read", "Glob", "Grep", "Bash(git commit *)", "Bash(npm test)", "Bash(make check)",
                "Bash(make check *)"} <= set(rules)


def test_bypass_permissions_as_root_is_refused_at_plan_load(monkeypatch):
    assert claude.refused_mode("bypassPermissions", environ={}, uid=0)
    assert claude.refused_mode("bypassPermissions", environ={"IS_SANDBOX": "1"}, uid=0) is None
    assert claude.refused_mode("bypassPermissions", environ={}, uid=1000) is None
    assert claude.refused_mode("dontAsk", environ={}, uid=0) is None
    if os.getuid() == 0 and os.environ.get("IS_SANDBOX") != "1":
        from engine.plan import PlanError, parse

        with pytest.raises(PlanError) as err:
            parse("agent: {preset: claude, permission_mode: bypassPermissions}\ntasks: [{id: a}]\n")
        assert "refused by Claude Code when running as root" in err.value.message


def test_a_resumed_attempt_is_told_in_its_prompt_where_it_works_now():
    """The CLI keeps a resumed session's first system prompt (measured): the slot of this
    attempt, which may not be the first one's, is said in the prompt."""
    task = Task(id="api", description="Build the API")
    for feedback in ("tests fail", None):
        argv = claude.build_argv(claude.ClaudeOptions(), task, 2, session_id="s2", resume_session="s1",
                                 feedback=feedback, workdir="/w/wt-2", verify=VERIFY)
        prompt = argv[-1]
        assert "Work only inside /w/wt-2" in prompt and "auto/api" in prompt
        assert ("tests fail" in prompt) == bool(feedback)


def test_the_hint_keeps_every_rule_beside_a_protected_path():
    hint = claude.denial_hint(["Edit(//r/.git/config)", "Bash(make)", "Read(//r/.claude/x)"], "t")
    assert "refuses file edits under" in hint and "Edit(//r/.git/config)" in hint
    assert 'add "Bash(make)", "Read(//r/.claude/x)" to the agent' in hint
