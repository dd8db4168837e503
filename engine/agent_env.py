"""Task data for agents, made safe to pass in environment variables.

The kernel refuses an `execve` whose environment holds a value over MAX_ARG_STRLEN (128 KiB per
string) or whose strings add up to more than its total limit, and Python refuses a NUL byte
in any value. A task description, a verify's output fed back as QA_FEEDBACK or any other value
comes from users and agents, so `prepare_env` cleans and bounds every value, and offers the
whole text in a file next to the task's logs (`<NAME>_FILE`): always for TASK_DESCRIPTION and
QA_FEEDBACK, and for any other value it had to change. What still cannot be passed raises
AgentLaunchError, which fails that one task with the reason.
"""

import os
import re

from engine.procs import CommandLaunchError

MAX_ARG_STRLEN = 131072  # the kernel's limit for one "NAME=value" string, NUL included
VALUE_LIMIT = 32 * 1024  # bytes one value may take in the environment; the rest goes to a file
TOTAL_LIMIT = 256 * 1024  # bytes all task values may take together
MIN_VALUE_LIMIT = 1024  # below this, shrinking values to fit the total is pointless
ALWAYS_FILE = ("TASK_DESCRIPTION", "QA_FEEDBACK")
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class AgentLaunchError(CommandLaunchError):
    """An agent that cannot be started with its task data; the message is the reason."""


def _encode(text):
    """Bytes exactly as exec will pass them (surrogate escapes round-trip; a lone surrogate
    that cannot be encoded is written as an escape)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace")


def _decode(data):
    return data.decode("utf-8", "surrogateescape")


def _clean(value):
    """A value as text without NUL bytes (shown as `\\0`)."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = _decode(value)
    return str(value).replace("\0", "\\0")


def _cut(data, limit, name):
    """At most `limit` bytes: the head and the tail of `data` with a note between them that
    names the file holding the whole text; cuts fall on character boundaries."""
    note = f"\n[… {{}} bytes cut; the whole text is in ${name}_FILE …]\n"
    room = max(0, limit - len(note.format(len(data)).encode()))
    head = data[:room * 2 // 3].decode("utf-8", "ignore").encode("utf-8")
    tail = data[len(data) - (room - len(head)):] if room > len(head) else b""
    tail = tail.decode("utf-8", "ignore").encode("utf-8")
    return head + note.format(len(data) - len(head) - len(tail)).encode() + tail


def _environ_size(env):
    """What the kernel counts for an environment: every "NAME=value\\0" and its pointer."""
    return sum(len(_encode(k)) + len(_encode(v)) + 2 + 8 for k, v in env.items())


def arg_max():
    try:
        limit = os.sysconf("SC_ARG_MAX")
    except (ValueError, OSError):
        limit = MAX_ARG_STRLEN
    return min(limit if limit > 0 else MAX_ARG_STRLEN, 6 * 1024 * 1024)


def prepare_env(values, files_dir, *, inherited=None, reserve=64 * 1024, value_limit=VALUE_LIMIT,
                total_limit=TOTAL_LIMIT):
    """Clean and bound `values` (name -> text) for an agent's environment.

    Returns the values to add to the inherited environment (`os.environ` unless given): each
    NUL-free and at most `value_limit` bytes (head and tail kept, a note between them), all
    together within `total_limit`, plus `<NAME>_FILE` (the whole original text, in
    `files_dir`) for TASK_DESCRIPTION, QA_FEEDBACK and every value that had to be changed.
    `reserve` is room kept for the command line and the variables added at launch.
    Raises AgentLaunchError when that still does not fit the kernel's limits.
    """
    inherited = os.environ if inherited is None else inherited
    originals, cleaned = {}, {}
    for name, value in values.items():
        if not isinstance(name, str) or not NAME.match(name):
            raise AgentLaunchError(f"cannot pass task data: {name!r} is not a valid environment variable name")
        raw = value if isinstance(value, bytes) else _encode("" if value is None else str(value))
        originals[name] = raw
        cleaned[name] = _encode(_clean(value))
    base = {k: v for k, v in inherited.items() if k not in cleaned}
    room = min(total_limit, arg_max() - reserve - _environ_size(base))
    limit = min(value_limit, MAX_ARG_STRLEN - 64)
    while True:
        bounded = {name: (data if len(data) <= min(limit, MAX_ARG_STRLEN - len(name) - 2) else
                          _cut(data, min(limit, MAX_ARG_STRLEN - len(name) - 2), name))
                   for name, data in cleaned.items()}
        size = sum(len(k) + len(v) + 2 + 8 for k, v in bounded.items())
        files = [n for n in bounded if n in ALWAYS_FILE or bounded[n] != originals[n]]
        size += sum(2 * len(n) + len(files_dir) + len('_FILE=/\0') + 8 for n in files)
        if size <= room:
            break
        if limit <= MIN_VALUE_LIMIT:
            raise AgentLaunchError(
                f"cannot pass task data: the environment is too large for the kernel's limit ({arg_max()} "
                f"bytes; the inherited environment alone takes {_environ_size(base)})")
        limit = max(MIN_VALUE_LIMIT, limit // 2)
    result = {name: _decode(data) for name, data in bounded.items()}
    if files:
        from engine import store
        from engine.errors import OrchestratorError

        try:
            store.makedirs(files_dir)
            for name in files:  # the whole text, replaced atomically, never through a link
                path = os.path.join(files_dir, name)
                store.atomic_write(path, originals[name], keep_last_good=False, durable=False)
                result[f"{name}_FILE"] = path
        except OrchestratorError as exc:  # a link in the way (UnsafePath)
            raise AgentLaunchError(f"cannot write the task data files: {exc.message}") from None
        except OSError as exc:
            raise AgentLaunchError(f"cannot write the task data files in {files_dir}: "
                                   f"{exc.strerror or exc}") from None
    return result
