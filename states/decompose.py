"""DECOMPOSE: load and validate the plan, layer it, and write the progress file.

Re-entrant: statuses already recorded for the same plan are kept, so a resumed run never
redoes finished work."""

from engine import statefile


def handle(run):
    plan = run.plan

    def write(data):
        tasks = data.setdefault("tasks", {})
        for task_id in plan.order:
            task = plan.tasks[task_id]
            entry = tasks.setdefault(task_id, {"status": "pending"})  # counters appear when they count
            entry.update(name=task.description, branch=task.branch, group=plan.group_of(task_id))
            if task.all_deps:
                entry["depends_on"] = task.all_deps
        data["parallel_groups"] = {f"group_{n}": {"tasks": list(group),
                                                  "status": (data.get("parallel_groups") or {}).get(
                                                      f"group_{n}", {}).get("status", "pending")}
                                   for n, group in enumerate(plan.groups, 1)}
        data["total_groups"] = len(plan.groups)

    run.progress.update(write)
    if plan.work_type and statefile.get_work_type(run.layout) != plan.work_type:
        statefile.set_work_type(plan.work_type, layout=run.layout)
    shared = sum(1 for t in plan.tasks.values() if t.implicit_deps)
    run.reporter.line(f"plan: {len(plan.order)} tasks in {len(plan.groups)} groups"
                      + (f" ({shared} made sequential: shared files)" if shared else ""))
    return "PARALLELIZE"
