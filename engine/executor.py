"""Running agents: one interface, a local default.

An agent is a shell command run in its worktree, in its own session (so it and everything
it starts can be stopped together), with task data only in environment variables and its
output appended to a per-task log. `LocalExecutor` runs up to N at once on this machine;
another backend (a cluster scheduler) can implement `submit` with the same AgentSpec.
"""

import contextlib
import os
import shlex
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from engine.procs import process_start_time, stop_group


@dataclass
class AgentSpec:
    task_id: str
    command: str
    cwd: str
    env: dict = field(default_factory=dict)
    log_path: str = None
    timeout: float = None
    exit_path: str = None  # where the agent's exit status lands, even if we die first


@dataclass
class AgentResult:
    task_id: str
    exit_code: int
    timed_out: bool
    duration: float


def _wrapped(spec):
    """The agent command plus a trailer that records its exit status atomically in
    `exit_path`, so a resumed orchestrator can collect the result of an agent that outlived
    the orchestrator that started it."""
    if not spec.exit_path:
        return spec.command
    target = shlex.quote(spec.exit_path)
    return (f"{spec.command}\n__orchestrator_status=$?\n"
            f"printf '%s' \"$__orchestrator_status\" > {target}.tmp && mv -f {target}.tmp {target}\n"
            "exit $__orchestrator_status\n")


def read_exit(path):
    """The exit status an agent recorded, or None."""
    try:
        with open(path, encoding="ascii") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


def run_agent(spec, on_start=None):
    """Run one agent to completion; `on_start(pid, start_time)` is called once it runs."""
    env = dict(os.environ, **spec.env)
    os.makedirs(os.path.dirname(spec.log_path), exist_ok=True)
    if spec.exit_path:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(spec.exit_path)
    started = time.time()
    with open(spec.log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {spec.task_id}: {spec.command}\n".encode())
        log.flush()
        proc = subprocess.Popen(["/bin/sh", "-c", _wrapped(spec)], cwd=spec.cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if on_start:
            on_start(proc.pid, process_start_time(proc.pid))
        try:
            code = proc.wait(timeout=spec.timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            stop_group(proc.pid)
            code = proc.wait()
            timed_out = True
        except BaseException:
            stop_group(proc.pid, grace=1.0)
            proc.wait()
            raise
    return AgentResult(spec.task_id, code, timed_out, time.time() - started)


class LocalExecutor:
    """Up to `max_workers` jobs at once; each job may run an agent subprocess."""

    def __init__(self, max_workers):
        self.pool = ThreadPoolExecutor(max_workers=max(1, max_workers), thread_name_prefix="agent")

    def submit(self, fn, *args):
        return self.pool.submit(fn, *args)

    def shutdown(self):
        self.pool.shutdown(wait=True, cancel_futures=True)
