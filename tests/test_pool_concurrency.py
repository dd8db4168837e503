"""16 processes acquiring from a pool of 16 at the same moment, rounds of concurrent releases
in between, and a round where releases and acquires race each other."""

import json
import os
import subprocess
import time

from tests.conftest import PYTHON, branches, git, python_env, worktree_paths

# Imports first, then everyone waits for the same start instant: a real stampede.
CALL = r"""
import sys, time
from engine.cli.pool_manager import main
start, retry = float(sys.argv[1]), sys.argv[2] == "retry"
sys.argv = ["pool-manager"] + sys.argv[3:]
time.sleep(max(0.0, start - time.time()))
if not retry:
    main()
import io, contextlib
from engine.cli.common import run
from engine.cli.pool_manager import cli
deadline = time.time() + 30
while True:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run(cli, "pool-manager", sys.argv[1:])
    if code == 0 or "POOL_EXHAUSTED" not in out.getvalue() or time.time() > deadline:
        sys.stdout.write(out.getvalue())
        sys.exit(code)
    time.sleep(0.02)
"""


def stampede(repo, calls, retry=False):
    start = time.time() + 0.8
    procs = [subprocess.Popen([PYTHON, "-c", CALL, str(start), "retry" if retry else "once", *args], cwd=repo,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env())
             for args in calls]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        results.append((p.returncode, out, err))
    return results


def check_leases(repo, lines):
    slots, paths, tasks = set(), set(), set()
    for line in lines:
        slot, path, branch = line.strip().split("|")
        assert git(path, "symbolic-ref", "--short", "HEAD") == branch
        slots.add(slot)
        paths.add(path)
        tasks.add(branch)
    assert len(slots) == len(paths) == len(tasks) == len(lines)
    with open(repo / ".claude/pool-state.json") as fh:
        state = json.load(fh)  # parses
    busy = {s["id"]: s for s in state["worktrees"] if s["status"] == "busy"}
    assert set(busy) == slots
    assert all("preparing" not in s for s in busy.values())
    return state


def test_sixteen_concurrent_acquires_rounds(pm, repo):
    assert pm("init", "16").code == 0
    for round_no in range(3):
        results = stampede(repo, [["acquire", f"r{round_no}-t{i}"] for i in range(16)])
        assert all(code == 0 for code, _, _ in results), [r for r in results if r[0]]
        lines = [out for _, out, _ in results]
        assert all(len(out.splitlines()) == 1 for out in lines)
        check_leases(repo, lines)
        r = pm("acquire", "seventeenth")
        assert (r.code, r.out) == (1, "POOL_EXHAUSTED\n")
        assert len(worktree_paths(repo)) == 17
        results = stampede(repo, [["release", f"wt-{n}"] for n in range(1, 17)])
        assert all(code == 0 and out == f"RELEASED:wt-{n}\n" for n, (code, out, _) in enumerate(results, 1)), results
        assert branches(repo) == ["main"]  # no orphan branch
        assert pm("health").code == 0


def test_releases_and_acquires_racing(pm, repo):
    pm("init", "8")
    first = stampede(repo, [["acquire", f"a{i}"] for i in range(8)])
    held = [out.split("|")[0] for _, out, _ in first]
    racing = [["release", slot] for slot in held[:4]] + [["acquire", f"b{i}"] for i in range(4)]
    results = stampede(repo, racing, retry=True)
    assert all(code == 0 for code, _, _ in results), results
    new_lines = [out for (code, out, _), args in zip(results, racing) if args[0] == "acquire"]
    remaining = [f"{slot}|{os.path.join(str(repo), '.claude/worktree-pool', slot)}|auto/a{i}"
                 for i, slot in enumerate(held) if i >= 4]
    state = check_leases(repo, new_lines + remaining)
    assert sum(s["status"] == "busy" for s in state["worktrees"]) == 8
    assert sorted(branches(repo)) == sorted(["main"] + [f"auto/a{i}" for i in range(4, 8)] +
                                            [f"auto/b{i}" for i in range(4)])
