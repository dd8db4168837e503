"""The bundled fake agent for `make demo`, the tests and the benchmarks: no network, no LLM.

It reads its task only from the environment (TASK_ID, WORKTREE, QA_FEEDBACK, ...), writes
`app/<task>.py` whose function returns "<task> ok", and commits. Knobs (environment):
- DEMO_AGENT_SLEEP: seconds to "think" first (default 0.2);
- DEMO_SLOW: per-task thinking time, e.g. `cli=2,docs=1` (overrides DEMO_AGENT_SLEEP for those);
- DEMO_FLAKY: a task id whose first attempt is wrong (QA rejects it; the retry, which gets
  QA_FEEDBACK, is right);
- DEMO_BROKEN: a task id that is always wrong (its retries run out);
- DEMO_UNCOMMITTED: a task id that leaves its work uncommitted (the orchestrator commits it);
- DEMO_CONFLICT_FILE: every task also writes this shared file (to provoke a merge conflict).
Re-running it is harmless: the same content is written and nothing new is committed.
"""

import os
import sys
import time


def git(*args):
    """Run git and return its exit status (os.spawnvp: `subprocess` alone would double the
    agent's start-up, which every benchmark pays sixteen times on two cores)."""
    return os.spawnvp(os.P_WAIT, "git", ["git", *args])


def main():
    task = os.environ["TASK_ID"]
    slow = dict(item.split("=", 1) for item in os.environ.get("DEMO_SLOW", "").split(",") if "=" in item)
    time.sleep(float(slow.get(task) or os.environ.get("DEMO_AGENT_SLEEP", "0.2")))
    wrong = task == os.environ.get("DEMO_BROKEN") or (task == os.environ.get("DEMO_FLAKY")
                                                       and not os.environ.get("QA_FEEDBACK"))
    name = task.replace("-", "_")
    os.makedirs("app", exist_ok=True)
    result = "bug" if wrong else f"{task} ok"
    with open(os.path.join("app", f"{name}.py"), "w") as fh:
        fh.write(f'"""{os.environ.get("TASK_DESCRIPTION", task)}"""\n\n\ndef {name}():\n    return "{result}"\n')
    shared = os.environ.get("DEMO_CONFLICT_FILE")
    if shared:
        with open(shared, "w") as fh:
            fh.write(f"written by {task}\n")
    print(f"agent {task}: attempt {os.environ.get('TASK_ATTEMPT')}, feedback: {bool(os.environ.get('QA_FEEDBACK'))}")
    if task == os.environ.get("DEMO_UNCOMMITTED"):
        return 0
    if git("add", "-A") != 0:
        return 1
    if git("diff", "--cached", "--quiet") != 0:
        return 1 if git("-c", "user.name=demo-agent", "-c", "user.email=agent@localhost", "commit", "-q",
                        "-m", f"{task}: implement") else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
