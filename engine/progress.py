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
import time
import typing

from engine import deltalog, store
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
    "delta_log": "text", "delta_seq": "integer",
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


class _View(typing.NamedTuple):
    """What a Progress has read: the snapshot, its log, and the document rolled forward."""
    snapshot_version: object = None
    log_version: object = None
    data: dict = {}
    header: str = ""
    snapshot: dict = {}
    snapshot_seq: int = 0
    seq: int = 0  # the last delta applied to `data`


class _Change:
    __slots__ = ("change", "after", "done", "result", "error")

    def __init__(self, change, after):
        self.change, self.after = change, after
        self.done, self.result, self.error = False, None, None


class _StatusIndex:
    """{status: {task}} of one view's task table, moved along by the deltas that make the next
    view (engine.deltalog: each carries the whole entry of every task it changed); rebuilt
    only when a whole table arrives (a snapshot read, a table replaced)."""

    def __init__(self):
        self.of, self.by, self.status = None, {}, {}

    def _rebuild(self, data):
        tasks = data.get("tasks") if isinstance(data.get("tasks"), dict) else {}
        self.by, self.status = {}, {}
        for task_id, entry in tasks.items():
            value = entry.get("status") if isinstance(entry, dict) else None
            self.status[task_id] = value
            self.by.setdefault(value, set()).add(task_id)
        self.of = data

    def follow(self, old, new, deltas):
        if deltas is None or self.of is not old or \
                any("tasks" in (d.get("set") or ()) or "tasks" in (d.get("unset") or ()) for d in deltas):
            self.of = None
            return
        for delta in deltas:
            for task_id, entry in (delta.get("tasks") or {}).items():
                value = entry.get("status") if isinstance(entry, dict) else None
                before = self.status.get(task_id, _ABSENT)
                if before == value:
                    continue
                if before is not _ABSENT:
                    self.by.get(before, set()).discard(task_id)
                self.status[task_id] = value
                self.by.setdefault(value, set()).add(task_id)
        self.of = new

    def ids(self, data, statuses):
        if self.of is not data:
            self._rebuild(data)
        found = set()
        for value in statuses:
            found |= self.by.get(value, set())
        return found

    def count(self, data, statuses):
        if self.of is not data:
            self._rebuild(data)
        return sum(len(self.by.get(value, ())) for value in statuses)


_ABSENT = object()


class Progress:
    """The progress file rolled forward with its change log (engine.deltalog): every reader sees
    the current document; a task event appends only what it changed. A process that writes
    rarely (retry, abort, decompose) writes the snapshot at once, as before; the running
    orchestrator defers it (`defer_snapshots`), whatever the plan's size: at most one snapshot
    per SNAPSHOT_LAG second while events flow (so a script that reads the YAML file alone is
    at most that far behind, and an event is one fsynced append, not a whole write and its
    two fsyncs), one when the log outgrows the snapshot, and one when its loop ends
    (`compact()`)."""

    MIN_LOG_BYTES = 256 * 1024  # a log is compacted past this size, or past the snapshot's own
    SNAPSHOT_LAG = 1.0  # seconds: how far the YAML file alone may lag a running orchestrator's events
    LOOK_EVERY = 0.002  # seconds: another process's write is seen this much later at most (a run's
    # threads read the file thousands of times a second; two stats each were a tenth of its time)

    def __init__(self, layout):
        self.path = layout.progress
        self.name = layout.rel(layout.progress)
        self._lock = threading.RLock()
        self._holder = None  # the thread inside `locked()`, which already holds the file lock
        # (snapshot version, log version, rolled-forward data, header, snapshot data, last delta
        # applied): never handed out
        self._cache = _View()
        self._queue = []  # changes waiting for the next writer
        self._queue_lock = threading.Lock()
        self._renderer = store.YamlFragments("tasks")  # only the tasks that changed are dumped again
        self._log = deltalog.DeltaLog(self.path)
        self.defer_snapshots = False
        self._snapshot_bytes = 0
        lag = os.environ.get("ORCH_PROGRESS_SNAPSHOT_LAG", "")  # (the crash tests: a snapshot after every event)
        if lag.replace(".", "", 1).isdigit():
            self.SNAPSHOT_LAG = float(lag)
        self._timer = None
        self._looked = float("-inf")  # when the files were last found unchanged
        self._index = _StatusIndex()
        self._index_lock = threading.Lock()
        self._applied = self._pending = None  # deltas between the current view and the next

    # ------------------------------------------------------------------ reading
    def _versions(self):
        try:
            snap = store.file_version(os.stat(self.path))
        except FileNotFoundError:
            snap = None
        return snap, self._log.version()

    def _current(self, fresh=False):
        """(data, header) of the document as it is now: the cached view unless the snapshot or
        its log changed (FRESH: looked at now, as a writer under the lock must). The data is
        shared: callers must not change it."""
        view = self._cache
        now = time.monotonic()
        if not fresh and now - self._looked < self.LOOK_EVERY and view.snapshot_version is not None:
            return view.data, view.header  # (our own writes refresh the view at once)
        if (view.snapshot_version, view.log_version) == self._versions():
            self._looked = now
            return view.data, view.header
        with self._lock:
            for _ in range(20):  # (a compaction by another process between our reads: look again)
                self._applied = None
                view = self._refresh(self._cache)
                if view is not None:
                    self._set(view, self._applied)
                    self._looked = time.monotonic()
                    return view.data, view.header
            raise StateFileError(f"{self.name}: it keeps changing under its change log; try again")

    def _refresh(self, view):
        """The view for the files as they are now, from VIEW where it still holds; None when
        the snapshot changed while its log was read (read both again). The versions are taken
        before reading: an append landing meanwhile is seen as a change by the next look,
        never taken as read."""
        snap_version, log_version = self._versions()
        if snap_version is None:
            return _View(log_version=log_version)
        if snap_version != view.snapshot_version:
            data, header = store.load_yaml_mapping(self.path)
            data = data or {}
            problem = shape_problem(data)
            if problem:  # refused before any reader or writer sees it; the file stays as it is
                raise StateFileError(f"{self.name}: {problem} (file left untouched)")
            self._log.rewind()
            self._snapshot_bytes = os.stat(self.path).st_size
            seq = data.get(deltalog.SEQ_KEY) if isinstance(data.get(deltalog.SEQ_KEY), int) else 0
            view = _View(snap_version, None, data, header, data, seq, seq)
        header, records, restarted = self._log.read()
        if self._versions()[0] != snap_version:
            return None  # a whole write (and perhaps a new log) came between: both again
        if restarted and view.seq != view.snapshot_seq:  # the log was replaced: from the snapshot again
            view = _View(view.snapshot_version, None, view.snapshot, view.header, view.snapshot,
                         view.snapshot_seq, view.snapshot_seq)
        log_id = view.snapshot.get(deltalog.LOG_KEY)
        base = header.get("base") if header is not None else None
        if header is None or log_id is None or header.get("log") != log_id or \
                not isinstance(base, int) or base > view.snapshot_seq:
            # not this snapshot's log (another lineage, or one that went on from a later snapshot
            # of it than this file, put back by hand): the snapshot stands alone
            return view._replace(log_version=log_version, data=view.snapshot, seq=view.snapshot_seq)
        data, seq = view.data, view.seq
        fresh = [r for r in records if r["n"] > seq]
        for record in fresh:
            data = deltalog.apply(data, record["d"])
            seq = record["n"]
        if view.data is self._cache.data:  # (only these deltas since the current view: the index follows them)
            self._applied = [r["d"] for r in fresh]
        if fresh:
            problem = shape_problem(data)
            if problem:
                raise StateFileError(f"{self._log.path}: {problem} (file left untouched)")
        return view._replace(log_version=log_version, data=data, seq=seq)

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

    def _set(self, view, deltas=None):
        """Make VIEW current. The status index follows DELTAS (those that made VIEW's data from
        the current view's) or is rebuilt on its next use. (Callers hold self._lock.)"""
        with self._lock, self._index_lock:
            self._index.follow(self._cache.data, view.data, deltas)
            self._cache, self._pending = view, None

    def ids_with(self, statuses):
        """The tasks whose status is one of STATUSES (values), from the status index: no pass
        over the task table (a run's scheduler asks this many times a second)."""
        data = self._current()[0]
        with self._index_lock:  # (not the file's lock: a reader never waits for a writer's fsync)
            return self._index.ids(data, statuses)

    def count_with(self, statuses):
        data = self._current()[0]
        with self._index_lock:
            return self._index.count(data, statuses)

    def status_values(self):
        """Every status value some task has now (a handful)."""
        data = self._current()[0]
        with self._index_lock:
            self._index.ids(data, ())
            return [v for v, ids in self._index.by.items() if ids]

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
        """Apply every queued change, in order, and record them at once (locks held): one
        append to the change log, or the whole snapshot when it is due."""
        with self._queue_lock:
            batch, self._queue = self._queue, []
        if not batch:
            return
        try:
            base, header = self._current(fresh=True)
            data = base
            applied, deltas = [], []
            for item in batch:
                work = deltalog.draft(data)
                try:
                    item.result = item.change(work)
                    delta = deltalog.changes(data, work)
                    deltalog.check_encodable(delta)  # (a value JSON cannot hold fails this change only)
                except Exception as exc:  # this change only: the others go on
                    item.error = exc
                    continue
                if delta is not None:
                    data = deltalog.apply(data, delta)
                    deltas.append(delta)
                applied.append(item)
            if deltas:
                self._record(data, header or HEADER, deltas)
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

    def _record(self, data, header, deltas):
        view = self._cache
        self._pending = deltas  # (they live in a snapshot written now, unnumbered)
        if not self.defer_snapshots:
            self._write_snapshot(data, header)
            return
        log_id = view.snapshot.get(deltalog.LOG_KEY)
        continues = log_id is not None and self._log.header_is(log_id, view.snapshot_seq)
        if not continues or self._log.size() > max(self.MIN_LOG_BYTES, self._snapshot_bytes):
            self._write_snapshot(data, header, view.seq, log_id or deltalog.new_id())
            return
        try:
            last = self._log.append(log_id, view.seq + 1, deltas)
            self._set(view._replace(log_version=self._log.version(), data=data, seq=last), deltas)
        except BaseException:  # (Ctrl-C between the append and the view): read it all again next time
            self._log.rewind()
            self._set(_View())
            raise
        if self._timer is None:  # the YAML file alone lags the events by at most SNAPSHOT_LAG
            self._timer = threading.Timer(self.SNAPSHOT_LAG, self._snapshot_due)
            self._timer.daemon = True
            self._timer.start()

    def _snapshot_due(self):
        self._timer = None
        with contextlib.suppress(Exception):  # (the next event, or the loop's end, writes it then)
            with self.locked():
                data, header = self._current(fresh=True)
                view = self._cache
                log_id = view.snapshot.get(deltalog.LOG_KEY)
                if log_id is not None and view.seq != view.snapshot_seq:
                    self._pending = []  # (the same tasks, in a new dict)
                    self._write_snapshot(data, header or HEADER, view.seq, log_id)

    def _write_snapshot(self, data, header, seq=0, log_id=None):
        """The whole document. With LOG_ID, naming that change log and the last delta it
        holds (SEQ), and a fresh log continuing it (rewritten only when it holds deltas or
        belongs to another snapshot); without, a file that stands alone, as a small run's or
        one at rest is (no bookkeeping keys; an old log is removed)."""
        data = dict(data)
        if log_id:
            data[deltalog.LOG_KEY], data[deltalog.SEQ_KEY] = log_id, seq
        else:
            data.pop(deltalog.LOG_KEY, None)
            data.pop(deltalog.SEQ_KEY, None)
            seq = 0
        text = self._renderer.dump(data, header)
        store.atomic_write(self.path, text)
        self._snapshot_bytes = len(text)
        if log_id and not self._log.header_is(log_id, seq, empty=True):
            self._log.start(log_id, seq)
        elif not log_id and self._log.version() is not None:
            self._log.remove()
        snap_version, log_version = self._versions()
        self._set(_View(snap_version, log_version, data, header, data, seq, seq), self._pending)

    def compact(self):
        """The rolled-forward document written alone, with no log beside it (a run's loop
        ending, `run`/`resume` picking up a killed run's log, a checkpoint about to copy the
        file): the YAML file alone is then current."""
        with self.locked():
            data, header = self._current(fresh=True)
            view = self._cache
            if view.snapshot_version is not None and (view.snapshot.get(deltalog.LOG_KEY) is not None
                                                      or self._log.version() is not None):
                self._pending = []  # (the same tasks, in a new dict)
                self._write_snapshot(data, header or HEADER)

    def set_task(self, task_id, **fields):
        def change(data):
            data.setdefault("tasks", {}).setdefault(task_id, {}).update(fields)
        self.update(change)
