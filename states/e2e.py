"""E2E: the plan's e2e command on the merged result of the scope (the base as it is now,
in a temporary detached checkout). Tasks are merged as they are approved, so a failure
cannot un-merge them: it is reported with the group (its `e2e` record, the handoff) and
the run ends non-zero."""

from engine.tasks import TaskStatus as S


def handle(ctx):
    groups = ctx.scope_groups()
    label = f"group-{groups[0]}" if len(groups) == 1 else f"groups-{groups[0]}-{groups[-1]}"
    if not ctx.plan.e2e:
        ctx.reporter.line("E2E skipped: FRONTEND work, but the plan names no `e2e` command")
        return "INTEGRATE"
    if not ctx.tasks_in((S.MERGED,)):
        ctx.reporter.line("E2E skipped: nothing was merged in this scope")
        return "INTEGRATE"
    ok, feedback, output = ctx.checks.e2e(label)
    ctx.journal.append("e2e-result", groups=groups, ok=ok)
    merged = ctx.tasks_in((S.MERGED,))
    for n in groups:
        ctx.progress.update(lambda d, n=n: d.setdefault("parallel_groups", {}).setdefault(f"group_{n}", {}).update(
            e2e="passed" if ok else "failed", **({} if ok else {"e2e_output": feedback[-2000:],
                                                              "e2e_tasks": merged})))
    if ok:
        ctx.reporter.line(f"E2E passed on {ctx.base} with {len(merged)} merged task(s)")
    else:
        ctx.reporter.line(f"E2E FAILED on {ctx.base} (tasks merged in this scope: {', '.join(merged)}); "
                          f"see {ctx.layout.rel(output)}")
    return "INTEGRATE"
