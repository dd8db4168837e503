"""The pipeline: 16 tasks whose agent sleeps 1 s and commits a file, run at max_agents 8
and at max_agents 1 in the same benchmark (speedup = time at 1 / time at 8); and DECOMPOSE
(load, validate, layer, write the progress file) for a generated 10,000-task DAG.

The speedup cannot reach 8x on a small machine even with no orchestrator at all: the agent's
own start-up and commit (a Python process, its reaper, three git calls) use CPU, and eight of
them at once share the cores. So the same 16 agents are also run bare, through the reaper as
the orchestrator runs them, in 16 ready worktrees, 8 at a time and one at a time: that
speedup is the ceiling this machine allows, and the orchestrator's is shown against it.

    .venv/bin/python bench/bench_pipeline.py [--shell-agent]

--shell-agent runs the same tasks with a shell agent (sleep, write the file, `git add`, `git
commit`) instead of the Python one: less CPU per agent, so what is left of the gap to 8x is
more the orchestrator's own."""

import os
import random
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import report  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


SHELL_AGENT = """sleep "${DEMO_AGENT_SLEEP:-0.2}"
mkdir -p app
printf 'def %s():\\n    return "%s ok"\\n' "$TASK_ID" "$TASK_ID" > "app/$TASK_ID.py"
git add -A && git -c user.name=demo-agent -c user.email=agent@localhost commit -q -m "$TASK_ID: implement"
"""


def agent_command(base, shell=False):
    """The agent command line: the bundled Python demo agent, or the shell one."""
    if not shell:
        return f"{sys.executable} {os.path.join(ROOT, 'engine', 'demo_agent.py')}"
    path = os.path.join(base, "agent.sh")
    if not os.path.exists(path):
        with open(path, "w") as fh:
            fh.write(SHELL_AGENT)
    return f"/bin/sh {path}"


def make_repo(base, name, max_agents, shell=False):
    from engine import demo

    repo = demo.make_repo(os.path.join(base, name))
    with open(os.path.join(repo, ".claude", "auto-context.yaml"), "w") as fh:
        fh.write(f"parallelization:\n  max_agents: {max_agents}\n  min_tasks: 2\n")
    plan = os.path.join(base, name, "plan.yaml")
    with open(plan, "w") as fh:
        fh.write(f"base: main\nagent: {agent_command(base, shell)}\ntasks:\n")
        for i in range(16):
            fh.write(f"  - {{id: t{i}, description: task {i}}}\n")
    return repo, plan


def timed_run(base, name, max_agents, shell=False):
    repo, plan = make_repo(base, name, max_agents, shell)
    env = dict(os.environ, PYTHONPATH=ROOT, DEMO_AGENT_SLEEP="1")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "engine.cli.orchestrator", "run", "--all-groups", "--quiet", plan],
                   cwd=repo, env=env, check=True)
    return time.perf_counter() - start


def agents_alone(base, name, workers, shell=False):
    """The 16 agents with no orchestrator: worktrees made first (not timed), then each agent
    run through engine/reaper.py, WORKERS at a time."""
    from concurrent.futures import ThreadPoolExecutor
    from engine import demo

    repo = demo.make_repo(os.path.join(base, name))
    paths = []
    for i in range(16):
        path = os.path.join(base, f"{name}-w{i}")
        subprocess.run(["git", "worktree", "add", "-q", "-b", f"auto/t{i}", path, "main"], cwd=repo, check=True)
        paths.append(path)
    agent = agent_command(base, shell)
    reaper = [sys.executable, "-I", "-S", os.path.join(ROOT, "engine", "reaper.py"), "1.0", "", "ORCH_BENCH", "0"]

    def one(i):
        env = dict(os.environ, TASK_ID=f"t{i}", DEMO_AGENT_SLEEP="1")
        subprocess.run(reaper + [agent], cwd=paths[i], env=env, stdout=subprocess.DEVNULL, check=True)

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(16)))
    return time.perf_counter() - start


def decompose_10k(base):
    from engine import plan as plans
    from engine.paths import Layout
    from engine.context import Options, RunContext

    rng = random.Random(1)
    path = os.path.join(base, "big.yaml")
    with open(path, "w") as fh:
        fh.write("agent: 'true'\ntasks:\n")
        for i in range(10000):
            deps = sorted({f"t{rng.randrange(i)}" for _ in range(rng.randint(0, 3))}) if i else []
            fh.write(f"  - {{id: t{i}, depends_on: [{', '.join(deps)}]}}\n")
    start = time.perf_counter()
    p = plans.load(path, max_agents=8)
    load_time = time.perf_counter() - start
    root = os.path.join(base, "big")
    os.makedirs(os.path.join(root, ".claude"))
    ctx = RunContext(Layout(root), Options(quiet=True))
    ctx.progress.update(lambda d: d.update(plan_file=path, base="main"))
    from states import decompose

    start = time.perf_counter()
    decompose.handle(ctx)
    handler_time = time.perf_counter() - start
    return load_time, handler_time, len(p.groups)


def main():
    shell = "--shell-agent" in sys.argv[1:]
    with tempfile.TemporaryDirectory() as base:
        if shell:
            print("(the shell agent)")
        sequential = timed_run(base, "one", 1, shell)
        parallel = timed_run(base, "eight", 8, shell)
        report("16 x 1 s tasks, max_agents 1 (baseline)", sequential, sequential, "")
        report("16 x 1 s tasks, max_agents 8", parallel, sequential, "max_agents 1")
        bare_one, bare_eight = agents_alone(base, "bare1", 1, shell), agents_alone(base, "bare8", 8, shell)
        report("the same 16 agents alone, 1 at a time", bare_one, sequential, "max_agents 1")
        report("the same 16 agents alone, 8 at a time", bare_eight, sequential, "max_agents 1")
        ceiling = bare_one / bare_eight
        print(f"{'speedup':<48} {sequential / parallel:8.2f}x")
        print(f"{'ceiling on this machine (agents alone, 8 vs 1)':<48} {ceiling:8.2f}x")
        print(f"{'share of the ceiling (goal >= 0.92)':<48} {sequential / parallel / ceiling:8.2f}")
        load_time, handler_time, groups = decompose_10k(base)
        print(f"{'plan load+validate+layer, 10,000 tasks':<48} {load_time * 1000:8.1f} ms   ({groups} groups)")
        print(f"{'DECOMPOSE handler (load + progress file), 10k':<48} {handler_time * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
