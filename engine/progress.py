"""`.claude/auto-progress.yaml`: the run's task table, written so the checkpoint commands
finally see real data (`tasks.<id>.status/branch/group/iterations/retry_count/qa_*`,
`parallel_groups.group_N.tasks`). Every update is one locked read-modify-write; a
process-local lock also serializes the executor's threads.
"""

import contextlib
import copy
import os
import threading

from engine import store



class Progress:
    def __init__(self, layout):
        self.path = layout.progress
        self._lock = threading.RLock()
        self._holder = None  # the thread inside `locked()`, which already holds the file lock
        self._cache = (None, None)

    def load(self):
        """The parsed file (a private copy). Re-parsed only when the file changed: every
        write is a rename, so (inode, size, mtime) identifies a version."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return {}
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached_key, cached = self._cache
        if cached_key != key:
            data, _ = store.load_yaml_mapping(self.path)
            cached = data or {}
            self._cache = (key, cached)
        return copy.deepcopy(cached)

    def exists(self):
        return os.path.exists(self.path)

    @contextlib.contextmanager
    def locked(self):
        """Hold both locks across several steps (an update and its journal record)."""
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

    def update(self, change):
        """Apply change(data) under the locks and write; returns what change returned."""
        with self.locked():
            data, header = store.load_yaml_mapping(self.path)
            data = data or {}
            result = change(data)
            store.write_yaml(self.path, data, header or "# parallel-orchestrator run progress")
            return result

    def set_task(self, task_id, **fields):
        def change(data):
            data.setdefault("tasks", {}).setdefault(task_id, {}).update(fields)
        self.update(change)

    def task(self, task_id):
        return (self.load().get("tasks") or {}).get(task_id) or {}
