"""Running agents: one interface, a local default.

An agent is a shell command run in its worktree through `engine.procs.run_command` (own
session, output appended to a per-task log, everything it starts stopped when it ends), with
task data in environment variables made safe by `engine.agent_env.prepare_env` (the whole
texts in files next to the log). The scheduler hands each attempt to a backend: `LocalBackend`
runs it here, in the task's slot; engine.ray_executor runs it on a cluster with the same three
operations (run_attempt, recover, stop).
"""

import contextlib
import os
import time
from dataclasses import dataclass, field

from engine.agent_env import AgentLaunchError, prepare_env
from engine.procs import CommandLaunchError, run_command

__all__ = ["AgentSpec", "AgentResult", "AgentLaunchError", "Attempt", "LocalBackend", "read_exit", "run_agent"]


@dataclass
class AgentSpec:
    task_id: str
    command: str
    cwd: str
    env: dict = field(default_factory=dict)
    log_path: str = None
    timeout: float = None
    exit_path: str = None  # where the agent's exit status lands, even if we die first
    files_dir: str = None  # where the whole task texts go (default: next to exit_path or the log)


@dataclass
class AgentResult:
    task_id: str
    exit_code: int
    timed_out: bool
    duration: float
    interrupted: bool = False  # we stopped it (Ctrl-C, abort, cancel): not the agent's failure
    denied: tuple = ()  # tools a `claude` agent was denied (the task becomes blocked_permission)
    reason: str = None  # one line: why it failed, when more is known than the exit code
    hint: str = None  # one line: what a person does about it (e.g. the allow rule a denial needs)
    details: dict = None  # merged into the task's attempt record (session_id, cost_usd, node, ...)


def read_exit(path):
    """The exit status an agent recorded, or None."""
    try:
        with open(path, encoding="ascii") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


def files_dir_for(spec):
    """TASK.attempt-N.data/ next to the exit status file, else TASK.data/ next to the log."""
    if spec.files_dir:
        return spec.files_dir
    if spec.exit_path:
        stem = spec.exit_path[:-len(".exit")] if spec.exit_path.endswith(".exit") else spec.exit_path
        return stem + ".data"
    return os.path.join(os.path.dirname(spec.log_path), f"{spec.task_id}.data")


def run_agent(spec, on_start=None, cancel=None):
    """Run one agent to completion; `on_start(pid, start_time)` is called once it runs.

    The exit status is also written to `spec.exit_path` (after everything the agent started
    is gone, and not when we stopped it), so a resumed orchestrator collects the result of an
    agent that outlived the orchestrator that started it. `cancel` (a threading.Event) stops
    it: the result is then `interrupted`. Raises AgentLaunchError when it cannot be started
    (task data the kernel refuses, a missing worktree).
    """
    command_size = len(str(spec.command).encode("utf-8", "surrogatepass"))
    values = prepare_env(spec.env, files_dir_for(spec), reserve=64 * 1024 + command_size)
    env = dict(os.environ, **values)
    if spec.exit_path:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(spec.exit_path)
    header = f"=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {spec.task_id}: {spec.command}"
    try:
        result = run_command(spec.command, spec.cwd, env=env, output_path=spec.log_path, timeout=spec.timeout,
                             header=header, on_start=on_start, cancel=cancel, exit_path=spec.exit_path)
    except AgentLaunchError:
        raise
    except CommandLaunchError as exc:
        raise AgentLaunchError(exc.message) from None
    return AgentResult(spec.task_id, result.code, result.timed_out, result.duration, interrupted=result.interrupted)


# --------------------------------------------------------------------------- backends
@dataclass
class Attempt:
    """One agent attempt as the scheduler hands it to a backend."""

    task_id: str
    n: int
    command: str
    cwd: str  # the task's slot, or None when the backend has no local checkout
    env: dict
    log_path: str
    exit_path: str
    timeout: float
    branch: str
    base: str
    base_commit: str = None
    run_id: str = None
    entry: dict = field(default_factory=dict)  # the task's progress entry (a copy)
    layout: object = None
    record: object = None  # record(**fields): persist into the task entry before starting anything
    on_start: object = None  # on_start(pid, start_time)
    cancel: object = None  # a threading.Event: set on Ctrl-C/abort, the attempt stops


class LocalBackend:
    """Agents as subprocesses of this orchestrator, each in its task's slot."""

    needs_checkout = True

    def git_dirs(self):
        """Repositories besides the run's own whose git locks the run owns: none."""
        return []

    def run_attempt(self, attempt):
        spec = AgentSpec(attempt.task_id, attempt.command, attempt.cwd, attempt.env, attempt.log_path,
                         attempt.timeout, exit_path=attempt.exit_path)
        return run_agent(spec, on_start=attempt.on_start, cancel=attempt.cancel)

    def recover(self, attempt):
        """An attempt that outlived a killed orchestrator: wait for it if it still runs
        (stopped past its timeout), then collect the exit status its trailer recorded."""
        from engine.procs import alive, stop_group, wait_for

        entry = attempt.entry
        pid, start = entry.get("pid"), entry.get("pid_start")
        if pid and alive(pid, start) and not wait_for(pid, start, timeout=attempt.timeout):
            stop_group(pid, start)
        code = read_exit(attempt.exit_path)
        if code is None:
            return None
        return AgentResult(attempt.task_id, code, False, 0.0)

    def stop(self, entries):
        from engine.procs import stop_group

        for entry in entries.values():
            if entry.get("pid"):
                stop_group(entry["pid"], entry.get("pid_start"), grace=1.0)
