"""Plans: load (YAML, JSON, the skill's `features:` list, its markdown task list), validate,
and layer the task DAG into parallel groups.

Validation refuses, with one clear line, before anything is created: an empty task list,
an invalid or duplicate id, an unknown dependency, a cycle (named: `a -> b -> a`). Tasks
that declare the same file are made sequential: in topological order, each such task gets
an implicit dependency on the previous one that touches the file (edges that follow a
topological order cannot create a cycle). Groups are the DAG's levels, each split into
chunks of at most `max_agents` tasks.
"""

import json
import math
import os
import re
from dataclasses import dataclass, field

from engine import agent_kinds, git, store
from engine.errors import OrchestratorError

COMPLEXITIES = ("S", "M", "L", "XL")


class PlanError(OrchestratorError):
    """A plan that cannot run."""


@dataclass
class Task:
    id: str
    description: str = ""
    depends_on: list = field(default_factory=list)
    files: list = field(default_factory=list)
    agent: str = None
    verify: str = None
    expected_output: str = None
    complexity: str = None
    timeout: float = None
    allow_empty: bool = False  # an agent that commits nothing is a success, not "no changes"
    max_budget_usd: float = None  # no attempt of this task starts once its attempts cost this much
    implicit_deps: list = field(default_factory=list)

    @property
    def branch(self):
        return f"auto/{self.id}"

    @property
    def all_deps(self):
        return list(dict.fromkeys(self.depends_on + self.implicit_deps))


@dataclass
class Plan:
    tasks: dict
    order: list
    groups: list
    work_type: str = ""
    base: str = None
    agent: str = None
    e2e: str = None
    source: str = None
    max_budget_usd: float = None  # the run starts no new attempt once its agents cost this much

    def group_of(self, task_id):
        if not hasattr(self, "_group_index"):
            self._group_index = {t: n for n, group in enumerate(self.groups, 1) for t in group}
        return self._group_index[task_id]


# --------------------------------------------------------------------------- loading
def digest(path):
    """The plan file's fingerprint: `resume` refuses a plan that changed under a run."""
    import hashlib

    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()[:16]


def read(path):
    """The raw mapping of the plan file at PATH (any supported format); PlanError if unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise PlanError(f"plan not found: {path}") from None
    except IsADirectoryError:
        raise PlanError(f"plan {path} is a directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError(f"cannot read plan {path}: {exc}") from None
    return parse_data(text, path)


def load(path, max_agents=5):
    """Read and validate the plan at PATH; raises PlanError (one line) when it cannot run."""
    return from_data(read(path), path, max_agents)


def parse(text, source="<plan>", max_agents=5):
    return from_data(parse_data(text, source), source, max_agents)


def parse_data(text, source="<plan>"):
    """Text -> a mapping with a `tasks` (or `features`) list, before any validation."""
    stripped = text.lstrip()
    if source.endswith(".md") or (stripped.startswith("#") and re.search(r"(?m)^#+\s*Task\s+\w+\s*:", text)):
        data = parse_markdown(text)
    elif stripped.startswith(("{", "[")) and source.endswith(".json"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise PlanError(f"cannot parse plan {source}: {exc}") from None
    else:
        try:
            data = store.parse_yaml(text, source)
        except OrchestratorError as exc:
            raise PlanError(exc.message) from None
    if isinstance(data, list):
        data = {"tasks": data}
    if not isinstance(data, dict):
        raise PlanError(f"plan {source} must be a mapping with a `tasks` list")
    return data


def from_data(data, source, max_agents):
    raw_tasks = data.get("tasks")
    if raw_tasks is None and "features" in data:
        raw_tasks = data["features"]
    return build(data, raw_tasks, source, max_agents)


def _plan_str(data, key):
    """A plan-level string field (`work_type`, `base`, `e2e`), or None. The work type is
    recorded in the state file, which takes one line of at most MAX_VALUE_LEN characters."""
    from engine.statefile import MAX_VALUE_LEN

    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise PlanError(f"plan `{key}` must be a string, got {_kind(value)}")
    if value and "\0" in value:
        raise PlanError(f"plan `{key}` contains a NUL byte")
    if key == "work_type" and value and (re.search(r"[\x00-\x1f\x7f]", value) or len(value) > MAX_VALUE_LEN):
        raise PlanError(f"plan `work_type` must be one line of at most {MAX_VALUE_LEN} characters")
    return value


def _kind(value):
    """How a wrong value reads in an error line: `true`, `integer 1`, `a list`."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return f"{type(value).__name__.replace('int', 'integer')} {value}" if abs(value) < 1e15 else "a number"
    return {dict: "a mapping", list: "a list"}.get(type(value), type(value).__name__)


def agent_field(value, where):
    """The agent of a plan or a task: a shell command string, a preset (`claude`, or a mapping
    `{preset: claude, model: ..., ...}` checked by its kind, engine.agent_kinds), or None.

    Kept in one function so another form of the field changes only this."""
    if value is None:
        return None
    if isinstance(value, dict) or (isinstance(value, str) and value.strip() in agent_kinds.PRESETS):
        try:
            agent_kinds.validate(value, f"{where}: `agent`")
        except OrchestratorError as exc:
            raise PlanError(exc.message) from None
        return value
    if not isinstance(value, str):
        raise PlanError(f"{where}: `agent` must be a command string, got {_kind(value)} "
                        "(or a preset mapping: {preset: claude, ...})")
    if "\0" in value:
        raise PlanError(f"{where}: `agent` contains a NUL byte")
    return value if value.strip() else None


def _task_id(entry, n, source, features):
    raw_id = entry.get("id", entry.get("name") if features and "id" not in entry else None)
    if raw_id is None:
        raise PlanError(f"task #{n} in {source} has no id")
    if not isinstance(raw_id, str):
        raise PlanError(f"task #{n} in {source}: `id` must be a string, got {_kind(raw_id)} "
                        "(quote it in YAML)")
    try:
        return git.check_ref_component(raw_id, "task id")
    except OrchestratorError as exc:
        raise PlanError(exc.message) from None


def _str_list(value, what, task_id):
    if value is None:
        return []
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PlanError(f"task {task_id}: `{what}` must be a list of strings")
    return list(value)


def _opt_str(entry, key, task_id):
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise PlanError(f"task {task_id}: `{key}` must be a string, got {_kind(value)}")
    if "\0" in value and key in ("verify", "expected_output"):
        raise PlanError(f"task {task_id}: `{key}` contains a NUL byte")
    return value


def _timeout(entry, task_id):
    from engine import config

    if entry.get("timeout") is None:
        return None
    try:
        return config.seconds(entry["timeout"], f"task {task_id}")
    except OrchestratorError as exc:
        raise PlanError(exc.message) from None


def _flag(entry, key, where):
    """A boolean field: a real boolean or one of the usual words (engine.config.boolean)."""
    from engine.config import boolean

    value = boolean(entry.get(key, False))
    if value is None:
        raise PlanError(f"{where}: `{key}` must be true or false, not {entry.get(key)!r}")
    return value


def _budget(data, where="plan"):
    value = data.get("max_budget_usd")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise PlanError(f"{where} `max_budget_usd` must be a positive number of dollars, not {value!r}")
    return float(value)


def build(data, raw_tasks, source, max_agents):
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise PlanError(f"plan {source} has no tasks")
    tasks, order = {}, []
    features = "features" in data and "tasks" not in data
    for n, entry in enumerate(raw_tasks, 1):
        if not isinstance(entry, dict):
            raise PlanError(f"task #{n} in {source} is not a mapping")
        task_id = _task_id(entry, n, source, features)
        if task_id in tasks:
            raise PlanError(f"duplicate task id '{task_id}'")
        tasks[task_id] = Task(
            id=task_id,
            description=_opt_str(entry, "description", task_id) or (
                _opt_str(entry, "name", task_id) if isinstance(entry.get("name"), str) else None) or "",
            depends_on=_str_list(entry.get("depends_on"), "depends_on", task_id),
            files=_str_list(entry.get("files"), "files", task_id),
            agent=agent_field(entry.get("agent"), f"task {task_id}"),
            verify=_opt_str(entry, "verify", task_id),
            expected_output=_opt_str(entry, "expected_output", task_id),
            complexity=_opt_str(entry, "complexity", task_id),
            timeout=_timeout(entry, task_id),
            allow_empty=_flag(entry, "allow_empty", f"task {task_id}"),
            max_budget_usd=_budget(entry, f"task {task_id}:"),
        )
        order.append(task_id)
    for task in tasks.values():
        for dep in task.depends_on:
            if dep not in tasks:
                raise PlanError(f"task {task.id} depends on unknown task '{dep}'")
            if dep == task.id:
                raise PlanError(f"task {task.id} depends on itself")
    work_type, base, e2e = (_plan_str(data, key) for key in ("work_type", "base", "e2e"))
    agent = agent_field(data.get("agent"), "plan")
    if base is not None and (not base.strip() or base.startswith("-") or any(c in base for c in "\0\n\r\t ")):
        raise PlanError(f"plan `base` is not a branch name: {base!r}")
    topo = topological_order(tasks, order)
    serialize_shared_files(tasks, topo)
    groups = layer(tasks, topo, max_agents)
    return Plan(tasks=tasks, order=order, groups=groups, work_type=work_type or "", base=base,
                agent=agent, e2e=e2e, source=source, max_budget_usd=_budget(data))


def check_for_run(plan_path, layout, agent=None, require_repo=True, executor=None):
    """Everything `orchestrator run` refuses, checked before anything is created; `validate`
    calls the same function, so a plan that validates runs. Returns (plan, settings, base).

    Checks: the plan (see `build`), the configuration for the plan's work type and every other
    block of it (engine.config.load), the executor settings (`executor:`/`ray:` in the file and
    the plan, or EXECUTOR = --executor; the cluster itself is not contacted), an agent for every
    task (task, plan or AGENT), and in a
    repository the base branch and that no task branch `auto/<id>` is blocked (checked out
    outside the pool, or a ref name clash). Outside a repository, with require_repo False,
    the git checks are skipped and base is the plan's own (possibly None)."""
    from engine import config

    data = read(plan_path)
    work_type = _plan_str(data, "work_type") or ""
    try:
        settings = config.load(layout.root, work_type)
    except OrchestratorError as exc:
        raise PlanError(exc.message) from None
    plan = from_data(data, plan_path, settings.max_agents)
    from engine import ray_executor

    ray_executor.load_config(layout.root, data, executor)
    command = agent_field(agent, "--agent") or plan.agent
    missing = [t for t in plan.order if not (plan.tasks[t].agent or command)]
    if missing:
        raise PlanError(f"no agent command for task {missing[0]} (set `agent` in the plan or the task, "
                        "or pass --agent)")
    try:
        repo = git.toplevel(layout.root)
    except OrchestratorError:
        if require_repo:
            raise
        return plan, settings, plan.base
    base = plan.base or git.current_branch(repo)
    if not base:
        raise PlanError("HEAD is detached; name a `base` branch in the plan")
    if not git.branch_exists(repo, base):
        raise PlanError(f"base branch does not exist: {base}")
    _check_task_branches(repo, plan, layout)
    return plan, settings, base


def _check_task_branches(repo, plan, layout):
    """A task branch that git could not create, or that is checked out outside the pool,
    would fail that task's every attempt: refuse the plan instead."""
    existing = set(git.local_branches(repo, "refs/heads/auto"))  # `auto` itself and auto/*
    if "auto" in existing:
        raise PlanError("a branch named `auto` exists, so no task branch auto/<id> can be created; "
                        "rename it first")
    listing = git.worktrees(repo)
    for t in plan.order:
        branch = plan.tasks[t].branch
        clash = next((b for b in existing if b.startswith(branch + "/")), None)
        if clash:
            raise PlanError(f"task {t}: branch {branch} cannot be created beside the existing {clash}")
        where = git.checked_out_at(repo, branch, listing)
        if where and not _inside_pool(where, layout):
            raise PlanError(f"task {t}: branch {branch} is checked out in {where}; switch that checkout "
                            "to another branch first")


def _inside_pool(path, layout):
    from engine.pool import Pool

    pool_dir = os.path.realpath(Pool(layout).dir)
    return os.path.dirname(os.path.realpath(path)) == pool_dir


# --------------------------------------------------------------------------- the DAG
def topological_order(tasks, order):
    """Kahn's algorithm, stable in plan order; a cycle raises PlanError naming it."""
    index = {t: i for i, t in enumerate(order)}
    indegree = {t: len(set(tasks[t].depends_on)) for t in order}
    dependents = {t: [] for t in order}
    for t in order:
        for dep in set(tasks[t].depends_on):
            dependents[dep].append(t)
    import heapq

    ready = [index[t] for t in order if indegree[t] == 0]
    heapq.heapify(ready)
    result = []
    while ready:
        t = order[heapq.heappop(ready)]
        result.append(t)
        for nxt in dependents[t]:
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                heapq.heappush(ready, index[nxt])
    if len(result) != len(order):
        raise PlanError(f"dependency cycle: {' -> '.join(find_cycle(tasks, set(order) - set(result)))}")
    return result


def find_cycle(tasks, candidates):
    """One cycle among `candidates` (tasks left after Kahn), as [a, b, ..., a]."""
    start = min(candidates)
    seen, path = {}, []
    node = start
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = next(d for d in sorted(tasks[node].depends_on) if d in candidates)
    cycle = path[seen[node]:]  # each task depends on the next
    return cycle + [cycle[0]]


def serialize_shared_files(tasks, topo):
    last_toucher = {}
    for t in topo:
        for f in tasks[t].files:
            prev = last_toucher.get(f)
            if prev is not None and prev not in tasks[t].depends_on and prev not in tasks[t].implicit_deps:
                tasks[t].implicit_deps.append(prev)
            last_toucher[f] = t


def layer(tasks, topo, max_agents):
    level = {}
    for t in topo:
        level[t] = 1 + max((level[d] for d in tasks[t].all_deps), default=0)
    by_level = {}
    for t in topo:
        by_level.setdefault(level[t], []).append(t)
    cap = max(1, int(max_agents))
    groups = []
    for n in sorted(by_level):
        members = by_level[n]
        groups += [members[i:i + cap] for i in range(0, len(members), cap)]
    return groups


# --------------------------------------------------------------------------- markdown
_TASK_HEADING = re.compile(r"^#{1,6}\s*Task\s+([A-Za-z0-9_.-]+)\s*:\s*(.*)$")
_FIELD = re.compile(r"^\s*[-*]\s*(Depends on|Files|Done when|Complexity|Verify|Expected output|Agent)\s*:\s*(.*)$",
                    re.IGNORECASE)


def _md_id(token):
    token = token.strip().strip("`*")
    m = re.fullmatch(r"(?:Task\s+)?([A-Za-z0-9_.-]+)", token, re.IGNORECASE)
    if not m:
        return token
    value = m.group(1)
    return f"task-{value}" if value.isdigit() else value


def parse_markdown(text):
    """The skill's markdown task list: `Task N: title` headings with `- Depends on:`,
    `- Files:`, `- Done when:` (a `command` in backticks becomes `verify`), `- Complexity:`."""
    tasks = []
    current = None
    for line in text.splitlines():
        heading = _TASK_HEADING.match(line)
        if heading:
            current = {"id": _md_id(heading.group(1)), "description": heading.group(2).strip()}
            tasks.append(current)
            continue
        if current is None:
            continue
        m = _FIELD.match(line)
        if not m:
            continue
        key, value = m.group(1).lower(), m.group(2).strip()
        if key == "depends on":
            if value.lower() not in ("", "none", "-", "n/a", "nothing"):
                current["depends_on"] = [_md_id(v) for v in re.split(r",|\band\b", value) if v.strip()]
        elif key == "files":
            current["files"] = [v.strip().strip("`") for v in value.split(",") if v.strip()]
        elif key in ("done when", "verify"):
            command = re.search(r"`([^`]+)`", value)
            if command:
                current["verify"] = command.group(1)
            current["done_when"] = value
        elif key == "complexity":
            current["complexity"] = value
        elif key == "expected output":
            current["expected_output"] = value.strip("`")
        elif key == "agent":
            current["agent"] = value.strip("`")
    return {"tasks": tasks}


def mermaid(plan, statuses=None):
    """The task DAG as Mermaid, one subgraph per parallel group."""
    statuses = statuses or {}
    lines = ["graph TD"]
    for n, group in enumerate(plan.groups, 1):
        lines.append(f"    subgraph group_{n}[\"Group {n}\"]")
        for t in group:
            label = t + (f" ({statuses[t]})" if t in statuses else "")
            lines.append(f"        {_node(t)}[\"{label}\"]")
        lines.append("    end")
    for t in plan.order:
        for dep in plan.tasks[t].depends_on:
            lines.append(f"    {_node(dep)} --> {_node(t)}")
        for dep in plan.tasks[t].implicit_deps:
            lines.append(f"    {_node(dep)} -.->|shared file: order only| {_node(t)}")
    return "\n".join(lines) + "\n"


def _node(task_id):
    return "t_" + re.sub(r"[^A-Za-z0-9_]", "_", task_id)

