"""Preparing a worktree for an agent: the base to start from, the files to copy in, the
optional setup command, and keeping the main checkout's status clean. Shared by the pool
(`pool-manager acquire`) and `setup-worktree`.
"""

import os
import subprocess

from engine import git, store
from engine.errors import GitError, OrchestratorError
from engine.paths import CLAUDE_DIR, CONTEXT_REL, PROFILE_REL, Layout, task_worktree_base
from engine.ui import warn

# Files from the main `.claude/` an agent expects in its worktree (CONTRACT.md §2.2, §2.3).
# The state machine file is *not* copied: commands in a worktree resolve to the main root.
PROFILE = PROFILE_REL
CONTEXT = CONTEXT_REL
INCLUDE_FILE = ".worktreeinclude"
SETUP_TIMEOUT = 900


def resolve_base(repo, base=None):
    """(label, commit) for BASE: a local branch, a remote-only branch (a local branch is
    created from `origin/BASE`), a tag or a commit. No BASE: the current branch, or the
    current commit when HEAD is detached. Raises a clear error otherwise."""
    if not base:
        commit, branch = git.head(repo)
        if commit is None:
            raise OrchestratorError("The repository has no commits yet; commit something first")
        return (branch or commit), commit
    if base.startswith("-") or any(c in base for c in "\x00\n\r\t "):
        raise OrchestratorError(f"invalid base '{base}'")
    commit = git.branch_commit(repo, base)  # (the usual case, in one call: a branch implies commits)
    if commit:
        return base, commit
    if not git.has_commits(repo):
        raise OrchestratorError("The repository has no commits yet; commit something first")
    remote = git.resolve_commit(repo, f"refs/remotes/origin/{base}")
    if remote and git.ok(repo, "check-ref-format", "--branch", base):
        git.run(repo, "branch", "--track", "--", base, f"origin/{base}")
        return base, remote
    commit = git.resolve_commit(repo, base)
    if commit:
        return base, commit
    raise OrchestratorError(f"Base branch does not exist: {base}")


def add_worktree(repo, path, branch, start=None, discard=None):
    """Create a worktree at PATH on BRANCH (reset to START when given, else checked out as is).

    Only the registration (`worktree add --no-checkout`) holds the per-repository lock; the
    expensive part, writing the files, runs outside it so concurrent creations overlap.
    `discard` is called under the lock first, to clear whatever broken thing was at PATH.
    """
    store.claim_path(path)  # git follows links: a committed `.claude/worktree-pool -> ~/x` is refused
    with git.worktree_lock(repo):
        if discard is not None:
            discard()
        if start is None:
            git.run(repo, "worktree", "add", "-q", "--no-checkout", path, branch)
        else:
            git.run(repo, "worktree", "add", "-q", "--no-checkout", "-B", branch, path, start)
    git.run(path, "reset", "-q", "--hard")


def worktree_healthy(repo, path, listing=None):
    """True when `path` is a registered, usable worktree of `repo`."""
    if not os.path.isfile(os.path.join(path, ".git")):
        return False
    real = os.path.realpath(path)
    entries = listing if listing is not None else git.worktrees(repo)
    entry = next((e for e in entries if os.path.realpath(e["path"]) == real), None)
    if entry is None or entry["prunable"] or entry["head"] is None:
        return False
    return git.ok(path, "rev-parse", "--verify", "-q", "HEAD")


# From `.claude/`, `.worktreeinclude` may copy only Claude Code's own user files: everything
# else there is the engine's (state, journals, locks, logs, memory, the pool), which in a
# worktree would be committed to the task branch and then block INTEGRATE forever.
CLAUDE_USER_FILES = ("settings.json", "settings.local.json", "commands", "agents", "skills", "hooks")


def never_copied(root, rel, never=()):
    """True for paths `.worktreeinclude` must not copy whatever it says: anything in a `.git`,
    the engine's files under `.claude/`, and the paths in `never` (a directory and all under
    it, or a file and its `<file>.*` companions such as locks)."""
    parts = rel.replace(os.sep, "/").split("/")
    if ".git" in parts or (parts[0] == CLAUDE_DIR and (len(parts) < 2 or parts[1] not in CLAUDE_USER_FILES)):
        return True
    path = os.path.join(root, rel)
    for other in never:
        other = os.path.normpath(other)
        if path == other or path.startswith(other + os.sep) or (
                not os.path.isdir(other) and path.startswith(other + ".")):
            return True
    return False


def pool_paths(root):
    """The pool's possible directories and its state file for this root (wherever
    POOL_DIR/POOL_STATE_FILE put them, and the engine's own place)."""
    layout = Layout(root)
    return (*layout.pool_paths(), layout.engine_pool_dir)


def include_matches(root, never=()):
    """Untracked files in the main tree matched by `.worktreeinclude` (gitignore syntax),
    minus what is never copied (see never_copied)."""
    include = os.path.join(root, INCLUDE_FILE)
    if not os.path.isfile(include):
        return []
    text = git.out(root, "ls-files", "--others", "--ignored", "-z", f"--exclude-from={include}")
    return [p for p in text.split("\0") if p and not never_copied(root, p, never)]


def copy_into(root, worktree, extra=(), never=()):
    """Copy the profile (plus `extra`) and the `.worktreeinclude` matches into the worktree.

    Files the repository tracks are skipped (the checkout already has them). The `.claude/`
    copies are added to the repository's info/exclude so they never show as untracked in a
    worktree, where an agent's `git add -A` would commit them into its task branch. `never`:
    more paths `.worktreeinclude` must not copy (the pool's directory and state file).
    """
    copied = []
    wanted = [rel for rel in (PROFILE, *extra) if os.path.isfile(os.path.join(root, rel))]
    tracked = set(git.out(root, "ls-files", "-z", "--", *wanted).split("\0")) if wanted else set()
    for rel in (*wanted, *include_matches(root, never)):
        src = os.path.join(root, rel)
        if rel in tracked or not os.path.isfile(src) or os.path.islink(src):
            continue
        store.copy_file(src, os.path.join(worktree, rel))
        copied.append(rel)
        if rel in wanted or rel.startswith(CLAUDE_DIR + os.sep):
            exclude_from_status(root, rel, directory=False)
    return copied


def setup_command(root):
    """The optional setup command from `.claude/auto-context.yaml` (worktree.setup_command,
    or parallelization.setup_command)."""
    data = store.load_yaml_cached(Layout(root).context)
    for section in ("worktree", "parallelization"):
        value = (data or {}).get(section)
        if isinstance(value, dict) and value.get("setup_command"):
            return str(value["setup_command"])
    return None


def run_setup(root, worktree, env_extra):
    """Run the configured setup command in the worktree; its output goes to stderr."""
    command = setup_command(root)
    if not command:
        return
    env = dict(os.environ, **env_extra)
    try:
        proc = subprocess.run(["/bin/sh", "-c", command], cwd=worktree, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=SETUP_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise OrchestratorError(f"Setup command timed out after {SETUP_TIMEOUT}s in {worktree}") from None
    if proc.returncode != 0:
        tail = " | ".join(proc.stdout.strip().splitlines()[-3:])
        raise OrchestratorError(f"Setup command failed (exit {proc.returncode}) in {worktree}: {tail}")


def exclude_from_status(repo, rel_path, directory=True):
    """Add `/rel_path/` (or `/rel_path` for a file) to the repository's info/exclude once."""
    if rel_path.startswith(".."):
        return
    line = "/" + rel_path.strip("/") + ("/" if directory else "")
    info = os.path.join(git.common_dir(repo), "info")
    path = os.path.join(info, "exclude")
    try:
        with open(path, encoding="utf-8") as fh:
            if line in fh.read().splitlines():
                return
    except FileNotFoundError:
        pass
    store.append_text(path, f"{line}\n")


def leftover_pathspec():
    """Pathspec that excludes the files we copy in, so committing leftovers never adds them."""
    return [".", f":(exclude){PROFILE}", f":(exclude){CONTEXT}"]


def has_leftovers(path):
    return bool(git.status(path, *leftover_pathspec())[1])


def commit_leftovers(path, message, known_dirty=None):
    """Commit whatever an agent left uncommitted (minus our copies); True if a commit was made."""
    if not (has_leftovers(path) if known_dirty is None else known_dirty):
        return False
    git.run(path, "add", "-A", "--", *leftover_pathspec())
    git.committing(path, "commit", "-q", "--no-verify", "-m", message)
    return True


# --------------------------------------------------------------------------- setup-worktree
def temp_base(env=None):
    """AUTO_WORKTREE_BASE, else ${TMPDIR:-/tmp}/auto-worktrees-<uid> (see engine.paths)."""
    return task_worktree_base(env)


def generate_task_id():
    import random
    import string
    import time

    suffix = "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(6))
    return f"task-{int(time.time())}-{os.getpid()}-{suffix}"


def create_task_worktree(root, task=None, base=None):
    """`setup-worktree [TASK] [BASE]`: a single-use worktree at <temp base>/TASK on auto/TASK.

    Everything is validated before any side effect. An existing worktree for the same task on
    its branch is reused (idempotent); an existing `auto/TASK` with commits the base lacks is
    checked out as it is (never force-deleted); anything else in the way is refused.
    Returns (path, branch).
    """
    task = git.check_ref_component(task or generate_task_id())
    repo = git.toplevel(root)
    _, base_commit = resolve_base(repo, base)
    branch = f"auto/{task}"
    base_dir = temp_base()
    if os.path.lexists(base_dir):
        store.private_dir(base_dir, create=False)  # someone else's directory is never used
    path = os.path.join(base_dir, task)
    listing = git.worktrees(repo)
    real = os.path.realpath(path)
    entry = next((e for e in listing if os.path.realpath(e["path"]) == real and not e["prunable"]), None)
    if entry is not None:
        if entry["branch"] != branch:
            raise OrchestratorError(f"{path} is a worktree on {entry['branch'] or 'a detached HEAD'}, "
                                    f"not {branch}")
        warn(f"[WARN] Reusing existing worktree: {path}")
        return path, branch
    if os.path.lexists(path):
        raise OrchestratorError(f"{path} exists and is not a worktree of this repository; "
                                "move it away first")
    where = git.checked_out_at(repo, branch, listing)
    if where:
        raise OrchestratorError(f"Branch {branch} is checked out in {where}")
    reuse = git.branch_exists(repo, branch) and git.unique_commits(repo, branch, base_commit) > 0
    store.private_dir(base_dir)
    if reuse:
        warn(f"[WARN] Reusing existing branch {branch}: it has commits not in the base")
    try:
        add_worktree(repo, path, branch, None if reuse else base_commit,
                     discard=lambda: git.run(repo, "worktree", "prune", check=False))
    except GitError as exc:  # expected when git refuses the path or branch: the contract's line
        raise OrchestratorError(f"Failed to create worktree: {exc.detail}") from exc
    try:
        copy_into(root, path, extra=(CONTEXT,), never=(base_dir, *pool_paths(root)))
        run_setup(root, path, {"TASK_ID": task, "WORKTREE": path, "BRANCH": branch, "BASE": base or ""})
    except BaseException:
        with git.worktree_lock(repo):
            git.run(repo, "worktree", "remove", "--force", "--force", path, check=False)
        if not reuse and git.branch_exists(repo, branch) and git.unique_commits(repo, branch, base_commit) == 0:
            git.delete_branch(repo, branch)
        raise
    return path, branch
