"""A fake `claude` for the tests: no network, no model, the same argv and stream-json protocol.

It accepts the flags the preset passes (an unknown flag fails the way the real CLI's parser does),
prints the events of /work/shared/docs/CLAUDE-STREAM.md (system init, assistant with tool_use and
usage, user tool_result, result), keeps a transcript per session under `$CLAUDE_CONFIG_DIR` (or
`~/.claude`) so `--resume` of an unknown id fails as the real one does ("No conversation found"),
and, when TASK_ID is set and the cwd is a git worktree, does the task like the demo agent:
writes `app/<task>.py` and commits.

Knobs (environment):
  FAKE_CLAUDE_LOG      append one JSON line per call: argv, session ids, prompt, cwd
  FAKE_CLAUDE_DENY     a tool name: the agent tries it, is refused, does no work, reports the denial
  FAKE_CLAUDE_MAX_TURNS  any value: ends with `error_max_turns` (exit 1)
  FAKE_CLAUDE_CRASH    N: SIGKILL itself after printing N events
  FAKE_CLAUDE_COST     what each call costs (default 0.01); a resumed session's total_cost_usd adds
                       the session it continues, as the real CLI's does
  FAKE_CLAUDE_SLEEP    seconds between events (default 0)
  FAKE_CLAUDE_FLAKY    a task id whose first attempt is wrong (right once the prompt carries QA feedback)
  FAKE_CLAUDE_RESULTS  a directory of result texts `1`, `2`, ...: call n answers with file n (or the last)
"""

import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid

VALUE_FLAGS = {"--output-format", "--session-id", "--resume", "--permission-mode", "--permission-prompts", "--model",
               "--max-budget-usd", "--append-system-prompt"}
BOOL_FLAGS = {"-p", "--print", "--verbose", "--fork-session"}
VARIADIC = {"--allowedTools", "--allowed-tools"}
MODES = ("acceptEdits", "auto", "bypassPermissions", "manual", "dontAsk", "plan")


def fail(message, code=1):
    print(message, file=sys.stderr)
    sys.exit(code)


def parse(argv):
    opts, tools, prompt = {}, [], None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            prompt = " ".join(argv[i + 1:])
            break
        if arg in BOOL_FLAGS:
            opts[arg] = True
        elif arg in VALUE_FLAGS:
            if i + 1 >= len(argv):
                fail(f"error: option '{arg}' argument missing")
            opts[arg] = argv[i + 1]
            i += 1
        elif arg in VARIADIC:
            while i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                tools.append(argv[i + 1])
                i += 1
        elif arg.startswith("-"):
            fail(f"error: unknown option '{arg}'")
        else:
            prompt = arg
        i += 1
    return opts, tools, prompt


def valid_uuid(value):
    try:
        return str(uuid.UUID(value)) == value.lower()
    except (ValueError, AttributeError):
        return False


def config_dir():
    return os.environ.get("CLAUDE_CONFIG_DIR") or os.path.join(os.path.expanduser("~"), ".claude")


def transcript(session_id):
    return os.path.join(config_dir(), "projects", "fake", f"{session_id}.jsonl")


def call_number():
    path = os.path.join(config_dir(), "fake-calls")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        n = len(fh.read().splitlines()) + 1
        fh.write(f"{n}\n")
    return n


class Out:
    def __init__(self, session_id):
        self.count = 0
        self.crash_after = int(os.environ.get("FAKE_CLAUDE_CRASH") or 0)
        self.sleep = float(os.environ.get("FAKE_CLAUDE_SLEEP") or 0)
        self.session_id = session_id

    def emit(self, event):
        event.setdefault("session_id", self.session_id)
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()
        self.count += 1
        with open(transcript(self.session_id), "a") as fh:
            fh.write(json.dumps(event) + "\n")
        if self.crash_after and self.count >= self.crash_after:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.sleep:
            time.sleep(self.sleep)


def assistant(n, content, model):
    return {"type": "assistant", "message": {"id": f"msg_{n}", "role": "assistant", "model": model,
                                             "content": content, "stop_reason": "tool_use",
                                             "usage": {"input_tokens": 100, "output_tokens": 20,
                                                       "cache_creation_input_tokens": 10,
                                                       "cache_read_input_tokens": 5}}}


def do_task(task, prompt):
    """The demo agent's work: app/<task>.py, committed. Returns True if a commit was made."""
    wrong = task == os.environ.get("FAKE_CLAUDE_FLAKY") and "QA feedback" not in (prompt or "")
    name = task.replace("-", "_").replace(".", "_")
    os.makedirs("app", exist_ok=True)
    with open(os.path.join("app", f"{name}.py"), "w") as fh:
        fh.write(f'"""{task}"""\n\n\ndef {name}():\n    return "{"bug" if wrong else task + " ok"}"\n')
    subprocess.run(["git", "add", "-A"], check=True)
    if subprocess.run(["git", "diff", "--cached", "--quiet"]).returncode == 0:
        return False
    subprocess.run(["git", "-c", "user.name=fake-claude", "-c", "user.email=fake@localhost", "commit", "-q", "-m",
                    f"{task}: implement"], check=True)
    return True


def main(argv):
    opts, tools, prompt = parse(argv)
    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read() or None  # as the real CLI: the prompt on stdin
    if prompt is None:
        fail("Error: Input must be provided either through stdin or as a prompt argument when using --print")
    if not (opts.get("-p") or opts.get("--print")):
        fail("fake claude: only print mode is faked")
    if opts.get("--output-format") != "stream-json":
        fail("fake claude: only --output-format stream-json is faked")
    if not opts.get("--verbose"):
        fail("Error: When using --print, --output-format=stream-json requires --verbose")
    mode = opts.get("--permission-mode", "default")
    if mode != "default" and mode not in MODES:
        fail(f"error: option '--permission-mode <mode>' argument '{mode}' is invalid.")
    session_id = opts.get("--session-id") or str(uuid.uuid4())
    if not valid_uuid(session_id):
        fail("Error: Invalid session ID. Must be a valid UUID.")
    resume = opts.get("--resume")
    if resume and opts.get("--session-id") and not opts.get("--fork-session"):
        fail("Error: --session-id can only be used with --continue or --resume if --fork-session is also specified.")
    n = call_number()
    record = {"n": n, "t": time.time(), "argv": argv, "session_id": session_id, "resume": resume, "fork": bool(opts.get("--fork-session")),
              "prompt": prompt, "cwd": os.getcwd(), "permission_mode": mode, "allowed_tools": tools,
              "model": opts.get("--model"), "system_prompt": opts.get("--append-system-prompt"),
              "task": os.environ.get("TASK_ID")}
    if os.environ.get("FAKE_CLAUDE_LOG"):
        with open(os.environ["FAKE_CLAUDE_LOG"], "a") as fh:
            fh.write(json.dumps(record) + "\n")
    cost = float(os.environ.get("FAKE_CLAUDE_COST") or 0.01)
    if resume and not os.path.exists(transcript(resume)):
        print(json.dumps({"type": "result", "subtype": "error_during_execution", "is_error": True, "num_turns": 0,
                          "session_id": session_id, "total_cost_usd": 0, "permission_denials": [],
                          "errors": [f"No conversation found with session ID: {resume}"]}), flush=True)
        return 1
    os.makedirs(os.path.dirname(transcript(session_id)), exist_ok=True)
    if resume:
        with open(transcript(resume)) as src, open(transcript(session_id), "w") as dst:
            earlier = src.read()
            dst.write(earlier)
        # as the real CLI (2.1.332, measured): a resumed session's total_cost_usd includes the
        # session it continues; its `usage` is its own
        totals = [json.loads(line).get("total_cost_usd") for line in earlier.splitlines()
                  if '"type": "result"' in line]
        cost += float(next((c for c in reversed(totals) if isinstance(c, (int, float))), 0) or 0)
    model = opts.get("--model") or "claude-fake-1"
    out = Out(session_id)
    out.emit({"type": "system", "subtype": "init", "cwd": os.getcwd(), "model": model, "tools": ["Bash", "Edit"],
              "permissionMode": mode, "mcp_servers": []})
    result = {"type": "result", "subtype": "success", "is_error": False, "duration_ms": 5, "duration_api_ms": 4,
              "num_turns": 2, "result": "done", "total_cost_usd": cost, "permission_denials": [],
              "usage": {"input_tokens": 200, "output_tokens": 40, "cache_creation_input_tokens": 20,
                        "cache_read_input_tokens": 10}, "modelUsage": {model: {"costUSD": cost}}}
    deny = os.environ.get("FAKE_CLAUDE_DENY")
    if deny:
        out.emit(assistant(1, [{"type": "tool_use", "id": "tu_1", "name": deny, "input": {"command": "npm test"}}],
                           model))
        out.emit({"type": "user", "message": {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "tu_1", "is_error": True,
             "content": f"Permission to use {deny} has been denied."}]}})
        out.emit(assistant(2, [{"type": "text", "text": f"I cannot run {deny}."}], model))
        result.update(result=f"I was not allowed to use {deny}.", permission_denials=[
            {"tool_name": deny, "tool_use_id": "tu_1", "tool_input": {"command": "npm test"}}])
        out.emit(result)
        return 0
    out.emit(assistant(1, [{"type": "tool_use", "id": "tu_1", "name": "Edit", "input": {"file_path": "app"}}], model))
    out.emit({"type": "user", "message": {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "tu_1", "is_error": False, "content": "ok"}]}})
    if os.environ.get("TASK_ID") and os.path.exists(".git"):
        do_task(os.environ["TASK_ID"], prompt)
    results = os.environ.get("FAKE_CLAUDE_RESULTS")
    if results:
        names = sorted((int(f) for f in os.listdir(results) if f.isdigit()))
        pick = max([k for k in names if k <= n] or names[:1])
        with open(os.path.join(results, str(pick))) as fh:
            result["result"] = fh.read()
    out.emit(assistant(2, [{"type": "text", "text": result["result"]}], model))
    if os.environ.get("FAKE_CLAUDE_MAX_TURNS"):
        result.update(subtype="error_max_turns", is_error=True, result=None)
        out.emit(result)
        return 1
    out.emit(result)
    return 0


def install(directory):
    """Put an executable `claude` that runs this fake into `directory`; returns its path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "claude")
    with open(path, "w") as fh:
        fh.write(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(os.path.abspath(__file__))} \"$@\"\n")
    os.chmod(path, 0o755)
    return path


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
