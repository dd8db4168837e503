"""QA: the scope's verification gate. Each task was verified the moment its agent finished
(inside EXECUTE, on its committed branch tip); here the run records the group's verdicts,
and sends the run back to EXECUTE if any task of the scope has none yet."""

from engine.tasks import TERMINAL, TaskStatus as S


def handle(ctx):
    statuses = ctx.tasks.statuses(ctx.scope_tasks())
    if any(s not in TERMINAL for s in statuses.values()):
        return "EXECUTE"
    verdicts = {}
    for n in ctx.scope_groups():
        group = {t: statuses[t] for t in ctx.group_tasks(n)}
        verdicts[n] = {"merged": [t for t, s in group.items() if s == S.MERGED],
                       "blocked": [t for t, s in group.items() if s in (S.BLOCKED, S.BLOCKED_PERMISSION)],
                       "failed": [t for t, s in group.items() if s == S.FAILED]}

    def record(data):  # (every group of the scope in one write)
        for n, summary in verdicts.items():
            data.setdefault("parallel_groups", {}).setdefault(f"group_{n}", {}).update(qa=summary)

    ctx.progress.update(record)
    plan = ctx.plan
    if plan.e2e or (plan.work_type or "").upper() == "FRONTEND":
        return "E2E"
    ctx.reporter.line("E2E skipped: work type is not FRONTEND and the plan names no e2e command")
    return "INTEGRATE"
