"""Red-team findings on the start-first / fresh-lease / hand-over change (real git, real
subprocesses; the engine is only wrapped to observe what it records)."""

import os
import re
import textwrap

import pytest

from engine import git as gitmod
from engine.paths import Layout
from engine.progress import Progress
from tests.conftest import PYTHON, git, python_env
from tests.test_streaming_crash import TASKS, assert_clean_and_once, crash_then_resume

# A "remote" agent (as a backend without a local checkout, e.g. Ray, runs one): it writes its
# commit straight onto refs/heads/$BRANCH of the repository, from the branch when it already
# carries work, else from the base.
REMOTE_AGENT = textwrap.dedent("""
    import os, subprocess, sys, tempfile, time
    root, branch, task = os.environ["ORCHESTRATOR_ROOT"], os.environ["BRANCH"], os.environ["TASK_ID"]
    time.sleep(float(os.environ.get("SLEEP_" + task, "0")))
    def g(*a, env=None):
        return subprocess.run(["git", "-C", root, *a], check=True, capture_output=True, text=True,
                              env=env).stdout.strip()
    ok = subprocess.run(["git", "-C", root, "rev-parse", "-q", "--verify", "refs/heads/" + branch],
                        capture_output=True, text=True)
    start = ok.stdout.strip() if ok.returncode == 0 else g("rev-parse", "refs/heads/main")
    index = tempfile.mktemp()
    env = dict(os.environ, GIT_INDEX_FILE=index)
    g("read-tree", start, env=env)
    blob = subprocess.run(["git", "-C", root, "hash-object", "-w", "--stdin"], input=task + os.environ["TASK_ATTEMPT"],
                          check=True, capture_output=True, text=True).stdout.strip()
    g("update-index", "--add", "--cacheinfo", "100644," + blob + "," + task + ".txt", env=env)
    tree = g("write-tree", env=env)
    commit = g("commit-tree", tree, "-p", start, "-m", task + " attempt " + os.environ["TASK_ATTEMPT"])
    g("update-ref", "refs/heads/" + branch, commit)
""")

VERIFY_ONCE_REJECTED = textwrap.dedent("""
    import os, sys, time
    marker = sys.argv[1]
    time.sleep(1.5)  # (the other task merges meanwhile)
    if not os.path.exists(marker):
        open(marker, "w").close()
        sys.exit(1)
""")


def test_a_retry_without_a_local_checkout_records_the_base_of_today_not_of_the_qa_lease(tmp_path, monkeypatch):
    """Backend without a local checkout (needs_checkout False, the Ray executor): QA leases a
    slot for task a (Slots.hold -> _fresh[a] = base then); QA rejects; b merges meanwhile.
    a's second attempt asks `fresh_base(a)` and gets the stale base of the QA lease."""
    from engine import demo, executor, runner, scheduler
    from engine.context import Options

    repo = demo.make_repo(str(tmp_path / "r"))
    with open(os.path.join(repo, ".claude", "auto-context.yaml"), "w") as fh:
        fh.write("parallelization:\n  max_agents: 2\n  min_tasks: 2\n  retry_on_failure: 3\n")
    agent, verify = tmp_path / "agent.py", tmp_path / "verify.py"
    agent.write_text(REMOTE_AGENT)
    verify.write_text(VERIFY_ONCE_REJECTED)
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"base: main\nagent: {PYTHON} {agent}\ntasks:\n"
                    f"  - {{id: a, description: a, verify: '{PYTHON} {verify} {tmp_path / 'marker'}'}}\n"
                    f"  - {{id: b, description: b}}\n")
    monkeypatch.chdir(repo)
    monkeypatch.setenv("SLEEP_b", "0.7")
    monkeypatch.setattr(executor.LocalBackend, "needs_checkout", False)
    seen = []
    launch = scheduler.Scheduler._launch

    def observe(self, task_id, attempt, *more):
        seen.append((task_id, attempt.n, attempt.base_commit, gitmod.branch_commit(repo, "main")))
        return launch(self, task_id, attempt, *more)
    monkeypatch.setattr(scheduler.Scheduler, "_launch", observe)

    runner.start(str(plan), Options(all_groups=True, quiet=True))

    tasks = Progress(Layout(str(repo))).load()["tasks"]
    assert {t: v["status"] for t, v in tasks.items()} == {"a": "merged", "b": "merged"}
    second = [s for s in seen if s[:2] == ("a", 2)]
    assert second, seen
    _, _, recorded, base_now = second[0]
    assert recorded == base_now, f"attempt 2 of a recorded base {recorded[:10]}, the base was {base_now[:10]}"


# ----------------------------------------------------------------- crash exactness, no verify


@pytest.mark.parametrize("point", ["approved", "approved:3", "handed-over", "handed-over:2", "merge-moved:2"])
def test_no_verify_tasks_approved_in_one_write_resume_exactly(tmp_path, point):
    from engine import demo

    repo = demo.make_repo(str(tmp_path / "p"))
    plan = str(tmp_path / "p" / "plan.yaml")
    demo.write_plan(plan)
    text = open(plan).read()
    text = re.sub(r", verify: .*?\}$", "}", text, flags=re.M)  # every task without a verify command
    open(plan, "w").write(text)
    assert "verify" not in text.split("tasks:")[1], text
    env = dict(python_env(), DEMO_AGENT_SLEEP="0")
    crash_then_resume(repo, plan, env, point)
    assert_clean_and_once(repo, TASKS)


# ----------------------------------------------------------------- start-first wake-ups
def test_an_approval_a_pending_task_waits_for_ends_the_start_first_wait(tmp_path, monkeypatch):
    """The merger defers a merge nobody needs (a approved) while b is being started. d is
    approved meanwhile and c (pending) depends on d: that merge is awaited now, yet `_approve`
    sets only `merge_wake` and never notifies `launched`, so the merger sleeps out the whole
    START_FIRST (and c with it) unless b's launch happens to end the wait."""
    import subprocess
    import threading
    import time

    from engine import plan as plans
    from engine import scheduler as scheduler_module
    from engine.scheduler import Scheduler
    from engine.tasks import TaskStatus as S

    monkeypatch.setattr(scheduler_module, "START_FIRST", 3.0)
    repo = str(tmp_path / "r")
    subprocess.run(["git", "init", "-q", "-b", "main", repo], check=True)
    git(repo, "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-q", "--allow-empty", "-m", "init")
    git(repo, "branch", "auto/d")

    from tests.test_scheduler_unit import _Book

    class Book(_Book):
        def fire_all(self, events):
            for task_id, event, _, _ in events:
                if event == "approve":
                    self.table[task_id] = S.APPROVED

    class Ctx:
        pass
    ctx = Ctx()
    tasks = [{"id": "a"}, {"id": "b"}, {"id": "c", "depends_on": ["d"]}, {"id": "d"}]
    ctx.plan = plans.from_data({"agent": "true", "tasks": tasks}, "plan.yaml", 4)
    ctx.tasks = Book({"a": S.APPROVED, "b": S.PENDING, "c": S.PENDING, "d": S.VERIFYING})
    ctx.repo, ctx.base = repo, "main"
    ctx.reporter = type("R", (), {"task": lambda self, *a: None})()
    s = Scheduler(ctx, list(ctx.plan.order), 2)
    s.jobs = {"b": object(), "d": object()}
    s.launching.add("b")  # b's agent is being started (its setup runs, say)
    done = threading.Event()
    threading.Thread(target=lambda: (s._let_starts_go_first(), done.set()), daemon=True).start()
    time.sleep(0.2)
    assert not done.is_set()
    start = time.monotonic()
    s._approve("d", [], git(repo, "rev-parse", "auto/d"))  # c waits for d's merge from now on
    assert done.wait(5)
    waited = time.monotonic() - start
    assert waited < 0.5, f"the merge c waits for was held back {waited:.2f}s"


# ----------------------------------------------------------------- a kill in the middle of a rebase
KILL_IN_REBASE_HOOK = """#!{python}
import os, signal, subprocess, sys
git_path = subprocess.run(["git", "rev-parse", "--git-path", "rebase-merge"],
                          capture_output=True, text=True).stdout.strip()
marker = {marker!r}
if os.path.isdir(git_path) and not os.path.exists(marker):
    open(marker, "w").close()
    pid = os.getppid()
    while pid > 1:  # the orchestrator, whichever ancestor it is
        cmd = open(f"/proc/{{pid}}/cmdline", "rb").read()
        if b"engine.cli.orchestrator" in cmd:
            os.kill(pid, signal.SIGKILL)
            break
        pid = int(open(f"/proc/{{pid}}/stat").read().rsplit(")", 1)[1].split()[1])
"""


def test_a_kill_while_a_conflicting_rebase_runs_resumes_exactly(tmp_path):
    """SIGKILL of the orchestrator while `bring_up_to_date` rebases a conflicted branch (the
    rebase stops on its conflict with nobody left to abort it: HEAD detached mid-rebase).
    On resume `hold(discard_edits=True)` runs `forget_operations`, i.e. `rebase --quit`, which
    leaves HEAD detached; the next `rebase_onto` rebases that detached HEAD "cleanly", the task
    is marked `rebased`, and `_verify` fails it: "its checkout is no longer on auto/<task>"."""
    from engine import demo
    from tests.test_streaming_crash import orchestrator, progress

    repo = demo.make_repo(str(tmp_path / "p"))
    plan = str(tmp_path / "p" / "plan.yaml")
    demo.write_plan(plan)
    with open(os.path.join(repo, ".claude", "auto-context.yaml"), "w") as fh:
        fh.write("parallelization:\n  min_tasks: 3\n  max_agents: 3\n  retry_on_failure: 8\n")
    hook = os.path.join(repo, ".git", "hooks", "post-checkout")
    with open(hook, "w") as fh:
        fh.write(KILL_IN_REBASE_HOOK.format(python=PYTHON, marker=str(tmp_path / "killed")))
    os.chmod(hook, 0o755)
    env = dict(python_env(), DEMO_AGENT_SLEEP="0", DEMO_CONFLICT_FILE="shared.txt")
    first = orchestrator(repo, "run", "--all-groups", plan, env=env)
    assert first.returncode == -9 and os.path.exists(tmp_path / "killed"), first.stderr[-500:]
    os.unlink(hook)
    done = orchestrator(repo, "resume", "--all-groups", env=env)
    tasks = progress(repo)["tasks"]
    unfinished = {t: (v.get("status"), v.get("failure")) for t, v in tasks.items() if v.get("status") != "merged"}
    assert done.returncode == 0 and not unfinished, unfinished
    assert_clean_and_once(repo, TASKS)


def test_a_conflicted_task_whose_new_branch_has_no_work_yet_is_not_merged_empty(tmp_path):
    """A kill after `set_aside` and the fresh lease of the re-run (auto/T re-created at the
    base, no commit yet) but before its `start` is recorded: T is still `conflicted` with an
    empty branch. Resume: `_after_conflict` sees the branch, the rebase is trivially "clean",
    T goes to QA (none here) and is merged as "already in the base" -- without its work,
    which is left only under refs/orchestrator/attempts. (Found by a random-kill stress run.)"""
    from engine import demo
    from tests.test_streaming_crash import orchestrator, progress

    repo = demo.make_repo(str(tmp_path / "p"))
    plan = str(tmp_path / "p" / "plan.yaml")
    demo.write_plan(plan)
    text = open(plan).read()
    open(plan, "w").write(re.sub(r", verify: .*?\}$", "}", text, flags=re.M))
    with open(os.path.join(repo, ".claude", "auto-context.yaml"), "w") as fh:
        fh.write("parallelization:\n  min_tasks: 3\n  max_agents: 3\n  retry_on_failure: 8\n")
    env = dict(python_env(), DEMO_AGENT_SLEEP="0", DEMO_CONFLICT_FILE="shared.txt")
    first = orchestrator(repo, "run", "--all-groups", plan, env=dict(env, ORCH_CRASHPOINT="set-aside"))
    assert first.returncode == -9
    conflicted = [t for t, v in progress(repo)["tasks"].items() if v["status"] == "conflicted"]
    # set aside whole: work kept under the attempt ref, branch dropped (another worker may have
    # been killed half way through its own set-aside, its branch still there)
    set_aside = [t for t in conflicted if git(repo, "for-each-ref", f"refs/orchestrator/attempts/{t}")
                 and not git(repo, "for-each-ref", f"refs/heads/auto/{t}")]
    assert set_aside, progress(repo)["tasks"]
    task = set_aside[0]
    git(repo, "branch", f"auto/{task}", "main")  # what the killed run's fresh lease had created
    done = orchestrator(repo, "resume", "--all-groups", env=env)
    assert done.returncode == 0, done.stderr[-500:]
    assert progress(repo)["tasks"][task]["status"] == "merged"
    assert git(repo, "ls-tree", "--name-only", "main", f"app/{task}.py") == f"app/{task}.py", \
        f"{task} is recorded merged but its work is not in main"


def test_a_forgotten_rebase_leaves_the_slot_back_on_its_branch_for_the_next_attempt(repo, pool):
    """Looking for F3's shape elsewhere: a retry or a resumed attempt discards a killed
    attempt's half-done rebase with `--quit`, which leaves HEAD detached; the next agent would
    then commit nowhere (and fail as "left its branch"). The slot goes back on the branch."""
    import subprocess

    from tests.conftest import commit_file

    slot, path, branch = pool.acquire("t", "main")
    commit_file(path, "shared.txt", "ours\n")
    commit_file(repo, "shared.txt", "theirs\n")
    subprocess.run(["git", "-C", path, "rebase", "-q", "main"], capture_output=True)  # stops on the conflict
    assert gitmod.operations_in_progress(path) == ["rebase"]
    tip = git(repo, "rev-parse", branch)
    gitmod.forget_operations(path)
    gitmod.discard_changes(path, branch)
    assert git(path, "symbolic-ref", "--short", "HEAD") == branch
    assert git(path, "rev-parse", "HEAD") == tip and git(path, "status", "--porcelain") == ""
