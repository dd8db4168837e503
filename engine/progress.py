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
import threading

from engine import store
from engine.errors import OrchestratorError

HEADER = "# parallel-orchestrator run progress"


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
