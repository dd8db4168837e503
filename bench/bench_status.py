"""The reading commands agents and people poll (`orchestrator status`, `pool-manager status`,
`checkpoint-manager list`): the cost of one call, relative to starting Python at all, on a
project whose 4-task run has completed. Also the import of tabulate alone, which draws their
tables: 0.10 reads its own version through importlib.metadata as it is imported (a scan of
every installed distribution), which is why setup.cfg keeps it below 0.10.

    .venv/bin/python bench/bench_status.py
"""

import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import median_time, report, run_quiet  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def completed_project(base):
    """A demo repository whose 4-task plan has run to completion (its pool kept), with one checkpoint."""
    from engine import demo

    repo = demo.make_repo(os.path.join(base, "r"))
    with open(os.path.join(repo, ".claude", "auto-context.yaml"), "w") as fh:
        fh.write("parallelization:\n  max_agents: 2\n  min_tasks: 2\n  auto_cleanup: false\n")
    plan = os.path.join(base, "plan.yaml")
    agent = f"{sys.executable} {os.path.join(ROOT, 'engine', 'demo_agent.py')}"
    with open(plan, "w") as fh:
        fh.write(f"base: main\nagent: {agent}\ntasks:\n"
                 + "".join(f"  - {{id: t{i}, description: task {i}}}\n" for i in range(4)))
    env = dict(os.environ, PYTHONPATH=ROOT, DEMO_AGENT_SLEEP="0")
    subprocess.run([sys.executable, "-m", "engine.cli.orchestrator", "run", "--all-groups", "--quiet", plan],
                   cwd=repo, env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "engine.cli.checkpoint_manager", "create", "--reason", "bench"],
                   cwd=repo, env=env, check=True, stdout=subprocess.DEVNULL)  # (so `list` draws its table)
    return repo


def main(repeat=25):
    import tabulate

    print(f"(tabulate {tabulate.__version__})")
    env = dict(os.environ, PYTHONPATH=ROOT)
    py = sys.executable
    with tempfile.TemporaryDirectory() as base:
        repo = completed_project(base)
        baseline = median_time(lambda: run_quiet([py, "-c", "pass"], cwd=repo, env=env), repeat)
        report("python -c pass (baseline)", baseline, baseline, "")
        for label, args in [("python -c 'import tabulate'", ["-c", "import tabulate"]),
                            ("python -c 'import click'", ["-c", "import click"]),
                            ("orchestrator status", ["-m", "engine.cli.orchestrator", "status"]),
                            ("orchestrator status --json", ["-m", "engine.cli.orchestrator", "status", "--json"]),
                            ("pool-manager status", ["-m", "engine.cli.pool_manager", "status"]),
                            ("checkpoint-manager list", ["-m", "engine.cli.checkpoint_manager", "list"])]:
            t = median_time(lambda: run_quiet([py, *args], cwd=repo, env=env), repeat)
            report(label, t, baseline, "python start-up")


if __name__ == "__main__":
    main()
