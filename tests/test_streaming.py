"""The streaming task flow end to end: no barrier, merge queue, conflicts as retries,
what an agent may leave behind, and stops at awkward moments."""

import json
import os
import stat
import subprocess
import time

import pytest
import yaml

from engine import demo
from tests.conftest import PYTHON, branches, git, python_env, worktree_paths

AGENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "streaming_agent.py")


@pytest.fixture
def project(sealed_env, tmp_path, monkeypatch):
    """A demo repository (max_agents 3, retry_on_failure 2) as the cwd; `plan(text)` writes a plan."""
    repo = demo.make_repo(str(tmp_path / "p"))
    with open(os.path.join(repo, ".claude", "auto-context.yaml"), "w") as fh:
        fh.write("parallelization:\n  min_tasks: 1\n  max_agents: 3\n  retry_on_failure: 2\n")
    monkeypatch.chdir(repo)
    monkeypatch.setenv("DEMO_AGENT_SLEEP", "0")

    def plan(tasks, extra=""):
        path = tmp_path / "p" / "plan.yaml"
        path.write_text(f"base: main\nagent: {PYTHON} {AGENT}\n{extra}tasks:\n{tasks}")
        return str(path)
    return repo, plan


def progress():
    with open(".claude/auto-progress.yaml") as fh:
        return yaml.safe_load(fh)


def journal():
    with open(".claude/auto-journal.jsonl") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def task_events(records, task, dst):
    return [r["seq"] for r in records if r["event"] == "task" and r["task"] == task and r["dst"] == dst]


def test_a_dependent_starts_while_an_unrelated_sibling_still_runs(orch, project, monkeypatch):
    repo, plan = project
    monkeypatch.setenv("AGENT_SLEEP", "slow=4,fast=0.1,after=0.1")
    path = plan("  - {id: slow}\n  - {id: fast}\n  - {id: after, depends_on: [fast]}\n")
    r = orch("run", "--all-groups", path)
    assert r.code == 0, r
    records = journal()
    # `after` started (and even merged) before `slow` finished its agent: no group barrier
    assert task_events(records, "after", "running")[0] < task_events(records, "slow", "executed")[0]
    assert task_events(records, "after", "merged")[0] < task_events(records, "slow", "merged")[0]
    # and `after` started only once `fast` was merged: it builds on a base that contains it
    assert task_events(records, "fast", "merged")[0] < task_events(records, "after", "running")[0]
    assert "after: ready: fast merged; starting while slow still run(s)" in r.out
    assert {t: v["status"] for t, v in progress()["tasks"].items()} == {"slow": "merged", "fast": "merged",
                                                                        "after": "merged"}


def test_expected_output_must_come_from_the_check_not_its_command_line(orch, project, monkeypatch):
    """The QA log's header echoes the verify command: `true # all 5 passed` must not pass
    `expected_output: passed` on the strength of its own command line."""
    repo, plan = project
    monkeypatch.setenv("AGENT_MODE", "t=file")
    r = orch("run", "--all-groups", plan("  - {id: t, verify: 'true # all 5 passed', expected_output: passed}\n"))
    assert r.code == 1
    t = progress()["tasks"]["t"]
    assert t["status"] == "failed" and "expected output not found" in t["qa_feedback"]


def test_task_data_that_cannot_be_passed_fails_that_task_only(orch, project, monkeypatch, tmp_path):
    """One task's attempt cannot be launched (its task-data directory is a planted link, which
    the engine refuses to write through): that task fails with the reason, the others merge,
    and the run ends normally (no exit 70, nothing written outside)."""
    repo, plan = project
    outside = tmp_path / "outside"
    outside.mkdir()
    os.makedirs(os.path.join(repo, ".claude", "auto-logs"), exist_ok=True)
    os.symlink(str(outside), os.path.join(repo, ".claude", "auto-logs", "bad.attempt-1.data"))
    r = orch("run", "--all-groups", plan("  - {id: bad, description: needs its data file}\n  - {id: good}\n"
                                         "  - {id: after, depends_on: [good]}\n"))
    assert r.code == 1, r
    tasks = progress()["tasks"]
    assert tasks["bad"]["status"] == "failed" and "symbolic link" in tasks["bad"]["failure"]
    assert tasks["good"]["status"] == "merged" and tasks["after"]["status"] == "merged"
    assert os.listdir(outside) == []


def test_a_plan_may_list_a_task_before_its_dependency(orch, project):
    repo, plan = project
    r = orch("run", "--all-groups", plan("  - {id: late, depends_on: [early], complexity: L}\n  - {id: early}\n"))
    assert r.code == 0, r
    records = journal()
    assert task_events(records, "early", "merged")[0] < task_events(records, "late", "running")[0]


def test_without_all_groups_the_session_stops_after_its_group(orch, project, monkeypatch):
    repo, plan = project
    path = plan("  - {id: a}\n  - {id: b}\n  - {id: c, depends_on: [a]}\n")
    r = orch("run", path)
    assert r.code == 0 and "session boundary after group 1" in r.out
    assert {t: v["status"] for t, v in progress()["tasks"].items()} == {"a": "merged", "b": "merged", "c": "pending"}
    assert orch("resume").code == 0
    assert progress()["tasks"]["c"]["status"] == "merged"


def test_conflict_resolved_by_a_rebase_without_the_agent(orch, project, monkeypatch):
    """`same` makes the exact fix `first` makes, then goes further: the merge conflicts, the
    replay drops the duplicate commit and applies the rest, QA runs again, it merges."""
    repo, plan = project
    monkeypatch.setenv("AGENT_MODE", "first=fix,same=fix-then-more")
    monkeypatch.setenv("AGENT_SLEEP", "first=0.1,same=1.5")
    path = plan("  - {id: first, verify: grep -q fixed notes.txt}\n"
                "  - {id: same, verify: grep -q better notes.txt}\n")
    git(repo, "checkout", "-q", "main")
    with open("notes.txt", "w") as fh:
        fh.write("typo\n")
    git(repo, "add", "notes.txt")
    git(repo, "commit", "-qm", "notes")
    r = orch("run", "--all-groups", path)
    assert r.code == 0, r
    data = progress()
    same = data["tasks"]["same"]
    assert same["status"] == "merged" and same.get("retry_count") == 1 and same["iterations"] == 1, r.out  # no re-run
    assert [a["kind"] for a in same["attempts"]] == ["agent", "rebase"]
    assert "rebased onto the new main without the agent" in r.out
    assert open("notes.txt").read() == "better\n"
    assert [e["trigger"] for e in journal() if e["event"] == "task" and e["task"] == "same"] == [
        "start", "agent_done", "verify", "approve", "merge", "conflict", "rebased", "verify", "approve", "merge",
        "merged"]


def test_conflict_the_rebase_cannot_fix_goes_back_to_the_agent_with_feedback(orch, project, monkeypatch):
    repo, plan = project
    monkeypatch.setenv("AGENT_MODE", "left=shared,right=shared")
    monkeypatch.setenv("AGENT_SLEEP", "left=0.1,right=1.0")
    r = orch("run", "--all-groups", plan("  - {id: left}\n  - {id: right}\n"))
    assert r.code == 0, r
    right = progress()["tasks"]["right"]
    assert right["status"] == "merged" and right["iterations"] == 2 and right["retry_count"] == 1
    assert right["conflict_files"] == ["shared.txt"] and right["conflict_with"] == ["left"]
    with open(".claude/auto-logs/right.attempt-2.data/QA_FEEDBACK") as fh:  # the whole feedback, as a file
        feedback = fh.read()
    assert "shared.txt" in feedback and "left" in feedback
    assert "feedback=MERGE CONFLICT" in open(".claude/auto-logs/right.log").read()  # what the agent saw
    assert "refs/orchestrator/attempts/right/1" in open(".claude/auto-journal.jsonl").read()  # the old work was kept
    assert not git(repo, "for-each-ref", "refs/orchestrator/attempts/right/")  # ... until the task merged
    assert open("shared.txt").read() == "right\n"  # the re-run built on left's merged work


def test_retries_are_counted_across_agent_failure_rejection_and_conflict(orch, project, monkeypatch):
    repo, plan = project
    # attempt 1 exits 3 (agent), attempt 2 fails QA, attempt 3 is approved but conflicts with
    # `late`, merged while it ran: with retry_on_failure 2 that third setback exhausts the task.
    # (`other` merges first, so t's retry does not wait for the base to move.)
    monkeypatch.setenv("AGENT_MODE", "t=fail-then-wrong-then-shared,other=file,late=shared")
    monkeypatch.setenv("AGENT_SLEEP", "other=0.1,t=0.6,late=1.5")
    path = plan("  - {id: t, verify: test ! -f wrong.txt}\n  - {id: other}\n  - {id: late}\n")
    r = orch("run", "--all-groups", path)
    assert r.code == 1
    t = progress()["tasks"]["t"]
    assert t["status"] == "failed" and "merge conflict in shared.txt; retries exhausted (2)" in t["failure"]
    assert [e["trigger"] for e in journal() if e["event"] == "task" and e["task"] == "t"] == [
        "start", "agent_retry", "start", "agent_done", "verify", "reject", "start", "agent_done", "verify",
        "approve", "merge", "fail"]
    assert "auto/t" in branches(repo)  # the failed attempt's branch is kept


def test_no_changes_fails_unless_allowed(orch, project, monkeypatch):
    repo, plan = project
    monkeypatch.setenv("AGENT_MODE", "idle=nothing,ok=nothing,work=file")
    r = orch("run", "--all-groups", plan("  - {id: idle}\n  - {id: ok, allow_empty: true}\n  - {id: work}\n"))
    assert r.code == 1
    tasks = progress()["tasks"]
    assert tasks["idle"]["status"] == "failed" and tasks["idle"]["failure"].startswith("no changes")
    assert tasks["ok"]["status"] == "merged" and tasks["work"]["status"] == "merged", (r.out, tasks)


def test_an_agent_that_switches_branch_fails_its_task_and_keeps_the_work(orch, project, monkeypatch):
    repo, plan = project
    monkeypatch.setenv("AGENT_MODE", "rogue=other-branch,good=file")
    r = orch("run", "--all-groups", plan("  - {id: rogue}\n  - {id: good}\n"))
    assert r.code == 1
    tasks = progress()["tasks"]
    assert tasks["rogue"]["status"] == "failed" and "its checkout is on rogue-elsewhere" in tasks["rogue"]["failure"]
    assert git(repo, "show", "rogue-elsewhere:rogue.txt") == "rogue"  # the work is kept there
    assert tasks["good"]["status"] == "merged"


def test_an_agent_that_deletes_its_worktree_fails_only_its_task(orch, project, monkeypatch):
    repo, plan = project
    monkeypatch.setenv("AGENT_MODE", "vandal=delete-worktree,good=file,later=file")
    r = orch("run", "--all-groups", plan("  - {id: vandal}\n  - {id: good}\n  - {id: later, depends_on: [good]}\n"))
    assert r.code == 1
    tasks = progress()["tasks"]
    assert tasks["vandal"]["status"] == "failed" and "deleted its worktree" in tasks["vandal"]["failure"]
    assert tasks["good"]["status"] == "merged" and tasks["later"]["status"] == "merged"
    assert subprocess.run([PYTHON, "-m", "engine.cli.pool_manager", "health"], env=python_env(),
                          capture_output=True, text=True).returncode == 0


def test_verify_with_a_setsid_child_holding_output_is_judged_by_its_exit(orch, project, monkeypatch):
    repo, plan = project
    monkeypatch.setenv("AGENT_MODE", "t=file")
    verify = "setsid sh -c 'sleep 60.417' & echo verified"
    started = time.time()
    r = orch("run", "--all-groups", plan(f"  - {{id: t, verify: \"{verify}\", expected_output: verified}}\n"))
    assert r.code == 0, r
    assert time.time() - started < 30  # not the child's 60 s
    assert progress()["tasks"]["t"]["status"] == "merged"
    leftover = subprocess.run(["pgrep", "-f", "sleep 60.417"], capture_output=True, text=True).stdout.split()
    assert leftover == []  # the child was stopped with the check


def _wait_for(predicate, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _statuses():
    try:
        return {t: v.get("status") for t, v in (progress().get("tasks") or {}).items()}
    except (OSError, AttributeError):
        return {}


def test_abort_during_qa_leaves_the_task_to_verify_again_uncounted(orch, project, monkeypatch):
    repo, plan = project
    env = dict(python_env(), AGENT_MODE="t=file", DEMO_AGENT_SLEEP="0")
    path = plan("  - {id: t, verify: sleep 30.283}\n")
    proc = subprocess.Popen([PYTHON, "-m", "engine.cli.orchestrator", "run", "--quiet", path], cwd=repo, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(lambda: _statuses().get("t") == "verifying")
        assert orch("abort").code == 0
        assert proc.wait(timeout=30) != 0
    finally:
        proc.kill()
    t = progress()["tasks"]["t"]
    assert t["status"] == "executed" and not t.get("retry_count") and not t.get("slot")
    assert subprocess.run(["pgrep", "-f", "sleep 30.283"], capture_output=True).returncode == 1  # the check is gone
    with open(path, "w") as fh:  # the slow check was the point; resume with a quick one (adopted)
        fh.write(f"base: main\nagent: {PYTHON} {AGENT}\ntasks:\n  - {{id: t}}\n")
    r = orch("resume", "--adopt-plan")
    assert r.code == 0, r
    assert progress()["tasks"]["t"]["status"] == "merged"


def test_abort_during_the_merge_queue_then_resume_merges_once(orch, project, monkeypatch):
    """INTEGRATE in the streaming flow is the merge queue: a post-merge hook that hangs keeps
    the task `merging` while we abort; the next run finds it in the base (or merges it), once."""
    repo, plan = project
    hook = os.path.join(repo, ".git", "hooks", "post-merge")
    with open(hook, "w") as fh:
        fh.write("#!/bin/sh\nsleep 30\n")
    os.chmod(hook, os.stat(hook).st_mode | stat.S_IEXEC)
    env = dict(python_env(), AGENT_MODE="t=file")
    path = plan("  - {id: t}\n")
    proc = subprocess.Popen([PYTHON, "-m", "engine.cli.orchestrator", "run", "--quiet", path], cwd=repo, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(lambda: _statuses().get("t") == "merging")
        assert orch("abort").code == 0
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert progress()["tasks"]["t"]["status"] in ("approved", "merged")
    os.unlink(hook)
    assert orch("resume").code == 0
    assert progress()["tasks"]["t"]["status"] == "merged"
    assert git(repo, "log", "--merges", "--format=%s", "main").splitlines().count("feat: Merge auto/t") == 1
    assert branches(repo) == ["main"] and worktree_paths(repo) == [repo]


def test_the_task_machine_is_drawn_and_shown(orch, project, monkeypatch):
    repo, plan = project
    monkeypatch.setenv("AGENT_MODE", "a=file,b=nothing")
    orch("run", "--all-groups", plan("  - {id: a}\n  - {id: b}\n"))
    r = orch("graph", "--tasks")
    assert r.code == 0 and "verifying --> approved: approve" in r.out and "note left of merged: a" in r.out
    r = orch("status")
    assert "Tasks: 1 merged, 1 failed" in r.out and "no changes" in r.out
    data = json.loads(orch("status", "--json").out)
    assert data["counts"] == {"merged": 1, "failed": 1}
    assert data["tasks"]["a"]["attempts"][0]["outcome"] == "executed"


def test_retry_gives_a_failed_task_another_round(orch, project, monkeypatch):
    repo, plan = project
    monkeypatch.setenv("AGENT_MODE", "t=nothing")
    path = plan("  - {id: t}\n")
    assert orch("run", "--all-groups", path).code == 1
    r = orch("retry", "t")
    assert r.code == 0 and "t: pending" in r.out
    monkeypatch.setenv("AGENT_MODE", "t=file")
    assert orch("resume", "--all-groups").code == 0
    assert progress()["tasks"]["t"]["status"] == "merged"
    assert orch("retry", "nope").code == 1


def test_a_changed_plan_is_refused_on_resume_and_can_be_adopted(orch, project, monkeypatch):
    repo, plan = project
    monkeypatch.setenv("AGENT_MODE", "a=file,b=file,c=file")
    path = plan("  - {id: a}\n  - {id: b}\n  - {id: c, depends_on: [a]}\n")
    assert orch("run", path).code == 0  # group 1 merged, stopped at the boundary
    before = open(".claude/auto-progress.yaml").read()
    with open(path, "a") as fh:
        fh.write("  - {id: d, depends_on: [c]}\n")
    r = orch("resume")
    assert r.code == 1 and "plan file changed" in r.err and "--adopt-plan" in r.err
    assert open(".claude/auto-progress.yaml").read() == before  # nothing changed
    r = orch("resume", "--all-groups", "--adopt-plan")
    assert r.code == 0, r
    assert {t: v["status"] for t, v in progress()["tasks"].items()} == dict.fromkeys("abcd", "merged")
    assert git(repo, "log", "--merges", "--format=%s", "main").splitlines().count("feat: Merge auto/a") == 1


def test_the_run_budget_ends_the_session_at_a_boundary(orch, project, monkeypatch, tmp_path):
    """A run-level max_budget_usd: once the agents' recorded cost reaches it, no new attempt
    starts, and the session ends at a boundary with the reason (the fake `claude` reports
    each call's cost in its stream, as the real one does)."""
    from tests import fake_claude

    repo, plan = project
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake_claude.install(str(bindir))
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_CLAUDE_COST", "0.75")
    path = plan("  - {id: a}\n  - {id: b, depends_on: [a]}\n", extra="max_budget_usd: 0.5\n")
    text = open(path).read().replace(f"agent: {PYTHON} {AGENT}", "agent: claude")
    open(path, "w").write(text)
    r = orch("run", "--all-groups", path)
    assert r.code == 0, r
    assert "run budget of $0.50 spent ($0.75)" in r.out
    data = progress()
    assert data["status"] == "stopped" and data["cost_usd"] == 0.75
    assert data["tasks"]["a"]["status"] == "merged" and data["tasks"]["b"]["status"] == "pending"
    assert data["tasks"]["a"]["attempts"][0]["cost_usd"] == 0.75
