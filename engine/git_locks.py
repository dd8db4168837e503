"""Stale git lock files: what a git killed mid-command leaves behind, and when one may go.

A git killed with the orchestrator (SIGKILL of its process group, an OOM kill) leaves its
`*.lock` file, and every later git command that needs it fails with "remove the file manually
to continue" -- a run that could never resume on its own. Git itself never breaks a lock, and
neither do we unless we can prove it is dead:

- on Linux no live process has the file open (git holds a lock's descriptor from creating it
  to committing or rolling it back; /proc/*/fd tells), and
- it is at least LOCK_GRACE seconds old (a ref transaction closes each lock's descriptor a
  moment before renaming it into place: a young lock nobody holds is waited for once).

Where that cannot be known (no /proc, a process whose descriptors we may not read) a lock
stays and is reported. Locks are looked for in the repository's git directory: the common
directory (index, HEAD, packed-refs, config, every ref) and each worktree's admin directory
(a slot's index and HEAD); `objects/` is skipped (git's maintenance locks there wedge nothing
of ours). Callers print one warning line per lock removed.
"""

import os
import time
from dataclasses import dataclass

from engine import git
from engine.git import FAST_FORWARD_RECORD, WORKTREE_LOCK

LOCK_GRACE = 2.0  # seconds: far above the moment a ref transaction leaves a lock closed but in place
SKIPPED_DIRS = ("objects",)
OWN_FLOCKS = (WORKTREE_LOCK + ".lock", FAST_FORWARD_RECORD + ".lock")  # ours, held with flock: not git's
TEMP_FILES = ("packed-refs.new",)  # created exclusively like a lock: a leftover one blocks every packing


@dataclass(frozen=True)
class Lock:
    path: str
    removed: bool
    why: str  # why it was removed, or why it stays

    def line(self, root=None):
        shown = os.path.relpath(self.path, root) if root else self.path
        return (f"removed stale git lock {shown} ({self.why})" if self.removed
                else f"git lock {shown} left in place ({self.why})")


SHARED_LOCKS = ("packed-refs.lock", "packed-refs.new")  # the lock and the temp file beside it


def worktree_lock_files(path, branch=None, repo=None, shared=False):
    """The lock files a git killed mid-operation in the checkout at PATH can leave: its
    index.lock, HEAD.lock and ORIG_HEAD.lock (a `merge --ff-only` or `reset --hard` writes
    ORIG_HEAD), BRANCH's ref lock in the common directory, and with SHARED the repository-wide
    packed-refs lock (any ref deletion takes it). Only those present."""
    found = []
    gitdir = git.worktree_git_dir(path)
    if gitdir:
        found += [os.path.join(gitdir, name) for name in ("index.lock", "HEAD.lock", "ORIG_HEAD.lock")]
    if branch and repo:
        found.append(os.path.join(git.common_dir(repo), "refs", "heads", *branch.split("/")) + ".lock")
    if shared and repo:
        found += [os.path.join(git.common_dir(repo), name) for name in SHARED_LOCKS]
    return [f for f in found if os.path.exists(f)]


def clear_stale_in_worktree(path, branch=None, repo=None, shared=False):
    """Remove those of `worktree_lock_files` no live process holds; one warning line for each
    removed, and for each that cannot be judged (a pool slot's, the base's before a merge)."""
    from engine.ui import warn

    for lock in clear_stale(worktree_lock_files(path, branch, repo, shared)):
        warn(f"[WARN] {lock.line()}")


def lock_files(*git_dirs):
    """Every `*.lock` (and packed-refs.new) under GIT_DIRS that git made, objects/ skipped."""
    found = []
    for root in git_dirs:
        for dirpath, dirnames, filenames in os.walk(root):
            if dirpath == root:
                dirnames[:] = [d for d in dirnames if d not in SKIPPED_DIRS]
            found += [os.path.join(dirpath, f) for f in filenames
                      if (f.endswith(".lock") or f in TEMP_FILES) and f not in OWN_FLOCKS]
    return sorted(found)


def open_files():
    """{(st_dev, st_ino)} of every file some live process has open, or None when that cannot
    be known here (no /proc, or a process whose descriptors we may not read)."""
    if not os.path.isdir("/proc/self/fd"):
        return None
    held = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile
        except PermissionError:
            return None
        for fd in fds:
            try:
                st = os.stat(os.path.join(fd_dir, fd))
            except OSError:
                continue  # closed meanwhile, or not a file
            held.add((st.st_dev, st.st_ino))
    return held


def _identity(path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime


def clear_stale(paths, grace=LOCK_GRACE):
    """Remove those of the lock files PATHS that are provably stale; a [Lock] for each one
    removed or left (a lock a live process holds is neither: it is simply in use). Waits at
    most GRACE seconds, only when an unheld lock is younger than that."""
    present = {p: ident for p in paths if (ident := _identity(p)) is not None}
    if not present:
        return []
    held = open_files()
    if held is None:
        return [Lock(p, False, "cannot tell whether a live process holds it") for p in sorted(present)]
    unheld = {p: ident for p, ident in present.items() if ident[:2] not in held}
    youngest = max((ident[2] for ident in unheld.values()), default=None)
    if youngest is not None and time.time() - youngest < grace:
        time.sleep(max(0.0, youngest + grace - time.time()))
        held = open_files()
        if held is None:
            return [Lock(p, False, "cannot tell whether a live process holds it") for p in sorted(unheld)]
    results = []
    for path, ident in sorted(unheld.items()):
        if _identity(path) != ident or ident[:2] in held:
            continue  # taken over, renamed into place or reopened: alive
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        results.append(Lock(path, True, "no process has it open"))
    return results


def find_stale(paths, grace=LOCK_GRACE):
    """Those of PATHS that are stale right now (nobody holds them and they are GRACE old); no
    waiting, nothing removed (`pool-manager health` without --repair)."""
    present = {p: ident for p in paths if (ident := _identity(p)) is not None}
    held = open_files() if present else set()
    if held is None:
        return []
    return sorted(p for p, ident in present.items() if ident[:2] not in held and time.time() - ident[2] >= grace)
