"""PARALLELIZE: pick the next unfinished group and decide PARALLEL or SEQUENTIAL the way
the skill does (`enabled`, `min_tasks`, `max_agents`)."""

from engine.errors import OrchestratorError
from engine.memory import Memory
from engine.runner import group_finished


def handle(run):
    plan, settings = run.plan, run.settings
    known = run.progress.load().get("tasks") or {}
    missing = [t for t in plan.order if t not in known]
    if missing:
        raise OrchestratorError(f"ERROR: the progress file does not list task {missing[0]} of the plan; "
                                "start over with `orchestrator abort` and `orchestrator run PLAN`")
    n = next((i for i in range(1, len(plan.groups) + 1) if not group_finished(run, i)), None)
    if n is None:
        return "COMPLETE"
    tasks = plan.groups[n - 1]
    if not settings.enabled:
        mode, concurrency, reason = "SEQUENTIAL", 1, "parallelization disabled in config"
    elif len(tasks) < settings.min_tasks:
        mode, concurrency, reason = "SEQUENTIAL", 1, f"{len(tasks)} task(s) < min_tasks {settings.min_tasks}"
    else:
        concurrency = min(settings.max_agents, len(tasks))
        mode, reason = "PARALLEL", f"limited by max_agents {settings.max_agents}"

    def record(data):
        data.update(current_group=n, mode=mode, concurrency=concurrency)
        data.setdefault("parallel_groups", {}).setdefault(f"group_{n}", {})["status"] = "running"

    run.progress.update(record)
    Memory(run.layout).write_group(n, "pre", f"Tasks: {', '.join(tasks)}.")
    run.reporter.mode(n, len(plan.groups), mode, tasks, concurrency, reason)
    return "EXECUTE"
