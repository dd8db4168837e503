"""Reading the project's files for the dashboard, and nothing else.

Paths come from engine.paths.Layout (a task id is validated before it becomes part of a
name); anything outside the project root is refused, and every component below the root is
opened relative to its parent's descriptor with O_NOFOLLOW: a symlink anywhere below the
root (a planted `auto-logs/x.log -> ~/.ssh/id_rsa`) is refused, not followed."""

import os
import re
import stat

# The task ids the engine accepts (engine.git.check_ref_component), as one pattern.
TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def valid_task_id(value):
    return isinstance(value, str) and bool(TASK_ID.fullmatch(value)) and ".." not in value \
        and not value.endswith((".lock", "."))


class ProjectFiles:
    """Read-only access to files below `root` by name components."""

    def __init__(self, root):
        self.root = os.path.abspath(root)

    def parts(self, path):
        """The components of PATH below the root, or None when it is not below the root."""
        rel = os.path.relpath(os.path.abspath(path), self.root)
        parts = tuple(rel.split(os.sep))
        if rel == "." or any(p in ("", ".", "..") or "\0" in p for p in parts):
            return None
        return parts

    def _open(self, path):
        """A read-only descriptor of PATH, or None when outside the root, missing, reached through
        a symlink, not a regular file, or a file with more than one link."""
        parts = self.parts(path)
        if parts is None:
            return None
        flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return None
        try:
            for name in parts[:-1]:
                child = os.open(name, flags | os.O_DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = child
            leaf = os.open(parts[-1], flags | os.O_NONBLOCK, dir_fd=fd)
        except OSError:  # missing, a symlink (ELOOP), not a directory, no permission
            os.close(fd)
            return None
        os.close(fd)
        st = os.fstat(leaf)
        # a FIFO or device would block or never end; a file with another name elsewhere (a hard
        # link planted in the project) may be anybody's: only plain files with one link are read
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(leaf)
            return None
        return leaf

    def stat(self, path):
        """(inode, size, mtime_ns) of a regular file, or None."""
        fd = self._open(path)
        if fd is None:
            return None
        try:
            st = os.fstat(fd)
            return st.st_ino, st.st_size, st.st_mtime_ns
        finally:
            os.close(fd)

    def read(self, path, offset=0, limit=None):
        """(bytes, (inode, size, mtime_ns)) from `offset` (at most `limit` bytes), or (None, None)."""
        fd = self._open(path)
        if fd is None:
            return None, None
        try:
            st = os.fstat(fd)
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            size = st.st_size
            if offset < 0:
                offset = max(0, size + offset)
            offset = min(offset, size)
            want = size - offset if limit is None else min(limit, size - offset)
            chunks = []
            os.lseek(fd, offset, os.SEEK_SET)
            while want > 0:
                chunk = os.read(fd, min(want, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                want -= len(chunk)
            return b"".join(chunks), key
        finally:
            os.close(fd)

    def listdir(self, path):
        """Names in the directory PATH below the root (not following symlinks), or []."""
        parts = self.parts(path)
        if parts is None:
            return []
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return []
        try:
            for name in parts:
                child = os.open(name, flags, dir_fd=fd)
                os.close(fd)
                fd = child
            return os.listdir(fd)
        except OSError:
            return []
        finally:
            os.close(fd)
