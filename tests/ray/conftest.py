"""The Ray suite's fixtures: one real two-node cluster for the whole session (≈ 15 s to start),
a project repository with a bare repository as the shared remote, and attempts shaped like
the scheduler's."""

import os
import sys
from dataclasses import dataclass, field

import pytest

pytest.importorskip("ray", reason="Ray is not installed: `pip install '.[ray]'` (or `make test-ray`)")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import LocalCluster  # noqa: E402

from tests.conftest import git  # noqa: E402


@pytest.fixture(scope="session")
def cluster():
    c = LocalCluster().start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def remote(tmp_path):
    path = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(path))
    return str(path)


@dataclass
class Attempt:
    """The fields the scheduler hands a backend (engine.executor.Attempt), recorded into a real
    progress file."""
    task_id: str
    n: int
    command: str
    env: dict
    log_path: str
    timeout: float
    branch: str
    base: str
    base_commit: str
    run_id: str
    progress: object = None
    entry: dict = field(default_factory=dict)
    cwd: str = None
    exit_path: str = None

    def record(self, **fields):
        self.progress.set_task(self.task_id, **fields)


def make_attempt(root, task, n=1, command="python3 -m engine.demo_agent", env=None, timeout=120, run_id="run-t"):
    from engine.paths import Layout
    from engine.progress import Progress

    layout = Layout(str(root))
    progress = Progress(layout)
    base = git(root, "rev-parse", "main")
    data = {"TASK_ID": task, "TASK_ATTEMPT": str(n), "TASK_DESCRIPTION": f"task {task}", "BASE": "main",
            "DEMO_AGENT_SLEEP": "0.2", **(env or {})}
    return Attempt(task, n, command, data, os.path.join(layout.claude, "auto-logs", f"{task}.log"), timeout,
                   f"auto/{task}", "main", base, run_id, progress, progress.task(task))
