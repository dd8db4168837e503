"""The small process that runs one external command for the orchestrator and stops everything
that command started once it ends (run by `engine.procs.run_command`, never imported).

It makes itself a Linux child subreaper, so every orphan of the command's tree — a child that
called `setsid`, double-forked, or scrubbed its environment — is re-parented to it instead of
to init. When the command exits, whatever is left of its tree is TERMed, then KILLed after a
grace period, and reaped here (`waitpid(-1)` is safe in this process: every child it has is
the command's). Being a separate process keeps the orchestrator's own children (git, other
commands) out of this, and it keeps working when the orchestrator itself is SIGKILLed.

    python -I -S reaper.py GRACE EXIT_PATH MARKER COMMAND

Runs `/bin/sh -c COMMAND`. Exits with the command's status (re-raising its terminating
signal). EXIT_PATH, when not empty, receives the command's exit status atomically after the
clean-up, unless the command was stopped (SIGTERM/SIGINT/SIGHUP to this process): a resumed
orchestrator collects an orphaned agent's result from it. MARKER names the command's marker
variable (unused here: `engine.procs.stop_group` reads it from our command line). Standard library only and no
imports at start-up beyond os/signal/sys, so it costs little per command.
"""

import os
import signal
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
GIVE_UP = 5.0


class _Stop(Exception):
    pass


def _set_subreaper():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux: the orchestrator's marker sweep still runs
        return False


def _descendants(root):
    """Pids of every living process below `root`, from /proc (parents before children)."""
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

    def reap(self, block):
        """Reap children; False once none are left."""
        while True:
            try:
                pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            if pid == self.command_pid:
                self.status = status
            if block:
                return True

    def wait_command(self):
        while self.status is None:
            self.reap(block=True)

    def stop_tree(self, grace):
        """TERM everything left below us, KILL what outlives `grace`, reap it all. A process
        we may not signal (setuid) is given up on after GIVE_UP seconds of KILLs."""
        if not self.reap(block=False):
            return
        _signal_all(_descendants(os.getpid()), signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.reap(block=False):
            now = time.monotonic()
            if now >= deadline + GIVE_UP:
                print("[orchestrator] some processes the command started could not be stopped", file=sys.stderr)
                return
            if now >= deadline:
                _signal_all(_descendants(os.getpid()), signal.SIGKILL)
            time.sleep(0.01)


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


def main(argv):
    grace, exit_path, command = float(argv[1]), argv[2], argv[4]
    _set_subreaper()
    stopped, waiting = [], [True]

    def on_signal(signum, frame):
        stopped.append(signum)
        if waiting:  # interrupt the wait once; during the clean-up a stop is only recorded
            waiting.clear()
            raise _Stop

    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)
    pid = os.fork()
    if pid == 0:
        try:
            for sig in (*STOP_SIGNALS, signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            os.execv("/bin/sh", ["/bin/sh", "-c", command])
        finally:
            os._exit(127)
    reaper = Reaper(pid)
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        reaper.wait_command()
        waiting.clear()
    except _Stop:
        pass
    reaper.stop_tree(grace)
    if stopped:
        _die_like(stopped[0])
    code = os.waitstatus_to_exitcode(reaper.status)
    if exit_path:
        _write_exit(exit_path, code)
    if code < 0:
        _die_like(-code)
    os._exit(code)


if __name__ == "__main__":
    main(sys.argv)
