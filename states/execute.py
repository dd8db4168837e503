"""EXECUTE: run each pending task's agent in its own pooled worktree, up to the group's
concurrency; commit what an agent leaves uncommitted; retry failures.

Re-entrant: for a task left `running` by a dead orchestrator, reconcile has waited for its
orphaned agent; if that agent recorded an exit status, the result is collected (its work
kept); otherwise the attempt is re-run from the branch tip with partial edits discarded."""

from engine import git, store, worktree
from engine.executor import AgentResult, AgentSpec, LocalExecutor, read_exit, run_agent
from engine.procs import stop_group
from engine.runner import pending_tasks

RUNNABLE = ("pending", "running", "rejected")


def _ensure_pool(run, size):
    from engine.errors import NotInitialized

    pool = run.pool
    try:
        status = pool.status()
    except NotInitialized:
        pool.init(size)
        return
    if status["pool_size"] < size and status["busy"] == 0:
        pool.init(size, force=True)


def _slot_for(run, task_id, keep_edits=False):
    """The slot this task already holds (a resumed attempt), or a fresh lease."""
    for slot in run.pool.status()["worktrees"]:
        if slot.get("status") == "busy" and slot.get("task_id") == task_id:
            path = run.pool.slot_path(slot["id"])
            if not keep_edits:  # discard a killed attempt's partial edits
                git.run(path, "reset", "-q", "--hard")
                git.run(path, "clean", "-q", "-ffd")
            return slot["id"], path
    slot_id, path, _ = run.pool.acquire(task_id, run.base)
    return slot_id, path


def _collect_orphan(run, task_id, state):
    """The result of an attempt whose agent outlived a killed orchestrator, if it finished."""
    if state.get("status") != "running" or not state.get("iterations"):
        return None
    code = read_exit(run.exit_path(task_id, state["iterations"]))
    if code is None:
        return None
    run.journal.append("agent-collected", task=task_id, attempt=state["iterations"], code=code)
    return AgentResult(task_id, code, False, 0.0)


def run_task(run, task_id):
    task = run.plan.tasks[task_id]
    settings = run.settings
    command = task.agent or run.options.agent or run.progress.load().get("agent")
    collected = _collect_orphan(run, task_id, run.task_state(task_id))
    slot_id, path = _slot_for(run, task_id, keep_edits=collected is not None)
    while not run.cancel.is_set():
        state = run.task_state(task_id)
        result, collected = collected, None
        if result is None:
            attempt = int(state.get("iterations") or 0) + 1
            run.progress.set_task(task_id, status="running", slot=slot_id, iterations=attempt,
                                  started_at=state.get("started_at") or store.utc_now())
            run.journal.append("agent-start", task=task_id, slot=slot_id, attempt=attempt)
            run.reporter.task(task_id, f"running in {slot_id} (attempt {attempt})")
            env = {"TASK_ID": task_id, "TASK_DESCRIPTION": task.description, "WORKTREE": path,
                   "BRANCH": task.branch, "BASE": run.base, "QA_FEEDBACK": state.get("qa_feedback") or "",
                   "TASK_ATTEMPT": str(attempt), "TASK_FILES": "\n".join(task.files),
                   "TASK_VERIFY": task.verify or "", "ORCHESTRATOR_ROOT": run.layout.root}
            spec = AgentSpec(task_id, command, path, env, run.log_path(task_id), task.timeout or settings.agent_timeout,
                             exit_path=run.exit_path(task_id, attempt))
            result = run_agent(spec, on_start=lambda pid, start: run.progress.set_task(task_id, pid=pid,
                                                                                         pid_start=start))
        else:
            run.reporter.task(task_id, f"collected the result of attempt {state['iterations']} (exit "
                              f"{result.exit_code}) from before the restart")
        run.journal.append("agent-exit", task=task_id, code=result.exit_code, timed_out=result.timed_out)
        elapsed = (state.get("elapsed") or 0) + result.duration
        if result.exit_code == 0 and not result.timed_out:
            if worktree.commit_leftovers(path, f"{task_id}: uncommitted work left by the agent"):
                run.reporter.task(task_id, "committed what the agent left uncommitted")
            run.progress.set_task(task_id, status="executed", pid=None, elapsed=round(elapsed, 2))
            run.reporter.task(task_id, f"agent done in {result.duration:.1f}s")
            _show_progress(run)
            return
        retries = int(state.get("retry_count") or 0) + 1
        why = "timed out" if result.timed_out else f"exit {result.exit_code}"
        if retries > settings.retry_on_failure:
            run.progress.set_task(task_id, status="failed", pid=None, retry_count=retries - 1,
                                  failure=f"agent {why}; retries exhausted", elapsed=round(elapsed, 2))
            run.reporter.task(task_id, f"agent {why}: failed (retries exhausted, see {run.log_path(task_id)})")
            _show_progress(run)
            return
        run.progress.set_task(task_id, status="pending", retry_count=retries, pid=None, elapsed=round(elapsed, 2))
        run.reporter.task(task_id, f"agent {why}: retry {retries}/{settings.retry_on_failure}")
        git.run(path, "reset", "-q", "--hard")
        git.run(path, "clean", "-q", "-ffd")


def handle(run):
    todo = pending_tasks(run, RUNNABLE)
    data = run.progress.load()
    concurrency = int(data.get("concurrency") or 1)
    if todo:
        _ensure_pool(run, max(run.settings.max_agents, concurrency))
        executor = LocalExecutor(concurrency)
        try:
            futures = [executor.submit(run_task, run, t) for t in todo]
            errors = []
            for future in futures:
                try:
                    future.result()
                except Exception as exc:  # one task's infrastructure failure must not lose the others
                    errors.append(exc)
            if errors:
                raise errors[0]
        except BaseException:
            # Ctrl-C, SIGTERM (abort) or a failure: no new attempts, stop the running agents;
            # their tasks stay `running` and a resume re-runs or collects them.
            run.cancel.set()
            for t, v in (run.progress.load().get("tasks") or {}).items():
                if v.get("status") == "running" and v.get("pid"):
                    stop_group(v["pid"], v.get("pid_start"), grace=1.0)
            raise
        finally:
            executor.shutdown()
    return "QA"


def _show_progress(run):
    """The skill's progress box, after every agent completion."""
    data = run.progress.load()
    tasks = data.get("tasks") or {}
    run.reporter.group_progress(data.get("mode", "PARALLEL"),
                                {t: (tasks.get(t) or {}).get("status") for t in run.group_tasks()})

