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

import contextlib
import fcntl
import hashlib
import os
import time

from engine import git, procs, statefile, store
from engine.context import Options, RunContext
from engine.errors import OrchestratorError
from engine.paths import Layout
from engine.plan import check_for_run, digest as plan_digest
from engine.procs import process_start_time

WARM_AT_START = 8  # reapers started as a run begins, at most (one per agent of its first wave)

PIPELINE = ("DECOMPOSE", "PARALLELIZE", "EXECUTE", "QA", "E2E", "INTEGRATE", "CHECKPOINT")
__all__ = ["Options", "RunContext", "start", "start_goal", "resume", "loop"]


# ---------------------------------------------------------------------- starting and resuming
class RunBusy(OrchestratorError):
    """Another orchestrator holds the project's run lock."""


class RunLock:
    def __init__(self, layout):
        self.path = layout.run_lock
        self.fd = None

    def __enter__(self):
        self.fd = store.open_fd(self.path, os.O_RDWR | os.O_CREAT)  # never through a planted link
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise RunBusy("another orchestrator is running in this project "
                          "(see `orchestrator status`; `orchestrator abort` stops it)") from None
        return self

    def __exit__(self, *exc):
        os.close(self.fd)
        return False


def start(plan_path, options=None, layout=None):
    """`orchestrator run PLAN`: validate everything first, then begin at DECOMPOSE."""
    layout = layout or Layout()
    options = options or Options()
    plan_path = os.path.abspath(plan_path)
    # refuses a bad plan, configuration, agent or base before any side effect
    plan, _, base = check_for_run(plan_path, layout, options.agent, executor=options.executor)
    agent = options.agent or plan.agent
    executor = _executor(layout, plan_path, options)
    return _start(layout, options, dict(plan_file=plan_path, plan_digest=plan_digest(plan_path), base=base,
                                        work_type=plan.work_type or "", agent=agent, executor=executor,
                                        **_budget(options)))


def start_goal(goal, options=None, layout=None):
    """`orchestrator run --goal GOAL`: DECOMPOSE asks the planner for the plan first."""
    layout = layout or Layout()
    options = options or Options()
    if not goal or not goal.strip():
        raise OrchestratorError("the goal is empty")
    git.toplevel(layout.root)  # a repository, before anything is written
    agent = options.agent or _planned_tasks_agent(options.planner)
    return _start(layout, options, dict(goal=goal, goal_digest=_digest(goal.encode("utf-8")),
                                        agent=agent, executor=options.executor or "local", **_budget(options),
                                        **({"planner": options.planner} if options.planner else {})))


def _planned_tasks_agent(planner):
    """The agent of the tasks a planner writes (its rules forbid an `agent` key): the planner's
    own preset (`claude`, or its mapping: same model and options); a shell-command planner
    names no agent for them, so `--agent` is then required, said before anything runs."""
    from engine import agent_kinds

    planner = planner or "claude"
    if agent_kinds.preset_name(planner) is not None:
        return planner
    raise OrchestratorError("run --goal with a shell-command --planner: pass --agent for the planned tasks "
                            "(a shell command, or `claude`)")


def _budget(options):
    return {"max_budget_usd": options.max_budget_usd} if options.max_budget_usd is not None else {}


def _start(layout, options, record):
    """Begin a run of RECORD's plan (or goal). Idempotent, as agents repeat commands: the same
    plan already complete is said in one line and nothing starts (`--again` runs it afresh);
    the same plan's run still live is named in one line; another plan's unfinished run refuses."""
    run = RunContext(layout, options)
    key = "plan_digest" if "plan_digest" in record else "goal_digest"
    try:
        lock = RunLock(layout).__enter__()
    except RunBusy:
        previous = run.progress.load()
        if previous.get(key) == record[key]:
            run.reporter.line(f"run {previous.get('run_id')} of this plan is already running (pid "
                              f"{previous.get('orchestrator_pid')}): `orchestrator wait --timeout 540` follows it")
            return 0
        raise
    try:
        run.progress.compact()  # a killed run's last events folded into the YAML file
        previous = run.progress.load()
        if previous.get(key) == record[key] and previous.get("status") == "complete" and not options.again:
            merged = sum(1 for t in (previous.get("tasks") or {}).values()
                         if isinstance(t, dict) and t.get("status") == "merged")
            run.reporter.line(f"already complete: run {previous.get('run_id')} of this plan merged {merged} "
                              f"task(s) at {previous.get('completed_at')}; nothing started "
                              "(`orchestrator run --again` runs it afresh)")
            return 0
        if previous.get("status") in ("running", "stopped") and previous.get(key) != record[key]:
            raise OrchestratorError("another run is in progress; `orchestrator resume` it or "
                                    "`orchestrator abort` it first")
        fresh = run.progress.update(lambda data: _begin(data, record, key))
        state = statefile.get_state(layout)
        if fresh or state not in PIPELINE:
            statefile.transition("DECOMPOSE", force=state not in ("IDLE", "COMPLETE", "FAILED", "PLAN"),
                                 layout=layout)
        _announce(run)
        return loop(run)
    finally:
        lock.__exit__(None, None, None)


def _announce(run):
    """A detached run (engine.detach) that has its lock and its record tells its caller so."""
    from engine import detach

    data = run.progress.load()
    detach.started(data.get("run_id"), f"=== {store.utc_now()} run {data.get('run_id')}: pid {os.getpid()}")


def _executor(layout, plan_path, options):
    """`local` or `ray`: --executor, else the plan's or the configuration's `executor:`. A Ray
    cluster is checked now (reachable, some node offers the resources), before anything starts."""
    if options.executor == "local":
        return "local"
    from engine import plan as plans

    data = plans.read(plan_path)
    wants_ray = options.executor == "ray" or data.get("executor") == "ray" or \
        (store.load_yaml_mapping(layout.context)[0] or {}).get("executor") == "ray"
    if not wants_ray:
        return "local"
    from engine import ray_executor

    backend = ray_executor.backend_from(layout.root, git.toplevel(layout.root), plan_data=data, executor="ray")
    if backend is not None:
        backend.check()
        return "ray"
    return "local"


def _begin(data, record, key):
    """Record the run; True when it starts afresh (a new plan or goal, or the last run ended)."""
    fresh = data.get(key) != record[key] or data.get("status") in ("complete", "aborted")
    if fresh:
        data.clear()
    data.update(record, status="running", **_owner())
    data.setdefault("run_id", time.strftime("run-%Y%m%d-%H%M%S"))
    data.setdefault("started_at", store.utc_now())
    return fresh


def _digest(raw):
    return hashlib.sha256(raw).hexdigest()[:16]


def _owner():
    """The orchestrator's pid with its start time, so nobody signals a recycled pid; whether it
    runs detached, and where its output goes then."""
    from engine import detach

    log = os.environ.get(detach.LOG_ENV)
    return {"orchestrator_pid": os.getpid(), "orchestrator_pid_start": process_start_time(os.getpid()),
            "detached": bool(log), **({"log": log} if log else {})}


def resume(options=None, layout=None):
    layout = layout or Layout()
    run = RunContext(layout, options)
    data = run.progress.load()
    if not data.get("plan_file") and not data.get("goal"):
        raise OrchestratorError("NO_SESSION: nothing to resume (start one with `orchestrator run PLAN`)")
    with RunLock(layout):
        run.progress.compact()  # a killed run's last events folded into the YAML file
        state = statefile.get_state(layout)
        if state == "COMPLETE" and data.get("status") == "complete":
            run.reporter.line("Run already complete.")
            return 0
        _check_plan_unchanged(run, data, run.options)
        state = statefile.get_state(layout)
        if state not in PIPELINE:
            # aborted, or the state file was reset by another tool: continue at the next group;
            # killed before DECOMPOSE wrote the task table (or the state file): decompose first
            statefile.transition("PARALLELIZE" if data.get("tasks") else "DECOMPOSE", force=True, layout=layout)
        run.progress.update(lambda d: d.update(status="running", **_owner(), **_budget(run.options)))
        _announce(run)
        return loop(run)


def _check_plan_unchanged(run, data, options):
    """The plan a run resumes with is the plan it was started with: an edited plan file (an
    agent's commit, a person) would silently change verify commands, agents and dependencies
    under work in progress. `--adopt-plan` takes the new plan after validating it; tasks
    already merged stay merged, tasks the new plan drops are forgotten unless merged."""
    path = data.get("plan_file")
    if not path:
        return  # a goal run that has not planned yet
    try:
        digest = plan_digest(path)
    except OSError:
        raise OrchestratorError(f"the run's plan file is gone: {path}; restore it to resume") from None
    if digest == data.get("plan_digest"):
        return
    if not options.adopt_plan:
        raise OrchestratorError(f"the plan file changed since the run started: {path} (restore it, or adopt the "
                                "new plan with `orchestrator resume --adopt-plan`; merged tasks stay merged)")
    plan, _, _ = check_for_run(path, run.layout, data.get("agent") if isinstance(data.get("agent"), str) else None)

    def adopt(d):
        tasks = d.get("tasks") or {}
        d["tasks"] = {t: v for t, v in tasks.items() if t in plan.tasks or v.get("status") == "merged"}
        d["plan_digest"] = digest
    run.progress.update(adopt)
    run.journal.append("plan-adopted", plan=path, digest=digest, previous=data.get("plan_digest"))
    run.reporter.line(f"adopted the changed plan {path}; merged tasks stay merged")
    statefile.transition("DECOMPOSE", force=True, layout=run.layout)


def reconcile(run):
    """Put reality in order after a crash, before any handler runs. Agents that outlived a
    killed orchestrator are not waited for here: each task's own worker recovers its attempt
    (engine.scheduler), so no task waits on an unrelated one."""
    tasks = run.progress.load().get("tasks") or {}
    if os.path.exists(os.path.join(git.common_dir(run.repo), "MERGE_HEAD")):
        raise OrchestratorError("a merge is in progress in the main checkout; finish or abort it, then resume")
    clear_stale_git_locks(run)
    if run.slots.exists():
        from engine import pool_health

        run.slots.move_home()  # (before the repair looks: a slot is where its record says)
        run.slots.pool.adopt(set(tasks), os.getpid())
        _, _, repaired = pool_health.health(run.slots.pool, repair=True)
        for line in repaired:
            run.reporter.line(f"pool repaired: {line}")


def clear_stale_git_locks(run):
    """Locks left by git commands killed with an earlier orchestrator (its process group
    SIGKILLed mid-merge, mid-checkout, mid-fetch), in the repository, every slot (leased or
    idle) and the executor's own repositories: gone before anything runs git, one warning
    line each (engine.git_locks says when a lock is provably stale)."""
    from engine import git_locks
    from engine.ui import warn

    dirs = [git.common_dir(run.repo), *run.backend.git_dirs()]
    for lock in git_locks.clear_stale(git_locks.lock_files(*dirs)):
        warn(f"[WARN] {lock.line(run.repo)}")


def loop(run):
    """Run handlers until COMPLETE or a session boundary; returns the exit code."""
    from states import handler_for

    run.progress.defer_snapshots = True  # task events append to the change log (engine.deltalog)
    if run.progress.get("executor") != "ray":  # the first agents' reapers start while the run prepares
        procs.keep_reapers_warm(min(run.settings.max_agents, WARM_AT_START))
    try:
        return _loop(run, handler_for)
    finally:  # however the loop ends (a boundary, Ctrl-C, an error): the YAML file alone is current
        procs.keep_reapers_warm(0)
        with contextlib.suppress(Exception):
            run.progress.compact()


def _loop(run, handler_for):
    reconcile(run)
    while True:
        state = statefile.get_state(run.layout)
        if state == "COMPLETE":
            run.reporter.final(run)  # (first: whoever sees the run complete, `wait` included, finds its whole log)
            run.progress.update(lambda d: d.update(status="complete", completed_at=store.utc_now()))
            data = run.progress.load()
            tasks = (data.get("tasks") or {}).values()
            e2e_failed = any(g.get("e2e") == "failed" for g in (data.get("parallel_groups") or {}).values()
                             if isinstance(g, dict))
            return 0 if all(t.get("status") == "merged" for t in tasks) and not e2e_failed else 1
        handler = handler_for(state)
        next_state = handler(run)
        statefile.transition(next_state, layout=run.layout)
        if run.stop_requested:
            run.progress.update(lambda d: d.update(status="stopped"))
            return 0
