"""The `claude` agent preset: Claude Code in print mode, with flags checked against the pinned CLI.

A plan names it as `agent: claude` or `agent: {preset: claude, model: ..., ...}`. One attempt is
`claude -p --output-format stream-json --verbose --session-id NEW ... -- PROMPT`; a retry
continues the previous attempt's conversation (`--resume PREVIOUS --fork-session --session-id
NEW`) with the QA feedback as the prompt. Nothing waits for a person: `--permission-mode
dontAsk` and `--permission-prompts none` deny whatever the allow-list (which always holds the
task's verify command and git) does not cover, and the CLI reports it in `permission_denials`.

Task data never passes through a shell: the argv and the prompt are written to files beside the
attempt's logs, and `python -m engine.claude` (the agent command) points stdout at the attempt's
`.jsonl` stream file, the prompt file at stdin (no size limit), and execs the CLI.
The stream is parsed while it grows (`follow`) and once more at the end (`read_summary`); the
summary maps to an outcome (`outcome`): success, failure with a reason, or blocked on a
permission naming the refused tool.
"""

import json
import os
import shlex
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

from engine.agent_kinds import Stagger  # noqa: F401  (kept importable from here)
from engine.errors import OrchestratorError

PRESET = "claude"
PINNED_CLI_VERSION = "2.1.332"  # the Makefile installs this one; tests check our flags against its --help
# `--permission-mode` choices in the pinned CLI's --help
PERMISSION_MODES = ("acceptEdits", "auto", "bypassPermissions", "manual", "dontAsk", "plan")
# git by subcommand, never `git *`: that allowed `git -C <main checkout> commit ...` (an agent
# committing onto the base in the main checkout, no denial); these all start with the subcommand,
# so a `-C DIR`, `--git-dir` or `-c` before it is not covered
GIT_RULES = tuple(f"Bash(git {sub}{rest})" for sub in ("add", "commit", "status", "diff", "log", "show", "rm", "mv",
                                                       "restore", "ls-files") for rest in ("", " *"))
DEFAULT_TOOLS = ("Read", "Edit", "Write", "Glob", "Grep", *GIT_RULES)
# directories the CLI never lets its file tools write into without a person (measured for .claude;
# its documentation names the others): no agent's checkout may lie under one of them
PROTECTED_DIRS = (".claude", ".git", ".vscode", ".idea")
SPEC_ENV = "ORCH_CLAUDE_SPEC"  # path of the attempt's argv file (JSON), written before the start
STREAM_ENV = "ORCH_CLAUDE_STREAM"


class PresetError(OrchestratorError):
    """Invalid preset options (a plan error: one line, nothing started)."""


@dataclass(frozen=True)
class ClaudeOptions:
    model: str = None
    max_budget_usd: float = None  # per attempt (`--max-budget-usd`)
    permission_mode: str = "dontAsk"
    allowed_tools: tuple = DEFAULT_TOOLS
    append_system_prompt: str = None
    stagger_seconds: float = 1.5  # between agent start-ups: concurrent first starts race on the CLI's config
    bin: str = "claude"

    def as_dict(self):
        data = {"preset": PRESET}
        for key in ("model", "max_budget_usd", "permission_mode", "append_system_prompt", "stagger_seconds", "bin"):
            data[key] = getattr(self, key)
        data["allowed_tools"] = list(self.allowed_tools)
        return {k: v for k, v in data.items() if v is not None}


_KEYS = {"preset", "model", "max_budget_usd", "permission_mode", "allowed_tools", "append_system_prompt",
         "stagger_seconds", "bin"}


def is_preset(agent):
    """True when an agent setting (plan `agent:` or `--agent`) names this preset."""
    from engine.agent_kinds import preset_name

    return preset_name(agent) == PRESET


def options_from(agent, where="agent"):
    """Validated ClaudeOptions from `claude` or a mapping `{preset: claude, ...}`; PresetError otherwise."""
    if isinstance(agent, str):
        if agent.strip() != PRESET:
            raise PresetError(f"ERROR: {where}: not the `{PRESET}` preset: {agent!r}")
        return ClaudeOptions()
    if not isinstance(agent, dict):
        raise PresetError(f"ERROR: {where}: must be a command string or a mapping with `preset: {PRESET}`")
    if agent.get("preset") != PRESET:
        raise PresetError(f"ERROR: {where}: unknown preset {agent.get('preset')!r} (known: {PRESET})")
    if "max_turns" in agent:
        raise PresetError(f"ERROR: {where}: `max_turns` is not supported: Claude Code {PINNED_CLI_VERSION} has no "
                          "--max-turns flag (use `max_budget_usd`)")
    unknown = sorted(set(agent) - _KEYS)
    if unknown:
        raise PresetError(f"ERROR: {where}: unknown option `{unknown[0]}` (known: {', '.join(sorted(_KEYS - {'preset'}))})")
    opts = {}
    for key in ("model", "append_system_prompt", "bin"):
        value = agent.get(key)
        if value is not None:
            if not isinstance(value, str) or not value.strip():
                raise PresetError(f"ERROR: {where}: `{key}` must be a non-empty string")
            opts[key] = value
    for key in ("max_budget_usd", "stagger_seconds"):
        value = agent.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (
                    key == "max_budget_usd" and value == 0):
                raise PresetError(f"ERROR: {where}: `{key}` must be a {'positive' if key == 'max_budget_usd' else 'non-negative'} number")
            opts[key] = float(value)
    mode = agent.get("permission_mode")
    if mode is not None:
        if mode not in PERMISSION_MODES:
            raise PresetError(f"ERROR: {where}: `permission_mode` must be one of {', '.join(PERMISSION_MODES)}")
        refused = refused_mode(mode)
        if refused:
            raise PresetError(f"ERROR: {where}: `permission_mode: {mode}` {refused}")
        opts["permission_mode"] = mode
    tools = agent.get("allowed_tools")
    if tools is not None:
        if isinstance(tools, str):
            tools = [tools]
        if not isinstance(tools, list) or not all(isinstance(t, str) and t.strip() for t in tools):
            raise PresetError(f"ERROR: {where}: `allowed_tools` must be a list of tool rules (e.g. Edit, \"Bash(npm test)\")")
        opts["allowed_tools"] = tuple(dict.fromkeys(list(DEFAULT_TOOLS) + tools))
    return ClaudeOptions(**opts)


def refused_mode(mode, environ=None, uid=None):
    """Why the pinned CLI would refuse MODE here (it exits 1 before doing anything), or None.

    Claude Code refuses `bypassPermissions` as root unless IS_SANDBOX=1 or its bubblewrap
    sandbox is on (read from the 2.1.332 binary's check, and measured)."""
    environ = os.environ if environ is None else environ
    uid = os.getuid() if uid is None else uid
    if mode == "bypassPermissions" and uid == 0 and environ.get("IS_SANDBOX") != "1" \
            and not environ.get("CLAUDE_CODE_BUBBLEWRAP"):
        return ("is refused by Claude Code when running as root (\"--dangerously-skip-permissions cannot be used "
                "with root/sudo privileges\"): use dontAsk with `allowed_tools`, or set IS_SANDBOX=1 inside a sandbox")
    return None


# --------------------------------------------------------------------------- argv
def new_session_id():
    return str(uuid.uuid4())


FILE_TOOLS = ("Edit", "Write")  # bare in the allow-list: confined to the worktree (allowed_tools)
EDITING_TOOLS = ("Edit", "Write", "MultiEdit", "NotebookEdit")  # an `Edit(path)` rule covers them all
READING_TOOLS = ("Read", "Glob", "Grep")  # a `Read(path)` rule covers them


def path_rule(tool, path):
    """The allow rule for TOOL on PATH: Claude Code's path rules exist only as `Edit(...)` (for
    every file-editing tool) and `Read(...)`; `Write(path)` matches nothing (measured with
    2.1.332: `Edit(plan.yaml)` lets Write create plan.yaml, `Write(plan.yaml)` does not). `//`
    anchors an absolute path at the filesystem root."""
    kind = "Edit" if tool in EDITING_TOOLS else "Read" if tool in READING_TOOLS else tool
    return f"{kind}({'/' if path.startswith('/') else ''}{path})"


CONFINED_EDITS = "Edit(./**)"  # relative to the CLI's cwd, the agent's worktree, whatever its path holds


def allowed_tools(options, verify, workdir=None):
    """The allow-list: the preset's, plus the task's verify command (exactly, and with more
    arguments). A bare Edit or Write becomes `Edit(./**)`, edits below the agent's cwd (its
    worktree): in dontAsk mode a bare Write lets the agent write anywhere, the main checkout
    included (measured with 2.1.332); a write elsewhere is then a denial, reported. (An
    absolute `Edit(//PATH/**)` could not name a path with `(`, `*`, `[`... in it.)"""
    rules = [CONFINED_EDITS if rule in FILE_TOOLS else rule for rule in options.allowed_tools]
    if verify and verify.strip() and "\n" not in verify:
        rules += [f"Bash({verify.strip()})", f"Bash({verify.strip()} *)"]
    return list(dict.fromkeys(rules))


def system_prompt(task_id, workdir, verify, branch=None, extra=None):
    text = (f"You are one of several agents working in parallel; your task is `{task_id}`. Work only inside "
            f"{workdir} (a git worktree{' on branch ' + branch if branch else ''}); do not read or change files "
            "outside it, do not switch branches, do not push.")
    if verify:
        text += f" The task is done when `{verify}` exits 0 there: run it before you finish."
    text += " Commit your work with git (git add -A && git commit -m '...') before you finish."
    if extra:
        text += "\n\n" + extra
    return text


def spend_cap(options, budget_usd=None):
    """`--max-budget-usd` of one attempt: the preset's per-attempt cap, lowered to what the run
    and the task may still spend (the CLI stops the session once it is crossed)."""
    caps = [c for c in (options.max_budget_usd, budget_usd) if c is not None]
    return max(min(caps), 0.0001) if caps else None


def print_argv(options, *, session_id, prompt, tools, system, resume_session=None, budget_usd=None):
    """Print mode with the stream on stdout, a fixed session id, nothing that waits for a person;
    the prompt last, after `--` (so one that starts with `-` is not taken for a flag, and the
    variadic `--allowedTools` cannot swallow it)."""
    cap_usd = spend_cap(options, budget_usd)
    argv = [options.bin, "-p", "--output-format", "stream-json", "--verbose", "--session-id", session_id]
    if resume_session:
        argv += ["--resume", resume_session, "--fork-session"]
    argv += ["--permission-mode", options.permission_mode, "--permission-prompts", "none", "--allowedTools", *tools]
    if options.model:
        argv += ["--model", options.model]
    if cap_usd:
        argv += ["--max-budget-usd", f"{cap_usd:.4f}".rstrip("0").rstrip(".")]
    if system:
        argv += ["--append-system-prompt", system]
    return argv + ["--", prompt]


def build_argv(options, task, attempt, *, session_id, resume_session=None, feedback=None, workdir, verify,
               budget_usd=None):
    """The argv of one task attempt (a list: nothing here is ever parsed by a shell).

    `task` has `id` and `description` (a plan Task); `resume_session` is the previous attempt's
    session id when that session exists, and `feedback` is QA's verdict on it."""
    if resume_session:
        # a resumed session keeps its FIRST system prompt (the CLI ignores a new
        # --append-system-prompt on --resume, measured with 2.1.332), and this attempt may run in
        # another slot: where to work is said in the prompt itself
        branch = getattr(task, "branch", None)
        where = (f"This attempt runs in {workdir} (a git worktree{' on branch ' + branch if branch else ''}): "
                 f"Work only inside {workdir} (a git worktree), whatever was said before.")
        prompt = (f"Attempt {attempt}: your previous attempt was checked and rejected. QA feedback:\n\n{feedback}\n\n"
                  "Fix the problem, run the check again, and commit." if feedback else
                  f"Attempt {attempt}: your previous attempt was stopped before it finished. {task.description or ''}"
                  "\n\nCarry on with the task and commit.") + "\n\n" + where
    elif feedback:
        prompt = f"{task.description}\n\nAn earlier attempt was rejected. QA feedback:\n\n{feedback}"
    else:
        prompt = task.description or f"Do task {task.id}."
    system = system_prompt(task.id, workdir, verify, getattr(task, "branch", None), options.append_system_prompt)
    return print_argv(options, session_id=session_id, prompt=prompt, tools=allowed_tools(options, verify, workdir),
                      system=system, resume_session=resume_session, budget_usd=budget_usd)


def command():
    """The agent command line for the executor: no task data in it (that is in the spec file). Not
    `exec`: the executor's trailer after it records the exit status for a resumed orchestrator."""
    return f"{shlex.quote(sys.executable)} -m engine.claude"


def spec_paths(stream_path):
    base = stream_path[:-len(".jsonl")] if stream_path.endswith(".jsonl") else stream_path
    return base + ".argv.json", base + ".prompt"


def attempt_env(argv, stream_path):
    """Write the attempt's argv (JSON) and prompt beside its stream and return the environment
    that points `python -m engine.claude` at them. Files, not environment values: the executor
    bounds environment values, and the kernel bounds one argv string to 128 KiB, so the prompt
    (task description, QA feedback, any size) goes to the CLI on stdin."""
    from engine import store

    spec, prompt_file = spec_paths(stream_path)
    if len(argv) >= 2 and argv[-2] == "--":
        argv, prompt = argv[:-2], argv[-1]
    else:
        prompt = None
    store.atomic_write(prompt_file, prompt or "", keep_last_good=False, durable=False)  # (launch inputs)
    store.atomic_write(spec, json.dumps({"argv": argv, "prompt_file": prompt_file if prompt is not None else None}),
                       keep_last_good=False, durable=False)
    return {SPEC_ENV: spec, STREAM_ENV: stream_path}


def main(environ=None):
    """`python -m engine.claude`: stdout to the stream file, the prompt file on stdin, then exec
    the CLI with the argv from the spec file."""
    environ = os.environ if environ is None else environ
    try:
        with open(environ[SPEC_ENV], encoding="utf-8") as fh:
            spec = json.load(fh)
        argv, prompt_file, stream = spec["argv"], spec.get("prompt_file"), environ[STREAM_ENV]
    except (KeyError, OSError, ValueError, TypeError) as exc:
        print(f"engine.claude: no valid attempt spec ({SPEC_ENV}, {STREAM_ENV}): {exc}", file=sys.stderr)
        return 2
    from engine import store
    from engine.paths import project_root

    store.trust(project_root())  # as Layout does: no link below the project root is written through
    try:
        out = store.open_fd(stream, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        into = store.open_fd(prompt_file, os.O_RDONLY) if prompt_file else None
    except (OrchestratorError, OSError) as exc:
        print(f"engine.claude: {getattr(exc, 'message', None) or exc}", file=sys.stderr)
        return 2
    os.dup2(out, 1)
    os.close(out)
    if into is not None:
        os.dup2(into, 0)
        os.close(into)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"{argv[0]}: cannot run the Claude Code CLI: {exc.strerror} (install it: npm install -g "
              f"@anthropic-ai/claude-code@{PINNED_CLI_VERSION}, or set `bin` in the agent options)", file=sys.stderr)
        return 127


# --------------------------------------------------------------------------- the stream
def empty_summary():
    return {"session_id": None, "model": None, "turns": 0, "tokens_in": 0, "tokens_out": 0, "cost_usd": None,
            "session_cost_usd": None, "model_tokens": None,
            "result_subtype": None, "permission_denials": [], "allow_rules": [], "is_error": None, "result": None, "errors": [],
            "last_tool": None, "started": False}


def _usage_tokens(usage):
    if not isinstance(usage, dict):
        return 0, 0
    def n(key):
        value = usage.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0
    tokens_in = n("input_tokens") + n("cache_creation_input_tokens") + n("cache_read_input_tokens")
    return tokens_in, n("output_tokens")


def _model_usage_tokens(per_model):
    """(tokens in, tokens out) summed over a result's `modelUsage` ({model: {inputTokens,
    outputTokens, cacheReadInputTokens, cacheCreationInputTokens, costUSD}})."""
    if not isinstance(per_model, dict):
        return 0, 0
    def n(usage, key):
        value = usage.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0
    tokens_in = tokens_out = 0
    for usage in per_model.values():
        if isinstance(usage, dict):
            tokens_in += n(usage, "inputTokens") + n(usage, "cacheCreationInputTokens") + n(usage, "cacheReadInputTokens")
            tokens_out += n(usage, "outputTokens")
    return tokens_in, tokens_out


class StreamParser:
    """Folds stream-json events into the summary. Unknown event types and fields are ignored,
    missing ones tolerated; per-message usage is counted once per message id until the
    `result` event, whose totals replace the running ones.

    A session resumed with `--fork-session` reports a `total_cost_usd` (and a `modelUsage`)
    that includes the session it continues (measured with 2.1.332); its `usage` is its own.
    BASELINE, the summary of the attempt it resumed, is subtracted, so each attempt records
    what it cost itself and the task's sum counts every dollar once."""

    def __init__(self, baseline=None):
        self.baseline = baseline or {}
        self.summary = empty_summary()
        self._messages = {}
        self.events = 0

    def feed_line(self, line):
        line = line.strip()
        if not line:
            return False
        try:
            event = json.loads(line)
        except ValueError:
            return False
        return self.feed(event) if isinstance(event, dict) else False

    def feed(self, event):
        s = self.summary
        self.events += 1
        kind = event.get("type")
        if isinstance(event.get("session_id"), str) and kind in ("system", "result") and not s["session_id"]:
            s["session_id"] = event["session_id"]
        if kind == "system" and event.get("subtype") == "init":
            s["session_id"] = event.get("session_id") or s["session_id"]
            s["started"] = True
            s["model"] = event.get("model") or s["model"]
        elif kind == "assistant":
            message = event.get("message") if isinstance(event.get("message"), dict) else {}
            if message.get("model") and not str(message["model"]).startswith("<"):
                s["model"] = s["model"] or message["model"]
            key = message.get("id") or f"#{self.events}"
            self._messages[key] = _usage_tokens(message.get("usage"))
            s["turns"] = len(self._messages)
            s["tokens_in"] = sum(t[0] for t in self._messages.values())
            s["tokens_out"] = sum(t[1] for t in self._messages.values())
            for block in message.get("content") or []:
                if isinstance(block, dict) and block.get("type") == "tool_use":
                    s["last_tool"] = block.get("name")
        elif kind == "result":
            s["result_subtype"] = event.get("subtype")
            s["is_error"] = bool(event.get("is_error"))
            if isinstance(event.get("session_id"), str):
                s["session_id"] = event["session_id"]
            if isinstance(event.get("num_turns"), int):
                s["turns"] = event["num_turns"]
            cost = event.get("total_cost_usd")
            if isinstance(cost, (int, float)) and not isinstance(cost, bool):
                s["session_cost_usd"] = round(float(cost), 6)  # the CLI's figure, a resumed session's included
                s["cost_usd"] = round(max(float(cost) - float(self.baseline.get("session_cost_usd") or 0), 0.0), 6)
            s["model_tokens"] = list(_model_usage_tokens(event.get("modelUsage")))
            totals = _usage_tokens(event.get("usage"))
            if not any(totals):  # an error result's `usage` is all zeros: its counts are per model (cumulative)
                before = self.baseline.get("model_tokens") or (0, 0)
                totals = tuple(max(now - was, 0) for now, was in zip(s["model_tokens"], before))
            if any(totals):  # (none at all: the running counts of the messages stand)
                s["tokens_in"], s["tokens_out"] = totals
            usage_models = event.get("modelUsage")
            if not s["model"] and isinstance(usage_models, dict) and usage_models:
                s["model"] = next(iter(usage_models))
            denials = [d for d in event.get("permission_denials") or []
                       if isinstance(d, dict) and isinstance(d.get("tool_name"), str) and d.get("tool_name")]
            s["permission_denials"] = list(dict.fromkeys(denial_text(d["tool_name"], d.get("tool_input"))
                                                         for d in denials))
            s["allow_rules"] = list(dict.fromkeys(allow_rule(d["tool_name"], d.get("tool_input")) for d in denials))
            if isinstance(event.get("result"), str):
                s["result"] = event["result"]
            errors = event.get("errors")
            if isinstance(errors, list):
                s["errors"] = [str(e) for e in errors]
        else:
            return False
        return True


DENIAL_INPUT_MAX = 160  # characters of a refused command or path kept in a denial


def _shorten(text, limit=DENIAL_INPUT_MAX):
    text = " ".join(str(text).split())  # one line: a multi-line command reads as one
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _input_of(tool_input):
    """(kind, value) of a tool input worth naming: ("command", ...), ("path", ...), ("other", ...)."""
    if not isinstance(tool_input, dict):
        return None, None
    if isinstance(tool_input.get("command"), str):
        return "command", tool_input["command"]
    for key in ("file_path", "notebook_path", "path"):
        if isinstance(tool_input.get(key), str) and tool_input[key]:
            return "path", tool_input[key]
    for key in ("url", "pattern", "query", "skill"):
        if isinstance(tool_input.get(key), str):
            return "other", tool_input[key]
    return None, None


def denial_text(tool, tool_input):
    """What was refused, in one short line: `Bash: rm -rf build`, `Write: /abs/file`, `WebFetch`."""
    tool = _shorten(tool, 60)
    _, value = _input_of(tool_input)
    return f"{tool}: {_shorten(value)}" if value else tool


RULE_MAX = 1000  # a longer (or multi-line) command is allowed by a prefix rule on its first word


def allow_rule(tool, tool_input):
    """The `allowed_tools` entry that would allow that use: `Bash(rm -rf build)` (the command
    exactly as it was, so the rule matches it), `Bash(make *)` for a command too long or on
    several lines, `Edit(//abs/file)` for any file-editing tool, `Read(//abs)`, or the tool name."""
    kind, value = _input_of(tool_input)
    if kind == "path" and "\n" not in value and len(value) <= RULE_MAX:
        return path_rule(tool, value)
    if kind == "command" and value.strip():
        if "\n" in value or len(value) > RULE_MAX or ")" in value:
            return f"{tool}({value.split()[0][:200]} *)"
        return f"{tool}({value})"
    return tool if not value else f"{tool}({_shorten(value)})"


def denial_hint(rules, task_id):
    """What a person does about the denied uses whose allow RULES (allow_rule) are given, in one line."""
    protected = [r for r in rules if r.startswith("Edit(") and any(f"/{name}/" in r for name in PROTECTED_DIRS)]
    others = [r for r in rules if r not in protected]
    steps = f"then `orchestrator retry {task_id}` and `orchestrator resume --adopt-plan`"
    add = "add " + ", ".join(f'"{r}"' for r in others) + " to the agent's `allowed_tools` in the plan" if others else ""
    if protected:
        return (f"Claude Code refuses file edits under {', '.join(PROTECTED_DIRS)} in print mode whatever the "
                f"allow-list says ({protected[0]}): have the task write elsewhere{'; ' + add if add else ''}, {steps}")
    return f"{add}, {steps}"


def read_summary(path, baseline=None):
    """The summary of a whole stream file (a torn last line is ignored); empty if there is none.
    BASELINE: the summary of the session it resumed (see StreamParser)."""
    parser = StreamParser(baseline)
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.endswith("\n"):
                    parser.feed_line(line)
    except FileNotFoundError:
        pass
    return parser.summary


def follow(path, done, on_update, interval=0.2, baseline=None):
    """Tail `path` while the attempt runs: call `on_update(summary)` whenever complete lines
    change it, until `done` (a threading.Event) is set; returns the final summary."""
    parser = StreamParser(baseline)
    offset, pending = 0, ""
    while True:
        finished = done.is_set()
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                fh.seek(offset)
                chunk = fh.read()
                offset = fh.tell()
        except FileNotFoundError:
            chunk = ""
        changed = False
        if chunk:
            pending += chunk
            *lines, pending = pending.split("\n")
            for line in lines:
                changed = parser.feed_line(line) or changed
        if changed:
            on_update(dict(parser.summary))
        if finished:
            return parser.summary
        done.wait(interval)


# --------------------------------------------------------------------------- outcome
@dataclass
class Outcome:
    status: str  # "success" | "failure" | "blocked_permission"
    reason: str = None
    denied: list = field(default_factory=list)


def outcome(summary, exit_code, timed_out=False, changed=None):
    """What an attempt came to. Permission denials block the task (naming the tools) unless the
    attempt still ended cleanly with work done (`changed` is whether it left commits or edits;
    None when unknown); QA then judges that work as usual."""
    denied = list(summary.get("permission_denials") or [])
    clean = (exit_code == 0 and not timed_out and summary.get("result_subtype") == "success"
             and not summary.get("is_error"))
    if denied and (not clean or changed is False):
        return Outcome("blocked_permission", f"permission denied: {', '.join(denied)}", denied)
    if clean:
        return Outcome("success", denied=denied)
    if timed_out:
        return Outcome("failure", "timed out")
    subtype = summary.get("result_subtype")
    if subtype and subtype != "success":
        detail = "; ".join(summary.get("errors") or [])
        return Outcome("failure", subtype + (f": {detail}" if detail else ""))
    if subtype == "success" and summary.get("is_error"):
        return Outcome("failure", f"error: {(summary.get('result') or '').strip()[:200] or 'is_error'}")
    if subtype is None:
        return Outcome("failure", f"the CLI stopped without a result (exit {exit_code})")
    return Outcome("failure", f"exit {exit_code}")


def resumable(summary):
    """The session id a retry can `--resume`: only one the CLI actually started (its init event was
    seen; a failed `--resume` ends with a result and no init)."""
    return summary.get("session_id") if summary.get("started") else None


# --------------------------------------------------------------------------- one attempt
LIVE_FIELDS = ("session_id", "model", "cost_usd", "tokens_in", "tokens_out", "turns", "result_subtype")


def stream_path(logs_dir, task_id, n):
    return os.path.join(logs_dir, f"{task_id}.attempt-{n}.jsonl")


def previous_attempt(logs_dir, task_id, n):
    """The summary of the newest earlier attempt whose session the CLI really started (so
    `--resume` finds it; its `session_cost_usd`, the CLI's own figure, is the baseline of a
    fork of it), or None."""
    for k in range(n - 1, 0, -1):
        summary = read_summary(stream_path(logs_dir, task_id, k))
        if resumable(summary):
            return summary
    return None


def _resumed(logs_dir, task_id, n):
    """The baseline of attempt N when it resumed a session (its argv file says so): the chain
    of attempts before it (previous_attempt; a stopped run of attempt N itself, when that is
    what it resumed, never reported a cost of its own), else None."""
    spec, _ = spec_paths(stream_path(logs_dir, task_id, n))
    try:
        with open(spec, encoding="utf-8") as fh:
            argv = json.load(fh).get("argv") or []
    except (OSError, ValueError, AttributeError):
        return None
    return previous_attempt(logs_dir, task_id, n) if "--resume" in argv else None


def _changed(cwd, base_commit):
    """Whether the attempt left work (commits past base_commit or edits); None when unknowable."""
    if not cwd or not os.path.isdir(cwd):
        return None
    from engine import git

    _, dirty = git.status(cwd)
    if dirty:
        return True
    commit, _ = git.head(cwd)
    return None if not base_commit else commit != base_commit


def run_attempt(backend, attempt, options, task, stagger=None, cancel=None, budget_usd=None):
    """Run one attempt of `task` with this preset through `backend` (anything with
    `run_attempt(attempt) -> AgentResult`), and return that AgentResult with `denied`, `reason`
    and `details` filled from the stream.

    The session id is new for every attempt and recorded (attempt.record) before anything starts;
    a retry resumes the newest earlier session the CLI started, with the QA feedback as prompt.
    While it runs, the stream is tailed and cost/tokens/turns recorded as they arrive."""
    logs = os.path.dirname(attempt.log_path)
    stream = stream_path(logs, task.id, attempt.n)
    chain = previous_attempt(logs, task.id, attempt.n)
    interrupted = None
    if os.path.exists(stream):  # a re-run of attempt n (after a crash or a stop): its events start afresh
        from engine import store

        interrupted = read_summary(stream)
        store.replace(stream, stream + f".{int(time.time())}.old")
    # a stopped attempt's session is resumed, not started over: the agent keeps what it did, and the
    # CLI's total then includes what that session spent (its stream ended before any result said so)
    parent = interrupted if interrupted and resumable(interrupted) else chain
    resume = parent["session_id"] if parent else None
    session_id = new_session_id()
    feedback = (attempt.entry or {}).get("qa_feedback") or None
    logs_root = getattr(getattr(attempt, "layout", None), "root", None)
    attempt.record(session_id=session_id, stream=os.path.relpath(stream, logs_root) if logs_root else stream,
                   **({"model": options.model} if options.model else {}))
    argv = build_argv(options, task, attempt.n, session_id=session_id, resume_session=resume, feedback=feedback,
                      workdir=attempt.cwd or ".", verify=getattr(task, "verify", None), budget_usd=budget_usd)
    attempt.command = command()
    attempt.env = dict(attempt.env or {}, **attempt_env(argv, stream))
    if stagger is not None:
        stagger.wait(options.stagger_seconds, cancel)
    done = threading.Event()
    seen = {}

    def live(summary):
        fields = {k: summary[k] for k in LIVE_FIELDS if summary.get(k) is not None and seen.get(k) != summary[k]}
        if fields:
            seen.update(fields)
            attempt.record(**fields)

    watcher = threading.Thread(target=follow, args=(stream, done, live), kwargs={"baseline": chain}, daemon=True,
                               name=f"stream-{task.id}")
    watcher.start()
    try:
        result = backend.run_attempt(attempt)
    finally:
        done.set()
        watcher.join()
    summary = read_summary(stream, chain)
    return annotate(result, summary, _changed(attempt.cwd, getattr(attempt, "base_commit", None)))


def recover_attempt(backend, attempt, task):
    """After a crash of the orchestrator: the result of an attempt whose CLI outlived it (the
    backend waits for it and reads its exit trailer), annotated from its stream; None if none."""
    result = backend.recover(attempt)
    if result is None:
        return None
    logs = os.path.dirname(attempt.log_path)
    summary = read_summary(stream_path(logs, task.id, attempt.n), _resumed(logs, task.id, attempt.n))
    return annotate(result, summary, _changed(attempt.cwd, getattr(attempt, "base_commit", None)))


def annotate(result, summary, changed=None):
    """Fill an AgentResult's denied/reason/details from a stream summary."""
    verdict = outcome(summary, result.exit_code, result.timed_out, changed)
    details = {k: summary.get(k) for k in LIVE_FIELDS}
    details["permission_denials"] = list(summary.get("permission_denials") or [])
    result.details = dict(getattr(result, "details", None) or {}, **{k: v for k, v in details.items() if v is not None})
    result.denied = tuple(verdict.denied) if verdict.status == "blocked_permission" else ()
    if result.denied:
        result.hint = denial_hint(summary.get("allow_rules") or list(result.denied), result.task_id)
    result.reason = verdict.reason if verdict.status != "success" else None
    if verdict.status != "success" and result.exit_code == 0:
        result.exit_code = 1  # the CLI exits 0 after a blocked run; for us the attempt did not succeed
    return result


class ClaudeAgent:
    """The `claude` agent kind (engine.agent_kinds): this module's attempt, recovery and checks."""

    name = PRESET

    def __init__(self, setting):
        self.options = options_from(setting)

    @staticmethod
    def validate(setting, where):
        return options_from(setting, where)

    def run(self, backend, attempt, task, limits):
        return run_attempt(backend, attempt, self.options, task, limits.stagger, limits.cancel, limits.budget_usd)

    def recover(self, backend, attempt, task):
        return recover_attempt(backend, attempt, task)


if __name__ == "__main__":
    sys.exit(main())
