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


class Layout:
    """Every path the engine uses, derived from one project root."""

    def __init__(self, root=None):
        self.root = root or project_root()
        self.claude = os.path.join(self.root, ".claude")
        self.state_file = os.path.join(self.claude, "auto-state-machine.yaml")
        self.memory_dir = os.path.join(self.claude, "auto-memory")
        self.journal = os.path.join(self.claude, "auto-journal.jsonl")

    def rel(self, path):
        """A path relative to the root, as the contract prints them (`.claude/...`)."""
        return os.path.relpath(path, self.root)
