"""Timing helpers shared by the benchmarks."""

import statistics
import subprocess
import time


def median_time(fn, repeat):
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def run_quiet(cmd, cwd=None, env=None):
    subprocess.run(cmd, cwd=cwd, env=env, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def report(label, value, baseline, baseline_label):
    print(f"{label:<48} {value * 1000:8.1f} ms   {value / baseline:6.2f}x {baseline_label}")
