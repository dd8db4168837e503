"""DECOMPOSE: load and validate the plan, layer it, and write the progress file. A run
started from a goal (`run --goal`) first has the planner write the plan, and records it
before leaving DECOMPOSE, so a resumed run never plans twice.

Re-entrant: statuses already recorded for the same plan are kept, so a resumed run never
redoes finished work. Each task's plan data (dependencies, `files`, `verify`,
`expected_output`) is written again every time, so an adopted plan (`resume --adopt-plan`)
replaces it for every task not yet merged; a merged task keeps the files and checks it was
merged with."""

from engine import statefile


def handle(ctx):
    data = ctx.progress.load()
    if data.get("goal") and not data.get("plan_file"):
        _plan_the_goal(ctx, data)
    plan = ctx.plan

    def write(data):
        tasks = data.setdefault("tasks", {})
        for task_id in plan.order:
            task = plan.tasks[task_id]
            entry = tasks.setdefault(task_id, {"status": "pending"})  # counters appear when they count
            entry.update(name=task.description, branch=task.branch, group=plan.group_of(task_id))
            if entry.get("status") != "merged":  # (a merged task keeps what it was checked and merged with)
                for key, value in (("files", task.files), ("verify", task.verify),
                                   ("expected_output", task.expected_output)):
                    if value:  # the plan's, also after `resume --adopt-plan`
                        entry[key] = list(value) if isinstance(value, list) else value
                    else:
                        entry.pop(key, None)
            if task.all_deps:
                entry["depends_on"] = task.all_deps
            else:  # (an adopted plan that dropped them: what the graph and the merge order read)
                entry.pop("depends_on", None)
            order_only = [d for d in task.implicit_deps if d not in task.depends_on]
            if order_only:  # shared files: these order the task, they chain no failure
                entry["file_order"] = order_only
            else:
                entry.pop("file_order", None)
        data["parallel_groups"] = {f"group_{n}": {"tasks": list(group),
                                                  "status": (data.get("parallel_groups") or {}).get(
                                                      f"group_{n}", {}).get("status", "pending")}
                                   for n, group in enumerate(plan.groups, 1)}
        data["total_groups"] = len(plan.groups)

    ctx.progress.update(write)
    if plan.work_type and statefile.get_work_type(ctx.layout) != plan.work_type:
        statefile.set_work_type(plan.work_type, layout=ctx.layout)
    shared = sum(1 for t in plan.tasks.values() if t.implicit_deps)
    ctx.reporter.line(f"plan: {len(plan.order)} tasks in {len(plan.groups)} groups"
                      + (f" ({shared} made sequential: shared files)" if shared else ""))
    return "PARALLELIZE"


def _plan_the_goal(ctx, data):
    """The planner writes .claude/auto-plan.yaml (at most once: engine.planner.plan_once keeps
    a plan already written for this goal and resumes a planning job cut short), then the plan
    is checked like any `run PLAN` and recorded."""
    from engine import planner
    from engine.plan import check_for_run, digest

    output = ctx.layout.plan
    path = planner.plan_once(ctx.layout.root, data["goal"], output, agent=ctx.options.planner or data.get("planner"),
                             max_agents=ctx.settings.max_agents, reporter=ctx.reporter, budget_usd=data.get("max_budget_usd"))
    agent = data.get("agent")
    plan, _, base = check_for_run(path, ctx.layout, agent)
    spent = planner.spent(ctx.layout.root)

    def record(d):
        d.update(plan_file=path, plan_digest=digest(path), base=base, work_type=plan.work_type or "",
                 agent=agent or plan.agent)
        if spent:  # the planning is part of the run's cost (and of its budget)
            d["planner_cost_usd"] = spent
            d["cost_usd"] = round(float(d.get("cost_usd") or 0) + spent, 6)
    ctx.progress.update(record)
    ctx.journal.append("planned", goal_digest=data.get("goal_digest"), plan=path)
    ctx.reporter.line(f"planned the goal into {ctx.layout.rel(path)}")
    ctx.forget("settings", "plan", "tasks")
