"""`orchestrator run` with `executor: ray` end to end on a real two-node cluster: the same
`main` tree as the local executor; a SIGKILLed orchestrator resumed re-attaches (every attempt
ran once); abort stops the jobs; a node lost mid-attempt fails that attempt, which is retried
on the other node; resources no node offers are one clear error before anything runs."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

pytest.importorskip("ray.job_submission", reason="Ray is not installed: `pip install '.[ray]'` (or `make test-ray`)")

from tests.conftest import ROOT, git, wait_until  # noqa: E402

AGENT = "python3 -m engine.demo_agent"

# engine/scheduler.py run_scope initializes the pool only for backends with a local checkout, so
# QA after a Ray attempt fails with "Pool not initialized" (REQUESTS.md "ray, 11:37"). Strict: once
# that is fixed these pass, and the XPASS fails the suite until this marker is removed.
def project(tmp_path, name, tasks, agent, executor, address=None, remote=None, resources=None, max_agents=3):
    """A repository with a plan of TASKS ({id: [deps]}) run by AGENT."""
    from engine import demo

    repo = demo.make_repo(str(tmp_path / name))
    with open(os.path.join(repo, ".claude", "auto-context.yaml"), "w") as fh:
        fh.write(f"parallelization:\n  min_tasks: 2\n  max_agents: {max_agents}\n  retry_on_failure: 2\n")
    plan = {"base": "main", "agent": agent, "executor": executor,
            "tasks": [{"id": t, "description": f"task {t}", "depends_on": deps} for t, deps in tasks.items()]}
    if executor == "ray":
        plan["ray"] = {"address": address, "remote": remote, "resources": resources or {"agent": 1}}
    path = str(tmp_path / name / "plan.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(plan, fh)
    return repo, path


def orchestrator(repo, *args, background=False):
    env = dict(os.environ, PYTHONPATH=ROOT, DEMO_AGENT_SLEEP="0.2")
    cmd = [sys.executable, "-m", "engine.cli.orchestrator", *args]
    if background:
        return subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)


def progress(repo):
    try:
        with open(os.path.join(repo, ".claude", "auto-progress.yaml")) as fh:
            return yaml.safe_load(fh) or {}
    except FileNotFoundError:
        return {}


def tasks(repo):
    return progress(repo).get("tasks") or {}


def tree(repo):
    return git(repo, "rev-parse", "main^{tree}")


def lines(path):
    return open(path).read().split() if os.path.exists(path) else []


PLAN = {"models": [], "utils": [], "config": [], "api": ["models", "utils"]}


def test_a_plan_on_the_cluster_gives_the_same_main_as_the_local_executor(cluster, remote, tmp_path):
    local, local_plan = project(tmp_path, "local", PLAN, AGENT, "local")
    r = orchestrator(local, "run", "--all-groups", local_plan)
    assert r.returncode == 0, r.stdout + r.stderr
    repo, plan = project(tmp_path, "ray", PLAN, AGENT, "ray", cluster.address, remote)
    r = orchestrator(repo, "run", "--all-groups", plan)
    assert r.returncode == 0, r.stdout + r.stderr
    assert tree(repo) == tree(local)
    data = progress(repo)
    assert data["executor"] == "ray" and {t: v["status"] for t, v in data["tasks"].items()} == {
        t: "merged" for t in PLAN}
    assert all(v["node"] and v["submission_id"].endswith("-attempt-1") for v in data["tasks"].values())
    status = orchestrator(repo, "status")
    assert "node" in status.stdout.lower()
    assert git(repo, "ls-remote", remote) == ""  # every attempt ref fetched and removed


def test_sigkill_then_resume_reattaches_and_each_attempt_runs_once(cluster, remote, tmp_path):
    count = tmp_path / "count"
    agent = f'echo "$TASK_ID-$TASK_ATTEMPT" >> {count}; sleep 6; {AGENT}'
    three = {"models": [], "utils": [], "config": []}
    repo, plan = project(tmp_path, "ray", three, agent, "ray", cluster.address, remote)
    proc = orchestrator(repo, "run", "--all-groups", plan, background=True)
    wait_until(lambda: len(lines(count)) == 3, what="three agents running on the cluster")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert {v.get("status") for v in tasks(repo).values()} == {"running"}
    r = orchestrator(repo, "resume", "--all-groups")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(lines(count)) == ["config-1", "models-1", "utils-1"]  # re-attached, none ran twice
    assert {v["status"] for v in tasks(repo).values()} == {"merged"}
    local, local_plan = project(tmp_path, "local", three, AGENT, "local")
    assert orchestrator(local, "run", "--all-groups", local_plan).returncode == 0
    assert tree(repo) == tree(local)


def test_abort_stops_the_running_jobs(cluster, remote, tmp_path):
    from ray.job_submission import JobSubmissionClient

    pids = tmp_path / "pids"
    pids.mkdir()
    repo, plan = project(tmp_path, "ray", {"a": [], "b": []}, f"echo $$ > {pids}/$TASK_ID; exec sleep 300", "ray",
                         cluster.address, remote)
    proc = orchestrator(repo, "run", "--all-groups", plan, background=True)
    wait_until(lambda: len(os.listdir(pids)) == 2, what="both agents running")
    sids = [v["submission_id"] for v in tasks(repo).values()]
    r = orchestrator(repo, "abort")
    assert r.returncode == 0, r.stdout + r.stderr
    proc.wait(timeout=60)
    client = JobSubmissionClient(cluster.address)
    wait_until(lambda: all(str(client.get_job_status(s)) == "STOPPED" for s in sids), timeout=30,
               what="the jobs to be stopped")
    for name in os.listdir(pids):
        pid = int((pids / name).read_text())
        wait_until(lambda: not os.path.exists(f"/proc/{pid}"), timeout=15, what=f"agent {name} to be gone")


def test_a_node_lost_mid_attempt_fails_the_attempt_and_it_is_retried_on_another(cluster, remote, tmp_path):
    second = next(n.node_id for n in cluster.nodes() if not n.is_head_node)
    agent = f"sleep 6; {AGENT}"
    three = {"models": [], "utils": [], "config": []}
    repo, plan = project(tmp_path, "ray", three, agent, "ray", cluster.address, remote)
    proc = orchestrator(repo, "run", "--all-groups", plan, background=True)
    try:
        # three attempts, three agent slots (head 2, second node 1): one runs on the second node
        wait_until(lambda: len([v for v in tasks(repo).values() if v.get("node")]) == 3, what="three placed attempts")
        lost = next(t for t, v in tasks(repo).items() if v["node"].endswith(second[:6]))
        cluster.kill_node()
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
        cluster.start_node()
    entry = tasks(repo)[lost]
    assert entry["status"] == "merged" and entry["retry_count"] == 1
    first, retry = [a for a in entry["attempts"] if a["kind"] == "agent"]
    assert first["outcome"] == "failed" and "ray job failed" in first["reason"]
    assert retry["outcome"] == "executed" and not retry["node"].endswith(second[:6])
    assert {v["status"] for v in tasks(repo).values()} == {"merged"}


def test_resources_no_node_offers_are_one_clear_error_before_anything_runs(cluster, remote, tmp_path):
    repo, plan = project(tmp_path, "ray", {"a": []}, AGENT, "ray", cluster.address, remote,
                         resources={"agent": 1, "gpu_box": 1})
    started = time.time()
    r = orchestrator(repo, "run", plan)
    assert r.returncode != 0 and time.time() - started < 60
    assert r.stderr.count("\n") == 1 and "no node of the Ray cluster offers" in r.stderr and "gpu_box=1" in r.stderr
    assert "Traceback" not in r.stderr
    assert not any(v.get("submission_id") for v in tasks(repo).values())


SIX = {"models": [], "utils": [], "config": [], "api": ["models", "utils"], "cli": ["api"], "docs": ["config"]}
RAY_KILLS = 10


def test_kills_inside_git_on_the_ray_path_never_wedge_a_run(cluster, remote, tmp_path):
    """The orchestrator's process group SIGKILLed while one of its git children runs (a push of
    a start commit, a fetch of a result into auto/TASK, a merge...), resumed after each: no
    resume fails, every task merged once, no lock left in the repository or the remote. (Before
    engine.git_locks, one of six such runs ended with every resume failing "cannot bring the
    attempt's result into auto/t2 from the remote ...: remove the file manually to continue".)"""
    import random

    from engine import git_locks
    from tests.killing import run_with_kills_inside_git

    local, local_plan = project(tmp_path, "local", SIX, AGENT, "local")
    assert orchestrator(local, "run", "--all-groups", local_plan).returncode == 0
    rng = random.Random(6)
    env = dict(os.environ, PYTHONPATH=ROOT, DEMO_AGENT_SLEEP="0.2")
    landed, runs = [], 0
    while len(landed) < RAY_KILLS:
        runs += 1
        repo, plan = project(tmp_path, f"ray{runs}", SIX, AGENT, "ray", cluster.address, remote)
        landed += run_with_kills_inside_git([sys.executable, "-m", "engine.cli.orchestrator"], repo, plan, env, rng,
                                            RAY_KILLS - len(landed), lambda r: progress(r).get("status") == "complete",
                                            kill_timeout=120)
        assert {t: v["status"] for t, v in tasks(repo).items()} == dict.fromkeys(SIX, "merged")
        subjects = git(repo, "log", "--format=%s", "--merges", "main").splitlines()
        assert sorted(subjects) == sorted(f"feat: Merge auto/{t}" for t in SIX)
        assert tree(repo) == tree(local)
        assert git_locks.lock_files(os.path.join(repo, ".git"), remote) == []
    kinds = sorted({w.split()[0] for w in landed})
    print(f"\n{len(landed)} kills inside git on the Ray path over {runs} run(s), in: {kinds}")
    assert "fetch" in kinds or "push" in kinds, landed  # the remote exchange was hit


def test_a_stale_lock_in_a_local_remote_is_removed_with_one_warning(cluster, remote, tmp_path):
    """The remote is a path here: a push or fetch killed with the orchestrator leaves its lock
    there (receive-pack is a child of the killed push). A dead packed-refs.lock in it made every
    deletion of an attempt's refs fail quietly: the remote kept every attempt's refs for good."""
    lock = os.path.join(remote, "packed-refs.lock")
    with open(lock, "w"):
        pass
    os.utime(lock, (time.time() - 10, time.time() - 10))
    repo, plan = project(tmp_path, "ray", {"models": []}, AGENT, "ray", cluster.address, remote)
    r = orchestrator(repo, "run", "--all-groups", plan)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [line for line in r.stderr.splitlines() if "stale git lock" in line] == [
        f"[WARN] removed stale git lock {os.path.relpath(lock, repo)} (no process has it open)"]
    assert not os.path.exists(lock)
    assert git(repo, "ls-remote", remote) == ""  # the attempt's refs went once fetched
