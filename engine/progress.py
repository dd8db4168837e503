"""`.claude/auto-progress.yaml`: the run's task table, written so the checkpoint commands
finally see real data (`tasks.<id>.status/branch/group/iterations/retry_count/qa_*`,
`parallel_groups.group_N.tasks`). Every update is one locked read-modify-write; a
process-local lock also serializes the executor's threads.

Why it is built this way: with eight workers and the merge queue all recording task events,
the progress file is the run's busiest resource, and every write is a YAML dump and two
fsyncs under the GIL. So:
- the parsed file is cached and re-read only when another process replaced it (every write is
  a rename, so (inode, size, mtime, ctime) identifies a version); our own write refreshes it;
- writers commit as a group: a thread that finds the lock taken leaves its change in a queue,
  and whoever holds the lock next applies every queued change in order and writes the file
  once. Each change is still all-or-nothing (it runs on a copy; one that raises is dropped and
  its caller gets the exception), and each caller returns only once its change is on disk;
- readers that only look (`peek`, `get`, `task`) do not copy the whole table;
- a write dumps again only the tasks that changed (store.YamlFragments).
"""

import contextlib
import copy
import marshal
import os
import re
import threading

from engine import store
from engine.errors import OrchestratorError, StateFileError

HEADER = "# parallel-orchestrator run progress"

# ---------------------------------------------------------------------------- the file's shape
# What every reader of the file relies on: the type of each field the engine writes and reads
# (any other key is kept and not looked at). A YAML null is accepted wherever a value is, as the
# engine writes `slot: null`, `pid: null`; the containers the engine adds to (`tasks`, a task,
# `parallel_groups`, a group) must be mappings. `shape_problem` is the one check, run on every
# fresh parse (`Progress`, the dashboard's reader): a hand edit of the wrong shape is one line
# naming the file and what is wrong, never a crash in whichever command reads it first. Strings
# go to git and to paths: none holds a NUL, and a commit is a full object name (not an option).
_OBJECT_NAME = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_KINDS = {
    "text": (lambda v: isinstance(v, str) and "\0" not in v, "a string"),
    "commit": (lambda v: isinstance(v, str) and bool(_OBJECT_NAME.fullmatch(v)), "a commit id (40 or 64 hex digits)"),
    "integer": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "number": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "flag": (lambda v: isinstance(v, bool), "true or false"),
    "mapping": (lambda v: isinstance(v, dict), "a mapping"),
    "list": (lambda v: isinstance(v, list), "a list"),
}
_LISTS = {"texts": "text", "integers": "integer", "records": "mapping"}  # a list of ...
_PLURAL = {"text": "strings", "integer": "integers", "mapping": "mappings"}
RUN_FIELDS = {
    "status": "text", "plan_file": "text", "plan_digest": "text", "goal": "text", "goal_digest": "text",
    "planner": "text", "base": "text", "work_type": "text", "executor": "text", "run_id": "text", "log": "text",
    "mode": "text", "orchestrator_pid": "integer", "orchestrator_pid_start": "text", "detached": "flag",
    "current_group": "integer", "total_groups": "integer", "concurrency": "integer", "scope_groups": "integers",
    "cost_usd": "number", "max_budget_usd": "number", "planner_cost_usd": "number",
}
TASK_FIELDS = {
    "status": "text", "name": "text", "branch": "text", "group": "integer", "iterations": "integer",
    "retry_count": "integer", "slot": "text", "pid": "integer", "pid_start": "text", "base_commit": "commit",
    "wait_base": "commit", "recheck": "flag", "attempts": "records", "elapsed": "number", "qa_verified": "flag",
    "qa_feedback": "text", "test_result": "text", "changed_files": "texts", "approved_tip": "commit",
    "merged_commit": "commit", "depends_on": "texts", "file_order": "texts", "files": "texts", "verify": "text",
    "expected_output": "text", "failure": "text", "hint": "text", "last_setback": "text", "cost_usd": "number",
    "tokens_in": "integer", "tokens_out": "integer", "turns": "integer", "kept_attempts": "texts",
    "session_id": "text", "node": "text",
}
GROUP_FIELDS = {"tasks": "texts", "status": "text", "e2e": "text"}


def describe(value):
    """What a YAML value is, in a message's words."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"the string {value[:40]!r}" + ("…" if len(value) > 40 else "")
    for kind in ("flag", "integer", "number", "mapping", "list"):
        if _KINDS[kind][0](value):
            return "a boolean" if kind == "flag" else _KINDS[kind][1]
    return f"a {type(value).__name__}"


def _mismatch(where, value, kind):
    if kind == "text" and isinstance(value, str):
        return f"{where} holds a NUL character"
    return f"{where} is {describe(value)}, expected {_KINDS[kind][1]}"


def shape_problem(data):
    """What is wrong with the shape of a parsed progress file (one phrase naming the field), or
    None when every reader can rely on it. Besides the fields' types: every mapping key is a
    string (JSON, `status --json`, cannot hold some of YAML's) and no YAML alias shares a
    value between two places (the engine writes none; one makes a loop or a huge expansion)."""
    if not isinstance(data, dict):
        return f"the top level is {describe(data)}, expected a mapping"
    problem = _keys_and_aliases(data)
    if problem:
        return problem
    problem = _fields(data, RUN_FIELDS, "")
    if problem:
        return problem
    for name, fields, entry_kind in (("tasks", TASK_FIELDS, "a task"), ("parallel_groups", GROUP_FIELDS, "a group")):
        if name not in data:
            continue
        table = data[name]
        if not isinstance(table, dict):
            return f"{name} is {describe(table)}, expected a mapping"
        for key, entry in table.items():
            if "\0" in key:
                return f"{name} has the key {key!r}, which holds a NUL character"
            if not isinstance(entry, dict):
                return f"{name}.{key} is {describe(entry)}, expected a mapping ({entry_kind})"
            problem = _fields(entry, fields, f"{name}.{key}.")
            if problem:
                return problem
    return None


def _fields(entry, fields, prefix):
    for key, kind in fields.items():
        value = entry.get(key)
        if value is None:
            continue
        item_kind = _LISTS.get(kind)
        if item_kind is None:
            if not _KINDS[kind][0](value):
                return _mismatch(prefix + key, value, kind)
            continue
        if not isinstance(value, list):
            return f"{prefix}{key} is {describe(value)}, expected a list of {_PLURAL[item_kind]}"
        for n, item in enumerate(value):
            if not _KINDS[item_kind][0](item):
                return _mismatch(f"{prefix}{key}[{n}]", item, item_kind)
    return None


def _keys_and_aliases(data):
    """Every key a string, no container reached twice (iteratively: any depth the parser took)."""
    seen = set()
    todo = [(data, "")]
    while todo:
        value, where = todo.pop()
        if id(value) in seen:
            return f"{where or 'the top level'} repeats a value through a YAML alias (*name); write it out"
        seen.add(id(value))
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    return f"{where or 'the top level'} has the key {key!r}, {describe(key)}: keys must be strings"
                if isinstance(item, (dict, list, tuple)):
                    todo.append((item, f"{where}.{key}" if where else key))
        else:  # a list, or a tuple (`!!pairs`, `!!omap`)
            for n, item in enumerate(value):
                if isinstance(item, (dict, list, tuple)):
                    todo.append((item, f"{where}[{n}]"))
    return None


def clone(data):
    """A deep copy of plain YAML data (dicts, lists, scalars): marshal does it in C, several
    times faster than copy.deepcopy; anything marshal refuses falls back to deepcopy."""
    try:
        return marshal.loads(marshal.dumps(data))
    except ValueError:
        return copy.deepcopy(data)


class _Change:
    __slots__ = ("change", "after", "done", "result", "error")

    def __init__(self, change, after):
        self.change, self.after = change, after
        self.done, self.result, self.error = False, None, None


class Progress:
    def __init__(self, layout):
        self.path = layout.progress
        self.name = layout.rel(layout.progress)
        self._lock = threading.RLock()
        self._holder = None  # the thread inside `locked()`, which already holds the file lock
        self._cache = (None, None, "")  # (file version, parsed data, header): never handed out
        self._queue = []  # changes waiting for the next writer
        self._queue_lock = threading.Lock()
        self._renderer = store.YamlFragments("tasks")  # only the tasks that changed are dumped again

    # ------------------------------------------------------------------ reading
    def _current(self):
        """(data, header) of the file as it is now: the cached parse unless it changed. The
        data is shared: callers must not change it."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return {}, ""
        cached_version, cached, header = self._cache
        if cached_version == store.file_version(st):
            return cached, header
        # Changed: by another process, or by our own writer that has renamed the new file into
        # place but not yet recorded it (then waiting for it is cheaper than parsing again).
        with self._lock:
            try:
                version = store.file_version(os.stat(self.path))
            except FileNotFoundError:
                return {}, ""
            cached_version, cached, header = self._cache
            if cached_version != version:
                data, header = store.load_yaml_mapping(self.path)
                cached = data or {}
                problem = shape_problem(cached)
                if problem:  # refused before any reader or writer sees it; the file stays as it is
                    raise StateFileError(f"{self.name}: {problem} (file left untouched)")
                self._cache = (version, cached, header)
        return cached, header

    def load(self):
        """The parsed file (a private copy the caller may change)."""
        return clone(self._current()[0])

    def peek(self):
        """The parsed file, shared and read-only: for a caller that only looks."""
        return self._current()[0]

    def get(self, key, default=None):
        """One top-level value (a copy when it is a mapping or a list)."""
        value = self._current()[0].get(key, default)
        return clone(value) if isinstance(value, (dict, list)) else value

    def task(self, task_id):
        """One task's entry (a private copy), or {}."""
        entry = (self._current()[0].get("tasks") or {}).get(task_id)
        return clone(entry) if isinstance(entry, dict) else {}

    def exists(self):
        return os.path.exists(self.path)

    # ------------------------------------------------------------------ writing
    @contextlib.contextmanager
    def locked(self):
        """Hold both locks across several steps."""
        with self._lock:
            if self._holder is threading.current_thread():
                yield
                return
            with store.file_lock(self.path):
                self._holder = threading.current_thread()
                try:
                    yield
                finally:
                    self._holder = None

    def update(self, change, after=None):
        """Apply change(data) and write; returns what change returned. AFTER(result), if
        given, runs once the write is on disk and before the lock is let go (the journal
        records of a task event, so records and file keep one order)."""
        mine = _Change(change, after)
        with self._queue_lock:
            self._queue.append(mine)
        try:
            with self.locked():
                if not mine.done:  # else a writer before us took it along
                    self._commit()
        except BaseException:  # (Ctrl-C while waiting): a change whose caller gave up is never applied later
            with self._queue_lock:
                if mine in self._queue:
                    self._queue.remove(mine)
            raise
        if mine.error is not None:
            raise mine.error
        return mine.result

    def _commit(self):
        """Apply every queued change, in order, and write the file once (locks held)."""
        with self._queue_lock:
            batch, self._queue = self._queue, []
        if not batch:
            return
        try:
            base, header = self._current()
            data = base
            applied = []
            for item in batch:
                trial = clone(data)
                try:
                    item.result = item.change(trial)
                except Exception as exc:  # this change only: the others go on
                    item.error = exc
                    continue
                data = trial
                applied.append(item)
            if applied:
                store.atomic_write(self.path, self._renderer.dump(data, header or HEADER))
                self._cache = (store.file_version(os.stat(self.path)), data, header or HEADER)
            for item in applied:
                if item.after is not None:
                    try:
                        item.after(item.result)
                    except Exception as exc:
                        item.error = exc
        except Exception as exc:  # the write itself failed: nobody's change is on disk
            for item in batch:
                if item.error is None:
                    item.error = exc
        except BaseException as exc:  # Ctrl-C in this thread: it is this thread's, raised here
            for item in batch:
                if item.error is None and not item.done:
                    item.error = OrchestratorError("interrupted while writing the progress file")
            raise
        finally:
            for item in batch:
                item.done = True

    def set_task(self, task_id, **fields):
        def change(data):
            data.setdefault("tasks", {}).setdefault(task_id, {}).update(fields)
        self.update(change)
