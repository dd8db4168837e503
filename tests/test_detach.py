"""Runs that outlive their caller: `run --detach`, `wait`, `status` telling a live run from a
dead one, idempotent `run`/`resume`/`abort`, and the SessionStart hook's line. Real processes
(the orchestrator as a subprocess, shell agents that sleep), real SIGKILLs of process groups."""

import json
import os
import signal
import subprocess
import time

import pytest
import yaml

from tests.conftest import PYTHON, ROOT, git, python_env, wait_until

HOOK = os.path.join(ROOT, "hooks", "session-start.sh")
SLOW = "sleep {s} && echo $TASK_ID > $TASK_ID.txt && git add -A && git commit -qm $TASK_ID"


def orchestrator(*args, cwd=None, timeout=120):
    return subprocess.run([PYTHON, "-m", "engine.cli.orchestrator", *args], cwd=cwd, capture_output=True,
                          text=True, env=python_env(), timeout=timeout)


def write_plan(repo, seconds=1.0, tasks=None, **top):
    data = dict({"agent": SLOW.format(s=seconds)}, **top)
    data["tasks"] = tasks or [{"id": "a"}, {"id": "b"}, {"id": "c", "depends_on": ["a"]}]
    (repo / "plan.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    git(repo, "add", "plan.yaml")
    git(repo, "commit", "-qm", "plan")
    return "plan.yaml"


def progress(repo):
    with open(repo / ".claude" / "auto-progress.yaml") as fh:
        return yaml.safe_load(fh)


def detached(repo, *args):
    r = orchestrator("run", "--detach", *args, cwd=repo)
    assert r.returncode == 0 and r.stderr == "", r
    (line,) = r.stdout.splitlines()
    assert line.startswith("Detached: run ") and "log .claude/auto-logs/orchestrator.log" in line
    return int(line.split("pid ")[1].split(",")[0])


def merged_once(repo, tasks):
    log = git(repo, "log", "main", "--format=%s").splitlines()
    return all(log.count(t) == 1 and log.count(f"feat: Merge auto/{t}") <= 1 for t in tasks)


def test_detach_returns_at_once_and_survives_its_callers_process_group_being_killed(repo):
    plan = write_plan(repo, seconds=2)
    # the caller: a shell in a process group of its own (as a Claude Code Bash tool command is),
    # which runs the detached command and then lingers; its whole group is SIGKILLed
    caller = subprocess.Popen(["bash", "-c", f"'{PYTHON}' -m engine.cli.orchestrator run --detach --all-groups "
                               f"{plan} > detach.out 2>&1; sleep 60"], cwd=repo, env=python_env(),
                              start_new_session=True)
    wait_until(lambda: (repo / "detach.out").exists() and "Detached" in (repo / "detach.out").read_text(),
               timeout=30, what="the Detached line")
    pid = int((repo / "detach.out").read_text().split("pid ")[1].split(",")[0])
    os.killpg(caller.pid, signal.SIGKILL)
    caller.wait()
    assert os.getpgid(pid) == pid != caller.pid  # a session (and group) of its own
    r = orchestrator("wait", "--timeout", "90", cwd=repo, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("complete: "), r
    assert {t: e["status"] for t, e in progress(repo)["tasks"].items()} == {t: "merged" for t in "abc"}
    assert merged_once(repo, "abc")
    data = progress(repo)
    assert data["detached"] is True and data["orchestrator_pid"] == pid
    assert "Merged: a b c" in (repo / ".claude" / "auto-logs" / "orchestrator.log").read_text()


def test_a_refused_detached_run_answers_its_caller_and_starts_nothing(repo):
    (repo / "bad.yaml").write_text("tasks:\n  - {id: a, depends_on: [b]}\n  - {id: b, depends_on: [a]}\n")
    r = orchestrator("run", "--detach", "--agent", "true", "bad.yaml", cwd=repo)
    assert r.returncode == 1 and r.stdout == "" and r.stderr.startswith("ERROR: ") and "cycle" in r.stderr
    assert not (repo / ".claude" / "auto-progress.yaml").exists()


def test_wait_says_complete_timeout_boundary(repo):
    plan = write_plan(repo, seconds=1, tasks=[{"id": "a"}, {"id": "b", "depends_on": ["a"]}])
    detached(repo, plan)  # no --all-groups: a session boundary after group 1
    early = orchestrator("wait", "--timeout", "0.2", cwd=repo)
    assert early.returncode == 2 and early.stdout.startswith("timeout: ") and "alive" in early.stdout
    boundary = orchestrator("wait", "--timeout", "60", cwd=repo)
    assert boundary.returncode == 4 and boundary.stdout.startswith("boundary: "), boundary
    assert "orchestrator resume --detach" in boundary.stdout
    r = orchestrator("resume", "--detach", cwd=repo)
    assert r.returncode == 0 and r.stdout.startswith("Detached: run "), r
    done = orchestrator("wait", "--timeout", "60", cwd=repo)
    assert done.returncode == 0 and done.stdout.startswith("complete: "), done
    none = orchestrator("wait", cwd=repo.parent)  # no run here
    assert none.returncode == 1 and none.stdout.strip() == "NO_SESSION"


def test_wait_says_when_a_task_needs_you_while_the_others_go_on(repo):
    (repo / ".claude").mkdir()
    (repo / ".claude" / "auto-context.yaml").write_text("parallelization:\n  retry_on_failure: 0\n  min_tasks: 1\n")
    plan = write_plan(repo, seconds=0.2, tasks=[{"id": "bad", "verify": "false"},
                                                {"id": "slow", "agent": SLOW.format(s=4)}])
    detached(repo, "--all-groups", plan)
    r = orchestrator("wait", "--timeout", "60", cwd=repo)
    assert r.returncode == 3 and r.stdout.startswith("needs-you: ") and "Next: `orchestrator wait" in r.stdout, r
    assert progress(repo)["tasks"]["slow"]["status"] != "merged"  # it returned while slow still ran
    r = orchestrator("wait", "--until-stopped", "--timeout", "60", cwd=repo)
    assert r.returncode == 3 and "complete" in r.stdout and "orchestrator retry bad" in r.stdout, r
    assert progress(repo)["tasks"]["slow"]["status"] == "merged"


def test_a_sigkilled_run_is_reported_stopped_with_what_resume_will_do(repo):
    plan = write_plan(repo, seconds=30)
    pid = detached(repo, "--all-groups", plan)
    # (a detached run returns once it is recorded, maybe before DECOMPOSE wrote its tasks)
    wait_until(lambda: sum(1 for t in progress(repo).get("tasks", {}).values() if t.get("status") == "running") == 2,
               timeout=30, what="two agents running")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(")")[1].split()[0]
               in "ZX", timeout=10, what="the orchestrator gone")
    status = orchestrator("status", cwd=repo)
    assert status.returncode == 0
    assert "is stopped in EXECUTE" in status.stdout and f"its process is gone (pid {pid})" in status.stdout
    assert "`resume` collects or re-runs the 2 task(s) it left in flight and starts the 1 pending" in status.stdout
    as_json = json.loads(orchestrator("status", "--json", cwd=repo).stdout)
    assert as_json["status"] == "stopped" and as_json["run"]["process"] == {"pid": pid, "alive": False}
    assert as_json["run"]["next"] == "orchestrator resume --detach"
    r = orchestrator("wait", "--timeout", "5", cwd=repo)
    assert r.returncode == 5 and r.stdout.startswith("stopped: ")
    # the agents outlived it (their own sessions): abort still stops them, and says so
    before = (repo / ".claude" / "auto-progress.yaml").read_bytes()
    r = orchestrator("abort", cwd=repo)
    assert r.returncode == 0 and r.stdout.startswith("Aborted: 2 agent(s) stopped"), r
    # now nothing is live: a second abort changes nothing and says so
    before = (repo / ".claude" / "auto-progress.yaml").read_bytes()
    state_before = (repo / ".claude" / "auto-state-machine.yaml").read_bytes()
    r = orchestrator("abort", cwd=repo)
    assert r.returncode == 0 and r.stdout.startswith("Nothing to abort: ")
    assert (repo / ".claude" / "auto-progress.yaml").read_bytes() == before
    assert (repo / ".claude" / "auto-state-machine.yaml").read_bytes() == state_before


def test_repeating_run_of_a_completed_plan_changes_nothing(repo):
    plan = write_plan(repo, seconds=0)
    r = orchestrator("run", "--all-groups", plan, cwd=repo)
    assert r.returncode == 0, r
    files = {p: p.read_bytes() for p in (repo / ".claude").iterdir() if p.is_file() and not p.name.endswith(".lock")}
    head = git(repo, "rev-parse", "main")
    for args in (["run", "--all-groups", plan], ["run", "--detach", "--all-groups", plan], ["resume"],
                 ["resume", "--detach"], ["abort"]):
        r = orchestrator(*args, cwd=repo)
        assert r.returncode == 0 and len(r.stdout.splitlines()) == 1 and "Detached" not in r.stdout, (args, r)
        assert any(w in r.stdout for w in ("already complete", "Run already complete", "Nothing to abort")), r
    assert {p: p.read_bytes() for p in files} == files and git(repo, "rev-parse", "main") == head
    again = orchestrator("run", "--again", "--all-groups", plan, cwd=repo)
    assert again.returncode in (0, 1) and "already complete" not in again.stdout  # --again really runs


# --------------------------------------------------------------------------- the SessionStart hook
def hook(repo, tmp_path):
    """The plugin's hook as Claude Code runs it (a venv already built: the checkout's .venv)."""
    data = tmp_path / "plugin-data"
    (data / "venv").mkdir(parents=True, exist_ok=True)
    meta = json.load(open(os.path.join(ROOT, ".claude-plugin", "plugin.json")))
    (data / "venv" / ".plugin-version").write_text(meta["version"])
    py = data / "venv" / "bin" / "python"
    if not py.exists():
        py.parent.mkdir(parents=True, exist_ok=True)
        py.write_text(f"#!/bin/sh\nPYTHONPATH='{ROOT}' exec '{PYTHON}' \"$@\"\n")
        py.chmod(0o755)
    env = dict(os.environ, CLAUDE_PLUGIN_ROOT=ROOT, CLAUDE_PLUGIN_DATA=str(data), CLAUDE_PROJECT_DIR=str(repo))
    return subprocess.run(["/bin/bash", HOOK], cwd=repo, capture_output=True, text=True, env=env, timeout=60)


def test_the_hook_says_nothing_without_a_run_and_one_line_for_a_live_or_stopped_one(repo, tmp_path):
    r = hook(repo, tmp_path)
    assert (r.returncode, r.stdout) == (0, "")
    plan = write_plan(repo, seconds=30)
    pid = detached(repo, "--all-groups", plan)
    live = hook(repo, tmp_path)
    (line,) = live.stdout.splitlines()
    assert line.startswith("parallel-orchestrator: run ") and "is running" in line
    assert f"its process is alive (pid {pid})" in line and line.endswith("Next: `orchestrator wait --timeout 540`")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(")")[1].split()[0]
               in "ZX", timeout=10, what="the orchestrator gone")
    stopped = hook(repo, tmp_path)
    (line,) = stopped.stdout.splitlines()
    assert "is stopped" in line and "its process is gone" in line and line.endswith(
        "Next: `orchestrator resume --detach`")
    orchestrator("abort", cwd=repo)


def test_the_hook_names_a_blocked_task_and_says_nothing_once_complete(repo, tmp_path):
    (repo / ".claude").mkdir()
    (repo / ".claude" / "auto-context.yaml").write_text("parallelization:\n  retry_on_failure: 0\n  min_tasks: 1\n")
    plan = write_plan(repo, seconds=0.2, tasks=[{"id": "bad", "verify": "false"},
                                                {"id": "slow", "agent": SLOW.format(s=6)}])
    detached(repo, "--all-groups", plan)
    wait_until(lambda: progress(repo).get("tasks", {}).get("bad", {}).get("status") == "failed", timeout=30,
               what="bad failed")
    lines = hook(repo, tmp_path).stdout.splitlines()
    assert len(lines) == 2 and "is running" in lines[0]
    assert lines[1].startswith("parallel-orchestrator: bad needs you (QA rejected") and \
        lines[1].endswith("`orchestrator retry bad` once that is dealt with")
    orchestrator("wait", "--until-stopped", "--timeout", "60", cwd=repo)
    lines = hook(repo, tmp_path).stdout.splitlines()
    assert len(lines) == 1 and "is complete" in lines[0] and "Next: `orchestrator retry bad`" in lines[0]
    git(repo, "checkout", "-q", "main")


def test_abort_never_signals_a_recorded_pid_it_cannot_prove_is_its_own(repo):
    """A task's record with a pid but no start time (a hand edit, an older file), the pid now
    an unrelated live process: abort leaves it alone."""
    from engine.paths import Layout
    from engine.progress import Progress

    plan = write_plan(repo, seconds=0)
    assert orchestrator("run", plan, cwd=repo).returncode == 0
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        Progress(Layout(str(repo))).update(lambda d: (d.update(status="running", orchestrator_pid=None),
                                                      d["tasks"]["c"].update(status="running", pid=bystander.pid)))
        r = orchestrator("abort", cwd=repo)
        assert r.returncode == 0, r
        time.sleep(0.3)
        assert bystander.poll() is None  # still alive
        assert "0 agent(s) stopped" in r.stdout or r.stdout.startswith("Nothing to abort")
    finally:
        bystander.kill()
        bystander.wait()


def test_retry_on_a_completed_run_takes_the_run_out_of_complete_and_resume_runs_it(repo):
    (repo / ".claude").mkdir()
    (repo / ".claude" / "auto-context.yaml").write_text("parallelization:\n  retry_on_failure: 0\n  min_tasks: 1\n")
    plan = write_plan(repo, seconds=0, tasks=[{"id": "a"}, {"id": "bad", "verify": "test -f fixed"}])
    assert orchestrator("run", "--all-groups", plan, cwd=repo).returncode == 1
    assert orchestrator("state", "state", cwd=repo).stdout.strip() == "COMPLETE"
    assert orchestrator("retry", "bad", cwd=repo).returncode == 0
    assert orchestrator("state", "state", cwd=repo).stdout.strip() != "COMPLETE"
    assert json.loads(orchestrator("status", "--json", cwd=repo).stdout)["status"] == "stopped"
    (repo / "fixed").write_text("x\n")
    git(repo, "add", "fixed")
    git(repo, "commit", "-qm", "fix")
    r = orchestrator("resume", "--all-groups", cwd=repo)
    assert r.returncode == 0, r
    assert progress(repo)["tasks"]["bad"]["status"] == "merged"
    assert orchestrator("state", "state", cwd=repo).stdout.strip() == "COMPLETE"


def test_adopting_a_plan_that_drops_a_dependency_drops_it_from_the_record(repo):
    plan = write_plan(repo, seconds=0, tasks=[{"id": "a"}, {"id": "b", "depends_on": ["a"]}])
    assert orchestrator("run", plan, cwd=repo).returncode == 0  # group 1 (a), then a boundary
    assert progress(repo)["tasks"]["b"]["depends_on"] == ["a"]
    (repo / "plan.yaml").write_text(yaml.safe_dump({"agent": SLOW.format(s=0), "tasks": [{"id": "a"}, {"id": "b"}]}))
    assert orchestrator("resume", "--adopt-plan", "--all-groups", cwd=repo).returncode == 0
    assert "depends_on" not in progress(repo)["tasks"]["b"]


def test_retry_reopens_the_tasks_that_failed_only_because_they_waited_on_it(repo):
    """`retry bad` after `bad` failed: its dependents, failed "dependency bad is failed; not
    started" (transitively), are reopened with it, so `resume` finishes the run. (Before, they
    stayed failed and the resumed run ended 1 with `Next: orchestrator retry child`.)"""
    (repo / ".claude").mkdir()
    (repo / ".claude" / "auto-context.yaml").write_text("parallelization:\n  retry_on_failure: 0\n  min_tasks: 1\n")
    plan = write_plan(repo, seconds=0, tasks=[
        {"id": "a"}, {"id": "bad", "verify": "test -f fixed"}, {"id": "child", "depends_on": ["bad"]},
        {"id": "grandchild", "depends_on": ["child"]}, {"id": "other", "verify": "false"},
        {"id": "others_child", "depends_on": ["other"]}])
    assert orchestrator("run", "--all-groups", plan, cwd=repo).returncode == 1
    assert progress(repo)["tasks"]["grandchild"]["failure"] == "dependency child is failed; not started"
    r = orchestrator("retry", "bad", cwd=repo)
    assert (r.returncode, r.stdout) == (0, "bad: pending, and so are child, grandchild (they waited on it) "
                                           "(run `orchestrator resume` to carry them on)\n")
    (repo / "fixed").write_text("x\n")
    git(repo, "add", "fixed")
    git(repo, "commit", "-qm", "fix")
    assert orchestrator("resume", "--all-groups", cwd=repo).returncode == 1  # `other` still fails
    statuses = {t: v["status"] for t, v in progress(repo)["tasks"].items()}
    assert statuses == {"a": "merged", "bad": "merged", "child": "merged", "grandchild": "merged",
                        "other": "failed", "others_child": "failed"}  # the other chain untouched
