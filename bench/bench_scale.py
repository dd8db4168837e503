"""Plan size: the orchestrator's cost per task for plans of 100, 1,000 and 10,000 trivial tasks
(each agent writes one file and commits it; a third of the tasks depend on an earlier one; 4
agents), and its peak memory. The cost per task should not grow with the plan: what a task
event writes must be proportional to the event, not to the plan.

    .venv/bin/python bench/bench_scale.py [SIZES...]       (default: 100 1000 10000)

Prints, per size: wall time, time per task, the ratio of that to the cost at the smallest
size measured in the same run (goal: <= 1.25 at 1,000), the orchestrator's own CPU time per
task (its process alone: not git's, not the agents'), and its peak RSS (VmHWM of its own
process). Both are read from /proc every 0.1 s until it exits."""

import os
import random
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

AGENT = ('printf "%s\\n" "$TASK_ID" > "f/$TASK_ID.txt" && git add -A '
         '&& git -c user.name=a -c user.email=a@localhost commit -q -m "$TASK_ID"')
AGENTS = 4


def make_project(base, n, seed=1):
    import yaml

    repo = os.path.join(base, f"scale-{n}")
    os.makedirs(os.path.join(repo, "f"))
    env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@localhost", GIT_COMMITTER_NAME="b",
               GIT_COMMITTER_EMAIL="b@localhost")
    with open(os.path.join(repo, "f", ".keep"), "w"):
        pass
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "init"]):
        subprocess.run(["git", *cmd], cwd=repo, env=env, check=True)
    os.makedirs(os.path.join(repo, ".claude"))
    with open(os.path.join(repo, ".claude", "auto-context.yaml"), "w") as fh:
        fh.write(f"parallelization:\n  min_tasks: 1\n  max_agents: {AGENTS}\n")
    rng = random.Random(seed)
    tasks = []
    for i in range(n):
        task = {"id": f"t{i:05d}", "description": f"task {i}"}
        if i and rng.random() < 1 / 3:
            task["depends_on"] = [f"t{rng.randrange(max(0, i - 50), i):05d}"]
        tasks.append(task)
    plan = os.path.join(base, f"plan-{n}.yaml")
    with open(plan, "w") as fh:
        yaml.safe_dump({"base": "main", "agent": AGENT, "tasks": tasks}, fh, sort_keys=False)
    return repo, plan


def peak_rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def own_cpu_seconds(pid):
    """User + system CPU of the process itself (not its children: git, agents)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_run(base, n):
    repo, plan = make_project(base, n)
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli.orchestrator", "run", "--all-groups", "--quiet", plan],
                            cwd=repo, env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    peak, cpu = [0], [0.0]

    def watch():  # VmHWM and CPU time only grow: the last reading before exit is (about) the total
        while proc.poll() is None:
            peak[0] = max(peak[0], peak_rss_kib(proc.pid) or 0)
            cpu[0] = max(cpu[0], own_cpu_seconds(proc.pid) or 0)
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    start = time.monotonic()
    watcher.start()
    err = proc.stderr.read()
    code = proc.wait()
    wall = time.monotonic() - start
    watcher.join()
    if code != 0:
        raise SystemExit(f"run of {n} tasks failed ({code}): {err[-800:]}")
    merged = subprocess.run(["git", "rev-list", "--count", "--merges", "main"], cwd=repo, capture_output=True,
                            text=True).stdout.strip()
    return wall, peak[0], int(merged or 0), cpu[0]


def main(argv=None):
    sizes = [int(a) for a in (argv if argv is not None else sys.argv[1:]) if a.isdigit()] or [100, 1000, 10000]
    base = tempfile.mkdtemp(prefix="bench-scale-")
    first = None
    print(f"{'tasks':>6} {'wall s':>9} {'ms/task':>8} {'x smallest':>10} {'own CPU ms/task':>16} {'peak MiB':>9} "
          f"{'merges':>7}")
    for n in sizes:
        wall, peak, merges, cpu = timed_run(base, n)
        per = wall / n * 1000
        first = first or per
        print(f"{n:>6} {wall:>9.1f} {per:>8.1f} {per / first:>10.2f} {cpu / n * 1000:>16.1f} {peak / 1024:>9.1f} "
              f"{merges:>7}", flush=True)


if __name__ == "__main__":
    main()
