"""The Ray executor against the local one, in the same run, on a real two-node cluster started
here (tests/ray/ray_cluster.py; needs `pip install '.[ray]'`):

0. The pipeline: `orchestrator run` of 16 tasks whose agent sleeps 1 s and commits a file,
   max_agents 8, with `executor: ray` vs the local executor. Ratio = Ray time / local time.
1. The same 16 attempts on the backends alone, 8 at a time: the Ray backend (push the start,
   submit, stream the log, fetch the result into auto/TASK) vs the local `run_agent` in a
   worktree of the same repository.
2. Per-attempt overhead of one attempt whose agent is `true`: Ray submit -> result vs local,
   split into the submission call, submit -> running, and the whole attempt.
3. Re-attach: `recover()` of an attempt whose job already finished (what a resumed
   orchestrator pays per task), and of one still running (until its result is in).

    .venv/bin/python bench/bench_ray.py [--tasks 16] [--parallel 8]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "ray"))


class Attempt:
    def __init__(self, repo, task, command, n=1, run_id="bench", sleep="1"):
        from engine import git

        self.task_id, self.n, self.command, self.run_id = task, n, command, run_id
        self.env = {"TASK_ID": task, "TASK_ATTEMPT": str(n), "DEMO_AGENT_SLEEP": sleep}
        self.log_path = os.path.join(repo, ".claude", "auto-logs", f"{task}.log")
        self.timeout, self.branch, self.base = 300, f"auto/{task}", "main"
        self.base_commit = git.resolve_commit(repo, "main")
        self.entry, self.recorded = {}, {}

    def record(self, **fields):
        self.recorded.update(fields)
        self.entry.update(fields)


def git_(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def make_repo(base, name):
    repo = os.path.join(base, name)
    os.makedirs(repo)
    git_(repo, "init", "-q", "-b", "main")
    with open(os.path.join(repo, "README.md"), "w") as fh:
        fh.write("bench\n")
    git_(repo, "add", "README.md")
    git_(repo, "-c", "user.name=b", "-c", "user.email=b@localhost", "commit", "-qm", "init")
    remote = os.path.join(base, name + "-remote.git")
    git_(base, "init", "-q", "--bare", remote)
    return repo, remote


AGENT = f"{sys.executable} -m engine.demo_agent"


def local_attempt(repo, task, command=AGENT, sleep="1"):
    """What the local executor does per attempt: a worktree on auto/TASK, run_agent, commit."""
    from engine import git, worktree
    from engine.executor import AgentSpec, run_agent

    path = os.path.join(repo + "-wt", task)
    git.run(repo, "worktree", "add", "-q", "-b", f"auto/{task}", path, "main")
    env = {"TASK_ID": task, "TASK_ATTEMPT": "1", "DEMO_AGENT_SLEEP": sleep, "PYTHONPATH": ROOT}
    spec = AgentSpec(task, command, path, env, os.path.join(repo, ".claude", "auto-logs", f"{task}.log"), 300)
    result = run_agent(spec)
    worktree.commit_leftovers(path, f"{task}: leftovers")
    return result


def pipeline(base, name, tasks, parallel, executor, address=None):
    """Seconds for `orchestrator run --all-groups` of TASKS one-second demo tasks."""
    import yaml

    repo, remote = make_repo(base, name)
    os.makedirs(os.path.join(repo, ".claude"), exist_ok=True)
    with open(os.path.join(repo, ".claude", "auto-context.yaml"), "w") as fh:
        fh.write(f"parallelization:\n  max_agents: {parallel}\n  min_tasks: 2\n")
    plan = {"base": "main", "agent": "DEMO_AGENT_SLEEP=1 python3 -m engine.demo_agent", "executor": executor,
            "tasks": [{"id": f"t{i}", "description": f"task {i}"} for i in range(tasks)]}
    if executor == "ray":
        plan["ray"] = {"address": address, "remote": remote, "resources": {"agent": 1}, "num_cpus": 0}
    path = os.path.join(base, name + "-plan.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(plan, fh)
    env = dict(os.environ, PYTHONPATH=ROOT)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "engine.cli.orchestrator", "run", "--all-groups", "--quiet", path],
                   cwd=repo, env=env, check=True)
    return time.perf_counter() - start


def many(fn, tasks, parallel):
    start = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        results = list(pool.map(fn, tasks))
    assert all(r.exit_code == 0 for r in results), results
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5, help="samples for the per-attempt overheads")
    args = parser.parse_args()
    from ray_cluster import LocalCluster

    from engine.ray_executor import RayBackend, RayConfig

    base = tempfile.mkdtemp(prefix="bench-ray-")
    t0 = time.perf_counter()
    # agents on both nodes, no CPU reservation per attempt: `parallel` attempts at once fit
    cluster = LocalCluster(head_agents=args.parallel - args.parallel // 3, node_agents=args.parallel // 3).start()
    print(f"cluster (head + second node) up in {time.perf_counter() - t0:.1f} s")
    try:
        print(f"\npipeline: orchestrator run, {args.tasks} tasks x 1 s agent, max_agents {args.parallel}")
        local = pipeline(base, "p-local", args.tasks, args.parallel, "local")
        ray = pipeline(base, "p-ray", args.tasks, args.parallel, "ray", cluster.address)
        print(f"  local executor   {local:7.2f} s")
        print(f"  Ray executor     {ray:7.2f} s   Ray / local = {ray / local:.2f}x")
        repo, remote = make_repo(base, "ray")
        backend = RayBackend(RayConfig(address=cluster.address, remote=remote, resources={"agent": 1}, num_cpus=0),
                             repo)
        backend.check()
        lrepo, _ = make_repo(base, "local")
        tasks = [f"t{i}" for i in range(args.tasks)]
        print(f"\nbackends alone: {args.tasks} attempts x 1 s agent, {args.parallel} at a time")
        local = many(lambda t: local_attempt(lrepo, t), tasks, args.parallel)
        ray = many(lambda t: backend.run_attempt(Attempt(repo, t, "python3 -m engine.demo_agent")), tasks,
                   args.parallel)
        ideal = -(-args.tasks // args.parallel) * 1.0
        print(f"  local executor   {local:7.2f} s   ({local / ideal:.2f}x the {ideal:.0f} s of agent time per slot)")
        print(f"  Ray executor     {ray:7.2f} s   ({ray / ideal:.2f}x)   Ray / local = {ray / local:.2f}x")

        print(f"\nper-attempt overhead, agent `true`, median of {args.repeat}")
        local_times, ray_times, submit_times, running_times = [], [], [], []
        for i in range(args.repeat):
            start = time.perf_counter()
            local_attempt(lrepo, f"o{i}", command="true")
            local_times.append(time.perf_counter() - start)
            attempt = Attempt(repo, f"o{i}", "true")
            calls = {}
            real_submit = backend.client.submit_job

            def timed_submit(**kw):
                calls["submit"] = time.perf_counter()
                out = real_submit(**kw)
                calls["submitted"] = time.perf_counter()
                return out

            backend.client.submit_job = timed_submit
            original = attempt.record

            def record(**fields):
                if fields.get("node"):
                    calls.setdefault("running", time.perf_counter())
                original(**fields)

            attempt.record = record
            start = time.perf_counter()
            backend.run_attempt(attempt)
            ray_times.append(time.perf_counter() - start)
            backend.client.submit_job = real_submit
            submit_times.append(calls["submitted"] - calls["submit"])
            running_times.append(calls.get("running", calls["submitted"]) - calls["submit"])
        med = statistics.median
        print(f"  local attempt                   {med(local_times) * 1000:8.0f} ms")
        print(f"  Ray attempt                     {med(ray_times) * 1000:8.0f} ms   "
              f"({med(ray_times) / med(local_times):.1f}x local; +{(med(ray_times) - med(local_times)):.2f} s)")
        print(f"    submit_job call               {med(submit_times) * 1000:8.0f} ms")
        print(f"    submit -> running on a node   {med(running_times) * 1000:8.0f} ms")

        print(f"\nre-attach (recover), median of {args.repeat}")
        finished, running = [], []
        for i in range(args.repeat):
            attempt = Attempt(repo, f"r{i}", "true")
            backend.run_attempt(attempt)
            again = Attempt(repo, f"r{i}", "true")
            again.entry = dict(attempt.entry)
            fresh = RayBackend(backend.config, repo)  # a restarted orchestrator: a new client
            fresh._checked = True
            start = time.perf_counter()
            assert fresh.recover(again).exit_code == 0
            finished.append(time.perf_counter() - start)
            # one still running: submitted by a thread that we abandon, recovered by another backend
            slow = Attempt(repo, f"s{i}", "sleep 2")
            runner = threading.Thread(target=backend.run_attempt, args=(slow,), daemon=True)
            runner.start()
            while "node" not in slow.entry or not slow.entry["node"]:
                time.sleep(0.05)
            began = time.perf_counter()
            later = Attempt(repo, f"s{i}", "sleep 2")
            later.entry = dict(slow.entry)
            assert fresh.recover(later).exit_code == 0
            running.append(time.perf_counter() - began)
            runner.join()
        print(f"  recover a finished attempt      {med(finished) * 1000:8.0f} ms")
        print(f"  recover a running 2 s attempt   {med(running) * 1000:8.0f} ms (from its start on a node)")
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
