"""state-transition: the cost of one CLI call, relative to starting Python at all.

Agents call `state-transition` hundreds of times a session, so what matters is the whole
process: interpreter start, imports, lock, journal append with fsync, atomic replace.
Baseline: `python -c pass` with the same interpreter, in the same run.
"""

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import median_time, report, run_quiet  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(repeat=25):
    env = dict(os.environ, PYTHONPATH=ROOT)
    py = sys.executable
    with tempfile.TemporaryDirectory() as work:
        run_quiet([py, "-m", "engine.cli.state_transition", "init"], cwd=work, env=env)
        baseline = median_time(lambda: run_quiet([py, "-c", "pass"], cwd=work, env=env), repeat)
        report("python -c pass (baseline)", baseline, baseline, "")
        cycle = iter(["PARALLELIZE", "INTEGRATE", "IDLE"] * repeat * 2)
        for label, args in [("state-transition state", ["state"]),
                            ("state-transition transition (lock+journal+write)", None),
                            ("state-transition tokens 10", ["tokens", "10"]),
                            ("scripts/state-transition.sh state (bash shim)", "shim")]:
            if args == "shim":
                cmd = [os.path.join(ROOT, "scripts", "state-transition.sh"), "state"]
                t = median_time(lambda: run_quiet(cmd, cwd=work, env=env), repeat)
            elif args is None:
                t = median_time(lambda: run_quiet([py, "-m", "engine.cli.state_transition", "transition",
                                                   next(cycle)], cwd=work, env=env), repeat)
            else:
                t = median_time(lambda: run_quiet([py, "-m", "engine.cli.state_transition", *args], cwd=work,
                                                  env=env), repeat)
            report(label, t, baseline, "python start-up")


if __name__ == "__main__":
    main()
