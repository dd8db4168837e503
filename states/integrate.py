"""INTEGRATE: merge the group's approved branches into the base in dependency order.

The merge code computes every merge off-tree and moves the base once; a conflict fails
that task (branch kept), not the run; an already-merged branch is recognised, so a resumed
INTEGRATE never merges twice."""

from engine import merge, store
from engine.errors import OrchestratorError
from engine.runner import pending_tasks


def handle(run):
    plan = run.plan
    approved = pending_tasks(run, ("approved",))
    if not approved:
        return "CHECKPOINT"
    order = [t for t in plan.order if t in approved]
    depends = {plan.tasks[t].branch: [plan.tasks[d].branch for d in plan.tasks[t].all_deps] for t in order}
    branches = merge.order_by_dependencies([plan.tasks[t].branch for t in order], depends)
    run.journal.append("merge-intent", group=run.current_group, branches=branches, target=run.base)
    report = merge.merge_branches(run.repo, run.base, branches, delete_merged=False)
    if report.error:
        raise OrchestratorError(f"{report.error}; then `orchestrator resume`")
    by_branch = {plan.tasks[t].branch: t for t in order}
    stamp = store.utc_now()
    for branch in report.merged:
        run.progress.set_task(by_branch[branch], status="merged", completed_at=stamp)
        run.reporter.task(by_branch[branch], "merged" + (" (already)" if branch in report.already else ""))
    for branch, reason, files in report.failed:
        run.progress.set_task(by_branch[branch], status="failed",
                              failure=f"merge {reason}" + (f": {' '.join(files)}" if files else ""))
        run.reporter.task(by_branch[branch], f"merge failed ({reason}{': ' + ' '.join(files) if files else ''}); "
                          f"branch {branch} kept")
    run.journal.append("merge-done", group=run.current_group, merged=report.merged,
                       failed=[b for b, _, _ in report.failed], commit=report.new_commit)
    return "CHECKPOINT"
