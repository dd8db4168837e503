"""QA: run each executed task's `verify` on its committed branch and match
`expected_output`. TASK_APPROVED, TASK_REJECTED (back to EXECUTE with the output as
QA_FEEDBACK, counted against the retries) or QA_BLOCKED (the check itself cannot run)."""

import subprocess

from engine import store
from engine.procs import stop_group
from engine.runner import pending_tasks

BLOCKED_CODES = (126, 127)  # not executable / command not found: the check cannot run
FEEDBACK_LINES = 40


def verify(run, task_id, path):
    """(verdict, output) for one task: APPROVED, REJECTED or BLOCKED."""
    task = run.plan.tasks[task_id]
    if not task.verify:
        return "APPROVED", "no verify command"
    try:
        proc = subprocess.Popen(["/bin/sh", "-c", task.verify], cwd=path, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, errors="replace",
                                start_new_session=True)
    except OSError as exc:
        return "BLOCKED", str(exc)
    try:
        output, _ = proc.communicate(timeout=run.settings.qa_timeout)
    except subprocess.TimeoutExpired:
        stop_group(proc.pid)
        proc.communicate()
        return "BLOCKED", f"verify timed out after {run.settings.qa_timeout}s"
    if proc.returncode in BLOCKED_CODES:
        return "BLOCKED", output
    if proc.returncode == 0 and (task.expected_output is None or task.expected_output in output):
        return "APPROVED", output
    if proc.returncode == 0:
        output += f"\n(expected output not found: {task.expected_output!r})"
    return "REJECTED", output


def handle(run):
    retries_left = False
    for task_id in pending_tasks(run, ("executed",)):
        state = run.task_state(task_id)
        path = run.pool.slot_path(state["slot"])
        verdict, output = verify(run, task_id, path)
        tail = "\n".join(output.strip().splitlines()[-FEEDBACK_LINES:])
        run.journal.append("qa-result", task=task_id, verdict=verdict)
        stamp = store.utc_now()
        if verdict == "APPROVED":
            run.progress.set_task(task_id, status="approved", qa_verified=True, qa_timestamp=stamp,
                                  test_result="passed")
            run.reporter.task(task_id, "TASK_APPROVED")
        elif verdict == "BLOCKED":
            run.progress.set_task(task_id, status="blocked", qa_verified=False, qa_timestamp=stamp,
                                  test_result="blocked", failure=f"QA_BLOCKED: {tail[-300:]}")
            run.reporter.task(task_id, "QA_BLOCKED: the check could not run")
        else:
            retries = int(state.get("retry_count") or 0) + 1
            exhausted = retries > run.settings.retry_on_failure
            run.progress.set_task(task_id, status="failed" if exhausted else "rejected", qa_verified=False,
                                  qa_timestamp=stamp, qa_feedback=tail, test_result="failed",
                                  retry_count=retries - 1 if exhausted else retries,
                                  **({"failure": "QA rejected; retries exhausted"} if exhausted else {}))
            run.reporter.task(task_id, "TASK_REJECTED" + (": retries exhausted" if exhausted else ", back to EXECUTE"))
            retries_left = retries_left or not exhausted
    if retries_left:
        return "EXECUTE"
    plan = run.plan
    if plan.e2e or (plan.work_type or "").upper() == "FRONTEND":
        return "E2E"
    run.reporter.line("E2E skipped: work type is not FRONTEND and the plan names no e2e command")
    return "INTEGRATE"
