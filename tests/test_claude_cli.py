"""Against the real, pinned Claude Code CLI (installed by `make plugin-check` into .tools/):
every flag the preset passes is in its --help, it accepts our argv (first attempt and retry;
with no credentials it stops at "Not logged in" after its init event, which shows the session
id and permission mode it took), and `claude plugin validate` passes on this repository."""

import json
import os
import subprocess
import sys

import pytest

from engine import claude
from engine.executor import AgentSpec, run_agent
from engine.plan import Task
from tests.conftest import ROOT


def _cli():
    for candidate in (os.environ.get("CLAUDE_BIN"), os.path.join(ROOT, ".tools", "node_modules", ".bin", "claude")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


CLI = _cli()
pytestmark = pytest.mark.skipif(CLI is None, reason="the real Claude Code CLI is not installed "
                                "(`make plugin-check` installs it into .tools/)")


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No credentials, no telemetry, sessions in a temp config dir."""
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path / "claude-config"))
    for var in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")


def _help():
    return subprocess.run([CLI, "--help"], capture_output=True, text=True, timeout=120, check=True).stdout


def _flags(argv):
    return [a for a in argv[1:argv.index("--")] if a.startswith("-")]


def test_pinned_version():
    out = subprocess.run([CLI, "--version"], capture_output=True, text=True, timeout=120).stdout
    assert out.split()[0] == claude.PINNED_CLI_VERSION


def test_every_flag_we_pass_is_in_the_pinned_help():
    text = _help()
    task = Task(id="t", description="d")
    opts = claude.ClaudeOptions(model="sonnet", max_budget_usd=1)
    first = claude.build_argv(opts, task, 1, session_id="s", workdir="/w", verify="make test")
    retry = claude.build_argv(opts, task, 2, session_id="s2", resume_session="s", feedback="f", workdir="/w",
                              verify="make test")
    flags = set(_flags(first) + _flags(retry))
    assert {"--resume", "--fork-session", "--max-budget-usd", "--model"} <= flags
    missing = [f for f in sorted(flags) if f"{f} " not in text and f"{f}," not in text]
    assert not missing, f"flags not in claude {claude.PINNED_CLI_VERSION} --help: {missing}"
    modes = text.split("--permission-mode <mode>")[1].split("--permission-prompts")[0]
    assert all(f'"{m}"' in modes for m in claude.PERMISSION_MODES)
    assert "--max-turns" not in text  # why the preset refuses `max_turns`


def test_the_real_cli_accepts_first_attempt_and_retry(tmp_path, isolated):
    work = tmp_path / "wt"
    work.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    opts = claude.ClaudeOptions(bin=CLI, model="sonnet", max_budget_usd=0.5)
    task = Task(id="t1", description='-starts like a flag; $(touch pwned) "q"')

    def run(n, sid, resume=None):
        argv = claude.build_argv(opts, task, n, session_id=sid, resume_session=resume, feedback="QA said no",
                                 workdir=str(work), verify="python -m pytest -q")
        stream = str(tmp_path / f"t1.attempt-{n}.jsonl")
        result = run_agent(AgentSpec("t1", claude.command(), str(work), claude.attempt_env(argv, stream),
                                     str(tmp_path / "t1.log"), 120))
        events = [json.loads(line) for line in open(stream)]
        return result, events, claude.read_summary(stream)

    first = claude.new_session_id()
    result, events, summary = run(1, first)
    init = events[0]
    assert (init["type"], init["subtype"], init["session_id"], init["permissionMode"]) == (
        "system", "init", first, "dontAsk"), open(tmp_path / "t1.log").read()
    assert summary["started"] and summary["result_subtype"] is not None and summary["is_error"]
    assert claude.outcome(summary, result.exit_code).status == "failure"  # not logged in: no model call
    assert not (work / "pwned").exists()
    transcripts = [os.path.join(d, f) for d, _, files in os.walk(os.environ["CLAUDE_CONFIG_DIR"]) for f in files
                   if f == f"{first}.jsonl"]
    assert transcripts and "-starts like a flag; $(touch pwned)" in open(transcripts[0]).read()  # the prompt, via stdin

    second = claude.new_session_id()
    result, events, summary = run(2, second, resume=claude.resumable(summary))
    assert events[0]["type"] == "system" and events[0]["session_id"] == second  # resumed, forked, new id
    assert not any("No conversation found" in e for e in summary["errors"])


def test_plugin_validates_with_the_real_cli(tmp_path, isolated):
    proc = subprocess.run([CLI, "plugin", "validate", "--strict", "--json", ROOT], capture_output=True, text=True,
                          timeout=120)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["success"], proc.stdout[-2000:]
    assert report["manifest"]["errors"] == [] and report["manifest"]["warnings"] == []
    provides = report["provides"]
    assert {b["name"] if isinstance(b, dict) else b for b in provides["bin"]} >= {
        "orchestrator", "state-transition", "pool-manager", "setup-worktree", "merge-branches", "checkpoint-manager"}
    assert [h["event"] for h in provides["hooks"]] == ["SessionStart"]
    assert provides["skills"]
    plugin = subprocess.run([CLI, "plugin", "validate", "--strict",
                             os.path.join(ROOT, ".claude-plugin", "plugin.json")], capture_output=True, text=True,
                            timeout=120)
    assert plugin.returncode == 0, plugin.stdout[-2000:]


def test_fake_and_real_agree_on_a_missing_verbose():
    """The fake refuses what the real CLI refuses (stream-json without --verbose)."""
    from tests import fake_claude

    real = subprocess.run([CLI, "-p", "--output-format", "stream-json", "--", "x"], capture_output=True, text=True,
                          timeout=120)
    fake = subprocess.run([sys.executable, fake_claude.__file__, "-p", "--output-format", "stream-json", "--", "x"],
                          capture_output=True, text=True, timeout=60)
    assert real.returncode == fake.returncode == 1
    assert real.stderr.strip().splitlines()[-1] == fake.stderr.strip()


@pytest.mark.skipif(not os.environ.get("ORCH_SLOW_TESTS"), reason="builds a real venv with pip (slow): "
                    "runs under `make plugin-check`")
def test_the_real_cli_runs_our_session_start_hook(tmp_path, isolated):
    """`claude --plugin-dir` loads the plugin; its SessionStart hook builds the venv in the data dir
    the CLI gives it (the first time only) and exports it for the Bash tool; bin/ then uses it."""
    from tests.test_plugin import NAMES, env_without, package_version, plugin_copy

    plugin = plugin_copy(tmp_path)
    work = tmp_path / "w"
    work.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)

    def session():
        proc = subprocess.run([CLI, "--plugin-dir", str(plugin), "-p", "--output-format", "stream-json", "--verbose",
                               "--", "hi"], cwd=work, capture_output=True, text=True, timeout=600)
        events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        hooks = [e for e in events if e.get("subtype") == "hook_response" and e.get("hook_event") == "SessionStart"]
        assert len(hooks) == 1 and hooks[0]["exit_code"] == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
        return hooks[0]["stdout"]

    assert session() == f"parallel-orchestrator: engine {package_version()} installed (orchestrator is on PATH)\n"
    data = os.path.join(os.environ["CLAUDE_CONFIG_DIR"], "plugins", "data")
    data = os.path.join(data, os.listdir(data)[0])
    assert open(os.path.join(data, "venv", ".plugin-version")).read() == package_version()
    assert session() == ""  # up to date: silent
    env_files = [os.path.join(d, f) for d, _, files in os.walk(os.path.join(os.environ["CLAUDE_CONFIG_DIR"],
                                                                           "session-env")) for f in files]
    exports = {open(f).read() for f in env_files}
    assert f"export PARALLEL_ORCHESTRATOR_DATA={data}\n" in exports
    r = subprocess.run([str(plugin / "bin" / "orchestrator"), "--help"], cwd=work, capture_output=True, text=True,
                       env=env_without(NAMES, {"PARALLEL_ORCHESTRATOR_DATA": data}))
    assert r.returncode == 0 and r.stdout.startswith("Usage: orchestrator"), r.stderr
