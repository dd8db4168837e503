"""The pipeline runner: read the persisted state, call that state's handler, persist the
state it returns through the machine, repeat.

Handlers (states/) are re-entrant: each looks at the progress file and at git, does only
what is not done yet, and returns the next state. A run killed anywhere is resumed by
running the same loop again after `reconcile()`, which first puts reality back in order:
orphaned agents of the dead run are stopped, interrupted pool operations are repaired,
and a merge left in the main checkout by someone else stops the run with a clear message.

One orchestrator per project at a time: `run`/`resume` hold an exclusive flock on
`.claude/orchestrator.lock` (released by the kernel if the process dies).
"""

import fcntl
import hashlib
import os
import threading
import time

from engine import git, statefile, store
from engine.config import load as load_settings
from engine.errors import OrchestratorError
from engine.procs import alive, stop_group, wait_for
from engine.paths import Layout
from engine.plan import load as load_plan
from engine.progress import TERMINAL, Progress
from engine.view import Reporter

PIPELINE = ("DECOMPOSE", "PARALLELIZE", "EXECUTE", "QA", "E2E", "INTEGRATE", "CHECKPOINT")


class Options:
    def __init__(self, all_groups=False, agent=None, quiet=False):
        self.all_groups = all_groups
        self.agent = agent
        self.quiet = quiet


class Run:
    """Everything a handler needs, built once per process."""

    def __init__(self, layout=None, options=None, reporter=None):
        self.layout = layout or Layout()
        self.options = options or Options()
        self.progress = Progress(self.layout)
        self.journal = store.Journal(self.layout.journal)
        self.reporter = reporter or Reporter(quiet=self.options.quiet)
        self._repo = None
        self._plan = None
        self._settings = None
        self._pool = None
        self.stop_requested = False  # set by CHECKPOINT at a session boundary
        self.cancel = threading.Event()  # set on Ctrl-C/SIGTERM: no new agent attempts

    # ------------------------------------------------------------------ lazily built parts
    @property
    def repo(self):
        if self._repo is None:
            self._repo = git.toplevel(self.layout.root)
        return self._repo

    @property
    def plan(self):
        if self._plan is None:
            path = self.progress.load().get("plan_file")
            if not path:
                raise OrchestratorError("ERROR: no run in progress (no plan recorded); use `orchestrator run PLAN`")
            self._plan = load_plan(path, self.settings.max_agents)
        return self._plan

    @property
    def settings(self):
        if self._settings is None:
            work_type = self.progress.load().get("work_type") or ""
            self._settings = load_settings(self.layout.root, work_type)
        return self._settings

    @property
    def pool(self):
        if self._pool is None:
            from engine.pool import Pool

            env = dict(os.environ, POOL_OWNER_PID=str(os.getpid()))
            self._pool = Pool(self.layout, env=env)
        return self._pool

    @property
    def base(self):
        return self.progress.load()["base"]

    @property
    def current_group(self):
        return self.progress.load().get("current_group")

    def group_tasks(self, n=None):
        n = n or self.current_group
        return list(self.plan.groups[n - 1]) if n else []

    def task_state(self, task_id):
        return self.progress.task(task_id)

    def log_path(self, task_id):
        return os.path.join(self.layout.claude, "auto-logs", f"{task_id}.log")

    def exit_path(self, task_id, attempt):
        return os.path.join(self.layout.claude, "auto-logs", f"{task_id}.attempt-{attempt}.exit")


# ---------------------------------------------------------------------- starting and resuming
def plan_digest(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()[:16]


class RunLock:
    def __init__(self, layout):
        self.path = os.path.join(layout.claude, "orchestrator.lock")
        self.fd = None

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise OrchestratorError("ERROR: another orchestrator is running in this project "
                                    "(see `orchestrator status`; `orchestrator abort` stops it)") from None
        return self

    def __exit__(self, *exc):
        os.close(self.fd)
        return False


def start(plan_path, options=None, layout=None):
    """`orchestrator run PLAN`: validate everything first, then begin at DECOMPOSE."""
    layout = layout or Layout()
    plan_path = os.path.abspath(plan_path)
    settings = load_settings(layout.root)
    plan = load_plan(plan_path, settings.max_agents)  # refuses a bad plan before any side effect
    repo = git.toplevel(layout.root)
    base = plan.base or git.current_branch(repo)
    if not base:
        raise OrchestratorError("ERROR: HEAD is detached; name a `base` branch in the plan")
    if not git.branch_exists(repo, base):
        raise OrchestratorError(f"ERROR: base branch does not exist: {base}")
    agent = (options.agent if options else None) or plan.agent
    missing = [t for t in plan.order if not (plan.tasks[t].agent or agent)]
    if missing:
        raise OrchestratorError(f"ERROR: no agent command for task {missing[0]} (set `agent` in the plan or "
                                "pass --agent)")
    run = Run(layout, options)
    with RunLock(layout):
        previous = run.progress.load()
        if previous.get("status") in ("running", "stopped") and previous.get("plan_digest") != plan_digest(plan_path):
            raise OrchestratorError("ERROR: another run is in progress; `orchestrator resume` it or "
                                    "`orchestrator abort` it first")
        fresh = run.progress.update(lambda data: _begin(data, plan_path, plan, base, agent))
        state = statefile.get_state(layout)
        if fresh or state not in PIPELINE:
            statefile.transition("DECOMPOSE", force=state not in ("IDLE", "COMPLETE", "FAILED", "PLAN"),
                                 layout=layout)
        return loop(run)


def _begin(data, plan_path, plan, base, agent):
    """Record the run; True when it starts afresh (a new plan, or the last run ended)."""
    digest = plan_digest(plan_path)
    fresh = data.get("plan_digest") != digest or data.get("status") in ("complete", "aborted")
    if fresh:
        data.clear()
    data.update(plan_file=plan_path, plan_digest=digest, base=base, work_type=plan.work_type or "",
                agent=agent, status="running", orchestrator_pid=os.getpid())
    data.setdefault("run_id", time.strftime("run-%Y%m%d-%H%M%S"))
    data.setdefault("started_at", store.utc_now())
    return fresh


def resume(options=None, layout=None):
    layout = layout or Layout()
    run = Run(layout, options)
    data = run.progress.load()
    if not data.get("plan_file"):
        raise OrchestratorError("NO_SESSION: nothing to resume (start one with `orchestrator run PLAN`)")
    with RunLock(layout):
        state = statefile.get_state(layout)
        if state == "COMPLETE" and data.get("status") == "complete":
            run.reporter.line("Run already complete.")
            return 0
        if state not in PIPELINE:
            # aborted, or the state file was reset by another tool: continue at the next group
            statefile.transition("PARALLELIZE", force=True, layout=layout)
        run.progress.update(lambda d: d.update(status="running", orchestrator_pid=os.getpid()))
        return loop(run)


def reconcile(run):
    """Put reality in order after a crash, before any handler runs."""
    tasks = run.progress.load().get("tasks") or {}
    for task_id, t in tasks.items():
        if t.get("status") == "running" and t.get("pid") and alive(t["pid"], t.get("pid_start")):
            # An agent that outlived the orchestrator is let finish (its exit status is
            # recorded beside its log); one that overruns its timeout is stopped.
            run.reporter.line(f"waiting for {task_id}'s agent from before the restart (pid {t['pid']})")
            if not wait_for(t["pid"], t.get("pid_start"), timeout=run.settings.agent_timeout):
                stop_group(t["pid"], t.get("pid_start"))
                run.journal.append("agent-orphan-stopped", task=task_id, pid=t["pid"])
    if os.path.exists(os.path.join(git.common_dir(run.repo), "MERGE_HEAD")):
        raise OrchestratorError("ERROR: a merge is in progress in the main checkout; finish or abort it, then resume")
    if os.path.exists(run.pool.state_path):
        from engine import pool_health

        run.pool.adopt(set(tasks), os.getpid())
        _, _, repaired = pool_health.health(run.pool, repair=True)
        for line in repaired:
            run.reporter.line(f"pool repaired: {line}")


def loop(run):
    """Run handlers until COMPLETE or a session boundary; returns the exit code."""
    from states import handler_for

    reconcile(run)
    while True:
        state = statefile.get_state(run.layout)
        if state == "COMPLETE":
            run.progress.update(lambda d: d.update(status="complete", completed_at=store.utc_now()))
            run.reporter.final(run)
            tasks = (run.progress.load().get("tasks") or {}).values()
            return 0 if all(t.get("status") == "merged" for t in tasks) else 1
        handler = handler_for(state)
        run.journal.append("state-enter", state=state)
        next_state = handler(run)
        statefile.transition(next_state, layout=run.layout)
        if run.stop_requested:
            run.progress.update(lambda d: d.update(status="stopped"))
            return 0


def pending_tasks(run, statuses):
    tasks = run.progress.load().get("tasks") or {}
    return [t for t in run.group_tasks() if (tasks.get(t) or {}).get("status") in statuses]


def group_finished(run, n):
    tasks = run.progress.load().get("tasks") or {}
    return all((tasks.get(t) or {}).get("status") in TERMINAL for t in run.group_tasks(n))
