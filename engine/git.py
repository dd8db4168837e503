"""The one place that talks to git.

Every call goes through `run()`: the git CLI with an environment stripped of inherited
`GIT_DIR`/`GIT_WORK_TREE`/`GIT_INDEX_FILE` (a hook or an outer git would otherwise redirect
us to another repository), `--` before user-supplied names where git accepts it, output
captured (never on our stdout), and failures raised as GitError carrying command, code and
output. Mutations of the worktree list are serialized per repository with `worktree_lock`:
git 2.39 races on parallel `worktree add` and can leave a branch without its worktree.
"""

import codecs
import contextlib
import os
import re
import stat
import subprocess
import time

from engine import store
from engine.errors import GitError, OrchestratorError

_STRIP = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR",
          "GIT_PREFIX")
_env = None


def git_env():
    global _env
    if _env is None:
        _env = {k: v for k, v in os.environ.items() if k not in _STRIP}
        _env["GIT_TERMINAL_PROMPT"] = "0"
        _env.setdefault("GIT_EDITOR", "true")
        _env["LC_ALL"] = "C"
        # No automatic `git maintenance`/gc after our commits and merges: it spawns a process
        # per call and may repack under concurrent agents; the user's own git still runs it.
        n = int(_env.get("GIT_CONFIG_COUNT") or 0) if str(_env.get("GIT_CONFIG_COUNT", "")).isdigit() else 0
        for key, value in (("maintenance.auto", "false"), ("gc.auto", "0")):
            _env[f"GIT_CONFIG_KEY_{n}"], _env[f"GIT_CONFIG_VALUE_{n}"] = key, value
            n += 1
        _env["GIT_CONFIG_COUNT"] = str(n)
    return _env


_executable = None


def executable():
    """git's absolute path, looked up once: a bare "git" makes every call search PATH again
    (ten failed exec attempts per call on a typical PATH, hundreds of them per run)."""
    global _executable
    if _executable is None:
        import shutil

        _executable = shutil.which("git", path=git_env().get("PATH")) or "git"
    return _executable


# A `git worktree add` running right now has written its record (.git/worktrees/X/) only in
# part, non-atomically, and every command that looks at all worktrees dies on it:
# `worktree list/add/remove`, `branch -D`, a checkout of an existing branch, a rebase naming
# its branch ("failed to read .../commondir: Success", ".../locked: No such file").
_HALF_WRITTEN = re.compile(r"failed to read (.*worktrees)/[^/]+/(commondir|gitdir|locked)")
# An add cut short after its placeholder HEAD (the null commit): every command that walks all
# refs dies on it ("fatal: bad object worktrees/X/HEAD"); for an instant while an add runs, for
# good when it was killed there. The message names the record relative to the common directory.
_UNFINISHED_HEAD = re.compile(r"bad object worktrees/[^/\s]+/HEAD")
# Failures that another git process causes for an instant, retried: one of git's own lock
# files held (shared refs, packed-refs, config), or a worktree record an add is writing.
_TRANSIENT = re.compile(r"Unable to create '[^']*\.lock': File exists|cannot lock ref|"
                        r"could not lock config file|" + _HALF_WRITTEN.pattern + "|" + _UNFINISHED_HEAD.pattern)


def run(cwd, *args, check=True, input=None, env=None):
    """Run `git ARGS` in `cwd`; return CompletedProcess (text). Raises GitError if check fails.

    A failure that another git process causes for an instant (`_TRANSIENT`) is retried a few
    times: concurrent agents, acquires and merges make that normal. Each of those failures
    happens before the command changes anything, so running it again is safe.
    """
    cmd = ["git", *args]

    def once():
        return subprocess.run(cmd, executable=executable(), cwd=cwd, input=input, capture_output=True,
                              text=True, env=env or git_env())

    for attempt in range(6):
        proc = once()
        if proc.returncode == 0 or not _TRANSIENT.search(proc.stderr or ""):
            break
        time.sleep(0.05 * (attempt + 1))
    root = _broken_records_root(cwd, proc.stderr or "") if proc.returncode != 0 else None
    if root:  # still there after the retries: an add cut short for good, mended
        _mend_records(root)
        proc = once()
    if check and proc.returncode != 0:
        raise GitError(cmd, proc.returncode, proc.stderr or proc.stdout)
    return proc


def _broken_records_root(cwd, stderr):
    """The worktree records' directory when STDERR says git died on one, else None: from the
    message itself for a half-written commondir (asked from inside the worktree whose record
    is broken, git would fail the same way), from git for a placeholder HEAD (only HEADs are
    broken then: the common directory can be asked)."""
    half_written = _HALF_WRITTEN.search(stderr)
    if half_written:
        return os.path.join(cwd, half_written.group(1))
    if _UNFINISHED_HEAD.search(stderr):
        with contextlib.suppress(GitError):
            return _records_root(cwd)
    return None


def _mend_records(root):
    """A record still half written after the retries: wait until it is RECORD_GRACE old (a
    live add fills it well before; another caller may mend it first), mend it and say so on
    stderr; `run` then tries once more whatever happened here. ROOT, the records' directory:
    see `_broken_records_root`."""
    deadline = time.monotonic() + RECORD_GRACE + 0.5
    try:
        while True:
            mended = _repair_records(root)
            if mended or not _broken_records(root, grace=0) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    except (OSError, OrchestratorError):
        return
    if mended:
        from engine.ui import warn

        for line in mended:
            warn(f"[orchestrator] {line}")


def out(cwd, *args):
    return run(cwd, *args).stdout.strip()


def ok(cwd, *args):
    return run(cwd, *args, check=False).returncode == 0


# --------------------------------------------------------------------------- repository facts
_repo_info = {}


def _info(cwd):
    """(toplevel, common dir) of the repository containing cwd, one git call per process."""
    key = os.path.abspath(cwd)
    if key not in _repo_info:
        proc = run(cwd, "rev-parse", "--show-toplevel", "--git-common-dir", check=False)
        lines = proc.stdout.splitlines()
        if proc.returncode != 0 or len(lines) < 2:
            raise OrchestratorError("Not in a git repository")
        _repo_info[key] = (lines[0], os.path.abspath(os.path.join(cwd, lines[1])))
    return _repo_info[key]


def toplevel(cwd):
    """The top of the working tree containing cwd, or raise 'Not in a git repository'."""
    return _info(cwd)[0]


def common_dir(repo):
    return _info(repo)[1]


def head(repo):
    """(commit, branch or None) of HEAD in one call; (None, None) in a repository without commits."""
    proc = run(repo, "rev-parse", "HEAD", "--symbolic-full-name", "HEAD", check=False)
    lines = proc.stdout.split()
    if proc.returncode != 0 or len(lines) < 2:
        return None, None
    ref = lines[1]
    return lines[0], (ref[len("refs/heads/"):] if ref.startswith("refs/heads/") else None)


def has_commits(repo):
    return ok(repo, "rev-parse", "--verify", "-q", "HEAD^{commit}")


def current_branch(repo):
    """The checked-out branch name, or None when HEAD is detached (or unborn). (Not `--short`:
    with a tag of the same name git shortens refs/heads/main to "heads/main".)"""
    proc = run(repo, "symbolic-ref", "-q", "HEAD", check=False)
    name = proc.stdout.strip()
    return name[len("refs/heads/"):] if proc.returncode == 0 and name.startswith("refs/heads/") else None


def resolve_commit(repo, rev, kind="commit"):
    """The full sha of `rev` peeled to KIND (a commit, or its tree), or None."""
    proc = run(repo, "rev-parse", "--verify", "-q", "--end-of-options", f"{rev}^{{{kind}}}", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def branch_exists(repo, branch):
    return ok(repo, "show-ref", "--verify", "-q", "refs/heads/" + branch)


def branch_commit(repo, branch):
    return resolve_commit(repo, "refs/heads/" + branch)


def is_ancestor(repo, older, newer):
    return ok(repo, "merge-base", "--is-ancestor", older, newer)


def unique_commits(repo, branch, base):
    """How many commits `branch` has that `base` does not (0 = nothing would be lost);
    None when the branch (or the base) does not exist -- one git call either way."""
    proc = run(repo, "rev-list", "--count", f"{base}..refs/heads/{branch}", "--", check=False)
    return int(proc.stdout.strip() or 0) if proc.returncode == 0 else None


def commits_ahead(repo, branch, base):
    """The commits `branch` has that `base` does not, newest (the branch tip) first; None when
    the branch (or the base) does not exist. `unique_commits` with the tip, in one call."""
    proc = run(repo, "rev-list", f"{base}..refs/heads/{branch}", "--", check=False)
    return proc.stdout.split() if proc.returncode == 0 else None


def branch_tips(repo, *branches, trees=None):
    """{branch: commit} for every local branch, or only for those of BRANCHES that exist, in
    one call (`for-each-ref` with each full ref name as a pattern; only exact names kept).
    TREES, a dict, receives {branch: tree} from the same call."""
    patterns = [f"refs/heads/{b}" for b in branches] or ["refs/heads/"]
    fields = "%(objectname) %(tree) %(refname)" if trees is not None else "%(objectname) %(refname)"
    text = out(repo, "for-each-ref", f"--format={fields}", *patterns)
    tips = {}
    for line in text.splitlines():
        sha, _, ref = line.partition(" ")
        if trees is not None:
            tree, _, ref = ref.partition(" ")
        if not branches or ref in patterns:
            name = ref[len("refs/heads/"):]
            tips[name] = sha
            if trees is not None:
                trees[name] = tree
    return tips


def local_branches(repo, prefix="refs/heads/"):
    text = out(repo, "for-each-ref", "--format=%(refname)", prefix)
    return [line[len("refs/heads/"):] for line in text.splitlines() if line]


def delete_branch(repo, *branches, check=True):
    """`branch -D` (callers check for unmerged work first); git itself refuses a branch that
    is checked out somewhere, which `check=False` callers read from the result."""
    return run(repo, "branch", "-D", "--", *branches, check=check)


def checked_out_at(repo, branch, listing=None):
    """The path of the live worktree that has BRANCH checked out, or None."""
    for entry in worktrees(repo) if listing is None else listing:
        if entry["branch"] == branch and not entry["prunable"]:
            return entry["path"]
    return None


def worktrees(repo):
    """`git worktree list --porcelain`, parsed: [{path, head, branch, detached, locked, prunable}]
    (a worktree being added at this instant is waited out by `run`)."""
    proc = run(repo, "worktree", "list", "--porcelain")
    entries, current = [], None
    for line in proc.stdout.strip().splitlines() + [""]:
        if not line:
            if current:
                entries.append(current)
            current = None
            continue
        key, _, value = line.partition(" ")
        if key == "worktree":
            current = {"path": value, "head": None, "branch": None, "detached": False, "locked": False,
                       "prunable": False, "bare": False}
        elif current is None:
            continue
        elif key == "HEAD":
            current["head"] = value
        elif key == "branch":
            current["branch"] = value[len("refs/heads/"):] if value.startswith("refs/heads/") else value
        elif key in ("detached", "locked", "prunable", "bare"):
            current[key] = True
    return entries


def status(path, *pathspec):
    """(branch or None if detached, [porcelain lines of what differs]) of a worktree in one call."""
    branch, _, dirty = head_status(path, *pathspec)
    return branch, dirty


def head_status(path, *pathspec):
    """(branch or None if detached or unborn, HEAD's commit or None, [porcelain v2 lines of
    what differs, untracked files included]) of a worktree in one call."""
    text = run(path, "status", "--porcelain=v2", "--branch", "--untracked-files=normal", "--", *pathspec).stdout
    branch = tip = None
    dirty = []
    for line in text.splitlines():
        if line.startswith("# branch.oid "):
            tip = line[len("# branch.oid "):]
        elif line.startswith("# branch.head "):
            branch = line[len("# branch.head "):]
        elif line and not line.startswith("# "):
            dirty.append(line)
    if tip == "(initial)":
        tip = branch = None
    return (None if branch == "(detached)" else branch), tip, dirty


def detach(path, commit):
    """Detach the worktree's HEAD at `commit` without touching its index or files."""
    run(path, "update-ref", "--no-deref", "-m", "parallel-orchestrator: detach", "HEAD", commit)


# Operations git leaves half-done in a worktree, by the file that marks them in its git dir,
# and the command that forgets each without moving HEAD (the caller resets files itself).
_IN_PROGRESS = (("rebase-merge", "rebase", ("rebase", "--quit")),
                ("rebase-apply/applying", "am", ("am", "--quit")),
                ("rebase-apply", "rebase", ("rebase", "--quit")),
                ("MERGE_HEAD", "merge", ("merge", "--quit")),
                ("CHERRY_PICK_HEAD", "cherry-pick", ("cherry-pick", "--quit")),
                ("REVERT_HEAD", "revert", ("revert", "--quit")),
                ("sequencer", "cherry-pick", ("cherry-pick", "--quit")),
                ("BISECT_START", "bisect", ("bisect", "reset", "HEAD")),
                ("SQUASH_MSG", "merge --squash", None))  # only the message the next commit would take
_LEFTOVER_MESSAGES = ("SQUASH_MSG", "MERGE_MSG", "AUTO_MERGE")


def worktree_git_dir(path):
    """The private git dir of the worktree at PATH (its `.git` file's target), without a git call."""
    entry = os.path.join(path, ".git")
    if os.path.isdir(entry):
        return entry
    try:
        with open(entry, encoding="utf-8") as fh:
            gitdir = fh.readline().split(":", 1)[1].strip()
    except (OSError, IndexError):
        return None
    return gitdir if os.path.isabs(gitdir) else os.path.normpath(os.path.join(path, gitdir))


def operations_in_progress(path):
    """Names of the operations (rebase, am, merge, cherry-pick, revert, bisect) left in
    progress in the worktree at PATH; no git call when there are none."""
    gitdir = worktree_git_dir(path)
    if not gitdir:
        return []
    found = []
    for marker, name, _ in _IN_PROGRESS:
        if os.path.exists(os.path.join(gitdir, marker)) and name not in found and not (
                name == "rebase" and "am" in found):
            found.append(name)
    return found


def forget_operations(path):
    """Forget every operation left in progress in the worktree at PATH (`--quit`: HEAD and
    branches stay where they are), unstage conflicted entries, drop stale commit messages.
    Returns the names forgotten. Work in files is left for the caller to keep or discard."""
    found = operations_in_progress(path)
    gitdir = worktree_git_dir(path)
    for marker, name, argv in _IN_PROGRESS:
        if argv and name in found and os.path.exists(os.path.join(gitdir, marker)):
            if name == "bisect":
                run(path, "reset", "-q", check=False)  # bisect reset refuses an unmerged index
            run(path, *argv, check=False)
    if found:
        run(path, "reset", "-q", check=False)  # conflicted (unmerged) entries back to plain files
        for name in _LEFTOVER_MESSAGES:
            with_path = os.path.join(gitdir, name)
            if os.path.isfile(with_path):
                os.unlink(with_path)
    remaining = operations_in_progress(path)
    if remaining:
        raise GitError(["git", *remaining], 1, f"could not end the {', '.join(remaining)} in progress in {path}")
    return found


# A live `worktree add` writes `commondir` microseconds after creating it; a record older than
# this with an empty one is not being written by anybody.
RECORD_GRACE = 2.0


def broken_worktree_records(repo, grace=RECORD_GRACE):
    """[(admin dir, finished)] for the worktree records under `<common dir>/worktrees/` that a
    `worktree add` cut short or a crash left half written, untouched for `grace` seconds:
    - `commondir` there but empty (or holding only NULs: a crash that kept the size and lost
      the data): git dies on it in every command that looks at all worktrees;
    - an add killed after writing its placeholder HEAD (the null commit) and before pointing
      it at the branch, its `locked` ("initializing") still there: every command that walks
      all refs (`fetch`'s connectivity check, `gc`, `fsck`) dies on "bad object
      worktrees/X/HEAD" (the Ray executor's fetches, seen in the kill-inside-git campaign).
    `worktree prune` keeps either while `locked` says "initializing", so one wedges the
    repository. `finished`: the add got to its end (_record_finished)."""
    return _broken_records(_records_root(repo), grace)


def _broken_records(root, grace=RECORD_GRACE):
    try:
        names = sorted(os.listdir(root))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for name in names:
        admin = os.path.join(root, name)
        if os.path.islink(admin):
            continue
        try:
            st = os.stat(os.path.join(admin, "commondir"), follow_symlinks=False)
        except FileNotFoundError:
            st = None  # (an add writes HEAD before it creates commondir)
        except OSError:
            continue
        if st is not None and (not stat.S_ISREG(st.st_mode) or st.st_size > 64):
            continue
        finished = _record_finished(admin)
        if st is not None and not _record_file(admin, "commondir").strip("\0 \n"):
            changed = st.st_mtime  # (an empty commondir: the add's write of it was its last)
        elif finished or _in_use(admin):
            continue  # a whole record, or an add still at work (its HEAD update can run a slow hook)
        else:
            changed = _newest_change(admin)
        if time.time() - changed < grace:
            continue  # maybe a live add, writing it now
        found.append((admin, finished))
    return found


def _newest_change(admin):
    """When an unfinished record last changed: the newest mtime of its files (a live add
    writes them in turn, then points HEAD at its branch through HEAD.lock)."""
    newest = 0.0
    for name in ("commondir", "HEAD", "HEAD.lock", "locked", "gitdir"):
        try:
            newest = max(newest, os.stat(os.path.join(admin, name), follow_symlinks=False).st_mtime)
        except OSError:
            pass
    return newest


def _in_use(admin):
    """Whether a live process works in the worktree the record is for (engine.procs), or
    that cannot be known: such a record is never taken for an abandoned add."""
    from engine import procs

    dotgit = _record_file(admin, "gitdir").strip()
    if not os.path.isabs(dotgit):
        return False  # (no worktree named: nobody can be working in it)
    return procs.working_in(os.path.dirname(dotgit)) is not False


def _record_finished(admin):
    """The record's add got to its end: it let go of its `locked` ("initializing"), or it has
    a HEAD (a ref, a commit, or a link under core.preferSymlinkRefs), which an add writes last,
    or an index (an add never writes one before its HEAD points somewhere; a worktree a
    person locked whose HEAD a crash emptied still has its index: it is theirs)."""
    head = os.path.join(admin, "HEAD")
    if os.path.islink(head):
        return bool(os.readlink(head))
    return not os.path.lexists(os.path.join(admin, "locked")) or _record_file(admin, "HEAD").strip("0\n") != "" \
        or os.path.lexists(os.path.join(admin, "index"))


def _record_file(admin, name):
    """The start of one file of a worktree record; "" unless it is a plain file (never follows
    a link, never waits on a fifo an agent put there)."""
    try:
        fd = os.open(os.path.join(admin, name), os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return ""
    try:
        return os.read(fd, 4096).decode(errors="replace") if stat.S_ISREG(os.fstat(fd).st_mode) else ""
    finally:
        os.close(fd)


def repair_worktree_records(repo, grace=RECORD_GRACE):
    """Mend what broken_worktree_records finds as git would have left it: a finished record gets
    its `commondir` back ("../..", what `worktree add` writes), the record of an add that never
    finished is removed, as git removes it when an add fails (the directory the add was
    creating stays on disk, untouched). One line per record mended."""
    return _repair_records(_records_root(repo), grace)


def _records_root(repo):
    return os.path.join(common_dir(repo), "worktrees")


def unfinished_record(repo, path):
    """The record of a `worktree add` of PATH that never got to its end (killed: its `locked`
    still says "initializing", and it has no HEAD pointing anywhere and no index), or None.
    Found by its `gitdir` naming PATH/.git or, when killed before writing that, by PATH's name.
    git's `worktree remove` does not know such a record and `worktree prune` keeps it (it is
    locked); `broken_worktree_records` mends it only once RECORD_GRACE old, as it may be a live
    add's. A caller that holds worktree_lock for its own PATH knows no add of its is live."""
    root, real = _records_root(repo), os.path.realpath(path)
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return None
    for name in names:
        admin = os.path.join(root, name)
        if os.path.islink(admin) or not os.path.isdir(admin):
            continue
        dotgit = _record_file(admin, "gitdir").strip()
        mine = os.path.realpath(os.path.dirname(dotgit)) == real if dotgit else name == os.path.basename(real)
        if mine and not _record_finished(admin):
            return admin
    return None


def _repair_records(root, grace=RECORD_GRACE):
    return [mend_worktree_record(admin, finished) for admin, finished in _broken_records(root, grace)]


def mend_worktree_record(admin, finished):
    """Mend one record found by broken_worktree_records; returns what was done, in a line."""
    name = os.path.basename(admin)
    if finished:
        store.atomic_write(os.path.join(admin, "commondir"), "../..\n", keep_last_good=False)
        return f"git's record of worktree '{name}' had an empty commondir: restored"
    import shutil

    shutil.rmtree(admin, ignore_errors=True)
    return f"git's record of worktree '{name}' was left half written by an interrupted `git worktree add`: removed"


WORKTREE_LOCK = "orchestrator-worktree"  # our flock file in the git directory (not a git lock)
# (in a checkout's own git directory: the fast-forward under way into it, and our flock on it)
FAST_FORWARD_RECORD = "orchestrator-fast-forward"


def worktree_lock(repo):
    """Serialize `git worktree add/remove/prune` for this repository across processes."""
    return store.file_lock(os.path.join(common_dir(repo), WORKTREE_LOCK))


# --------------------------------------------------------------------------- names
_BAD_REF_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


def check_ref_component(value, what="task id"):
    """Validate a user-supplied id that becomes part of a ref and a path: harmless by construction.

    Allowed: letters, digits, `.`, `_`, `-` (and `/` nowhere); no leading `-` or `.`; no `..`;
    no `.lock` suffix; at most 100 characters.
    """
    if not value:
        raise OrchestratorError(f"{what} is empty")
    if len(value) > 100:
        raise OrchestratorError(f"invalid {what} (longer than 100 characters)")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value) or ".." in value or value.endswith(
            (".lock", ".")):
        raise OrchestratorError(
            f"invalid {what} '{value}': use letters, digits, '.', '_' and '-' "
            "(not starting with '-' or '.', no '..')")
    return value


_identity_cache = {}


def identity_args(cwd):
    """`-c user.*` fallbacks when no identity is configured, so our commits never fail on a
    fresh machine; a configured identity (config or GIT_* env) always wins."""
    if "GIT_COMMITTER_EMAIL" in os.environ or "GIT_AUTHOR_EMAIL" in os.environ:
        return []
    key = os.path.realpath(cwd)
    if key not in _identity_cache:
        configured = ok(cwd, "config", "user.email")
        _identity_cache[key] = [] if configured else ["-c", "user.name=parallel-orchestrator",
                                                      "-c", "user.email=orchestrator@localhost"]
    return _identity_cache[key]


def committing(cwd, *args, check=True):
    """Run a git command that creates commits (commit, merge) with an identity guaranteed."""
    return run(cwd, *identity_args(cwd), *args, check=check)


def tracked_files(repo, limit=None):
    """The paths git tracks in `repo` (for the planner's picture of the layout); [] if none."""
    proc = run(repo, "ls-files", "-z", check=False)
    files = [f for f in proc.stdout.split("\0") if f] if proc.returncode == 0 else []
    return files[:limit] if limit else files


# --------------------------------------------------------------------------- refs on a remote
# The Ray executor moves commits between the orchestrator and worker nodes through a shared
# remote, one ref per attempt (never a shared branch: a lost node's agent may push late).
def push_ref(cwd, remote, src, dst):
    """Set `dst` on `remote` to `src` (a commit or ref here), forced: each ref has one writer."""
    run(cwd, "push", "-q", "--no-verify", remote, f"+{src}:{dst}")


def delete_remote_refs(cwd, remote, *refs):
    """Remove refs from `remote`; missing ones are fine (cleanup after a fetch)."""
    if refs:
        run(cwd, "push", "-q", "--no-verify", remote, *[f":{ref}" for ref in refs], check=False)


def fetch_ref(cwd, remote, ref, dst=None):
    """Fetch `ref` from `remote` into the local ref `dst` (default: the same name); the commit,
    or None when the remote has no such ref."""
    dst = dst or ref
    # (a fetch's "did not send all necessary objects" came with "bad object worktrees/X/HEAD":
    # a worktree add's placeholder HEAD, which `run` waits out or mends)
    proc = run(cwd, "fetch", "-q", "--no-tags", "--no-write-fetch-head", remote, f"+{ref}:{dst}", check=False)
    if proc.returncode != 0:
        if "couldn't find remote ref" in (proc.stderr or ""):
            return None
        raise GitError(["git", "fetch", remote, ref], proc.returncode, proc.stderr)
    return resolve_commit(cwd, dst)


def set_branch(repo, branch, commit):
    """Point BRANCH at COMMIT: fast-forward it where it is checked out, else move the ref."""
    where = checked_out_at(repo, branch)
    if where:
        run(where, "merge", "-q", "--ff-only", commit)
    else:
        run(repo, "update-ref", "-m", "parallel-orchestrator: attempt result", "refs/heads/" + branch, commit)


# --------------------------------------------------------------------------- the task flow's operations
def changed_files(repo, base, branch):
    """Files BRANCH changes since it forked from the local branch BASE (three-dot diff),
    sorted. Both are named as branches: a tag called like the base is not the base."""
    proc = run(repo, "diff", "--name-only", "-z", f"refs/heads/{base}...refs/heads/{branch}", "--", check=False)
    return sorted(f for f in proc.stdout.split("\0") if f) if proc.returncode == 0 else []


def commit_tree(repo, tree, parents, message):
    """A commit object for TREE with PARENTS, without touching any checkout; its sha."""
    args = ["commit-tree", tree]
    for parent in parents:
        args += ["-p", parent]
    return committing(repo, *args, "-m", message).stdout.strip()


def update_ref(repo, ref, new, old=None, reason="parallel-orchestrator"):
    """Point REF at NEW, only if it still points at OLD (compare-and-swap) when OLD is given."""
    run(repo, "update-ref", "-m", reason, ref, new, *([old] if old else []))


def delete_ref(repo, ref):
    run(repo, "update-ref", "-d", ref, check=False)


# --------------------------------------------------------------------------- read-only views
# For `orchestrator dashboard`: what a task changed. Nothing here writes to the repository
# (`--no-optional-locks`: not even the index's stat cache).

def merge_base(repo, a, b):
    """The best common ancestor of commits A and B, or None."""
    proc = run(repo, "--no-optional-locks", "merge-base", "--end-of-options", a, b, check=False)
    return (proc.stdout.strip() or None) if proc.returncode == 0 else None


def commit_parents(repo, commit):
    """The parents of COMMIT (first parent first), or None when it is no commit."""
    proc = run(repo, "--no-optional-locks", "rev-list", "--parents", "-n", "1", "--end-of-options",
               commit + "^{commit}", "--", check=False)
    words = proc.stdout.split()
    return words[1:] if proc.returncode == 0 and words else None


def first_parent_merges(repo, rev, limit=1000, max_bytes=1 << 20):
    """[(commit, [parents], subject)] of the merge commits on REV's first-parent line, newest first.

    At most LIMIT merges and MAX_BYTES of git's output (the dashboard asks this per request): a
    line cut by that bound, and the older merges after it, are left out."""
    raw, _, code = read_bounded(repo, ("--no-optional-locks", "log", "--first-parent", "--merges",
                                       f"-n{int(limit)}", "--format=%H %P%x00%s", "--end-of-options", rev, "--"),
                                max_bytes)
    if code not in (0, None):
        return []
    found = []
    for line in raw.split(b"\n")[:-1]:  # the last piece: empty, or a line cut by MAX_BYTES
        shas, _, subject = line.decode("utf-8", "replace").partition("\0")
        commit, *parents = shas.split()
        found.append((commit, parents, subject))
    return found


def diff_text(repo, old, new, limit):
    """(text, truncated): `git diff --stat --patch OLD NEW`, without external diff or textconv
    drivers, read only up to LIMIT bytes (then git is stopped); cut at a UTF-8 character
    boundary, invalid bytes replaced. Raises GitError when git fails."""
    args = ("--no-optional-locks", "diff", "--patch-with-stat", "--no-color", "--no-ext-diff", "--no-textconv",
            "-M", "--end-of-options", old, new, "--")
    raw, truncated, code = read_bounded(repo, args, limit)
    if code not in (0, None):
        raise GitError(["git", *args], code, raw.decode("utf-8", "replace"))
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    return decoder.decode(raw, final=not truncated), truncated


_READ = 64 * 1024
_STDERR_LIMIT = 64 * 1024


def read_bounded(repo, args, limit):
    """(stdout, truncated, returncode) of `git ARGS` in REPO, stdout read only up to LIMIT bytes.

    Memory stays within LIMIT plus one read (64 KiB) whatever git would write: git runs with
    its output on a pipe read a block at a time, and once LIMIT bytes are in, git is killed
    and reaped (no zombie, no git left running); `truncated` then says there was more and the
    return code is None. When git fails, stdout is replaced by the first 64 KiB of its stderr
    (the rest of stderr is read and dropped: a full pipe would stall git)."""
    import selectors

    proc = subprocess.Popen(["git", *args], executable=executable(), cwd=repo, env=git_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = bytearray(), bytearray()
    truncated = finished = False
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ, out)
            sel.register(proc.stderr, selectors.EVENT_READ, err)
            while sel.get_map() and not truncated:
                for key, _ in sel.select():
                    chunk = os.read(key.fd, _READ)
                    if not chunk:
                        sel.unregister(key.fileobj)
                    elif key.data is out:
                        out += chunk[:limit + 1 - len(out)]
                        truncated = len(out) > limit
                    elif len(err) < _STDERR_LIMIT:
                        err += chunk[:_STDERR_LIMIT - len(err)]
        finished = not truncated
    finally:
        if not finished:  # enough read (or an error here): git stops now
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()
        code = proc.wait()
    if truncated:
        return bytes(out[:limit]), True, None
    if code != 0:
        return bytes(err or out[:_STDERR_LIMIT]), False, code
    return bytes(out), False, 0


def discard_changes(path, branch=None):
    """Throw away uncommitted edits in the checkout at PATH (a killed attempt's partial work);
    with BRANCH, the checkout is put back on it too (a rebase forgotten with `--quit` leaves
    HEAD detached, an agent may have switched branches): the next attempt works on BRANCH."""
    if branch:
        run(path, "checkout", "-q", "-f", branch, "--")
    else:
        run(path, "reset", "-q", "--hard")
    run(path, "clean", "-q", "-ffd")


def restart_branch(path, branch, commit):
    """Put BRANCH, checked out at PATH, at COMMIT, the checkout clean (a retry with no work of
    its own starts from the base as it is now)."""
    run(path, "checkout", "-q", "-f", "-B", branch, commit, "--")
    run(path, "clean", "-q", "-ffd")


def commits_between(repo, old, new):
    """The commits reachable from NEW and not from OLD (a set of full ids)."""
    return set(out(repo, "rev-list", f"{old}..{new}").split())


def refs_under(repo, prefix):
    """Every ref name under PREFIX (e.g. refs/orchestrator/attempts/)."""
    return out(repo, "for-each-ref", "--format=%(refname)", prefix).split()


def add_detached_worktree(repo, path, commit):
    """A throwaway checkout of COMMIT at PATH (for e2e), registered under the worktree lock."""
    with worktree_lock(repo):
        run(repo, "worktree", "add", "-q", "--detach", path, commit)


def remove_worktree(repo, path):
    with worktree_lock(repo):
        run(repo, "worktree", "remove", "--force", path, check=False)


def rebase_onto(path, base, branch=None):
    """Replay the branch checked out at PATH onto BASE; commits whose change BASE already has
    are dropped. True when it applied cleanly; else the rebase is aborted, nothing moved."""
    proc = committing(path, "rebase", "-q", base, *([branch] if branch else []), check=False)
    if proc.returncode == 0:
        return True
    run(path, "rebase", "--abort", check=False)
    return False
