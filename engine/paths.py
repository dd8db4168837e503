"""Where the state files live.

The original scripts resolve `.claude/` against the current directory, so a call from a
subdirectory or from inside a worktree silently created a second `.claude/`. We resolve it
once, the same way for every command:

1. `ORCHESTRATOR_ROOT`, if set, is the project root (absolute or relative to the cwd).
2. Otherwise the root of the *main* working tree of the git repository that contains the
   current directory. A linked worktree (its `.git` is a file) resolves to the main tree, so
   an agent inside `.claude/worktree-pool/wt-3/src` or in `/tmp/auto-worktrees-0/task-1`
   reads and writes the same `.claude/` as the orchestrator.
3. Outside any repository: the current directory (the contract's behaviour).

This walks the filesystem in Python instead of running `git rev-parse`, because every CLI
call pays for it.
"""

import os

ROOT_ENV = "ORCHESTRATOR_ROOT"

# Paths relative to the project root, for the places that need them relative (git pathspecs,
# `.worktreeinclude` matching); Layout joins the same names to the root.
CLAUDE_DIR = ".claude"
PROFILE_REL = os.path.join(CLAUDE_DIR, "project-profile.yaml")
CONTEXT_REL = os.path.join(CLAUDE_DIR, "auto-context.yaml")
# Where the engine's own runs keep their slots when POOL_DIR is not set: outside `.claude/`,
# because Claude Code (measured with 2.1.332) never lets its file tools write under a `.claude`
# directory in print mode, whatever the allow-list says, so a `claude` agent could not edit a
# file in a slot there. The drop-in `pool-manager` keeps the contract's `.claude/worktree-pool`
# for a pool it creates; a pool records its directory, and every command uses the recorded one.
ENGINE_POOL_REL = os.path.join(".orchestrator", "worktree-pool")


def _main_tree_of(git_entry):
    """Given a `.git` file or directory, return the main working tree that owns it."""
    if os.path.isdir(git_entry):
        return os.path.dirname(git_entry)
    try:
        with open(git_entry, encoding="utf-8") as fh:
            first = fh.readline().strip()
    except OSError:
        return None
    if not first.startswith("gitdir:"):
        return None
    gitdir = first[len("gitdir:"):].strip()
    gitdir = os.path.normpath(os.path.join(os.path.dirname(git_entry), gitdir))
    common = gitdir
    try:
        with open(os.path.join(gitdir, "commondir"), encoding="utf-8") as fh:
            common = os.path.normpath(os.path.join(gitdir, fh.readline().strip()))
    except OSError:
        pass
    if os.path.basename(common) == ".git":
        return os.path.dirname(common)
    return None  # a bare repository or submodule layout: fall back to the cwd


def project_root(cwd=None):
    """The directory that holds `.claude/` for this invocation (absolute)."""
    cwd = os.path.abspath(cwd or os.getcwd())
    override = os.environ.get(ROOT_ENV)
    if override:
        return os.path.abspath(os.path.join(cwd, override))
    here = cwd
    while True:
        entry = os.path.join(here, ".git")
        if os.path.lexists(entry):
            root = _main_tree_of(entry)
            return root if root else cwd
        parent = os.path.dirname(here)
        if parent == here:
            return cwd
        here = parent


def task_worktree_base(env=None):
    """setup-worktree's base: AUTO_WORKTREE_BASE, else ${TMPDIR:-/tmp}/auto-worktrees-<uid>
    (trailing / stripped). Shared with other users' processes when in /tmp, so it is used only
    when it is ours and private (engine.store.private_dir)."""
    env = os.environ if env is None else env
    if env.get("AUTO_WORKTREE_BASE"):
        return os.path.abspath(env["AUTO_WORKTREE_BASE"].rstrip("/") or "/")
    tmp = (env.get("TMPDIR") or "/tmp").rstrip("/") or "/"
    return os.path.join(os.path.abspath(tmp), f"auto-worktrees-{os.getuid()}")


class Layout:
    """Every path the engine uses, derived from one project root (and, for the pool, the
    POOL_DIR / POOL_STATE_FILE environment variables the contract names). Nothing else in the
    engine spells `.claude/...`: ask the layout.

    Creating a layout registers its root with the store as trusted: every directory below it
    is checked for symbolic links before the engine writes there (engine.store).
    """

    def __init__(self, root=None, env=None):
        from engine import store

        self.root = root or project_root()
        store.trust(self.root)
        claude = self.claude = os.path.join(self.root, CLAUDE_DIR)
        self.state_file = os.path.join(claude, "auto-state-machine.yaml")
        self.memory_dir = os.path.join(claude, "auto-memory")
        self.memory_archive = os.path.join(claude, "auto-memory-archive")
        self.journal = os.path.join(claude, "auto-journal.jsonl")
        self.progress = os.path.join(claude, "auto-progress.yaml")
        self.context = os.path.join(self.root, CONTEXT_REL)
        self.profile = os.path.join(self.root, PROFILE_REL)
        self.plan = os.path.join(claude, "auto-plan.yaml")
        self.plans_dir = os.path.join(claude, "plans")
        self.logs = os.path.join(claude, "auto-logs")
        self.planner_logs = os.path.join(self.logs, "planner")
        self.run_lock = os.path.join(claude, "orchestrator.lock")
        self.detached_log = os.path.join(self.logs, "orchestrator.log")  # a detached run's own output
        self.checkpoints = os.path.join(claude, "checkpoints")
        self.pool_journal = os.path.join(claude, "pool-journal.jsonl")
        self.pool_dir, self.pool_state = self.pool_paths(env)
        self.engine_pool_dir = os.path.join(self.root, ENGINE_POOL_REL)

    def pool_paths(self, env=None):
        """(pool directory, pool state file): POOL_DIR / POOL_STATE_FILE (relative to the root)
        or `.claude/worktree-pool` and `.claude/pool-state.json` -- the directory a NEW pool
        gets; an existing pool's own directory is recorded in its state file (engine.pool)."""
        env = os.environ if env is None else env
        pool_dir = env.get("POOL_DIR") or os.path.join(self.claude, "worktree-pool")
        state = env.get("POOL_STATE_FILE") or os.path.join(self.claude, "pool-state.json")
        return (os.path.normpath(os.path.join(self.root, pool_dir)),
                os.path.normpath(os.path.join(self.root, state)))

    def task_log(self, task_id, kind="log"):
        """`auto-logs/TASK.log` (agent output of every attempt, appended) or `TASK.<kind>`
        (`attempt-N.exit`, `attempt-N.jsonl`, `qa-N.log`, ...)."""
        return os.path.join(self.logs, f"{task_id}.{kind}")

    def attempt_exit(self, task_id, attempt):
        """The exit-status trailer of attempt N of TASK_ID."""
        return os.path.join(self.logs, f"{task_id}.attempt-{attempt}.exit")

    def qa_log(self, task_id, attempt):
        """The verify output of attempt N of TASK_ID."""
        return os.path.join(self.logs, f"{task_id}.qa-{attempt}.log")

    def e2e_log(self, label):
        """The e2e command's output for a group (or a scope of groups)."""
        return os.path.join(self.logs, f"e2e-{label}.log")

    def rel(self, path):
        """A path relative to the root, as the contract prints them (`.claude/...`)."""
        return os.path.relpath(path, self.root)
