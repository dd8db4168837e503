"""The Ray backend against a real two-node cluster: an attempt runs as a Ray job and its
commits land in `auto/TASK`; the submission is recorded first; a SIGKILLed submitter is
re-attached and the attempt runs once; stop, timeout, a lost node and an impossible resource
all end the attempt (never a hang)."""

import os
import signal
import subprocess
import textwrap
import threading
import time

import pytest

pytest.importorskip("ray.job_submission", reason="Ray is not installed: `pip install '.[ray]'` (or `make test-ray`)")

from ray_cluster import make_attempt  # noqa: E402
from tests.conftest import PYTHON, git, python_env, wait_until  # noqa: E402

from engine.ray_executor import RayBackend, RayConfig, RayExecutorError, submission_id  # noqa: E402


def backend(cluster, repo, remote, **over):
    config = RayConfig(address=cluster.address, remote=remote, resources=over.pop("resources", {"agent": 1}),
                       **over)
    return RayBackend(config, str(repo))


def lines(path):
    try:
        with open(path) as fh:
            return fh.read().splitlines()
    except FileNotFoundError:
        return []


def test_attempt_runs_as_a_job_and_its_commits_land_in_the_task_branch(cluster, repo, remote):
    b = backend(cluster, repo, remote)
    attempt = make_attempt(repo, "t1")
    seen = {}

    def record(**fields):  # the id must be in the progress file before the cluster knows the job
        if "submission_id" in fields:
            with pytest.raises(RuntimeError, match="404|does not exist"):
                b.client.get_job_info(fields["submission_id"])
            seen["recorded"] = True
        attempt.progress.set_task("t1", **fields)

    attempt.record = record
    result = b.run_attempt(attempt)
    assert (result.exit_code, result.timed_out) == (0, False)
    assert seen["recorded"]
    assert git(repo, "show", "auto/t1:app/t1.py").endswith('return "t1 ok"')
    assert git(repo, "rev-parse", "auto/t1^") == attempt.base_commit
    entry = attempt.progress.task("t1")
    assert entry["submission_id"] == submission_id("run-t", "t1", 1) == "run-t-t1-attempt-1"
    assert entry["node"]
    log = open(attempt.log_path).read()
    assert "agent t1: attempt 1" in log and "submitting Ray job run-t-t1-attempt-1" in log
    # the per-attempt refs are gone from the remote once fetched
    assert git(repo, "ls-remote", remote) == ""
    assert git(repo, "for-each-ref", "refs/orchestrator/") == ""


def test_a_retry_continues_the_task_branch_and_uncommitted_work_is_committed(cluster, repo, remote):
    b = backend(cluster, repo, remote)
    assert b.run_attempt(make_attempt(repo, "t2", env={"DEMO_UNCOMMITTED": "t2"})).exit_code == 0
    first = git(repo, "rev-parse", "auto/t2")
    assert git(repo, "log", "-1", "--format=%s", "auto/t2") == "t2: uncommitted work left by the agent"
    second = make_attempt(repo, "t2", n=2, env={"QA_FEEDBACK": "fix it"},
                          command="echo again >> notes.txt && git add notes.txt && git commit -qm again")
    assert b.run_attempt(second).exit_code == 0
    assert git(repo, "rev-parse", "auto/t2^") == first


def test_a_failing_agent_returns_its_status_and_a_timeout_is_enforced_on_the_node(cluster, repo, remote):
    b = backend(cluster, repo, remote)
    failed = b.run_attempt(make_attempt(repo, "t3", command="echo broken; exit 3"))
    assert (failed.exit_code, failed.timed_out) == (3, False)
    started = time.time()
    slow = b.run_attempt(make_attempt(repo, "t4", command="sleep 60", timeout=2))
    assert slow.timed_out and slow.exit_code == 124
    assert time.time() - started < 40
    assert "agent timed out after 2s" in open(make_attempt(repo, "t4").log_path).read()


SUBMITTER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from ray_cluster import make_attempt
    from engine.ray_executor import RayBackend, RayConfig
    attempt = make_attempt(sys.argv[2], "t5", command=sys.argv[5], env={"COUNT_FILE": sys.argv[6]})
    backend = RayBackend(RayConfig(address=sys.argv[3], remote=sys.argv[4], resources={"agent": 1}), sys.argv[2])
    print(backend.run_attempt(attempt))
""")


def test_sigkilled_submitter_then_reattach_runs_the_attempt_once(cluster, repo, remote, tmp_path):
    count = tmp_path / "count"
    agent = 'echo run >> "$COUNT_FILE"; sleep 4; python3 -m engine.demo_agent'
    proc = subprocess.Popen([PYTHON, "-c", SUBMITTER, os.path.dirname(__file__), str(repo), cluster.address, remote,
                             agent, str(count)], env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_until(lambda: lines(count), timeout=60, what="the agent to start")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    attempt = make_attempt(repo, "t5", command=agent, env={"COUNT_FILE": str(count)})
    assert attempt.entry["submission_id"] == "run-t-t5-attempt-1"
    b = backend(cluster, repo, remote)
    result = b.recover(attempt)
    assert result is not None and result.exit_code == 0
    assert git(repo, "show", "auto/t5:app/t5.py").endswith('return "t5 ok"')
    # submitting the same attempt again follows the existing job instead of running it twice
    again = b.run_attempt(attempt)
    assert again.exit_code == 0
    assert lines(count) == ["run"]
    log = open(attempt.log_path).read()
    assert "re-attached to Ray job run-t-t5-attempt-1" in log and "already exists" in log


def test_a_recorded_id_the_cluster_does_not_know_is_not_reattached(cluster, repo, remote):
    attempt = make_attempt(repo, "t6")
    attempt.entry = {"submission_id": submission_id("run-t", "t6", 1)}
    assert backend(cluster, repo, remote).recover(attempt) is None
    attempt.entry = {}
    assert backend(cluster, repo, remote).recover(attempt) is None


@pytest.mark.parametrize("how", ["stop", "cancel"])
def test_stop_or_cancel_ends_the_job_and_its_agent(cluster, repo, remote, tmp_path, how):
    pidfile = tmp_path / "agent.pid"
    b = backend(cluster, repo, remote)
    attempt = make_attempt(repo, "t7", command=f"echo $$ > {pidfile}; exec sleep 120", run_id=f"run-{how}")
    out = {}
    thread = threading.Thread(target=lambda: out.update(result=b.run_attempt(attempt)))
    thread.start()
    wait_until(lambda: lines(pidfile), what="the agent to start")
    pid = int(lines(pidfile)[0])
    started = time.time()
    if how == "stop":  # orchestrator abort / Ctrl-C: the scheduler stops the backend's attempts
        assert b.stop() == ["run-stop-t7-attempt-1"]
    else:  # the attempt's cancel event (the scheduler's)
        attempt.cancel.set()
    thread.join(60)
    assert not thread.is_alive()
    assert out["result"].interrupted and out["result"].exit_code != 0
    assert time.time() - started < 30
    wait_until(lambda: not os.path.exists(f"/proc/{pid}"), timeout=10, what="the agent to be gone")
    assert git(repo, "rev-parse", "auto/t7") == attempt.base_commit  # nothing pushed


def test_a_resource_no_node_offers_is_a_clear_error_before_submitting(cluster, repo, remote):
    b = backend(cluster, repo, remote, resources={"gpu_box": 1})
    attempt = make_attempt(repo, "t8")
    with pytest.raises(RayExecutorError, match=r"no node of the Ray cluster offers .*gpu_box=1"):
        b.run_attempt(attempt)
    assert "submission_id" not in attempt.progress.task("t8")


def test_a_node_lost_mid_attempt_fails_the_attempt(cluster, repo, remote, tmp_path):
    pidfile = tmp_path / "agent.pid"
    b = backend(cluster, repo, remote, resources={"agent": 1, "second_node": 1})
    attempt = make_attempt(repo, "t9", command=f"echo $$ > {pidfile}; exec sleep 300")
    out = {}
    thread = threading.Thread(target=lambda: out.update(result=b.run_attempt(attempt)))
    thread.start()
    try:
        wait_until(lambda: lines(pidfile), what="the agent to start on the second node")
        started = time.time()
        cluster.kill_node()
        thread.join(120)
        assert not thread.is_alive(), "the attempt hangs after its node was lost"
        result = out["result"]
        assert result.exit_code != 0 and not result.interrupted
        assert "ray job failed" in result.reason
        assert time.time() - started < 90
        assert attempt.progress.task("t9")["node"]
        # the only node offering `second_node` is gone: the next attempt stays pending, and the
        # backend's periodic check turns that into a clear error instead of a hang
        pending = make_attempt(repo, "t10")
        with pytest.raises(RayExecutorError, match=r"task t10: no node of the Ray cluster offers .*second_node=1"):
            b.run_attempt(pending)
        assert pending.progress.task("t10")["submission_id"] == "run-t-t10-attempt-1"
    finally:
        pid = int(lines(pidfile)[0]) if lines(pidfile) else None
        if pid and os.path.exists(f"/proc/{pid}"):  # the lost machine's agent (pitfall 7) dies with it here
            os.kill(pid, signal.SIGKILL)
        cluster.start_node()
