"""The one exception hierarchy. The CLI edge (engine.cli.common) maps these to a stderr line
and an exit code; nothing below the CLI prints errors or exits."""


MAX_LINE = 600


def one_line(text):
    """Any message as one bounded stderr line: control characters in echoed values are
    escaped (a newline in a hostile id cannot split the line) and long values are cut."""
    text = "".join(ch if ch >= " " and ch != "\x7f" else ch.encode("unicode_escape").decode("ascii")
                   for ch in text)
    if len(text) > MAX_LINE:
        text = text[:MAX_LINE // 2] + " … " + text[-MAX_LINE // 2:]
    return text


class OrchestratorError(Exception):
    """An expected failure: shown as one line on stderr, no traceback."""

    exit_code = 1
    PREFIXES = ("ERROR", "[ERROR]", "Usage:")

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
        """The stderr line: the message, with `ERROR: ` unless it carries its own prefix."""
        text = self.message if self.verbatim or self.message.startswith(self.PREFIXES) else f"ERROR: {self.message}"
        return one_line(text)


class UsageError(OrchestratorError):
    """Wrong arguments: a missing or malformed value."""


class InvalidValue(UsageError):
    """A user-supplied id or value that failed validation before touching anything."""


class StateFileError(OrchestratorError):
    """A state file that exists but cannot be parsed, or has the wrong shape."""


class NotInitialized(OrchestratorError):
    """A command that needs a state file that does not exist."""


class IllegalTransition(OrchestratorError):
    """An edge the machine does not allow (use --force to override)."""


class GitError(OrchestratorError):
    """A git command failed; carries the command, exit code and output."""

    def __init__(self, cmd, returncode, output):
        self.cmd = list(cmd)
        self.returncode = returncode
        self.output = output
        last = (output or "").strip().splitlines()
        detail = last[-1] if last else f"exit {returncode}"
        super().__init__(f"git {' '.join(self.cmd[1:3])} failed: {detail}")
