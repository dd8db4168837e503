"""Where the 16 x 1 s run at 8 agents spends its time beyond the agents' own: one
`orchestrator run`, each agent (the demo agent, as in bench_pipeline.py) wrapped to record
when it started and ended, printed against the run's start. The phases that are the
orchestrator's alone: start-up (before the first agent), the spread of a wave's starts, the
hand-over from one wave to the next (last agent of wave 1 ended -> last agent of wave 2
started), and the tail (last agent ended -> the command returned).

    .venv/bin/python bench/pipeline_timeline.py [RUNS] [AGENTS]
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_pipeline  # noqa: E402

ROOT = bench_pipeline.ROOT
WRAPPER = """import os, sys, time
started = time.time()
sys.path.insert(0, {engine!r})
import demo_agent
code = demo_agent.main()
with open({log!r}, "a") as fh:
    fh.write(f"{{started}} {{time.time()}}\\n")
sys.exit(code)
"""


def one_run(base, n, agents):
    repo, plan = bench_pipeline.make_repo(base, f"run{n}", agents)
    log = os.path.join(base, f"run{n}.times")
    wrapper = os.path.join(base, f"agent{n}.py")
    with open(wrapper, "w") as fh:
        fh.write(WRAPPER.format(engine=os.path.join(ROOT, "engine"), log=log))
    text = open(plan).read().replace(os.path.join(ROOT, "engine", "demo_agent.py"), wrapper)
    with open(plan, "w") as fh:
        fh.write(text)
    env = dict(os.environ, PYTHONPATH=ROOT, DEMO_AGENT_SLEEP="1")
    start = time.time()
    subprocess.run([sys.executable, "-m", "engine.cli.orchestrator", "run", "--all-groups", "--quiet", plan],
                   cwd=repo, env=env, check=True, stdout=subprocess.DEVNULL)
    end = time.time()
    spans = sorted(tuple(float(x) - start for x in line.split()) for line in open(log))
    first, second = spans[:agents], spans[agents:]
    phases = {"start-up (run start -> first agent)": first[0][0],
              "wave 1 starts spread": first[-1][0] - first[0][0],
              "hand-over (wave 1 last end -> wave 2 last start)": (second[-1][0] - max(e for _, e in first))
              if second else 0.0,
              "tail (last agent end -> command returned)": (end - start) - max(e for _, e in spans),
              "agents' own time (mean)": statistics.mean(e - s for s, e in spans),
              "total": end - start}
    return phases


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    agents = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    results = []
    with tempfile.TemporaryDirectory() as base:
        for n in range(runs):
            results.append(one_run(base, n, agents))
    for key in results[0]:
        values = [r[key] for r in results]
        print(f"{key:<52} median {statistics.median(values):6.3f} s   "
              f"({', '.join(f'{v:.3f}' for v in values)})")


if __name__ == "__main__":
    main()
