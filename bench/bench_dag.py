"""Streaming scheduling on a random DAG: makespan against the lower bound.

A seeded random plan of 20 tasks (durations 0.5-4 s, up to two dependencies each) runs on
4 agents with `--all-groups`. The lower bound no scheduler can beat is
max(critical path, total work / agents); the benchmark prints makespan / bound (goal <= 1.15),
twice per seed: once with no estimates (the scheduler only sees the DAG), and once with each
task's `complexity` set from its duration (S < 1.2 s <= M < 2.2 s <= L < 3.2 s <= XL), as a
planner's estimate would be, which the scheduler uses to run the longest chain first.
The agent is a shell line that sleeps its task's duration and commits one file, so what is
measured is the scheduling and the orchestration overhead, not an agent.
"""

import os
import random
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# The agent sleeps its task's duration, which the plan gives as the task's description.
AGENT = ('sleep "$TASK_DESCRIPTION" && echo "$TASK_ID" > "done-$TASK_ID.txt" && git add -A && '
         'git -c user.name=bench -c user.email=bench@localhost commit -qm "$TASK_ID"')


def random_dag(seed, n=20, lo=0.5, hi=4.0, max_deps=2):
    rng = random.Random(seed)
    tasks = []
    for i in range(n):
        deps = sorted({f"t{rng.randrange(i)}" for _ in range(rng.randint(0, max_deps))}) if i else []
        tasks.append((f"t{i}", round(rng.uniform(lo, hi), 2), deps))
    return tasks


def lower_bound(tasks, agents):
    finish = {}
    for task_id, duration, deps in tasks:  # listed in a topological order
        finish[task_id] = duration + max((finish[d] for d in deps), default=0.0)
    return max(max(finish.values()), sum(d for _, d, _ in tasks) / agents)


def complexity(duration):
    return "S" if duration < 1.2 else "M" if duration < 2.2 else "L" if duration < 3.2 else "XL"


def write_plan(path, tasks, estimates=False):
    with open(path, "w") as fh:
        fh.write(f"base: main\nagent: '{AGENT}'\ntasks:\n")
        for task_id, duration, deps in tasks:
            extra = f", complexity: {complexity(duration)}" if estimates else ""
            fh.write(f"  - {{id: {task_id}, description: '{duration}', depends_on: [{', '.join(deps)}]{extra}}}\n")


def make_repo(base, agents):
    from engine import demo

    repo = demo.make_repo(base)
    with open(os.path.join(repo, ".claude", "auto-context.yaml"), "w") as fh:
        fh.write(f"parallelization:\n  max_agents: {agents}\n  min_tasks: 2\n")
    return repo


def run_plan(tasks, agents, base, estimates=False):
    repo = make_repo(base, agents)
    plan = os.path.join(base, "plan.yaml")
    write_plan(plan, tasks, estimates)
    env = dict(os.environ, PYTHONPATH=ROOT)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "engine.cli.orchestrator", "run", "--all-groups", "--quiet", plan],
                   cwd=repo, env=env, check=True)
    return time.perf_counter() - start


def main(seeds=(1, 2, 3)):
    agents = 4
    for seed in seeds:
        tasks = random_dag(seed)
        bound = lower_bound(tasks, agents)
        for estimates in (False, True):
            with tempfile.TemporaryDirectory() as base:
                makespan = run_plan(tasks, agents, os.path.join(base, "r"), estimates)
            label = f"random DAG seed {seed}, 20 tasks, 4 agents" + (", estimates" if estimates else "")
            print(f"{label:<48} makespan {makespan:6.2f} s, bound {bound:6.2f} s   {makespan / bound:5.2f}x bound")


if __name__ == "__main__":
    main(tuple(int(a) for a in sys.argv[1:]) or (1, 2, 3))
