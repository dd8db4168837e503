"""The progress file's change log: what a task event writes is proportional to the event.

The progress file (`.claude/auto-progress.yaml`) holds every task of the run. Written whole on
every task event, a 1,000-task run wrote 790 KB (and fsynced it twice) a dozen times per
task, so the cost per task grew with the plan. Instead:

- `Draft` lets a change function run on what looks like the whole document while copying only
  the entries it reaches (a task, a top-level value); `changes` turns the draft into a delta
  holding just the entries that differ, `apply` makes the next document from the last one with
  shallow copies (C-speed dict copies; no deep copy of the plan).
- `DeltaLog` appends each delta as one JSON line (checksummed, fsynced) to
  `.claude/auto-progress.changes.jsonl`. Its first line names the snapshot it continues
  (`{"log": ID, "base": N}`); the snapshot (the YAML file) records the same `delta_log: ID`
  and the last delta it contains, `delta_seq: N`. A reader rolls the snapshot forward with
  the deltas numbered above N, and only with a log of the same ID: a snapshot replaced by hand,
  by a checkpoint restore or by a new run is never mixed with an older run's deltas.
- Compaction (`engine.progress.Progress.compact`) writes the rolled-forward snapshot and then
  starts the log again: when the log has grown past the snapshot's size (so its cost per
  event stays constant), and whenever a run stops, so the YAML file alone is current once no
  run is going on. A kill between the two steps leaves a log whose deltas the snapshot
  already holds (numbered at most N): skipped. A reader that read the snapshot just before a
  compaction finds the new log's base above its snapshot's N and reads the snapshot again.
"""

import json
import os

from engine import store

SUFFIX = ".changes.jsonl"
LOG_KEY, SEQ_KEY = "delta_log", "delta_seq"  # in the snapshot: which log continues it, up to which delta


def clone(value):
    from engine.progress import clone as deep

    return deep(value)


class Draft(dict):
    """A shallow copy of a mapping whose values are deep-copied the first time they are reached
    (and, for NESTED, a Draft of it); the keys reached, set or removed are recorded."""

    def __init__(self, source, nested=()):
        super().__init__(source)
        self.reached, self.removed, self._nested = set(), set(), nested

    def _take(self, key):
        if key not in self.reached and dict.__contains__(self, key):
            value = dict.__getitem__(self, key)
            if key in self._nested and type(value) is dict:
                value = Draft(value)
            elif isinstance(value, (dict, list)):
                value = clone(value)
            dict.__setitem__(self, key, value)
        self.reached.add(key)

    def __getitem__(self, key):
        self._take(key)
        return dict.__getitem__(self, key)

    def get(self, key, default=None):
        self._take(key)
        return dict.get(self, key, default)

    def setdefault(self, key, default=None):
        self._take(key)
        return dict.setdefault(self, key, default)

    def __setitem__(self, key, value):
        self.reached.add(key)
        dict.__setitem__(self, key, value)

    def __delitem__(self, key):
        self.removed.add(key)
        dict.__delitem__(self, key)

    def pop(self, key, *default):
        self._take(key)
        self.removed.add(key)
        return dict.pop(self, key, *default)

    def update(self, *args, **kw):
        for key, value in dict(*args, **kw).items():
            self[key] = value

    def _all(self):
        for key in list(dict.keys(self)):
            self._take(key)

    def keys(self):  # (`{**draft}` goes through keys(), `dict(draft)` through iteration: every
        self._all()    # value is copied first)
        return dict.keys(self)

    def __iter__(self):
        self._all()
        return dict.__iter__(self)

    def __ior__(self, other):
        self.update(other)
        return self

    def __or__(self, other):
        return dict(self.copy(), **dict(other))

    def items(self):
        self._all()
        return dict.items(self)

    def values(self):
        self._all()
        return dict.values(self)

    def popitem(self):
        self._all()
        key, value = dict.popitem(self)
        self.removed.add(key)
        return key, value

    def clear(self):
        self.removed.update(dict.keys(self))
        dict.clear(self)

    def copy(self):
        self._all()
        return {k: clone(v) for k, v in dict.items(self)}

    def __reduce__(self):  # (never pickled as a Draft)
        return (dict, (dict(self),))


def plain(value):
    """VALUE as the file holds it: every Draft a plain dict (its unreached entries shared),
    every tuple a list (as YAML writes one and every reader reads it back)."""
    if isinstance(value, Draft):
        return {k: plain(v) for k, v in dict.items(value)}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


NESTED = ("tasks", "parallel_groups")  # tables whose entries are copied, compared and logged one by one


def draft(data):
    return Draft(data, nested=NESTED)


def changes(base, work):
    """The delta from BASE to the Draft WORK: {"set": {key: value}, "unset": [keys],
    "tasks": {id: entry}, "parallel_groups": {name: group}} with only what differs (None when
    nothing does). An entry removed from a table (rare: a plan adopted without a task) makes
    the delta carry that whole table under "set"."""
    delta = {}
    for key in work.reached | work.removed:
        present = dict.__contains__(work, key)
        if not present:
            if key in base:
                delta.setdefault("unset", []).append(key)
            continue
        value = dict.__getitem__(work, key)
        if key in NESTED and isinstance(value, Draft) and isinstance(base.get(key), dict) and not value.removed:
            old = base[key]
            for name in value.reached:
                if not dict.__contains__(value, name):
                    continue  # (looked for with .get, never there)
                entry = plain(dict.__getitem__(value, name))
                if name not in old or old[name] != entry:
                    delta.setdefault(key, {})[name] = entry
            continue
        value = plain(value)
        if key not in base or base[key] != value:
            delta.setdefault("set", {})[key] = value
    return delta or None


def check_encodable(delta):
    """Raise (TypeError, ValueError) unless DELTA goes into the log as it would be written
    whole: a set, a key that is not a string or a lone surrogate is refused here, for its own
    change only (never the whole batch at the append)."""
    if delta is not None:
        json.dumps(delta, ensure_ascii=False).encode("utf-8")
        for value in _containers(delta):
            if isinstance(value, dict) and not all(isinstance(k, str) for k in value):
                raise TypeError("a key that is not a string in the progress file")


def _containers(value):
    todo = [value]
    while todo:
        item = todo.pop()
        yield item
        if isinstance(item, dict):
            todo.extend(v for v in item.values() if isinstance(v, (dict, list, tuple)))
        elif isinstance(item, (list, tuple)):
            todo.extend(v for v in item if isinstance(v, (dict, list, tuple)))


def apply(data, delta):
    """The document after DELTA: DATA is not changed (untouched entries are shared)."""
    new = dict(data)
    for key, value in (delta.get("set") or {}).items():
        new[key] = value
    for key in delta.get("unset") or ():
        new.pop(key, None)
    for key in NESTED:
        if delta.get(key):
            table = dict(new.get(key) if isinstance(new.get(key), dict) else {})
            table.update(delta[key])
            new[key] = table
    return new


def roll_forward(snapshot, log):
    """SNAPSHOT (a parsed progress file) with the deltas of LOG that continue it: for a reader
    that keeps no state between reads (the dashboard)."""
    log.rewind()
    header, records, _ = log.read()
    seq = snapshot.get(SEQ_KEY) if isinstance(snapshot.get(SEQ_KEY), int) else 0
    if header is None or header.get("log") != snapshot.get(LOG_KEY) or snapshot.get(LOG_KEY) is None or \
            not isinstance(header.get("base"), int) or header["base"] > seq:
        return snapshot  # not its log, or compacted past it (the next read sees the new snapshot)
    data = snapshot
    for record in records:
        if record["n"] > seq:
            data = apply(data, record["d"])
    return data


def new_id():
    return os.urandom(6).hex()


class DeltaLog:
    """The append-only log beside a snapshot (see the module's docstring). Its writers hold the
    snapshot's file lock; readers need none (every replacement is a rename, appends only
    grow the file, and a torn last line is ignored until the next append cuts it off)."""

    def __init__(self, snapshot_path):
        self.path = snapshot_path + SUFFIX
        self.rewind()

    def rewind(self):
        """Forget what was read: the next `read` starts from the beginning."""
        self._inode, self._offset, self._header, self._count = None, 0, None, 0

    def version(self):
        try:
            return store.file_version(os.stat(self.path))
        except FileNotFoundError:
            return None

    def read(self):
        """(header or None, records not read before, restarted): only the bytes added since
        the last read, unless the file was replaced (restarted: every record again)."""
        try:
            fh = store._open_read(self.path)
        except FileNotFoundError:
            restarted = self._inode is not None
            self.rewind()
            return None, [], restarted
        with fh:
            st = os.fstat(fh.fileno())
            restarted = False
            if self._inode != st.st_ino or st.st_size < self._offset:
                restarted = self._inode is not None
                self.rewind()
                self._inode = st.st_ino
            fh.seek(self._offset)
            chunk = fh.read(st.st_size - self._offset)
        end = chunk.rfind(b"\n") + 1
        records = []
        for raw in chunk[:end].split(b"\n"):
            if not raw.strip():
                continue
            record = store.decode_journal_line(raw.decode("utf-8", "replace"))
            if record is None:
                continue  # a corrupt line: skipped, as the journal does
            if self._header is None and self._count == 0 and "log" in record:
                self._header = record
            elif isinstance(record.get("n"), int) and isinstance(record.get("d"), dict):
                records.append(record)
        self._offset += end
        self._count += len(records)
        return self._header, records, restarted

    def header_is(self, log_id, base, empty=False):
        """Whether the log (as last read) continues snapshot LOG_ID (from BASE or earlier; with
        EMPTY, exactly at BASE and holding no delta yet)."""
        header = self._header
        if header is None or header.get("log") != log_id or not isinstance(header.get("base"), int):
            return False
        return header["base"] == base and self._count == 0 if empty else header["base"] <= base

    def append(self, log_id, first_n, deltas):
        """Append DELTAS numbered FIRST_N.. (the caller holds the snapshot's lock and has just
        read the log to its end); returns the last number."""
        if not self.header_is(log_id, first_n - 1):
            raise RuntimeError("the change log does not continue the snapshot")
        fd = store.open_fd(self.path, os.O_RDWR | os.O_CREAT)
        try:
            st = os.fstat(fd)
            if st.st_ino != self._inode:
                raise RuntimeError("the change log was replaced while locked")
            if self._offset < st.st_size:
                os.ftruncate(fd, self._offset)  # a torn line of a killed writer
            lines = (store.checksummed_line({"n": first_n + i, "d": d}) for i, d in enumerate(deltas))
            data = "".join(lines).encode("utf-8")
            os.lseek(fd, self._offset, os.SEEK_SET)
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
            self._offset += len(data)
            self._count += len(deltas)
        finally:
            os.close(fd)
        return first_n + len(deltas) - 1

    def start(self, log_id, base):
        """A new log continuing snapshot LOG_ID at BASE (written after the snapshot)."""
        text = store.checksummed_line({"log": log_id, "base": base})
        store.atomic_write(self.path, text, keep_last_good=False)
        self._inode = os.stat(self.path).st_ino
        self._offset, self._header, self._count = len(text.encode("utf-8")), {"log": log_id, "base": base}, 0

    def remove(self):
        """No log: the snapshot stands alone (the caller holds the snapshot's lock)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.rewind()

    def size(self):
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return 0
