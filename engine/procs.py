"""Processes: run every external command of a run (agents, `verify`, `e2e`) hygienically, and
handle processes we may not have started ourselves (is it still the same process — pid reuse
is guarded by the kernel's start time —, stop it with everything it started, wait for it).

Every external command of a run (agents, `verify`, `e2e`) goes through `run_command`.

Hygiene rules, and why:
- output (stdout and stderr) is appended to a file, never a pipe: a leftover background child
  holding a pipe open would block whoever reads it until that child ends;
- stdin is /dev/null and the command gets its own session, so nothing reads our terminal and
  Ctrl-C reaches us, not the command (we stop it ourselves, with everything it started);
- the command runs under `engine/reaper.py`, a child subreaper: when the command exits, times
  out or is stopped, every process it started — including children that called `setsid`,
  double-forked or cleared their environment — is TERMed, KILLed after a grace period and
  reaped there. The command is judged by its own exit status, not by its leftovers;
- each command's environment carries a unique marker variable (`ORCH_PROC_<hex>=1`); if the
  reaper itself is killed hard, the orchestrator stops every process of ours still carrying
  the marker (a scan of /proc/*/environ), so nothing of the tree outlives the command.
"""

import contextlib
import math
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from engine.errors import OrchestratorError, one_line


def _stat_fields(pid):
    """The fields of /proc/PID/stat after the command name, or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start_time(pid):
    fields = _stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else None


PID_LIMIT = 2 ** 22  # Linux's largest pid_max: a recorded pid beyond it is not a process


def alive(pid, start=None):
    """Whether PID (from a file anyone may have edited) is a live process, and still the one
    that started at START when given."""
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid <= PID_LIMIT:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat_fields(pid)
    if fields and fields[0] in ("Z", "X"):
        return False  # it has exited; only its parent has not collected it yet
    return start is None or (fields[19] if fields and len(fields) > 19 else None) == start


def stop_group(pid, start=None, grace=2.0):
    """Stop a process and its session (TERM, then KILL after `grace`). When it is a command's
    reaper (see run_command), whatever of that command escaped the session is stopped too
    (the marker sweep), even if the orchestrator that started it is gone.

    Only a process proved to be the one recorded is signalled: without its START time (a
    record from a file, an older version, a hand edit) a reused pid could be anyone's."""
    if start is None or not alive(pid, start):
        return False
    marker = reaper_marker(pid)
    try:
        return _signal_group(pid, start, grace)
    finally:
        if marker:
            sweep(marker, grace=0)


def _signal_group(pid, start, grace):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        deadline = time.time() + grace
        while time.time() < deadline:
            if not alive(pid, start):
                return True
            time.sleep(0.05)
    return True


def reaper_marker(pid):
    """The marker variable of the command a reaper process runs, or None if `pid` is no reaper."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except OSError:
        return None
    if len(argv) > 7 and argv[3] == os.fsencode(REAPER) and argv[6].startswith(MARKER_PREFIX.encode()):
        return os.fsdecode(argv[6])
    return None


def wait_for(pid, start=None, timeout=None, poll=0.1):
    """Wait for a process we did not start (an orphan of a dead run); True if it ended. A
    record without the START time proves nothing: not waited for (it could be anyone's)."""
    deadline = None if timeout is None else time.time() + timeout
    while start is not None and alive(pid, start):
        if deadline is not None and time.time() > deadline:
            return False
        time.sleep(poll)
    return True


# --------------------------------------------------------------------------- running commands
REAPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reaper.py")
TIMED_OUT = 124  # the code of a command stopped at its timeout (coreutils `timeout` convention)
INTERRUPTED = 130  # the code of a command we stopped on Ctrl-C, SIGTERM or a cancel event
CANCEL_POLL = 0.1  # how often a running command looks at its cancel event (s)
REAPER_SLACK = 3.0  # how long past its grace period the reaper may take before it is KILLed
MARKER_PREFIX = "ORCH_PROC_"
OUTPUT_LIMIT = 64 * 1024 * 1024  # bytes of output one command may write before it is stopped


class CommandLaunchError(OrchestratorError):
    """The command could not be started at all (missing directory, argument list too long,
    an environment value the kernel refuses); the message says why."""


@dataclass
class CommandResult:
    """How one command ended. `code` is its exit status; -N when a signal N it did not get
    from us ended it; TIMED_OUT (124) when we stopped it at `timeout` (`timed_out` is set);
    INTERRUPTED (130) when we stopped it on Ctrl-C/SIGTERM/cancel (`interrupted` is set)."""

    code: int
    timed_out: bool
    duration: float
    output_path: str
    interrupted: bool = False
    output_start: int = 0  # offset in output_path where this command's output begins
    timeout: float = None
    pid: int = None
    output_limited: bool = False  # stopped because its output passed `max_output` bytes
    output_end: int = None  # offset where it ends (None: the end of the file)

    @property
    def ok(self):
        return self.code == 0 and not self.timed_out and not self.interrupted


def _open_output(path, header):
    """Open `path` for appending, never through a link (engine.store), and write the header
    line; (fd, offset where the command's own output begins)."""
    from engine import store

    try:
        fd = store.open_fd(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    except OrchestratorError as exc:  # a link in the way (UnsafePath)
        raise CommandLaunchError(exc.message) from None
    except OSError as exc:
        raise CommandLaunchError(f"cannot open the output file {path}: {exc.strerror}") from None
    if header is not None:
        os.write(fd, (one_line(str(header)) + "\n").encode("utf-8", "replace"))
    return fd, os.lseek(fd, 0, os.SEEK_END)


def _wait(proc, deadline, cancel):
    """Wait for `proc`: 'exited', 'timeout' or 'cancel'. A pidfd wakes us the moment it ends."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        pidfd = None
    try:
        while True:
            if proc.poll() is not None:
                return "exited"
            if cancel is not None and cancel.is_set():
                return "cancel"
            step = None if deadline is None else deadline - time.monotonic()
            if step is not None and step <= 0:
                return "timeout"
            if cancel is not None or pidfd is None:
                step = CANCEL_POLL if step is None else min(step, CANCEL_POLL)
            elif step is not None:
                step = min(step, 60.0)  # select() refuses huge timeouts (a `timeout: 1e20`)
            if pidfd is None:
                time.sleep(min(step, 0.01))
            else:
                select.select([pidfd], [], [], step)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _stop(proc, marker, grace):
    """Stop a running command: the reaper TERMs and then KILLs its tree; if the reaper does not
    finish in time it is KILLed with its session and the marker sweep catches the rest."""
    try:
        os.kill(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace + REAPER_SLACK)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait()
    sweep(marker, grace=0)


class _WarmReapers:
    """Reapers started ahead of need, while nothing waits for them (a run keeps a few while
    its agents work): a Python interpreter takes some 20 ms to start, which otherwise sits
    between one agent's end and the next one's start. A warm reaper waits for its orders on
    stdin (engine/reaper.py); one that gets none (our process ended) exits. Used only for a
    launch Popen would take (the directory exists, the command and environment are plain and
    well under the kernel's limit; any other runs cold); what the kernel still refuses, the
    reaper reports before anything runs, and the launch fails as a cold one would."""

    MAX_ARGS_BYTES = 100_000  # (the kernel's limit is at least 128 KB per string, 2 MB in all)
    REFILL_DELAY = 0.25  # seconds after a launch before the reaper it took is replaced

    def __init__(self):
        import threading

        self._lock = threading.Lock()
        self._idle = []  # [(Popen, marker)]
        self._wanted = 0
        self._spawning = 0

    def keep(self, count):
        """Keep COUNT reapers ready from now on: more are started now if fewer wait, and ones
        beyond COUNT are used up before more are started (0: the waiting ones go now)."""
        with self._lock:
            self._wanted = count if os.path.isdir(f"/proc/{os.getpid()}/fd") else 0
            spare = self._idle if not self._wanted else []
            if spare:
                self._idle = []
        self._dismiss(*(proc for proc, _ in spare))
        self._refill()

    def take(self, command, cwd, env):
        """A ready reaper for this launch, or None (none ready, or the launch must run cold)."""
        with self._lock:
            if not self._idle:
                return None
        if not _plain_launch(command, cwd, env, self.MAX_ARGS_BYTES):
            return None
        dead = []
        with self._lock:
            while self._idle:
                proc, marker = self._idle.pop(0)
                if proc.poll() is None:
                    break
                dead.append(proc)
            else:
                proc = None
        for gone in dead:
            self._dismiss(gone)  # (its pipes closed)
        self._refill(after=self.REFILL_DELAY)
        return (proc, marker) if proc is not None else None

    def _refill(self, after=0.0):
        with self._lock:
            missing = self._wanted - len(self._idle) - self._spawning
            self._spawning += max(0, missing)
        if missing > 0:
            import threading

            threading.Thread(target=self._spawn, args=(missing, after), name="warm-reapers", daemon=True).start()

    def _spawn(self, count, after):
        if after:
            time.sleep(after)  # (launches come in bursts: the one taken is replaced once it is over)
        for _ in range(count):
            marker = MARKER_PREFIX + os.urandom(8).hex()
            try:
                proc = subprocess.Popen([sys.executable, "-I", "-S", REAPER, "-", "-", marker, "-", "-"], cwd="/",
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
            except OSError:
                proc = None
            if proc is not None and proc.stdout.readline() != b"R\n":  # (ready once it says so)
                self._dismiss(proc)
                proc = None
            with self._lock:
                self._spawning -= 1
                if proc is not None and len(self._idle) < self._wanted:
                    self._idle.append((proc, marker))
                    proc = None
            if proc is not None:
                self._dismiss(proc)

    @staticmethod
    def _dismiss(*procs):
        """Idle reapers we no longer want: no orders, so they exit at once (all told first,
        then waited for: they end together, not one after the other at a run's end)."""
        for proc in procs:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            with contextlib.suppress(OSError):
                proc.stdout.close()


def _plain_launch(command, cwd, env, limit):
    """True when a warm reaper takes this launch: CWD a directory, no NUL, empty name or
    anything unencodable in the command or environment (Popen's own checks), and all of it
    well under the kernel's limit. (What the kernel still refuses, the reaper reports.)"""
    if not os.path.isdir(cwd):
        return False
    try:
        size = len(os.fsencode(command)) + sum(len(os.fsencode(k)) + len(os.fsencode(v)) + 10
                                               for k, v in env.items())
        return size < limit and "\0" not in command and not any(
            not k or "\0" in k or "\0" in v or "=" in k for k, v in env.items())
    except (TypeError, UnicodeError, AttributeError):
        return False


_warm = _WarmReapers()


def keep_reapers_warm(count):
    """Keep COUNT reapers started ahead of need for run_command (0: none). A run asks for
    one per agent as it begins (they start while it prepares), then for a few while its agents
    work, and lets them go when it ends."""
    _warm.keep(count)


def run_command(command, cwd, *, env=None, output_path, timeout=None, header=None, on_start=None,
                cancel=None, exit_path=None, grace=1.0, max_output=OUTPUT_LIMIT):
    """Run the shell line `command` in `cwd` (see the rules above) and return a CommandResult.

    `env` is the whole environment (default: ours). `on_start(pid, start_time)` is called once
    it runs (the pid is the reaper's: signalling its session stops the command). `cancel`, a
    threading.Event, stops it when set (result `interrupted`). On KeyboardInterrupt or any
    other exception while it runs, the tree is stopped and the exception re-raised (with the
    result as its `command_result` attribute). `exit_path` receives the exit status once the
    command and its leftovers are gone, unless we stopped it. `grace` is how long TERMed
    processes get before KILL. A command whose output passes `max_output` bytes (None: no
    limit) is stopped with its tree: `output_limited`, code -SIGXFSZ.
    """
    env = dict(os.environ if env is None else env)
    where = "." if cwd is None else cwd  # (None: our own directory, as Popen's)
    warm = _warm.take(command, where, env)
    marker = warm[1] if warm else MARKER_PREFIX + os.urandom(8).hex()  # (secrets.token_hex, without its imports)
    env[marker] = "1"
    try:
        fd, start_offset = _open_output(output_path, header)
    except BaseException:
        if warm:
            _WarmReapers._dismiss(warm[0])
        raise
    started = time.monotonic()
    proc = warm and _order(warm[0], (float(grace), exit_path or "", int(max_output or 0), command,
                                     os.path.abspath(where), env, os.getpid(), fd))
    if proc:
        try:
            proc = proc if _started(proc, fd, command, cwd) else None
        except CommandLaunchError:
            raise
        except BaseException:  # (Ctrl-C while it starts: the command may have started)
            os.close(fd)
            _stop(proc, marker, grace)
            raise
    if not proc:  # (a warm reaper that could not take its order is gone: this one runs cold)
        argv = [sys.executable, "-I", "-S", REAPER, repr(float(grace)), exit_path or "", marker,
                str(int(max_output or 0)), command]
        try:
            try:
                proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=fd,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            except (OSError, ValueError, UnicodeError) as exc:
                raise CommandLaunchError(_launch_failure(exc, command, cwd)) from None
        finally:
            os.close(fd)
            fd = None
    try:
        return _follow(proc, marker, command, output_path, start_offset, started, timeout, on_start, cancel,
                       grace, max_output)
    finally:
        if fd is not None:
            os.close(fd)


def _started(proc, fd, command, cwd):
    """A warm reaper's answer once its command runs: True; the launch's failure raised as
    CommandLaunchError, as Popen's would be; False if it died first (then the launch runs cold)."""
    try:
        answer = proc.stdout.readline().decode("ascii", "replace").split()
    finally:
        proc.stdout.close()
    if answer == ["OK"]:
        return True
    proc.wait()
    if len(answer) == 2 and answer[0] == "E" and answer[1].lstrip("-").isdigit():
        os.close(fd)
        number = int(answer[1])
        exc = ValueError("the environment cannot be passed to a command") if number < 0 else \
            OSError(number, os.strerror(number))
        raise CommandLaunchError(_launch_failure(exc, command, cwd))
    return False


def _order(proc, order):
    """Hand a warm reaper its ORDER; PROC, or None if it could not take it (it died)."""
    import marshal

    try:
        proc.stdin.write(marshal.dumps(order))
        proc.stdin.close()
        return proc
    except OSError:
        _WarmReapers._dismiss(proc)
        return None


def _follow(proc, marker, command, output_path, start_offset, started, timeout, on_start, cancel, grace,
            max_output):
    """The rest of run_command, once the reaper runs the command."""
    result = CommandResult(0, False, 0.0, output_path, output_start=start_offset, timeout=timeout, pid=proc.pid)
    try:
        if on_start:
            on_start(proc.pid, process_start_time(proc.pid))
        deadline = None if timeout is None or not math.isfinite(timeout) else started + timeout
        how = _wait(proc, deadline, cancel)
    except BaseException as exc:
        _stop(proc, marker, grace)
        result.code, result.interrupted, result.duration = INTERRUPTED, True, time.monotonic() - started
        with contextlib.suppress(AttributeError):
            exc.command_result = result
        raise
    if how != "exited":
        _stop(proc, marker, grace)
        result.timed_out = how == "timeout"
        result.interrupted = how == "cancel"
        result.code = TIMED_OUT if result.timed_out else INTERRUPTED
    else:
        result.code = proc.returncode
        if result.code < 0:  # the reaper died by a signal: maybe before it could clean up
            sweep(marker, grace=0)
        if result.code == -signal.SIGXFSZ and max_output:
            with contextlib.suppress(OSError):
                result.output_limited = os.path.getsize(output_path) - start_offset > max_output
        # Stopped from elsewhere while we were being cancelled (abort signals the recorded pid
        # as it sets the event): ours, not the command's failure.
        if result.code != 0 and cancel is not None and cancel.is_set():
            result.code, result.interrupted = INTERRUPTED, True
    result.duration = time.monotonic() - started
    with contextlib.suppress(OSError):
        result.output_end = os.path.getsize(output_path)  # its tree is gone: nothing writes any more
    return result


def _launch_failure(exc, command, cwd):
    import errno

    if isinstance(exc, OSError) and exc.errno == errno.E2BIG:
        return ("argument list too long: the command or its environment exceeds the kernel's limit "
                f"(command of {len(command)} characters)")
    if isinstance(exc, FileNotFoundError) and not os.path.isdir(cwd):
        return f"cannot run a command in {cwd}: the directory does not exist"
    if isinstance(exc, ValueError):
        return f"cannot pass the command or its environment: {exc}"
    return f"cannot start `{_short(command)}`: {exc}"


def working_in(directory):
    """Whether some live process works in DIRECTORY: its current directory is there or below,
    or its environment names it (GIT_WORK_TREE, GIT_DIR). None when that cannot be known (no
    /proc). A live `git worktree add` runs its HEAD update (and that update's
    reference-transaction hook) with GIT_WORK_TREE set to the worktree it is making, and a
    person's shell works in theirs: such a record is in use. A process we may not read
    (another user's, an init) is passed over: the add that made a record in our repository
    runs as us."""
    if not os.path.isdir("/proc/self"):
        return None
    real = os.path.realpath(directory)

    def inside(path):
        return path == real or path.startswith(real + os.sep)

    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if inside(os.readlink(f"/proc/{pid}/cwd")):
                return True
            with open(f"/proc/{pid}/environ", "rb") as fh:
                environ = fh.read()
        except OSError:
            continue  # exited meanwhile, or not ours to read
        for entry in environ.split(b"\0"):
            name, _, value = entry.partition(b"=")
            if name in (b"GIT_WORK_TREE", b"GIT_DIR") and value.startswith(b"/") and \
                    inside(os.path.realpath(os.fsdecode(value))):
                return True
    return False


# --------------------------------------------------------------------------- the marker sweep
def _marked(needle):
    """(pid, start time) of every process of ours whose environment carries `needle`."""
    found, me = [], os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                data = fh.read()
        except OSError:  # gone, or not ours
            continue
        if data.startswith(needle) or b"\0" + needle in data:
            found.append((int(name), process_start_time(name)))
    return found


def sweep(marker, grace=1.0, rounds=200):
    """Stop every process carrying the marker variable (TERM, then KILL after `grace`);
    repeated until none is left, so a child forked meanwhile is caught too. Returns how
    many processes were found."""
    needle = f"{marker}=".encode()
    seen = set()
    sig = signal.SIGTERM if grace > 0 else signal.SIGKILL
    deadline = time.monotonic() + grace
    for _ in range(rounds):
        procs = _marked(needle)
        if not procs:
            break
        for pid, start in procs:
            seen.add((pid, start))
            if process_start_time(pid) == start:
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
        if time.monotonic() >= deadline:
            sig = signal.SIGKILL
        time.sleep(0.01)
    return len(seen)


# --------------------------------------------------------------------------- what to show
def tail_text(path, max_lines=40, max_bytes=8000, start=0, end=None):
    """The end of a command's output: at most `max_lines` lines and about `max_bytes` bytes
    between offsets `start` and `end` (None: the end of the file), NUL bytes shown as `\\0`;
    a note says when earlier output was cut. Reads only the tail, whatever the file's size."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            size = size if end is None else min(end, size)
            begin = max(start, size - max_bytes)
            fh.seek(begin)
            data = fh.read(size - begin)
    except OSError:
        return ""
    cut = begin > start
    text = data.decode("utf-8", "replace").replace("\0", "\\0")
    lines = text.splitlines()
    if cut and len(lines) > 1:
        lines = lines[1:]  # the first line was cut in the middle
    if len(lines) > max_lines:
        lines, cut = lines[-max_lines:], True
    body = "\n".join(lines)
    return f"[… earlier output cut]\n{body}" if cut and body else body


def output_contains(result, needle, max_bytes=16 * 1024 * 1024):
    """Whether this command's own output (from `result.output_start`, so neither the header
    line, which echoes the command, nor earlier runs in the same file) holds `needle`, looking
    at no more than its first `max_bytes`."""
    try:
        with open(result.output_path, "rb") as fh:
            fh.seek(result.output_start)
            if result.output_end is not None:
                max_bytes = min(max_bytes, max(0, result.output_end - result.output_start))
            return needle.encode("utf-8", "surrogateescape") in fh.read(max_bytes)
    except OSError:
        return False


def _short(command, limit=200):
    text = one_line(" ".join(str(command).split()))
    return text if len(text) <= limit else text[:limit - 1] + "…"


def describe(result, command):
    """One line: which command ended how."""
    what = f"`{_short(command)}`"
    if result.interrupted:
        return f"{what} was interrupted"
    if result.timed_out:
        return f"{what} timed out after {result.timeout:g}s"
    if result.output_limited:
        return f"{what} was stopped: its output passed the limit"
    if result.code < 0:
        try:
            name = signal.Signals(-result.code).name
        except ValueError:
            name = f"signal {-result.code}"
        return f"{what} was killed by {name}"
    return f"{what} exited with code {result.code}"


def feedback(result, command, max_lines=40, max_bytes=8000):
    """What to tell an agent or a person about a command's run: which command ended how, then
    the tail of its output. Bounded, and never empty."""
    tail = tail_text(result.output_path, max_lines, max_bytes, start=result.output_start, end=result.output_end)
    head = describe(result, command)
    return f"{head}; its output ends:\n{tail}" if tail.strip() else f"{head} and printed nothing"
