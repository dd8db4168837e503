"""CHECKPOINT: write the group's memory files, release its slots, then the next group or
COMPLETE. By default a run stops after each group (the skill's session boundary) with a
handoff; `--all-groups` carries on."""

from engine.memory import Memory
from engine.runner import group_finished


def handle(run):
    n = run.current_group
    tasks = run.group_tasks(n)
    data = run.progress.load()
    states = {t: (data.get("tasks") or {}).get(t, {}) for t in tasks}
    failed = [t for t, s in states.items() if s.get("status") != "merged"]
    held = [s for s in run.pool.status()["worktrees"] if s.get("status") == "busy" and s.get("task_id") in tasks]
    if held:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(8, len(held))) as workers:  # independent slots: release together
            list(workers.map(lambda slot: run.pool.release(slot["id"], quiet=True), held))
        for slot in held:
            run.journal.append("release", slot=slot["id"], task=slot["task_id"])
    _drop_merged_branches(run, [t for t in tasks if t not in failed])
    memory = Memory(run.layout)
    summary = f"Merged: {', '.join(t for t in tasks if t not in failed) or 'none'}. Failed: {', '.join(failed) or 'none'}."
    memory.write_group(n, "failed" if failed else "post", summary)
    run.progress.update(lambda d: d.setdefault("parallel_groups", {}).setdefault(f"group_{n}", {}).update(
        status="done"))
    remaining = [i for i in range(1, len(run.plan.groups) + 1) if not group_finished(run, i)]
    if not remaining:
        if run.settings.auto_cleanup:
            run.pool.cleanup()
        return "COMPLETE"
    if not run.options.all_groups:
        memory.handoff()
        run.reporter.line(f"session boundary after group {n}: {len(remaining)} group(s) left; "
                          "continue with `orchestrator resume`")
        run.stop_requested = True
    return "PARALLELIZE"


def _drop_merged_branches(run, merged):
    """Merged task branches no slot holds any more (e.g. released by a repair) are deleted
    here, with the same safety: only when the base already contains them."""
    from engine import git

    for task_id in merged:
        branch = run.plan.tasks[task_id].branch
        if git.unique_commits(run.repo, branch, f"refs/heads/{run.base}") == 0:
            git.delete_branch(run.repo, branch, check=False)
