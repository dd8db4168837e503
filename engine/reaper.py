"""The small process that runs one external command for the orchestrator and stops everything
that command started once it ends (run by `engine.procs.run_command`, never imported).

It makes itself a Linux child subreaper, so every orphan of the command's tree — a child that
called `setsid`, double-forked, or scrubbed its environment — is re-parented to it instead of
to init. When the command exits, whatever is left of its tree is TERMed, then KILLed after a
grace period, and reaped here (`waitpid(-1)` is safe in this process: every child it has is
the command's). Being a separate process keeps the orchestrator's own children (git, other
commands) out of this, and it keeps working when the orchestrator itself is SIGKILLed.

    python -I -S reaper.py GRACE EXIT_PATH MARKER OUTPUT_LIMIT COMMAND

Runs `/bin/sh -c COMMAND` with our stdout/stderr (the output file). Exits with the command's
status (re-raising its terminating signal). EXIT_PATH, when not empty, receives the command's
exit status atomically after the clean-up, unless the command was stopped (SIGTERM/SIGINT/
SIGHUP to this process): a resumed orchestrator collects an orphaned agent's result from it.
MARKER names the command's marker variable (unused here: `engine.procs.stop_group` reads it
from our command line). OUTPUT_LIMIT (bytes, 0 = none): a command whose output grows past it
is stopped like a timeout and we die by SIGXFSZ, so a runaway printer cannot fill the disk.

All signals are taken synchronously (blocked, then `sigtimedwait`): a child's exit and a stop
request wake the single loop at once, with no handler racing the clean-up. Standard library only and no
imports at start-up beyond os, _signal, sys and time (ctypes for the prctl), so it costs little per command.
"""

import os
import _signal as signal  # the C module: `signal` would import enum, a third of our start-up
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
WAKE_SIGNALS = STOP_SIGNALS | {signal.SIGCHLD}
GIVE_UP = 5.0  # seconds of KILLs after which a process we may not signal (setuid) is left
SIZE_POLL = 0.05  # how often the output size is looked at when there is a limit (s)


def _set_subreaper():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux: the orchestrator's marker sweep still runs
        return False


def _descendants(root):
    """Pids of every living process below `root`, from /proc."""
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != b"Z":
            children.setdefault(int(fields[1]), []).append(int(name))
    found, todo = [], [root]
    while todo:
        for pid in children.get(todo.pop(), ()):
            found.append(pid)
            todo.append(pid)
    return found


def _signal_all(pids, sig):
    for pid in pids:
        try:
            os.kill(pid, sig)
            if sig == signal.SIGTERM:
                os.kill(pid, signal.SIGCONT)  # a stopped process only sees TERM once continued
        except OSError:
            pass


class Reaper:
    def __init__(self, command_pid):
        self.command_pid = command_pid
        self.status = None  # the command's wait status once reaped

    def reap(self):
        """Reap every child that has ended; False once none are left at all."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            if pid == self.command_pid:
                self.status = status

    def wait_command(self, output_limit):
        """'exited', 'limit' or the stop signal that ended the wait."""
        start = _output_size()
        while True:
            self.reap()
            if self.status is not None:
                return "exited"
            if output_limit and start is not None and _output_size() - start > output_limit:
                return "limit"
            if output_limit:
                info = signal.sigtimedwait(WAKE_SIGNALS, SIZE_POLL)
            else:
                info = signal.sigwaitinfo(WAKE_SIGNALS)
            if info is not None and info.si_signo in STOP_SIGNALS:
                return info.si_signo

    def stop_tree(self, grace):
        """TERM everything left below us, KILL what outlives `grace`, reap it all."""
        if not self.reap():
            return
        _signal_all(_descendants(os.getpid()), signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.reap():
            now = time.monotonic()
            if now >= deadline + GIVE_UP:
                print("[orchestrator] some processes the command started could not be stopped", file=sys.stderr)
                return
            if now >= deadline:
                _signal_all(_descendants(os.getpid()), signal.SIGKILL)
            signal.sigtimedwait({signal.SIGCHLD}, 0.01)


def _output_size():
    try:
        return os.fstat(1).st_size
    except OSError:
        return None


def _write_exit(path, code):
    tmp = f"{path}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        try:
            os.write(fd, str(code).encode("ascii"))
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        print(f"[orchestrator] could not record the exit status in {path}: {exc}", file=sys.stderr)


def _die_like(sig):
    """End this process by `sig`, so our parent sees what the command saw."""
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sig not in (signal.SIGKILL, signal.SIGSTOP):  # these have no handler to reset
        signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
    os.kill(os.getpid(), sig)
    os._exit(128 + sig)


def _await_order():
    """A reaper started ahead of need (WARM on the command line: every argument but the marker
    is "-"): its orders, marshalled on stdin, once the command is known; the output goes to the
    file its orchestrator (pid PARENT) opened as fd OUT, reopened here through /proc. Its stdout
    is a pipe to the orchestrator: "R" once it is ready for orders, then, once the command has
    started, "OK" or "E <errno>" (the launch failed as Popen's would: the directory, the kernel
    refusing the command).
    No order (the orchestrator ended or had no use for it): None."""
    import marshal

    chunks = []
    while True:
        chunk = os.read(0, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    if not chunks:
        return None
    grace, exit_path, output_limit, command, cwd, env, parent, out = marshal.loads(b"".join(chunks))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    try:
        fd = os.open(f"/proc/{parent}/fd/{out}", os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        os.chdir(cwd)
    except OSError as exc:
        _refuse(exc.errno)
    return grace, exit_path, output_limit, command, env, fd


def _refuse(errno):
    """A warm launch that cannot start: say why to the orchestrator, and end."""
    os.write(1, f"E {errno}\n".encode("ascii"))
    os._exit(127)


def _start(command, env, out, previous):
    """Fork and exec the command; its pid. A warm launch (OUT: the output file, ENV: the
    whole environment) learns from a close-on-exec pipe whether the exec happened, tells its
    orchestrator, and only then writes its own messages to the output file too."""
    status = os.pipe2(os.O_CLOEXEC) if out is not None else None
    pid = os.fork()
    if pid == 0:
        try:
            for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # what Python changed at start-up
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
            if out is None:
                os.execv("/bin/sh", ["/bin/sh", "-c", command])
            os.dup2(out, 1)
            os.dup2(out, 2)
            os.execve("/bin/sh", ["/bin/sh", "-c", command], env)
        except OSError as exc:
            if status is not None:
                os.write(status[1], str(exc.errno).encode("ascii"))
        except ValueError:  # (an environment execve refuses outright: no errno, said as -1)
            if status is not None:
                os.write(status[1], b"-1")
        finally:
            os._exit(127)
    if status is not None:
        os.close(status[1])
        failed = os.read(status[0], 64)
        os.close(status[0])
        if failed:
            os.waitpid(pid, 0)
            _refuse(int(failed))
        os.write(1, b"OK\n")
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
    return pid


def main(argv):
    env = out = None
    if argv[1:6] == ["-", "-", argv[3], "-", "-"]:  # (argv[3]: the marker)
        _set_subreaper()
        os.write(1, b"R\n")  # ready: started, a subreaper, waiting
        order = _await_order()
        if order is None:
            os._exit(0)
        grace, exit_path, output_limit, command, env, out = order
    else:
        grace, exit_path, output_limit, command = float(argv[1]), argv[2], int(argv[4]), argv[5]
        _set_subreaper()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, WAKE_SIGNALS)
    pid = _start(command, env, out, previous)
    reaper = Reaper(pid)
    how = reaper.wait_command(output_limit)
    if how == "limit":
        os.write(2, f"\n[orchestrator] the output passed {output_limit} bytes: command stopped\n".encode())
    reaper.stop_tree(grace)
    if how not in ("exited", "limit"):
        _die_like(how)
    code = -signal.SIGXFSZ if how == "limit" else os.waitstatus_to_exitcode(reaper.status)
    if exit_path:
        _write_exit(exit_path, code)
    if code < 0:
        _die_like(-code)
    os._exit(code)


if __name__ == "__main__":
    main(sys.argv)
