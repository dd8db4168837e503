"""CHECKPOINT: write the scope's memory files, release its slots, then the next group or
COMPLETE. By default a run stops after each group (the skill's session boundary) with a
handoff; `--all-groups` carries on. A scope that is not finished (a conflict found by
INTEGRATE) goes straight back to PARALLELIZE, without a boundary."""

from engine.tasks import TERMINAL, TaskStatus as S


def finish(ctx):
    """Every task has ended: the pool goes away (auto_cleanup) and the run is COMPLETE."""
    if ctx.settings.auto_cleanup and ctx.slots.exists():
        leases = ctx.slots.leases()
        for task_id in leases:  # (a lease left by a killed run: its task ended, give it back)
            ctx.slots.release(task_id)
        ctx.slots.pool.cleanup()
    return "COMPLETE"


def handle(ctx):
    groups = ctx.scope_groups()
    scope = ctx.scope_tasks()
    statuses = ctx.tasks.statuses(scope)
    if any(s not in TERMINAL for s in statuses.values()):
        return "PARALLELIZE"
    from concurrent.futures import ThreadPoolExecutor

    leases = ctx.slots.leases() if ctx.slots.exists() else {}
    held = [t for t in scope if t in leases]
    if held:
        with ThreadPoolExecutor(max_workers=min(8, len(held))) as workers:  # independent slots: release together
            list(workers.map(ctx.slots.release, held))
    # (the scope's groups have all finished: what remains is after them)
    remaining = [i for i in range(1, len(ctx.plan.groups) + 1) if not ctx.group_finished(i)]
    # The run's end: the pool's cleanup (git's work) runs while the memory files are written;
    # both are idempotent, and a kill in between runs this state again
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pool-cleanup") as aside:
        finishing = None if remaining else aside.submit(finish, ctx)
        written = []
        for n in groups:
            tasks = ctx.group_tasks(n)
            failed = [t for t in tasks if statuses[t] != S.MERGED]
            summary = (f"Merged: {', '.join(t for t in tasks if t not in failed) or 'none'}. "
                       f"Failed: {', '.join(failed) or 'none'}.")
            e2e = (ctx.progress.peek().get("parallel_groups") or {}).get(f"group_{n}", {}).get("e2e")
            if e2e == "failed":
                summary += " E2E failed on the merged result."
            written.append((n, "failed" if failed or e2e == "failed" else "post", summary))
        ctx.memory.write_groups(written)
        ctx.progress.update(lambda d: [d.setdefault("parallel_groups", {}).setdefault(f"group_{n}", {}).update(
            status="done") for n in groups])
    if finishing is not None:
        return finishing.result()
    if not ctx.options.all_groups:
        ctx.memory.handoff()
        ctx.reporter.line(f"session boundary after group {groups[-1]}: {len(remaining)} group(s) left; "
                          "continue with `orchestrator resume`")
        ctx.stop_requested = True
    return "PARALLELIZE"
