"""The merge queue: approved branches go into the base the moment they are approved, one
merge at a time, computed off-tree (engine.merge), so dependents start from a base that
contains them and the main checkout is never left half-merged.

A conflict is a setback, not a dead end: the task goes to `conflicted` with feedback naming
the conflicting files and the merged tasks that touched them, and the scheduler brings it
back (first by rebasing the branch onto the base without the agent, else by re-running the
agent on the new base). `bring_up_to_date` is that first step, `set_aside` the second's.
"""

import threading

from engine import git, merge, store
from engine.errors import OrchestratorError
from engine.faults import crashpoint
from engine.tasks import TaskStatus as S

ATTEMPT_REFS = "refs/orchestrator/attempts"


class MergeQueue:
    def __init__(self, ctx):
        self.ctx = ctx
        self._lock = threading.Lock()

    def settle(self, task_ids):
        """After a crash: a task left `approved` or `merging` whose branch the base already
        contains is merged; one left `merging` otherwise goes back to `approved`."""
        ctx = self.ctx
        for task_id in task_ids:
            status = ctx.tasks.status(task_id)
            if status not in (S.APPROVED, S.MERGING):
                continue
            branch = ctx.plan.tasks[task_id].branch
            # the branch may be gone: the killed run's slot release deletes a branch the base
            # already contains, so the tip recorded at approval answers for it
            tip = git.branch_commit(ctx.repo, branch) or ctx.tasks.entry(task_id).get("approved_tip")
            if tip is not None and git.is_ancestor(ctx.repo, tip, f"refs/heads/{ctx.base}"):
                self._merged(task_id, branch, git.branch_commit(ctx.repo, ctx.base), already=True)
            elif status == S.MERGING:
                ctx.tasks.fire(task_id, "merge_interrupt")
        self._drop_merged_branches(task_ids)

    def _drop_merged_branches(self, task_ids):
        """A merged task's branch (and set-aside attempts) left behind by a kill between the
        merge's record and their deletion (a slot still holding it is released by the scheduler, which drops
        it then): deleted when the base contains it. One listing of the branches."""
        ctx = self.ctx
        done = [t for t in task_ids if ctx.tasks.status(t) == S.MERGED]
        merged = {ctx.plan.tasks[t].branch for t in done}
        tips = git.branch_tips(ctx.repo) if merged else {}
        leftover = [b for b in sorted(merged & set(tips))
                    if git.is_ancestor(ctx.repo, tips[b], f"refs/heads/{ctx.base}")]
        if leftover:
            git.delete_branch(ctx.repo, *leftover, check=False)  # (git keeps one a slot has checked out)
        self._drop_kept_attempts(done)  # (the same kill may have come before these went)

    def merge(self, task_ids, on_recorded=None):
        """Merge the approved TASK_IDS (in dependency order) into the base; returns
        {task: status} for each. One merge at a time, whoever calls. ON_RECORDED() is called
        once merged tasks are recorded, before their branches are dropped and the merge's
        outcome journaled: a dependent may start from that moment (the scheduler's wake)."""
        ctx = self.ctx
        plan = ctx.plan
        with self._lock:
            order = [t for t in plan.order if t in set(task_ids)]
            results = {}
            for task_id in list(order):
                branch = plan.tasks[task_id].branch
                if plan.tasks[task_id].allow_empty and \
                        not git.unique_commits(ctx.repo, branch, f"refs/heads/{ctx.base}"):
                    # approved with nothing to merge (its slot's release may be dropping the empty branch now)
                    order.remove(task_id)
                    results[task_id] = self._merged(task_id, branch, git.branch_commit(ctx.repo, ctx.base),
                                                    already=True, on_recorded=on_recorded)
            if not order:
                return results
            ctx.tasks.fire_all([(t, "merge", {}, None) for t in order])
            branches = merge.order_by_dependencies(
                [plan.tasks[t].branch for t in order],
                {plan.tasks[t].branch: [plan.tasks[d].branch for d in plan.tasks[t].all_deps] for t in order})
            by_branch = {plan.tasks[t].branch: t for t in order}
            ctx.journal.append("merge-intent", branches=branches, target=ctx.base)
            crashpoint("merge-intent")
            try:
                report = merge.merge_branches(ctx.repo, ctx.base, branches, delete_merged=False)
            except BaseException:
                # nothing moved (the base moves in one step or not at all)
                ctx.tasks.fire_all([(t, "merge_interrupt", {}, None) for t in order])
                raise
            if report.error:
                ctx.tasks.fire_all([(t, "merge_interrupt", {}, None) for t in order])
                raise OrchestratorError(f"{report.error}; then `orchestrator resume`")
            crashpoint("merge-moved")
            head = report.new_commit or git.branch_commit(ctx.repo, ctx.base)
            results.update(self._merged_all([(by_branch[b], b) for b in report.merged], head, report.already,
                                            on_recorded))
            for branch, reason, files in report.failed:
                task_id = by_branch[branch]
                if reason == "conflicts":
                    results[task_id] = self._conflicted(task_id, files)
                else:
                    results[task_id] = ctx.tasks.fail(task_id, f"merge failed: {reason}")
                    ctx.reporter.task(task_id, f"merge failed ({reason}); branch {branch} kept")
            ctx.journal.append("merge-done", merged=report.merged, failed=[b for b, _, _ in report.failed],
                               commit=report.new_commit)
            return results

    def _merged(self, task_id, branch, head, already=False, on_recorded=None):
        return self._merged_all([(task_id, branch)], head, [branch] if already else [], on_recorded)[task_id]

    def _merged_all(self, merged, head, already=(), on_recorded=None):
        """Record merged tasks [(task, branch)] in one write, then drop their branches."""
        ctx = self.ctx
        if not merged:
            return {}
        stamp = store.utc_now()
        statuses = ctx.tasks.fire_all([(t, "merged", {"merged_commit": head, "completed_at": stamp}, None)
                                       for t, _ in merged])
        if on_recorded is not None:
            on_recorded()
        crashpoint("merged-recorded")
        # The base contains the branches now: the safe delete. A branch a slot still holds is
        # left to that slot (its release, or the hand-over to the next task, drops it): git
        # would refuse it anyway, and this call is between the merge and a dependent's start.
        held = ctx.slots.leases()
        free = [b for t, b in merged if t not in held]
        if free:
            git.delete_branch(ctx.repo, *free, check=False)
        self._drop_kept_attempts([t for t, _ in merged])
        for task_id, branch in merged:
            ctx.reporter.task(task_id, "merged" + (" (already in the base)" if branch in already else ""))
        return {t: s for (t, _), s in zip(merged, statuses)}

    def _drop_kept_attempts(self, task_ids):
        """A merged task's set-aside attempts (refs/orchestrator/attempts/TASK/N) go with its
        merge (decided here): what it became is in the base, and the journal keeps each ref's
        commit (`attempt-kept`) for as long as git keeps the objects. One look, only when any
        were kept."""
        if not any(self.ctx.tasks.entry(t).get("kept_attempts") for t in task_ids):
            return
        for ref in git.refs_under(self.ctx.repo, f"{ATTEMPT_REFS}/"):
            if ref.split("/")[3] in task_ids:
                git.delete_ref(self.ctx.repo, ref)

    def _conflicted(self, task_id, files):
        ctx = self.ctx
        others = self.touched_by(task_id, files)
        feedback = (f"MERGE CONFLICT: your branch no longer merges into {ctx.base}. Conflicting files: "
                    f"{', '.join(files) or '(unknown)'}"
                    + (f"; changed meanwhile by task(s) {', '.join(others)}" if others else "")
                    + f". Redo your change on top of the current {ctx.base}, keeping their work.")
        status = ctx.tasks.setback(task_id, "conflict", f"merge conflict in {', '.join(files) or 'the branch'}",
                                   conflict_files=list(files), conflict_with=others, qa_feedback=feedback)
        ctx.reporter.task(task_id, f"merge conflict ({', '.join(files)}"
                          + (f", with {', '.join(others)}" if others else "") + ")"
                          + ("; will retry on the new base" if status == S.CONFLICTED else "; retries exhausted"))
        return status

    def touched_by(self, task_id, files):
        """Merged tasks whose changes touch FILES (whom a conflict is with)."""
        tasks = self.ctx.progress.peek().get("tasks") or {}
        wanted = set(files)
        return sorted(t for t, v in tasks.items()
                      if t != task_id and v.get("status") == S.MERGED.value
                      and wanted & set(v.get("changed_files") or ()))

    def bring_up_to_date(self, task_id, path):
        """Rebase TASK_ID's branch, checked out at PATH, onto the current base. True when it
        applied cleanly (the branch moved; QA must run again); False when it conflicts
        (nothing moved). A replay can succeed where the merge failed: a commit whose change
        the base already has (two tasks made the same fix) is dropped instead of colliding."""
        ctx = self.ctx
        branch = ctx.plan.tasks[task_id].branch
        old = git.branch_commit(ctx.repo, branch)
        if old is None or not git.rebase_onto(path, f"refs/heads/{ctx.base}", branch):
            return False
        new = git.branch_commit(ctx.repo, branch)
        ctx.journal.append("branch-rebased", task=task_id, branch=branch, old=old, new=new)
        crashpoint("rebased")
        return True

    def set_aside(self, task_id, attempt):
        """Keep the conflicting attempt's work under refs/orchestrator/attempts/TASK/N and
        drop the branch, so the agent starts again from the current base."""
        ctx = self.ctx
        branch = ctx.plan.tasks[task_id].branch
        tip = git.branch_commit(ctx.repo, branch)
        if tip is None:
            return None
        ref = f"{ATTEMPT_REFS}/{task_id}/{attempt}"
        # recorded before it exists: a kill in between leaves a name the merge's clean-up
        # deletes harmlessly, never a ref no record names
        ctx.tasks.update(task_id, kept_attempts=sorted(set(ctx.tasks.entry(task_id).get("kept_attempts") or []) | {ref}))
        git.update_ref(ctx.repo, ref, tip)
        git.delete_branch(ctx.repo, branch)
        ctx.journal.append("attempt-kept", task=task_id, ref=ref, commit=tip)
        crashpoint("set-aside")
        return ref
