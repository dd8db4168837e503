"""run_command: what the hygiene costs per command.

Median wall time of running `true` (so the overhead is all there is):
- baseline: `subprocess.run(["/bin/sh", "-c", "true"])` with output to a file;
- `engine.procs.run_command("true", ...)`: the reaper process (a Python start-up that makes
  itself a subreaper and reaps), output file, marker variable;
- the same with a leftover `setsid sleep` child that must be found and stopped;
- `run_command("true")` in a reaper started ahead of need (`keep_reapers_warm`, as a run
  keeps them while its agents work), each replaced before the next call (not timed);
- one marker sweep over /proc (what the orchestrator pays only when the reaper was killed).
"""

import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import median_time, report  # noqa: E402

from engine.procs import _warm, keep_reapers_warm, run_command, sweep  # noqa: E402


def main(repeat=31):
    with tempfile.TemporaryDirectory() as base:
        out = os.path.join(base, "out.log")

        def plain():
            with open(out, "ab") as fh:
                subprocess.run(["/bin/sh", "-c", "true"], cwd=base, stdin=subprocess.DEVNULL, stdout=fh,
                               stderr=subprocess.STDOUT, start_new_session=True)

        baseline = median_time(plain, repeat)
        report("subprocess.run sh -c true (baseline)", baseline, baseline, "baseline")
        report("run_command true", median_time(lambda: run_command("true", base, output_path=out), repeat),
               baseline, "baseline")
        report("run_command with a setsid leftover to stop",
               median_time(lambda: run_command("setsid sleep 30 & exit 0", base, output_path=out), repeat),
               baseline, "baseline")
        report("one marker sweep of /proc", median_time(lambda: sweep("ORCH_PROC_none", grace=0), repeat),
               baseline, "baseline")
        report("run_command true, reaper started ahead", warm_run(base, out, repeat), baseline, "baseline")


def warm_run(base, out, repeat):
    """Median of run_command("true") taking a waiting reaper; the wait for its replacement
    (started in the background a quarter of a second later) is not timed."""
    import statistics
    import time

    samples = []
    keep_reapers_warm(1)
    try:
        for _ in range(repeat):
            deadline = time.monotonic() + 30
            while not _warm._idle:  # (its replacement, started a quarter of a second after the last take)
                if time.monotonic() > deadline:
                    raise SystemExit("no reaper started ahead within 30 s")
                time.sleep(0.005)
            start = time.perf_counter()
            run_command("true", base, output_path=out)
            samples.append(time.perf_counter() - start)
    finally:
        keep_reapers_warm(0)
    return statistics.median(samples)


if __name__ == "__main__":
    main()
