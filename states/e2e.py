"""E2E: build the merge candidate of the group's approved branches (off-tree, nothing
moves) and run the plan's e2e command on it in a temporary detached worktree."""

import os
import shutil
import subprocess
import tempfile

from engine import git, merge
from engine.runner import pending_tasks


def handle(run):
    plan = run.plan
    approved = pending_tasks(run, ("approved",))
    if not plan.e2e:
        run.reporter.line("E2E skipped: FRONTEND work, but the plan names no `e2e` command")
        return "INTEGRATE"
    if not approved:
        run.reporter.line("E2E skipped: nothing approved in this group")
        return "INTEGRATE"
    branches = [plan.tasks[t].branch for t in approved]
    report = merge.merge_branches(run.repo, run.base, branches, dry_run=True)
    tmp = tempfile.mkdtemp(prefix="orchestrator-e2e-")
    path = os.path.join(tmp, "candidate")
    try:
        with git.worktree_lock(run.repo):
            git.run(run.repo, "worktree", "add", "-q", "--detach", path, report.candidate)
        proc = subprocess.run(["/bin/sh", "-c", plan.e2e], cwd=path, capture_output=True, text=True,
                              errors="replace", timeout=run.settings.qa_timeout)
        ok = proc.returncode == 0
        output = (proc.stdout + proc.stderr).strip().splitlines()[-20:]
    except subprocess.TimeoutExpired:
        ok, output = False, ["e2e command timed out"]
    finally:
        with git.worktree_lock(run.repo):
            git.run(run.repo, "worktree", "remove", "--force", path, check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    run.journal.append("e2e-result", group=run.current_group, ok=ok)
    if ok:
        run.reporter.line(f"E2E passed on the merge candidate of {len(branches)} branch(es)")
    else:
        for t in approved:
            run.progress.set_task(t, status="failed", failure="e2e failed on the merge candidate: "
                                  + " | ".join(output[-3:]))
        run.reporter.line("E2E failed on the merge candidate; the group's tasks are not merged")
    return "INTEGRATE"
