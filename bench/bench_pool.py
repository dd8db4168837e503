"""Pool: the acquire+release cycle against creating and removing a worktree per task.

On a generated repository of 5,000 files, the median of:
- baseline: `git worktree add -b B PATH` + `git worktree remove PATH` (what a pool saves);
- `pool-manager acquire` + `pool-manager release` through the CLI (what an agent pays,
  including two Python start-ups);
- the same cycle through the engine API (what the orchestrator pays);
and the wall time of 16 concurrent `pool-manager acquire` on a fresh pool of 16 (worktrees
created) and on a warm one (slots reused).
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import median_time, report, run_quiet  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = 5000


def make_repo(base, files=FILES):
    repo = os.path.join(base, "repo")
    os.makedirs(repo)
    for i in range(files):
        d = os.path.join(repo, f"pkg{i % 50}", f"mod{i % 7}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"file{i}.py"), "w") as fh:
            fh.write(f"# file {i}\n" + "x = 1\n" * 20)
    env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b",
               GIT_COMMITTER_EMAIL="b@b")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "init"]):
        subprocess.run(["git", *args], cwd=repo, check=True, env=env)
    return repo, env


def main(repeat=9):
    py = sys.executable
    with tempfile.TemporaryDirectory() as base:
        repo, env = make_repo(base)
        env["PYTHONPATH"] = ROOT
        counter = iter(range(10**6))

        def raw_cycle():
            n = next(counter)
            path = os.path.join(base, f"raw{n}")
            run_quiet(["git", "worktree", "add", "-q", "-b", f"raw/{n}", path], cwd=repo, env=env)
            run_quiet(["git", "worktree", "remove", path], cwd=repo, env=env)

        pm = [py, "-m", "engine.cli.pool_manager"]
        run_quiet(pm + ["init", "2"], cwd=repo, env=env)

        def cli_cycle():
            n = next(counter)
            out = subprocess.run(pm + ["acquire", f"c{n}"], cwd=repo, env=env, capture_output=True, text=True)
            slot = out.stdout.split("|")[0]
            run_quiet(pm + ["release", slot], cwd=repo, env=env)

        sys.path.insert(0, ROOT)
        from engine.paths import Layout
        from engine.pool import Pool

        pool = Pool(Layout(repo), env={})

        def api_cycle():
            n = next(counter)
            slot, _, _ = pool.acquire(f"a{n}")
            pool.release(slot, quiet=True)

        cli_cycle()  # warm the slot once: a pool's steady state
        baseline = median_time(raw_cycle, repeat)
        report(f"git worktree add -b + remove ({FILES} files)", baseline, baseline, "(baseline)")
        report("pool-manager acquire + release (CLI)", median_time(cli_cycle, repeat), baseline, "raw worktree cycle")
        report("Pool.acquire + Pool.release (engine API)", median_time(api_cycle, repeat), baseline,
               "raw worktree cycle")

        for label, prepare in (("16 concurrent acquires, fresh pool of 16", "fresh"),
                               ("16 concurrent acquires, warm pool of 16", "warm")):
            if prepare == "fresh":
                run_quiet(pm + ["cleanup", "--force"], cwd=repo, env=env)
                run_quiet(pm + ["init", "--force", "16"], cwd=repo, env=env)
            else:
                run_quiet(pm + ["cleanup", "--force"], cwd=repo, env=env)
                run_quiet(pm + ["init", "--force", "16"], cwd=repo, env=env)
                procs = [subprocess.Popen(pm + ["acquire", f"w{i}"], cwd=repo, env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(16)]
                [p.wait() for p in procs]
                for i in range(1, 17):
                    run_quiet(pm + ["release", "--force", f"wt-{i}"], cwd=repo, env=env)
            start = time.perf_counter()
            procs = [subprocess.Popen(pm + ["acquire", f"{prepare}{i}"], cwd=repo, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(16)]
            codes = [p.wait() for p in procs]
            wall = time.perf_counter() - start
            report(f"{label} ({codes.count(0)}/16 ok)", wall, baseline, "one raw worktree cycle")
        shutil.rmtree(os.path.join(repo, ".claude"), ignore_errors=True)


if __name__ == "__main__":
    main()
