"""Detached runs: `orchestrator run --detach` / `resume --detach`.

A Claude Code session cannot host a run: its Bash tool moves a long command to the background
and kills it when the session ends (measured with 2.1.332). So the run goes on in a process of
its own: a new session (`setsid`: no controlling terminal, its own process group, nothing the
caller's group receives reaches it), stdin from /dev/null, its output appended to
`.claude/auto-logs/orchestrator.log`. Its pid and start time are in the progress file like any
run's, so `status` and `wait` can tell whether it still lives.

Everything that refuses a run (a bad plan, another live run, a completed plan) still answers
the caller: the detached child does all its checks with its stdout and stderr still piped to
the caller, and only once it holds the run lock and has recorded the run does it say so (one
marker line) and point both at the log. The caller relays whatever came before; on the marker
it prints one line (run id, pid, log) and exits 0 without waiting.
"""

import os
import selectors
import subprocess
import sys

LOG_ENV = "ORCH_DETACH_LOG"
MARKER = "\x1eORCH-DETACHED-STARTED"


def spawn(args, log_path):
    """Start `orchestrator ARGS` (no --detach) detached; returns (exit code, stdout text,
    stderr text, (run id, pid) or None). On success the child is left running."""
    env = dict(os.environ, **{LOG_ENV: log_path})
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli.orchestrator", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, env=env,
                            close_fds=True)
    out, err = _read_until_closed(proc)
    text = out.decode("utf-8", "replace")
    if MARKER in text:
        before, _, rest = text.partition(MARKER)
        fields = rest.split()
        return 0, before, err.decode("utf-8", "replace"), (fields[0], int(fields[1]))
    code = proc.wait()
    return code, text, err.decode("utf-8", "replace"), None


def _read_until_closed(proc):
    """Both pipes until the child closes them (it started, or it exited)."""
    chunks = {proc.stdout: [], proc.stderr: []}
    selector = selectors.DefaultSelector()
    for stream in chunks:
        selector.register(stream, selectors.EVENT_READ)
    open_streams = set(chunks)
    while open_streams:
        for key, _ in selector.select():
            data = os.read(key.fileobj.fileno(), 65536)
            if data:
                chunks[key.fileobj].append(data)
            else:
                selector.unregister(key.fileobj)
                open_streams.discard(key.fileobj)
                key.fileobj.close()
    return b"".join(chunks[proc.stdout]), b"".join(chunks[proc.stderr])


def started(run_id, header):
    """In the detached child, once the run holds its lock and is recorded: tell the caller,
    then send stdout and stderr to the log (the caller's pipes close: it returns). A no-op in
    a run that was not started detached."""
    log = os.environ.pop(LOG_ENV, None)
    if not log:
        return
    from engine import store

    fd = store.open_fd(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.write(fd, (header + "\n").encode("utf-8", "replace"))
    sys.stdout.write(f"{MARKER} {run_id} {os.getpid()}\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
