"""A real two-node Ray cluster on this host, for the Ray tests and bench/bench_ray.py, and
attempts shaped like the scheduler's for driving the backend directly.

Two `ray start` processes (a head and a second node), each with its own temp dir and its
own NODE_WORKDIR (the worker's per-node cache), per RAY-NOTES: ports outside Ray's worker
port range, the second node's own dashboard-agent port. `ray stop` would stop every Ray
process on the host; stopping here kills only this cluster's processes (found by temp dir).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

RAY = os.path.join(os.path.dirname(sys.executable), "ray")
GCS_PORT = 6390
DASHBOARD_PORT = 8275


class LocalCluster:
    def __init__(self, head_agents=2, node_agents=1, head_cpus=2, node_cpus=1, root=None):
        self.root = root or tempfile.mkdtemp(prefix="rayc")  # short: Ray's socket paths are length-limited
        self.head_agents, self.node_agents = head_agents, node_agents
        self.head_cpus, self.node_cpus = head_cpus, node_cpus
        self.address = f"http://127.0.0.1:{DASHBOARD_PORT}"
        self.head_dir = os.path.join(self.root, "h")
        self.node_dir = os.path.join(self.root, "n")
        self.workdirs = {"head": os.path.join(self.root, "work-head"), "node": os.path.join(self.root, "work-node")}

    def _ray(self, args, workdir, timeout=120):
        env = dict(os.environ, NODE_WORKDIR=workdir, RAY_USAGE_STATS_ENABLED="0")
        env.pop("RAY_ADDRESS", None)
        proc = subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args[:2])} failed: {proc.stderr[-2000:]}{proc.stdout[-2000:]}")

    def start(self):
        self._ray(["start", "--head", f"--num-cpus={self.head_cpus}", f"--port={GCS_PORT}",
                   "--dashboard-host=127.0.0.1", f"--dashboard-port={DASHBOARD_PORT}", f"--temp-dir={self.head_dir}",
                   "--object-store-memory=100000000", f"--resources={json.dumps({'agent': self.head_agents})}",
                   "--include-dashboard=true", "--node-ip-address=127.0.0.1", "--disable-usage-stats"], self.workdirs["head"])
        self.wait_api()
        self.start_node()
        return self

    def start_node(self):
        self._ray(["start", f"--address=127.0.0.1:{GCS_PORT}", f"--num-cpus={self.node_cpus}",
                   f"--resources={json.dumps({'agent': self.node_agents, 'second_node': 1})}",
                   "--object-store-memory=80000000", "--dashboard-agent-listen-port=52366",
                   f"--temp-dir={self.node_dir}", "--node-ip-address=127.0.0.1", "--disable-usage-stats"], self.workdirs["node"])
        self.wait_nodes(2)

    def wait_api(self, timeout=90):
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.address + "/api/version", timeout=2):
                    return
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("the Ray head's Jobs API did not come up")
                time.sleep(0.2)

    def nodes(self):
        from ray.util.state import list_nodes

        return list_nodes(address=self.address, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)

    def wait_nodes(self, count, timeout=60):
        deadline = time.time() + timeout
        while len(self.nodes()) != count:
            if time.time() > deadline:
                raise RuntimeError(f"the cluster did not reach {count} live nodes")
            time.sleep(0.3)

    def _pids(self, marker):
        pids = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
                with open(f"/proc/{pid}/environ", "rb") as fh:
                    env = fh.read().split(b"\0")
            except OSError:
                continue
            if marker in cmd or f"NODE_WORKDIR={marker}".encode() in env:
                pids.append(int(pid))
        return [p for p in pids if p != os.getpid()]

    def kill_node(self):
        """SIGKILL every process of the second node (raylet, agents, workers, jobs): a lost machine."""
        for pid in self._pids(self.node_dir) + self._pids(self.workdirs["node"]):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.wait_nodes(1, timeout=120)

    def stop(self):
        for marker in (self.node_dir, self.workdirs["node"], self.head_dir, self.workdirs["head"]):
            for pid in self._pids(marker):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(self.root, ignore_errors=True)


def make_attempt(root, task, n=1, command="python3 -m engine.demo_agent", env=None, timeout=120, run_id="run-t"):
    """The scheduler's engine.executor.Attempt for TASK, recording into a real progress file."""
    import threading

    from engine.executor import Attempt
    from engine.paths import Layout
    from engine.progress import Progress
    from tests.conftest import git

    layout = Layout(str(root))
    progress = Progress(layout)
    base = git(root, "rev-parse", "main")
    data = {"TASK_ID": task, "TASK_ATTEMPT": str(n), "TASK_DESCRIPTION": f"task {task}", "BASE": "main",
            "DEMO_AGENT_SLEEP": "0.2", **(env or {})}
    logs = os.path.join(layout.claude, "auto-logs")
    attempt = Attempt(task, n, command, None, data, os.path.join(logs, f"{task}.log"),
                      os.path.join(logs, f"{task}.attempt-{n}.exit"), timeout, f"auto/{task}", "main", base, run_id,
                      entry=progress.task(task), layout=layout, cancel=threading.Event(),
                      record=lambda **fields: progress.set_task(task, **fields))
    attempt.progress = progress
    return attempt
