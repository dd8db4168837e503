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
import errno
import fcntl
import itertools
import json
import os
import re
import stat
import time
import zlib

from engine.errors import StateFileError, UnsafePath

LAST_GOOD_SUFFIX = ".last-good"


# --------------------------------------------------------------------------- never through a link
# A cloned repository can carry symlinks under `.claude/` (a committed
# `.claude/auto-journal.jsonl -> ~/.bashrc`). Every file or directory the engine creates,
# replaces or appends to goes through the helpers below, which walk from a trusted anchor with
# directory fds, open every directory on the way with O_NOFOLLOW and the last component with
# O_NOFOLLOW, so a link anywhere below the anchor is refused (UnsafePath, one line) instead of
# being followed. The anchor is the project root (Layout registers it with `trust`) or another
# directory we checked ourselves (setup-worktree's private base); for a path under none of them
# (a POOL_DIR the user pointed elsewhere) only the last component is guarded.

_trusted = set()
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def trust(directory):
    """Register DIRECTORY as an anchor: every component below it is checked for links."""
    _trusted.add(os.path.normpath(os.path.abspath(directory)))


def _anchor(parent):
    """(anchor, components from the anchor down to PARENT): the longest trusted directory
    that holds PARENT, else PARENT's own parent."""
    best = None
    for root in _trusted:
        if (parent == root or parent.startswith(root.rstrip(os.sep) + os.sep)) and \
                (best is None or len(root) > len(best)):
            best = root
    if best is None:  # only the last component is guarded
        head, tail = os.path.split(parent)
        return (head, [tail]) if tail else (parent, [])
    rest = os.path.relpath(parent, best)
    return best, ([] if rest == "." else rest.split(os.sep))


def _refuse(path):
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    raise UnsafePath(f"{path} is a symbolic link (to {target}); refusing to write through it")


def _is_link(name, dir_fd):
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _open_dir(path, create):
    """An fd on directory PATH, reached without following a link below its anchor."""
    path = os.path.normpath(os.path.abspath(path))
    anchor, parts = _anchor(path)
    while True:
        try:
            fd = os.open(anchor, _DIR_FLAGS)
            break
        except FileNotFoundError:
            if not create:
                raise
            os.makedirs(anchor, exist_ok=True)  # the anchor itself is trusted (or user-configured)
    where = anchor
    try:
        for part in parts:
            where = os.path.join(where, part)
            try:
                child = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
                try:
                    child = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(part, fd):
                        _refuse(where)
                    raise OSError(exc.errno, exc.strerror, where) from None
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(part, fd):
                    _refuse(where)
                if exc.filename == where:
                    raise
                if exc.errno == errno.ENOTDIR and create:  # what os.makedirs says for a file in the way
                    raise FileExistsError(errno.EEXIST, "File exists", where) from None
                raise OSError(exc.errno, exc.strerror, where) from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def _parent(path, create=True):
    """(directory fd, base name) for PATH; the fd is closed after the block."""
    path = os.path.normpath(os.path.abspath(path))
    directory, name = os.path.split(path)
    fd = _open_dir(directory, create)
    try:
        yield fd, name
    finally:
        os.close(fd)


def _open_in(dir_fd, name, flags, mode, shown):
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EEXIST, errno.ENOTDIR) and _is_link(name, dir_fd):
            _refuse(shown)
        raise OSError(exc.errno, exc.strerror, shown) from None


def open_fd(path, flags, mode=0o644):
    """os.open without following a link anywhere below the anchor; parents are created when
    FLAGS has O_CREAT. The caller owns the returned fd."""
    with _parent(path, create=bool(flags & os.O_CREAT)) as (dfd, name):
        return _open_in(dfd, name, flags, mode, path)


def _open_read(path):
    """A binary file object reading PATH, refusing a link (see read_bytes)."""
    return os.fdopen(open_fd(path, os.O_RDONLY), "rb")


def read_bytes(path):
    """The bytes of PATH, refusing a link (an engine file that is a link is not ours to read
    or to replace). FileNotFoundError when it (or its directory) does not exist."""
    fd = open_fd(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def open_append(path, binary=True, encoding="utf-8"):
    """A file object appending to PATH (created if missing), never through a link."""
    fd = open_fd(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    return os.fdopen(fd, "ab") if binary else os.fdopen(fd, "a", encoding=encoding)


def makedirs(path):
    """Create directory PATH and its parents; a link on the way (or at PATH) is refused."""
    os.close(_open_dir(path, create=True))


def replace(src, dst):
    """Rename SRC over DST (both reached without links; a link at DST is refused, not replaced)."""
    with _parent(src, create=False) as (sfd, sname), _parent(dst) as (dfd, dname):
        if _is_link(dname, dfd):
            _refuse(dst)
        os.replace(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
        os.fsync(dfd)


def claim_path(path):
    """For a path another program will create (git's `worktree add`): make its parent
    directories without following a link, and refuse when PATH itself is a link."""
    with _parent(path) as (dfd, name):
        if _is_link(name, dfd):
            _refuse(path)
    return path


def private_dir(path, create=True):
    """Create PATH (mode 0700) if missing and return it; refuse it unless it is a real directory
    that belongs to us and that nobody else can write into (a directory another user
    pre-created in /tmp, or a link in its place, is never used)."""
    path = os.path.normpath(os.path.abspath(path))
    if create:
        with contextlib.suppress(FileExistsError):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.mkdir(path, 0o700)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        _refuse(path)
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePath(f"{path} is not a directory; refusing to use it")
    if info.st_uid != os.getuid():
        raise UnsafePath(f"{path} belongs to another user (uid {info.st_uid}); refusing to use it")
    if info.st_mode & 0o022:
        raise UnsafePath(f"{path} is writable by other users (mode {info.st_mode & 0o777:o}); "
                         "refusing to use it (chmod 700 it or remove it)")
    trust(path)
    return path


def copy_file(src, dest):
    """Copy SRC (a regular file, not a link) to DEST with its mode and times, never through a link."""
    with open(src, "rb") as fh:
        data = fh.read()
        info = os.fstat(fh.fileno())
    fd = open_fd(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IMODE(info.st_mode))
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fchmod(out.fileno(), stat.S_IMODE(info.st_mode))
        os.utime(out.fileno(), ns=(info.st_atime_ns, info.st_mtime_ns))


# --------------------------------------------------------------------------- locking
@contextlib.contextmanager
def file_lock(path):
    """Hold an exclusive flock on `<path>.lock` for the duration of the block."""
    fd = open_fd(path + ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


# --------------------------------------------------------------------------- writing
_tmp_counter = itertools.count()


def atomic_write(path, data, keep_last_good=True, durable=True):
    """Replace `path` with `data` (str or bytes) atomically and durably, never through a link.

    `durable=False` skips the two fsyncs (a reader still sees the old file or the new one,
    never half): for a launch input, a file written for a process started right after it and
    written again at every launch (an agent's task-data files, a `claude` attempt's argv and
    prompt). After a machine crash that process is gone too and `resume` writes them again,
    so flushing them to the disk only made every launch wait for it (≈ 1-3 ms per fsync)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with _parent(path) as (dfd, name):
        _replace_in(dfd, name, path, data, keep_last_good, durable)
        if durable:
            os.fsync(dfd)
        if keep_last_good:
            _write_last_good(dfd, name, path, data)


def atomic_write_many(items):
    """Replace several files [(path, data)] as atomic_write does (no last-good copies), with
    one fsync per directory for all their renames instead of one each: a run's checkpoint
    files of N groups cost N + 1 fsyncs, not 2N. Each file is old or new after a crash, and
    all of them are on disk when this returns."""
    directories = []
    for path, data in items:
        with _parent(path) as (dfd, name):
            _replace_in(dfd, name, path, data.encode("utf-8") if isinstance(data, str) else data, False, True)
        directory = os.path.dirname(os.path.normpath(os.path.abspath(path)))
        if directory not in directories:
            directories.append(directory)
    for directory in directories:
        fd = _open_dir(directory, create=False)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _replace_in(dfd, name, path, data, keep_last_good, sync_file):
    """Write DATA (bytes) to a temp file in directory DFD (fsynced when SYNC_FILE) and rename
    it over NAME; the directory's fsync and the last good copy (KEEP_LAST_GOOD: a link in the
    way of one is refused before anything is replaced) are the caller's."""
    try:
        info = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        info = None
    if info is not None and stat.S_ISLNK(info.st_mode):
        _refuse(path)
    if keep_last_good:  # refuse before replacing anything, not half-way
        for suffix in (LAST_GOOD_SUFFIX, LAST_GOOD_SUFFIX + ".tmp"):
            if _is_link(name + suffix, dfd):
                _refuse(path + suffix)
    mode = stat.S_IMODE(info.st_mode) if info is not None else 0o644
    # Our own temp name (not tempfile: its import costs every CLI call more than it saves).
    while True:
        tmp = f".{name}.{os.getpid()}.{next(_tmp_counter)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=dfd)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            if sync_file:
                os.fsync(fh.fileno())
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dfd)
        raise


def _write_last_good(dfd, name, path, data):
    """A plain copy (not a hard link: an in-place edit of the live file must not reach it)."""
    target = name + LAST_GOOD_SUFFIX
    tmp = target + ".tmp"
    fd = _open_in(dfd, tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, path + LAST_GOOD_SUFFIX + ".tmp")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    if _is_link(target, dfd):
        _refuse(path + LAST_GOOD_SUFFIX)
    os.replace(tmp, target, src_dir_fd=dfd, dst_dir_fd=dfd)


def append_text(path, text):
    """Append to a plain log-like file (markdown memory notes) and fsync it."""
    with open_append(path, binary=False) as fh:
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
        text = read_bytes(path).decode("utf-8")
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


_dumper = None


def _yaml_dumper():
    """The C dumper, never writing anchors and aliases: a list shared by two fields (one
    value recorded twice) is written out twice, as a person or a shell script reads it."""
    global _dumper
    if _dumper is None:
        yaml = _yaml_module()

        class Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):
            def ignore_aliases(self, data):
                return True

        _dumper = Dumper
    return _dumper


def file_version(st):
    """What identifies one version of a file we replace by rename or append to (an os.stat
    result): a new inode, size, mtime or ctime means somebody wrote it."""
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


_parsed = {}  # path -> (file version, mapping): read-mostly files (configuration) parsed once


def load_yaml_cached(path):
    """`load_yaml_mapping(path)[0]` for a file read on every task (the configuration), parsed
    again only when the file changed (its inode, size, mtime or ctime); the mapping is shared:
    callers only read it. None when the file does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    version = file_version(st)
    cached = _parsed.get(path)
    if cached is not None and cached[0] == version:
        return cached[1]
    data, _ = load_yaml_mapping(path)
    _parsed[path] = (version, data)
    return data


def dump_yaml(data, header=""):
    """Render a mapping as block YAML, keys in their order, with an optional comment header."""
    yaml = _yaml_module()
    body = yaml.dump(data, Dumper=_yaml_dumper(), default_flow_style=False, sort_keys=False,
                     allow_unicode=True, width=100000)
    return (header + "\n\n" if header else "") + body


def write_yaml(path, data, header=""):
    atomic_write(path, dump_yaml(data, header))


_YAML_BREAKS = re.compile("(\n|\u2028|\u2029)")  # the line breaks PyYAML indents after


class YamlFragments:
    """`dump_yaml` for a file rewritten many times with small changes (the progress file):
    every top-level entry, and each entry of the mapping under KEY (one task), is dumped by
    PyYAML on its own (a task indented two columns) and kept; the next dump renders only the
    entries that changed. Block YAML emits a nested mapping the same way at any depth, so the
    text is the one `dump_yaml` writes for the whole document (a test holds it to that for
    any data). An entry is known by its marshal bytes (equal bytes, equal data)."""

    def __init__(self, key="tasks"):
        self.key = key
        self._cache = {}

    def dump(self, data, header=""):
        entries = data.get(self.key)
        if not isinstance(entries, dict) or not entries or not all(isinstance(k, str) for k in entries):
            return dump_yaml(data, header)
        parts = [header + "\n\n"] if header else []
        cache, self._cache = self._cache, {}
        for key, value in data.items():
            if key != self.key:
                parts.append(self._fragment(cache, key, value, indent=False))
                continue
            parts.append(dump_yaml({key: {}}).replace(" {}", "", 1))  # the key's own line, quoted as PyYAML would
            for name, entry in entries.items():
                parts.append(self._fragment(cache, name, entry, indent=True))
        return "".join(parts)

    def _fragment(self, cache, key, value, indent):
        """The text of {KEY: VALUE} (indented two columns under KEY's parent if INDENT), from
        the previous dump when the entry has not changed; kept for the next dump."""
        import marshal

        try:
            fingerprint = marshal.dumps((indent, key, value))
        except ValueError:  # not plain data: no caching for it
            fingerprint = None
        text = cache.get(fingerprint) if fingerprint is not None else None
        if text is None:
            text = dump_yaml({key: value})
            if indent:
                # Indent every line: PyYAML breaks lines at \n and, inside a scalar, also at
                # U+2028/U+2029, indenting after each (not at \x85, which str.splitlines would split at)
                pieces = _YAML_BREAKS.split(text)
                text = "".join(p if i % 2 or not p else "  " + p for i, p in enumerate(pieces))
        if fingerprint is not None:
            self._cache[fingerprint] = text
        return text


# --------------------------------------------------------------------------- JSON
def load_json(path):
    """Return the parsed JSON document or None if the file does not exist."""
    try:
        text = read_bytes(path).decode("utf-8", "replace")
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


def checksummed_line(record):
    """RECORD as one JSON line carrying its checksum (`sum`): the journal's lines and the
    progress file's change log (engine.deltalog) are written so."""
    return json.dumps(dict(record, sum=_checksum(record)), ensure_ascii=False, separators=(",", ":")) + "\n"


def _decode_line(line):
    """A record written by `checksummed_line`, or None when the line is torn or fails its checksum."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    expected = record.pop("sum", None)
    check = _checksum(record)
    # (the change log's lines up to stop 23 carried the same CRC as a number: a run killed then
    # and resumed by this version still reads its last events)
    if expected != check and expected != int(check, 16):
        return None
    return record


def decode_journal_line(line):
    """A journal line (or the change log's) as its record, or None when it is torn or fails its
    checksum (for readers that follow the file themselves: the dashboard, engine.deltalog)."""
    return _decode_line(line)


_SEQ_PREFIX = re.compile(rb'\{"seq":(\d+),')  # how every record's line begins (Journal.append_many)


class Journal:
    """Append-only JSON lines, each with a sequence number, UTC time, pid and checksum.

    A torn last line (a writer killed mid-append) is ignored by readers and cut off by the
    next writer before it appends, so the file never holds garbage between good records.
    """

    TAIL_BYTES = 65536

    def __init__(self, path):
        self.path = path
        self._known_end = None  # (file version, last record) right after our last append

    def append(self, event, **fields):
        """Durably append one record and return it (with its `seq`)."""
        return self.append_many([(event, fields)])[0]

    def append_many(self, entries):
        """Durably append several records [(event, fields)] with one write and one fsync;
        returns them (with their `seq`s). The tail is read again only when another writer
        (or a torn append) changed the file since our own last append."""
        if not entries:
            return []
        with file_lock(self.path):
            fd = open_fd(self.path, os.O_RDWR | os.O_CREAT)
            try:
                st = os.fstat(fd)
                if self._known_end is not None and self._known_end[0] == file_version(st):
                    last, valid_end = self._known_end[1], st.st_size
                else:
                    last, valid_end = self._tail()
                seq = last["seq"] if last else 0
                records, lines = [], []
                for event, fields in entries:
                    seq += 1
                    record = {"seq": seq, "ts": utc_now(), "event": event, "pid": os.getpid()}
                    record.update(fields)
                    records.append(record)
                    lines.append(checksummed_line(record))
                if valid_end is not None and valid_end < st.st_size:
                    os.ftruncate(fd, valid_end)  # drop a torn tail
                os.lseek(fd, 0, os.SEEK_END)
                data = "".join(lines).encode("utf-8")
                written = 0
                while written < len(data):
                    written += os.write(fd, data[written:])
                os.fsync(fd)
                st = os.fstat(fd)
                self._known_end = (file_version(st), records[-1])
            except BaseException:
                self._known_end = None
                raise
            finally:
                os.close(fd)
            return records

    def _tail(self):
        """(last good record or None, offset just past the last newline or None if absent).

        Bytes after the last newline are a torn append; the writer truncates them. Complete
        lines that fail their checksum are skipped by readers but never deleted.
        """
        try:
            fh = _open_read(self.path)
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

    def since(self, seq, event=None):
        """Good records with a sequence number above SEQ, newest first. Reads back from the end
        only as far as it must. With EVENT, only records of that event: the others are passed
        over on their bytes, without decoding (a run's state file may be thousands of task
        records behind the journal's end while EXECUTE lasts, and every state read looks)."""
        marker = f'"event":{json.dumps(event, ensure_ascii=False)}'.encode("utf-8") if event else None
        try:
            fh = _open_read(self.path)
        except FileNotFoundError:
            return []
        with fh:
            size = os.fstat(fh.fileno()).st_size
            window = self.TAIL_BYTES
            while True:
                start = max(0, size - window)
                fh.seek(start)
                lines = fh.read(size - start).split(b"\n")[:-1]  # bytes after the last newline: torn
                if start > 0:
                    lines = lines[1:]  # the window's first line may be cut
                found = []
                for raw in reversed(lines):
                    if marker is not None and marker not in raw:
                        prefix = _SEQ_PREFIX.match(raw)
                        if prefix and int(prefix.group(1)) > seq:
                            continue  # another event's record, after SEQ: not asked for
                    record = _decode_line(raw.decode("utf-8", "replace")) if raw.strip() else None
                    if record is None or not isinstance(record.get("seq"), int):
                        continue
                    if record["seq"] <= seq:
                        return found
                    found.append(record)
                if start == 0:
                    return found
                window *= 4

    def records(self):
        """Every good record in order (torn or corrupt lines skipped)."""
        try:
            with _open_read(self.path) as fh:
                lines = fh.read().decode("utf-8", "replace").split("\n")
        except FileNotFoundError:
            return []
        return [r for r in (_decode_line(l) for l in lines if l.strip()) if r is not None]

    def last(self):
        return self._tail()[0]
