"""The one exception hierarchy, the exit codes and the message prefixes.

Two kinds of failure, told apart here and nowhere else (like pre-commit's FatalError):
- `OrchestratorError` and its subclasses: the user's input or environment is wrong. The CLI edge
  (engine.cli.common) prints ONE line, `<prefix><message>`, and exits with `exit_code` (1).
- everything else, `InternalError` (an unexpected git failure) included: a bug or a broken
  tool. The CLI edge prints one line naming it and exits 70 (`ExitCode.INTERNAL`);
  `ORCH_DEBUG=1` shows the traceback. A caller that expects a git failure (a branch that cannot
  be merged, a worktree that cannot be created) catches `GitError` and raises a user error with
  its own words: that is a decision, not an accident of the class tree.

Raise sites write the message only (`raise OrchestratorError("Invalid state 'X'")`); the prefix
each command's contract wants (`ERROR: ` or `[ERROR] `) is added by `format_line`. A message that
still carries its own prefix is printed as it is (older raise sites), and `verbatim=True` prints
a message with no prefix at all (`Unknown status: X. Use pre|post|failed`).
"""

import enum

MAX_LINE = 600


class ExitCode(enum.IntEnum):
    """Exit codes the commands use (CONTRACT.md fixes 0, 1 and 2)."""

    OK = 0
    ERROR = 1              # bad input, refused operation, failed merge: one line on stderr
    TOKEN_WARNING = 1      # state-transition tokens: warning threshold reached (same value)
    TOKEN_CHECKPOINT = 2   # state-transition tokens: checkpoint threshold reached
    INTERNAL = 70          # EX_SOFTWARE: a bug or an unexpected tool failure (ORCH_DEBUG=1 for the traceback)
    INTERRUPTED = 130      # Ctrl-C / SIGTERM


# The prefix of an error line, per command (CONTRACT.md: pool-manager and setup-worktree print
# `[ERROR] `, the other scripts and `orchestrator` print `ERROR: `).
PREFIXES = {"pool-manager": "[ERROR] ", "setup-worktree": "[ERROR] "}
DEFAULT_PREFIX = "ERROR: "
# `orchestrator <name> ...` runs the drop-in command behind <name>, with its prefix.
MIRRORS = {"pool": "pool-manager", "worktree": "setup-worktree", "state": "state-transition",
           "merge": "merge-branches", "checkpoint": "checkpoint-manager"}
_OWN_PREFIXES = ("ERROR", "[ERROR]", "Usage:")


def prefix_for(prog, args=()):
    """The error prefix for command PROG called with ARGS."""
    if prog == "orchestrator" and args and args[0] in MIRRORS:
        prog = MIRRORS[args[0]]
    return PREFIXES.get(prog, DEFAULT_PREFIX)


def format_line(message, prefix=DEFAULT_PREFIX, verbatim=False):
    """The one stderr line for MESSAGE: PREFIX added unless verbatim or already prefixed."""
    text = message if verbatim or message.startswith(_OWN_PREFIXES) else prefix + message
    return one_line(text)


def one_line(text):
    """Any message as one bounded stderr line: control characters in echoed values are
    escaped (a newline in a hostile id cannot split the line) and long values are cut."""
    text = "".join(ch if ch >= " " and ch != "\x7f" else ch.encode("unicode_escape").decode("ascii")
                   for ch in text)
    if len(text) > MAX_LINE:
        text = text[:MAX_LINE // 2] + " … " + text[-MAX_LINE // 2:]
    return text


class OrchestratorError(Exception):
    """A user error (expected failure): shown as one line on stderr, no traceback."""

    exit_code = ExitCode.ERROR
    PREFIXES = _OWN_PREFIXES

    def __init__(self, message, exit_code=None, verbatim=False):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
        self.verbatim = verbatim

    @property
    def message(self):
        return self.args[0]

    @property
    def line(self):
        """The stderr line with the default prefix (`ERROR: `); the CLI edge uses
        `line_for(prefix)` with the command's own."""
        return self.line_for(DEFAULT_PREFIX)

    def line_for(self, prefix):
        return format_line(self.message, prefix, self.verbatim)


class UsageError(OrchestratorError):
    """Wrong arguments: a missing or malformed value."""


class InvalidValue(UsageError):
    """A user-supplied id or value that failed validation before touching anything."""


class UnsafePath(OrchestratorError):
    """A path the engine would write to is a symbolic link (or a directory others control)."""


class StateFileError(OrchestratorError):
    """A state file that exists but cannot be parsed, or has the wrong shape."""


class NotInitialized(OrchestratorError):
    """A command that needs a state file that does not exist."""


class IllegalTransition(OrchestratorError):
    """An edge the machine does not allow (use --force to override)."""


class InternalError(Exception):
    """Something that should not happen: not the user's fault, exit 70, traceback on request."""

    exit_code = ExitCode.INTERNAL


class GitError(InternalError):
    """A git command failed unexpectedly; carries the command, exit code and output.

    Not a user error: a caller that expects the failure catches it and says what it means."""

    def __init__(self, cmd, returncode, output):
        self.cmd = list(cmd)
        self.returncode = returncode
        self.output = output
        last = (output or "").strip().splitlines()
        detail = last[-1] if last else f"exit {returncode}"
        self.detail = detail
        super().__init__(f"git {' '.join(self.cmd[1:3])} failed: {detail}")

    @property
    def message(self):
        return self.args[0]
