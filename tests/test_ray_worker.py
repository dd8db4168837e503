"""The Ray job's entrypoint (engine.ray_worker) run directly, as a Ray node runs it, against a
bare repository as the remote: no Ray needed. Fetch the start commit into the node's cache,
run the agent in a fresh worktree, push the result to the attempt's ref, exit with its status;
a TERM stops the agent and pushes nothing; what the agent detached is stopped."""

import json
import os
import signal
import subprocess
import time

import pytest

from tests.conftest import PYTHON, git, python_env


@pytest.fixture
def remote(repo, tmp_path):
    path = str(tmp_path / "remote.git")
    git(tmp_path, "init", "-q", "--bare", path)
    git(repo, "push", "-q", path, "main:refs/orchestrator/r1/t1/base-1")
    return path


def worker(repo, remote, tmp_path, command, timeout=30, push="refs/orchestrator/r1/t1/attempt-1", env=None,
           start=None, background=False):
    args = [PYTHON, "-m", "engine.ray_worker", "--remote", remote, "--start-ref", "refs/orchestrator/r1/t1/base-1",
            "--start-commit", start or git(repo, "rev-parse", "main"), "--push-ref", push, "--branch", "auto/t1",
            "--task", "t1", "--timeout", str(timeout), "--command", command, "--task-vars", "TASK_ID,TASK_ATTEMPT"]
    full_env = dict(python_env(), NODE_WORKDIR=str(tmp_path / "node"), TASK_ID="t1", TASK_ATTEMPT="1", **(env or {}))
    if background:
        return subprocess.Popen(args, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(args, env=full_env, capture_output=True, text=True, timeout=120)


def summary(out):
    line = [l for l in out.splitlines() if l.startswith("ORCHESTRATOR_ATTEMPT_END ")][-1]
    return json.loads(line.split(" ", 1)[1])


def remote_ref(remote, ref):
    proc = subprocess.run(["git", "-C", remote, "rev-parse", "--verify", "-q", ref], capture_output=True, text=True)
    return proc.stdout.strip() or None


def test_the_agent_runs_in_a_fresh_worktree_and_its_result_is_pushed_to_the_attempt_ref(repo, remote, tmp_path):
    proc = worker(repo, remote, tmp_path, "python3 -m engine.demo_agent && echo x > left.txt",
                  env={"DEMO_UNCOMMITTED": "t1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "agent t1: attempt 1" in proc.stdout  # the agent's output reaches the job log
    head = remote_ref(remote, "refs/orchestrator/r1/t1/attempt-1")
    assert head == summary(proc.stdout)["head"]
    assert git(remote, "log", "-1", "--format=%s", head) == "t1: uncommitted work left by the agent"
    assert git(remote, "show", f"{head}:left.txt") == "x"
    attempts = tmp_path / "node" / "attempts"
    assert os.listdir(attempts) == []  # worktree, log and owner file removed
    assert "attempts" not in git(next((tmp_path / "node" / "repos").glob("*.git")), "worktree", "list")


def test_a_failing_agent_exits_with_its_status_and_a_timeout_with_124(repo, remote, tmp_path):
    proc = worker(repo, remote, tmp_path, "echo bad > bad.txt; exit 3")
    assert proc.returncode == 3 and summary(proc.stdout) | {"duration": 0} == {
        "exit": 3, "timed_out": False, "head": git(repo, "rev-parse", "main"), "duration": 0}
    started = time.time()
    proc = worker(repo, remote, tmp_path, "sleep 60", timeout=1, push="refs/orchestrator/r1/t1/attempt-2")
    assert proc.returncode == 124 and summary(proc.stdout)["timed_out"]
    assert time.time() - started < 30


def test_term_stops_the_agent_and_pushes_nothing(repo, remote, tmp_path):
    pidfile = tmp_path / "agent.pid"
    proc = worker(repo, remote, tmp_path, f"echo $$ > {pidfile}; exec sleep 120", background=True)
    deadline = time.time() + 30
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.time() < deadline
        time.sleep(0.05)
    agent = int(pidfile.read_text())
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM and "nothing pushed" in out
    assert not os.path.exists(f"/proc/{agent}")
    assert remote_ref(remote, "refs/orchestrator/r1/t1/attempt-1") is None


def test_what_the_agent_detached_is_stopped_when_it_ends(repo, remote, tmp_path):
    pidfile = tmp_path / "daemon.pid"
    proc = worker(repo, remote, tmp_path, f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 120' & sleep 0.5")
    assert proc.returncode == 0, proc.stdout
    daemon = int(pidfile.read_text())
    assert not os.path.exists(f"/proc/{daemon}") or open(f"/proc/{daemon}/stat").read().split()[2] == "Z"


def test_a_dead_attempts_directory_is_swept_and_its_orphaned_agent_stopped(repo, remote, tmp_path):
    attempts = tmp_path / "node" / "attempts"
    attempts.mkdir(parents=True)
    orphan = subprocess.Popen(["sleep", "120"], start_new_session=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = attempts / "t1.999.abcdef"
    stale.mkdir()
    from engine.procs import process_start_time

    # as the worker writes it: the agent's pid with its start time (a pid without one is never signalled)
    (attempts / "t1.999.abcdef.owner").write_text(json.dumps({"pid": dead.pid, "agent_pid": orphan.pid,
                                                              "agent_start": process_start_time(orphan.pid)}))
    proc = worker(repo, remote, tmp_path, "true")
    assert proc.returncode == 0, proc.stdout
    assert orphan.wait(timeout=10) is not None
    assert os.listdir(attempts) == []


def test_a_start_ref_that_does_not_hold_the_expected_commit_is_refused(repo, remote, tmp_path):
    proc = worker(repo, remote, tmp_path, "touch ran", start="0" * 40)
    assert proc.returncode == 2 and "expected 0000000000" in proc.stdout
    assert remote_ref(remote, "refs/orchestrator/r1/t1/attempt-1") is None
