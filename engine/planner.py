"""The planner: a goal in, a plan that `orchestrator validate` accepts out (DECOMPOSE by an agent).

The planner agent is the `claude` preset by default: its prompt states our plan schema, the
rules (ids, `depends_on`, `files`, a `verify` per task) and the repository's layout; its answer
(the stream's `result`) must hold the plan as YAML. A plain shell command works too: it gets
the goal and the prompt only in the environment (PLAN_GOAL, PLAN_PROMPT, PLAN_FEEDBACK,
PLAN_ATTEMPT) and writes the plan to $PLAN_OUTPUT or prints it. What comes back is checked with
the validator `orchestrator validate` uses (engine.plan.parse) plus the planner's own rules;
the errors go back to the agent (the claude preset resumes its session) for a bounded number of
retries. Only a plan that passed is written, atomically; otherwise one line says why.
"""

import hashlib
import os
import re
import shutil

from engine import claude, git, store
from engine.errors import OrchestratorError
from engine.executor import AgentSpec, read_exit, run_agent
from engine.paths import Layout
from engine.procs import alive, wait_for
from engine.plan import PlanError, check_for_run

DEFAULT_RETRIES = 2  # after the first answer
READ_ONLY_TOOLS = ("Read", "Glob", "Grep", "Bash(git ls-files *)", "Bash(git log *)")
LAYOUT_LIMIT = 300

SCHEMA = """\
tasks:                        # required, a non-empty list
  - id: short-name            # required, unique; letters, digits, '-', '_', '.' (not first); becomes branch auto/<id>
    description: ...          # required: what to build and how to tell it is done; the agent sees only this
    depends_on: [other-id]    # optional: ids of tasks whose merged work this one needs; no cycles
    files: [src/a.py]         # the files it creates or changes (tasks sharing a file run one after another)
    verify: python -m pytest -q tests/test_a.py   # required: exits 0 in the task's worktree only when it is done
    complexity: S             # optional: S, M, L or XL
work_type: BACKEND            # optional: BACKEND, FRONTEND, ... (FRONTEND also runs e2e)
e2e: npm run e2e              # optional: a command run on the merged result"""

RULES = """\
- Answer with the plan only: one YAML document in one ```yaml fenced block. No `agent` or `base` keys.
- Every task has a unique id, a description, its files and a verify command.
- Tasks that do not depend on each other must not touch the same files; split work along file boundaries.
- `depends_on` names only ids of this plan, and only what is really needed: independent tasks run in parallel \
(at most {max_agents} at once).
- A verify command runs without a person and without network, in the task's own worktree, and tests that \
task's work (usually tests the task itself writes); it must fail before the task is done.
- Keep each task small enough for one agent session."""


class PlannerGaveUp(OrchestratorError):
    """No valid plan within the bound (one line)."""


def repository_layout(root):
    files = git.tracked_files(root)
    if not files:
        return "(no tracked files yet: an empty repository)"
    shown = files[:LAYOUT_LIMIT]
    more = len(files) - len(shown)
    return "\n".join(shown) + (f"\n... and {more} more" if more else "")


def prompt(goal, root, max_agents):
    return (f"You are the planner of parallel-orchestrator. Split the goal below into tasks that coding agents "
            f"will do in parallel, each in its own git worktree of this repository; each task is checked by its "
            f"verify command and merged in dependency order.\n\nPlan schema (YAML):\n{SCHEMA}\n\nRules:\n"
            f"{RULES.format(max_agents=max_agents)}\n\nRepository layout (tracked files):\n{repository_layout(root)}"
            f"\n\nGoal:\n{goal}\n")


def retry_prompt(error):
    return (f"That plan was refused by the validator:\n{error}\n\nAnswer again with the whole corrected plan, "
            "in one ```yaml fenced block and nothing else.")


_FENCE = re.compile(r"```(?:ya?ml)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def extract(text):
    """The plan in an answer: the last ```yaml fenced block, or the whole text."""
    text = text or ""
    blocks = _FENCE.findall(text)
    return (blocks[-1] if blocks else text).strip() + "\n"


def check(path, root):
    """The plan in the file at `path`, checked exactly as `orchestrator validate --agent claude`
    checks it (the agent is the run's choice, so a stand-in satisfies that one check), plus the
    planner's own rules; PlanError if not."""
    with open(path, encoding="utf-8") as fh:
        if not fh.read().strip():
            raise PlanError("ERROR: the answer holds no plan")
    plan, _, _ = check_for_run(path, Layout(root), agent=claude.PRESET, require_repo=False)
    for task_id in plan.order:
        task = plan.tasks[task_id]
        if not task.description.strip():
            raise PlanError(f"ERROR: task {task_id} has no description")
        if not (task.verify or "").strip():
            raise PlanError(f"ERROR: task {task_id} has no verify command")
    return plan


class Planner:
    """One planning job: attempts 1..1+retries, logs under .claude/auto-logs/planner/.

    With `resume=True` (DECOMPOSE of `run --goal`) a job for the same goal picks up where a
    killed orchestrator left it: an attempt whose agent finished (its exit status is recorded
    beside its log) is collected, not asked again; one still running is waited for. Each
    attempt's session id and pid are in `state.json` before or as it starts."""

    def __init__(self, root, agent=None, retries=DEFAULT_RETRIES, max_agents=5, reporter=None, timeout=1800,
                 budget_usd=None):
        self.root = root
        self.budget_usd = budget_usd  # what every round together may spend (checked before each)
        self.agent = agent or claude.PRESET
        self.preset = claude.options_from(self.agent, "planner") if claude.is_preset(self.agent) else None
        if self.preset is None and not (isinstance(self.agent, str) and self.agent.strip()):
            raise OrchestratorError("ERROR: planner: must be `claude`, a preset mapping or a shell command")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise OrchestratorError("ERROR: planner retries must be a non-negative integer")
        self.retries = retries
        self.max_agents = max_agents
        # a callable taking one line, or a view.Reporter (its `line`)
        self.say = getattr(reporter, "line", reporter) or (lambda line: None)
        self.timeout = timeout
        self.logs = Layout(root).planner_logs
        self.state_path = os.path.join(self.logs, "state.json")
        self.state = {}

    def run(self, goal, resume=False):
        """The validated plan text (a YAML document) for `goal`; PlannerGaveUp after the bound."""
        if not isinstance(goal, str) or not goal.strip():
            raise OrchestratorError("ERROR: the goal is empty")
        if self.preset is not None and not shutil.which(self.preset.bin):
            raise PlannerGaveUp(self._no_cli())
        self._open(goal, resume)
        first_prompt = prompt(goal.strip(), self.root, self.max_agents)
        error, session = None, None
        attempts = 1 + self.retries
        for n in range(1, attempts + 1):
            collected = self._collect(n)
            if collected is None:
                self._check_budget()
                self.say(f"planner: attempt {n}/{attempts}")
                self._ask(n, goal, first_prompt, error, session)
                collected = self._collect(n)
            else:
                self.say(f"planner: attempt {n}/{attempts} collected from before the restart")
            answer, session = collected[0], collected[1] or session
            text = extract(answer)
            candidate = os.path.join(self.logs, f"answer-{n}.yaml")
            store.atomic_write(candidate, text, keep_last_good=False)
            try:
                check(candidate, self.root)
                return text
            except PlanError as exc:
                error = exc.line[len("ERROR: "):] if exc.line.startswith("ERROR: ") else exc.line
                error = error.replace(candidate, "the plan")
                self.say(f"planner: answer {n} refused: {error}")
        raise PlannerGaveUp(f"ERROR: the planner gave no valid plan in {attempts} attempts; last problem: {error} "
                            f"(answers in {os.path.relpath(self.logs, self.root)}/)")

    def _spent(self):
        return round(sum(float(a.get("cost_usd") or 0) for a in self.state.get("attempts", {}).values()
                         if isinstance(a, dict)), 6)

    def _remaining(self):
        return None if self.budget_usd is None else self.budget_usd - self._spent()

    def _check_budget(self):
        remaining = self._remaining()
        if remaining is not None and remaining <= 0:
            raise PlannerGaveUp(f"ERROR: the planning budget of ${self.budget_usd:.2f} is spent "
                                f"(${self._spent():.2f}); no more planner rounds (raise --max-budget-usd)")

    # ------------------------------------------------------------------ state
    def _open(self, goal, resume):
        digest = hashlib.sha256(goal.strip().encode("utf-8")).hexdigest()[:16]
        state = store.load_json(self.state_path) if resume and os.path.exists(self.state_path) else None
        if not isinstance(state, dict) or state.get("goal") != digest:
            if os.path.isdir(self.logs) and not os.path.islink(self.logs):
                shutil.rmtree(self.logs)  # a new job: the last job's answers go
            state = {"goal": digest, "attempts": {}}
        store.makedirs(self.logs)
        self.state = state
        self._save()

    def _save(self):
        store.write_json(self.state_path, self.state)

    def _record(self, n, **fields):
        self.state["attempts"].setdefault(str(n), {}).update(fields)
        self._save()

    def _paths(self, n):
        return {k: os.path.join(self.logs, f"attempt-{n}.{k}") for k in ("jsonl", "yaml", "out", "exit")}

    def _collect(self, n):
        """(answer, session to resume) of attempt n if its agent finished (waiting for a live
        orphan first); None if it never ran or died unfinished."""
        entry = self.state["attempts"].get(str(n))
        if not entry:
            return None
        paths = self._paths(n)
        if read_exit(paths["exit"]) is None and entry.get("pid") and alive(entry["pid"], entry.get("pid_start")):
            self.say(f"planner: waiting for attempt {n} from before the restart (pid {entry['pid']})")
            wait_for(entry["pid"], entry.get("pid_start"), timeout=self.timeout)
        code = read_exit(paths["exit"])
        if code is None:
            return None
        if code == 127:
            raise PlannerGaveUp(self._no_cli() if self.preset is not None else
                                "ERROR: cannot run the planner command (not found; see "
                                f"{os.path.relpath(os.path.join(self.logs, 'planner.log'), self.root)})")
        if self.preset is not None:
            resumed = next((claude.read_summary(self._paths(int(k))["jsonl"]) for k, a in self.state["attempts"].items()
                            if entry.get("resume") and a.get("session_id") == entry["resume"]), None)
            summary = claude.read_summary(paths["jsonl"], resumed)  # (a fork's cost includes what it resumed)
            if summary.get("cost_usd") is not None and entry.get("cost_usd") != summary["cost_usd"]:
                self._record(n, cost_usd=summary["cost_usd"], tokens_in=summary["tokens_in"],
                             tokens_out=summary["tokens_out"])
            return summary.get("result") or "", claude.resumable(summary)
        for key in ("yaml", "out"):
            if os.path.exists(paths[key]) and os.path.getsize(paths[key]):
                with open(paths[key], encoding="utf-8", errors="replace") as fh:
                    return fh.read(), None
        return "", None

    def _no_cli(self):
        return (f"ERROR: cannot run the planner: `{self.preset.bin}` not found (install Claude Code "
                f"{claude.PINNED_CLI_VERSION}: npm install -g @anthropic-ai/claude-code@{claude.PINNED_CLI_VERSION}, "
                "or pass --planner COMMAND)")

    def _ask(self, n, goal, first_prompt, error, session):
        """Run attempt n to its end (its answer is then collected from its files)."""
        paths = self._paths(n)
        for path in paths.values():
            if os.path.exists(path):
                os.unlink(path)
        log = os.path.join(self.logs, "planner.log")
        if self.preset is not None:
            sid = claude.new_session_id()
            resume = session if error else None
            self._record(n, session_id=sid, resume=resume)
            text = retry_prompt(error) if resume else (
                first_prompt + (f"\nAn earlier answer was refused: {error}\n" if error else ""))
            argv = claude.print_argv(self.preset, session_id=sid, resume_session=resume, prompt=text,
                                     tools=list(READ_ONLY_TOOLS), system=self.preset.append_system_prompt,
                                     budget_usd=self._remaining())
            command, env = claude.command(), claude.attempt_env(argv, paths["jsonl"])
        else:
            self._record(n)
            command = "{ " + self.agent + '\n} > "$PLAN_STDOUT"'
            env = {"PLAN_GOAL": goal, "PLAN_PROMPT": first_prompt, "PLAN_FEEDBACK": error or "",
                   "PLAN_ATTEMPT": str(n), "PLAN_OUTPUT": paths["yaml"], "PLAN_STDOUT": paths["out"]}
        run_agent(AgentSpec("planner", command, self.root, env, log, self.timeout, exit_path=paths["exit"]),
                  on_start=lambda pid, start: self._record(n, pid=pid, pid_start=start))


def header(goal):
    lines = [f"#   {line}" for line in goal.strip().splitlines()]
    return "# Planned by `orchestrator plan` for the goal:\n" + "\n".join(lines) + "\n\n"


def write(path, text, goal):
    """Write the validated plan atomically (a reader sees no plan or the whole plan)."""
    store.atomic_write(path, header(goal) + text, keep_last_good=False)


def spent(root):
    """What the last planning job's rounds cost (0 when none recorded a cost)."""
    path = os.path.join(Layout(root).planner_logs, "state.json")
    try:
        state = store.load_json(path) if os.path.exists(path) else None
    except OrchestratorError:
        return 0.0
    attempts = state.get("attempts") if isinstance(state, dict) else None
    if not isinstance(attempts, dict):
        return 0.0
    return round(sum(float(a.get("cost_usd") or 0) for a in attempts.values() if isinstance(a, dict)
                     and isinstance(a.get("cost_usd"), (int, float))), 6)


def plan_once(root, goal, output, agent=None, retries=DEFAULT_RETRIES, max_agents=5, reporter=None, budget_usd=None):
    """DECOMPOSE for `run --goal`: the plan file for `goal` at `output`, planned at most once.

    A plan already written there for this goal is kept; a planning job cut short by a crash is
    resumed (finished answers collected, a live planner waited for), never started over."""
    if os.path.exists(output):
        with open(output, encoding="utf-8", errors="replace") as fh:
            if fh.read().startswith(header(goal)):
                return output
    text = Planner(root, agent, retries, max_agents, reporter, budget_usd=budget_usd).run(goal, resume=True)
    write(output, text, goal)
    return output


def check_output_path(path, force=False):
    """Refuse an output we would not read back as YAML, or one that would be overwritten by surprise."""
    if not path.endswith((".yaml", ".yml")):
        raise OrchestratorError(f"ERROR: the plan file must end in .yaml or .yml: {path}")
    if os.path.exists(path) and not force:
        raise OrchestratorError(f"ERROR: {path} exists (pass --force to replace it)")
    if os.path.isdir(path):
        raise OrchestratorError(f"ERROR: {path} is a directory")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise OrchestratorError(f"ERROR: no such directory: {directory}")

