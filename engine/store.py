"""The one place that reads and writes state files.

Rules every writer follows (DESIGN.md, Durability):
- a write goes to a temp file in the same directory, is fsynced, renamed over the target,
  and the directory is fsynced, so a reader sees the old file or the new one, never half;
- every read-modify-write holds an exclusive `flock` on `<file>.lock`, a file that is never
  deleted (deleting it would let two processes lock two different inodes);
- a file that does not parse is reported with its path and the parser's message and is
  never overwritten; the last good copy of every file we write is kept as `<file>.last-good`;
- keys we do not know are carried through untouched (we load into plain dicts and write them
  back in their order); a leading comment block is kept.
"""

import contextlib
import fcntl
import itertools
import json
import os
import time
import zlib

from engine.errors import StateFileError

LAST_GOOD_SUFFIX = ".last-good"


# --------------------------------------------------------------------------- locking
@contextlib.contextmanager
def file_lock(path):
    """Hold an exclusive flock on `<path>.lock` for the duration of the block."""
    lock_path = path + ".lock"
    os.makedirs(os.path.dirname(lock_path) or ".", exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


# --------------------------------------------------------------------------- writing
def _fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_tmp_counter = itertools.count()


def atomic_write(path, data, keep_last_good=True):
    """Replace `path` with `data` (str or bytes) atomically and durably."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    # Our own temp name (not tempfile: its import costs every CLI call more than it saves).
    while True:
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{next(_tmp_counter)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            mode = os.stat(path).st_mode & 0o777
        except FileNotFoundError:
            mode = 0o644
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)
    if keep_last_good:
        _write_last_good(path, data)


def _write_last_good(path, data):
    """A plain copy (not a hard link: an in-place edit of the live file must not reach it)."""
    target = path + LAST_GOOD_SUFFIX
    tmp = target + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, target)


def append_text(path, text):
    """Append to a plain log-like file (markdown memory notes) and fsync it."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


# --------------------------------------------------------------------------- YAML
_yaml = None
_loader = None


def _yaml_module():
    """PyYAML, with the C loader/dumper when present and timestamps kept as strings.

    Imported lazily; the loader does not resolve timestamps, so `started_at: 2026-01-01T...`
    stays the string a hand-writer or yq put there instead of becoming a datetime that
    would be written back in another format.
    """
    global _yaml, _loader
    if _yaml is None:
        import yaml

        base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

        class Loader(base):
            pass

        Loader.yaml_implicit_resolvers = {
            first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
            for first, resolvers in base.yaml_implicit_resolvers.items()
        }
        _yaml, _loader = yaml, Loader
    return _yaml


def _leading_comments(text):
    lines = []
    for line in text.splitlines():
        if line.startswith("#") or (lines and not line.strip()):
            lines.append(line)
        else:
            break
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines)


def parse_yaml(text, path):
    """Parse YAML text; a failure raises StateFileError naming the path and line."""
    yaml = _yaml_module()
    try:
        data = yaml.load(text, Loader=_loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise StateFileError(f"cannot parse {path}:{where}: {problem} (file left untouched)") from None
    return data


def load_yaml_mapping(path):
    """Return (mapping, header_comments) or (None, "") if the file does not exist.

    An empty file is an empty mapping; anything but a mapping at the top is an error.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        return None, ""
    except UnicodeDecodeError:
        raise StateFileError(f"cannot parse {path}: not UTF-8 text (file left untouched)") from None
    data = parse_yaml(text, path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise StateFileError(f"cannot parse {path}: top level is not a mapping (file left untouched)")
    return data, _leading_comments(text)


def dump_yaml(data, header=""):
    """Render a mapping as block YAML, keys in their order, with an optional comment header."""
    yaml = _yaml_module()
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    body = yaml.dump(data, Dumper=dumper, default_flow_style=False, sort_keys=False,
                     allow_unicode=True, width=100000)
    return (header + "\n\n" if header else "") + body


def write_yaml(path, data, header=""):
    atomic_write(path, dump_yaml(data, header))


# --------------------------------------------------------------------------- JSON
def load_json(path):
    """Return the parsed JSON document or None if the file does not exist."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        line = getattr(exc, "lineno", None)
        where = f" line {line}" if line else ""
        raise StateFileError(f"cannot parse {path}:{where}: {exc.msg if hasattr(exc, 'msg') else exc} "
                             "(file left untouched)") from None


def write_json(path, data):
    atomic_write(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- journal
def utc_now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _checksum(record):
    """CRC-32 of the canonical JSON: enough to tell a torn or hand-mangled line from a good one."""
    payload = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"{zlib.crc32(payload.encode('utf-8')):08x}"


def _decode_line(line):
    """A journal record, or None when the line is torn or fails its checksum."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    expected = record.pop("sum", None)
    if expected != _checksum(record):
        return None
    return record


def decode_journal_line(line):
    """A journal line as its record, or None when it is torn or fails its checksum (for readers
    that follow the journal themselves, e.g. the dashboard)."""
    return _decode_line(line)


class Journal:
    """Append-only JSON lines, each with a sequence number, UTC time, pid and checksum.

    A torn last line (a writer killed mid-append) is ignored by readers and cut off by the
    next writer before it appends, so the file never holds garbage between good records.
    """

    TAIL_BYTES = 65536

    def __init__(self, path):
        self.path = path

    def append(self, event, **fields):
        """Durably append one record and return it (with its `seq`)."""
        with file_lock(self.path):
            last, valid_end = self._tail()
            record = {"seq": (last["seq"] + 1) if last else 1, "ts": utc_now(), "event": event,
                      "pid": os.getpid()}
            record.update(fields)
            line = dict(record, sum=_checksum(record))
            data = (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                if valid_end is not None and valid_end < size:
                    os.ftruncate(fd, valid_end)  # drop a torn tail
                os.lseek(fd, 0, os.SEEK_END)
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            return record

    def _tail(self):
        """(last good record or None, offset just past the last newline or None if absent).

        Bytes after the last newline are a torn append; the writer truncates them. Complete
        lines that fail their checksum are skipped by readers but never deleted.
        """
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return None, None
        with fh:
            size = os.fstat(fh.fileno()).st_size
            start = max(0, size - self.TAIL_BYTES)
            while True:
                fh.seek(start)
                lines = fh.read().split(b"\n")
                line_end = size - len(lines[-1])
                complete = lines[:-1]
                first = 1 if start > 0 else 0  # the window's first line may be cut
                for raw in reversed(complete[first:]):
                    record = _decode_line(raw.decode("utf-8", "replace")) if raw.strip() else None
                    if record is not None:
                        return record, line_end
                if start == 0:
                    return None, line_end
                start = 0  # no good record in the window: read the whole file

    def records(self):
        """Every good record in order (torn or corrupt lines skipped)."""
        try:
            with open(self.path, encoding="utf-8", errors="replace") as fh:
                lines = fh.read().split("\n")
        except FileNotFoundError:
            return []
        return [r for r in (_decode_line(l) for l in lines if l.strip()) if r is not None]

    def last(self):
        return self._tail()[0]
