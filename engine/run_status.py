"""What a run is doing now, told from its files and from whether its process lives.

The progress file says what the orchestrator last wrote (`running`, `stopped` at a session
boundary, `complete`, `aborted`); only the process can say whether it is still at work. A run
recorded `running` whose orchestrator is gone (a SIGKILL, a closed session, a reboot) is
reported `stopped`, with what `resume` will do about it. `status`, `status --json`,
`status --brief` (the plugin's SessionStart line) and `wait` all read this one view.
"""

from dataclasses import dataclass, field

from engine.procs import alive
from engine.view import NEEDS_YOU, status_counts

IN_FLIGHT = ("running", "executed", "verifying", "approved", "merging", "conflicted", "rejected")
WAIT_HINT = "orchestrator wait --timeout 540"  # under the Bash tool's 10-minute foreground limit


@dataclass
class RunView:
    run_id: str
    state: str
    recorded: str  # the progress file's `status`
    status: str  # what is true now: running, stopped, complete, aborted
    pid: int = None
    alive: bool = False
    counts: dict = field(default_factory=dict)  # {task status: n}
    needs_you: list = field(default_factory=list)  # task ids
    in_flight: int = 0
    why: str = ""  # why it is stopped, when it is
    log: str = None  # a detached run's output
    unproven: list = field(default_factory=list)  # [(task id or None for the run's own, pid)]: see `unproven`

    @property
    def next_command(self):
        """The one command a person or a session runs next (None: nothing to do)."""
        if self.status == "running":
            return WAIT_HINT
        if self.needs_you:
            return f"orchestrator retry {self.needs_you[0]}"
        if self.status in ("stopped", "aborted"):
            return "orchestrator resume --detach"
        return None

    def as_dict(self):
        return {"run_id": self.run_id, "status": self.status, "recorded_status": self.recorded, "state": self.state,
                "process": {"pid": self.pid, "alive": self.alive}, "why": self.why or None,
                "needs_you": self.needs_you, "next": self.next_command, "log": self.log,
                "unproven_pids": [{"task": task, "pid": pid, "message": unproven_line(task, pid)}
                                  for task, pid in self.unproven]}

    def line(self):
        """One line: state, counts, process, what to run next."""
        tally = ", ".join(f"{n} {s}" for s, n in self.counts.items()) or "no tasks yet"
        proc = (f"its process is alive (pid {self.pid})" if self.alive else
                f"its process cannot be proven (pid {self.pid} recorded without a start time)"
                if (None, self.pid) in self.unproven else
                f"its process is gone{f' (pid {self.pid})' if self.pid else ''}")
        text = f"run {self.run_id} is {self.status} in {self.state} ({tally})"
        if self.status != "complete" or self.alive:
            text += f"; {proc}"
        if self.why:
            text += f"; {self.why}"
        return text + (f". Next: `{self.next_command}`" if self.next_command else ".")

    def unproven_lines(self):
        return [unproven_line(task, pid) for task, pid in self.unproven]


def unproven(data):
    """The pid records of a progress mapping that carry no start time: [(task id, or None for the
    run's own orchestrator, pid)]. Nothing signals, waits for or counts as alive such a pid
    (engine.procs: without the start time a reused pid could be anyone's), and `status` says so."""
    def recorded(pid, start):
        return isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 and not start

    tasks = data.get("tasks") if isinstance(data.get("tasks"), dict) else {}
    found = [(None, data["orchestrator_pid"])] if recorded(data.get("orchestrator_pid"),
                                                            data.get("orchestrator_pid_start")) else []
    return found + [(t, e["pid"]) for t, e in tasks.items() if isinstance(e, dict) and recorded(e.get("pid"),
                                                                                                 e.get("pid_start"))]


def unproven_line(task, pid):
    who = f"task {task}" if task is not None else "the run's orchestrator"
    return f"{who}: pid {pid} recorded without a start time; not signalled (cannot prove it is ours)"


def view(data, state):
    """The RunView of a progress mapping DATA and the run machine's STATE; None when no run."""
    if not isinstance(data, dict) or not (data.get("tasks") or data.get("plan_file") or data.get("goal")):
        return None
    tasks = data.get("tasks") if isinstance(data.get("tasks"), dict) else {}
    statuses = {t: (e.get("status") if isinstance(e, dict) else None) or "pending" for t, e in tasks.items()}
    pid = data.get("orchestrator_pid")
    start = data.get("orchestrator_pid_start")
    live = alive(pid, start) if isinstance(pid, int) and start else False  # (no start time: not ours to tell)
    recorded = str(data.get("status") or "running")
    in_flight = sum(1 for s in statuses.values() if s in IN_FLIGHT)
    pending = sum(1 for s in statuses.values() if s == "pending")
    status, why = recorded, ""
    if recorded == "running" and not live:
        status = "stopped"
        why = ("its orchestrator stopped without finishing (killed, or its session ended); `resume` "
               + (f"collects or re-runs the {in_flight} task(s) it left in flight" if in_flight else "goes on")
               + (f" and starts the {pending} pending" if pending else ""))
    elif recorded == "stopped":
        why = "at a session boundary" + (f"; `resume` starts the next {pending} pending task(s)" if pending else "")
    elif recorded == "running":
        status = "running"
    needs = [t for t, s in statuses.items() if s in NEEDS_YOU]
    return RunView(run_id=str(data.get("run_id") or "-"), state=state, recorded=recorded, status=status,
                   pid=pid if isinstance(pid, int) else None, alive=live, counts=status_counts(data),
                   needs_you=needs, in_flight=in_flight, why=why,
                   log=data.get("log") if isinstance(data.get("log"), str) else None, unproven=unproven(data))


def current(layout):
    """The RunView of the project's run (None when there is none)."""
    from engine import statefile
    from engine.progress import Progress

    return view(Progress(layout).load(), statefile.get_state(layout))


def session_lines(run, data):
    """The SessionStart lines: nothing without an unfinished run; else the run in one line, and a
    second naming the first task that needs a person, when one does."""
    if run is None or (run.status == "complete" and not run.needs_you):
        return []
    lines = [f"parallel-orchestrator: {run.line()}"]
    if run.needs_you and run.status == "running":
        first = run.needs_you[0]
        entry = (data.get("tasks") or {}).get(first) or {}
        why = " ".join(str(entry.get("failure") or entry.get("status") or "").split())
        lines.append(f"parallel-orchestrator: {first} needs you ({why[:300]}): `orchestrator retry {first}` once "
                     "that is dealt with")
    return lines


# `orchestrator wait`: what it saw, as its exit code
WAIT_CODES = {"complete": 0, "timeout": 2, "needs-you": 3, "boundary": 4, "stopped": 5}


def wait_outcome(run, until_stopped):
    """Why `orchestrator wait` returns now (a key of WAIT_CODES), or None to go on waiting."""
    if run.status == "complete":
        return "needs-you" if run.needs_you else "complete"
    if run.needs_you and (not until_stopped or run.status != "running"):
        return "needs-you"
    if run.status == "stopped":
        return "boundary" if run.recorded == "stopped" else "stopped"
    if run.status == "aborted":
        return "stopped"
    return None
