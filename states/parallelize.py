"""PARALLELIZE: choose this session's scope and decide PARALLEL or SEQUENTIAL the way the
skill does (`enabled`, `min_tasks`, `max_agents`).

The scope is the first unfinished group; with `--all-groups` it is every remaining group,
so the scheduler streams across layers with no barrier between them."""

from engine.errors import OrchestratorError


def handle(ctx):
    plan, settings = ctx.plan, ctx.settings
    known = ctx.progress.load().get("tasks") or {}
    missing = [t for t in plan.order if t not in known]
    if missing:
        raise OrchestratorError(f"the progress file does not list task {missing[0]} of the plan; "
                                "start over with `orchestrator abort` and `orchestrator run PLAN`")
    remaining = [i for i in range(1, len(plan.groups) + 1) if not ctx.group_finished(i)]
    if not remaining:  # (resumed after the last task ended: CHECKPOINT's end of the run)
        from states.checkpoint import finish

        return finish(ctx)
    scope = remaining if ctx.options.all_groups else remaining[:1]
    tasks = [t for n in scope for t in plan.groups[n - 1]]
    if not settings.enabled:
        mode, concurrency, reason = "SEQUENTIAL", 1, "parallelization disabled in config"
    elif len(tasks) < settings.min_tasks:
        mode, concurrency, reason = "SEQUENTIAL", 1, f"{len(tasks)} task(s) < min_tasks {settings.min_tasks}"
    else:
        concurrency = min(settings.max_agents, len(tasks))
        mode, reason = "PARALLEL", f"limited by max_agents {settings.max_agents}"

    def record(data):
        data.update(current_group=scope[0], scope_groups=scope, mode=mode, concurrency=concurrency)
        for n in scope:
            data.setdefault("parallel_groups", {}).setdefault(f"group_{n}", {})["status"] = "running"

    ctx.progress.update(record)
    ctx.memory.write_groups([(n, "pre", f"Tasks: {', '.join(plan.groups[n - 1])}.") for n in scope])
    label = f"{scope[0]}" if len(scope) == 1 else f"{scope[0]}-{scope[-1]}"
    ctx.reporter.mode(label, len(plan.groups), mode, tasks, concurrency, reason)
    return "EXECUTE"
