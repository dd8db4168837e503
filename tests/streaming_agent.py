"""A scripted agent for the streaming tests: what it does is chosen per task and attempt.

AGENT_MODE: `task=mode,...`; modes: file (write TASK.txt and commit), nothing (exit 0, no
commit), shared (write shared.txt = the task id and commit), fix (notes.txt typo -> fixed),
fix-then-more (that same fix, then a second commit changing it again), other-branch (commit on
a new branch TASK-elsewhere), delete-worktree (remove its own checkout),
fail-then-wrong-then-shared (attempt 1 exits 3, attempt 2 writes wrong.txt, then shared).
AGENT_SLEEP: `task=seconds,...` before it acts.
"""

import os
import shutil
import subprocess
import sys
import time


def knob(name, task):
    pairs = dict(item.split("=", 1) for item in os.environ.get(name, "").split(",") if "=" in item)
    return pairs.get(task)


def commit(message, *paths):
    subprocess.run(["git", "add", "--", *paths], check=True)
    subprocess.run(["git", "-c", "user.name=agent", "-c", "user.email=agent@localhost", "commit", "-qm", message],
                   check=True)


def write(path, text):
    with open(path, "w") as fh:
        fh.write(text)


def main():
    task = os.environ["TASK_ID"]
    attempt = int(os.environ.get("TASK_ATTEMPT", "1"))
    print(f"agent {task} attempt {attempt} feedback={os.environ.get('QA_FEEDBACK', '')[:40]}", flush=True)
    time.sleep(float(knob("AGENT_SLEEP", task) or 0))
    mode = knob("AGENT_MODE", task) or "file"
    if mode == "fail-then-wrong-then-shared":
        mode = {1: "fail", 2: "wrong"}.get(attempt, "shared")
    if mode == "fail":
        return 3
    if mode == "nothing":
        return 0
    if mode == "file":
        write(f"{task}.txt", task)
        commit(task, f"{task}.txt")
    elif mode == "wrong":
        write("wrong.txt", task)
        commit("wrong", "wrong.txt")
    elif mode == "shared":
        if os.path.exists("wrong.txt"):
            os.unlink("wrong.txt")
            subprocess.run(["git", "rm", "-q", "--cached", "wrong.txt"], check=True)
        write("shared.txt", task + "\n")
        commit(f"{task} shared", "shared.txt")
    elif mode in ("fix", "fix-then-more"):
        write("notes.txt", "fixed\n")
        commit(f"{task}: fix the typo", "notes.txt")
        if mode == "fix-then-more":
            write("notes.txt", "better\n")
            commit("a better word", "notes.txt")
    elif mode == "other-branch":
        subprocess.run(["git", "checkout", "-q", "-b", f"{task}-elsewhere"], check=True)
        write(f"{task}.txt", task)
        commit(task, f"{task}.txt")
    elif mode == "delete-worktree":
        here = os.getcwd()
        os.chdir("/")
        shutil.rmtree(here)
    return 0


if __name__ == "__main__":
    sys.exit(main())
