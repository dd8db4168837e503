"""QA's `verify` on a task's committed branch, and the plan's `e2e` command on the merged
base. Both run through engine.procs.run_command: output to a file (never a pipe a leftover
child can hold), the whole process tree stopped when the command ends or times out, and
feedback that is capped and never empty.
"""

import os
import shutil
import tempfile
from dataclasses import dataclass

from engine import git, procs

BLOCKED_CODES = (126, 127)  # not executable / command not found: the check cannot run


@dataclass
class Verdict:
    verdict: str  # APPROVED | REJECTED | BLOCKED | INTERRUPTED
    feedback: str
    output_path: str = None


class Checks:
    def __init__(self, ctx):
        self.ctx = ctx

    def verify(self, task_id, path, attempt):
        """Run TASK_ID's verify in its checkout at PATH; the verdict and QA feedback."""
        ctx = self.ctx
        task = ctx.plan.tasks[task_id]
        if not task.verify:
            return Verdict("APPROVED", "no verify command")
        output = ctx.layout.qa_log(task_id, attempt)
        try:
            result = procs.run_command(task.verify, path, output_path=output, timeout=ctx.settings.qa_timeout,
                                       header=f"=== verify {task_id} attempt {attempt}: {task.verify}",
                                       cancel=ctx.cancel)
        except procs.CommandLaunchError as exc:
            return Verdict("BLOCKED", f"verify could not start: {exc.message}", output)
        if result.interrupted or ctx.cancel.is_set():
            return Verdict("INTERRUPTED", "QA interrupted", output)
        feedback = procs.feedback(result, task.verify)
        if result.timed_out or result.code in BLOCKED_CODES:
            return Verdict("BLOCKED", feedback, output)
        if result.code == 0:
            # the command's own output only: the log's header line echoes the command itself
            if task.expected_output is None or procs.output_contains(result, task.expected_output):
                return Verdict("APPROVED", feedback, output)
            feedback += f"\n(expected output not found: {task.expected_output!r})"
        return Verdict("REJECTED", feedback, output)

    def e2e(self, label):
        """Run the plan's e2e command on the base as it is now, in a temporary detached
        checkout; (ok, feedback, output path)."""
        ctx = self.ctx
        command = ctx.plan.e2e
        commit = git.branch_commit(ctx.repo, ctx.base)
        output = ctx.layout.e2e_log(label)
        tmp = tempfile.mkdtemp(prefix="orchestrator-e2e-")
        path = os.path.join(tmp, "base")
        try:
            git.add_detached_worktree(ctx.repo, path, commit)
            result = procs.run_command(command, path, output_path=output, timeout=ctx.settings.qa_timeout,
                                       header=f"=== e2e {label} on {ctx.base} {commit[:12]}: {command}",
                                       cancel=ctx.cancel)
        except procs.CommandLaunchError as exc:
            return False, f"e2e could not start: {exc.message}", output
        finally:
            git.remove_worktree(ctx.repo, path)
            shutil.rmtree(tmp, ignore_errors=True)
        ok = result.code == 0 and not result.timed_out and not result.interrupted
        return ok, procs.feedback(result, command), output
