"""merge-branches: 50 non-conflicting branches merged, against a plain
`git merge --no-ff` loop over the same branches in the same run; and the --dry-run
conflict-matrix time for those 50 branches (50 target checks + 1,225 pairs)."""

import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_pool import make_repo  # noqa: E402
from common import report  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 50


def git(repo, env, *args):
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout.strip()


def main(rounds=3):
    with tempfile.TemporaryDirectory() as base:
        repo, env = make_repo(base, files=2000)
        env["PYTHONPATH"] = ROOT
        start = git(repo, env, "rev-parse", "HEAD")
        tips = {}
        for i in range(N):
            branch = f"auto/t{i}"
            git(repo, env, "checkout", "-q", "-b", branch, start)
            with open(os.path.join(repo, f"new_{i}.txt"), "w") as fh:
                fh.write(f"task {i}\n")
            git(repo, env, "add", f"new_{i}.txt")
            git(repo, env, "commit", "-q", "-m", f"task {i}")
            tips[branch] = git(repo, env, "rev-parse", "HEAD")
        git(repo, env, "checkout", "-q", "main")
        names = list(tips)

        def reset():
            git(repo, env, "reset", "-q", "--hard", start)
            for branch, tip in tips.items():
                git(repo, env, "update-ref", f"refs/heads/{branch}", tip)

        def timed(fn):
            reset()
            t = time.perf_counter()
            fn()
            return time.perf_counter() - t

        def loop():
            for b in names:
                git(repo, env, "merge", "--no-ff", "-q", "-m", f"feat: Merge {b}", b)

        def ours():
            subprocess.run([sys.executable, "-m", "engine.cli.merge_branches", "main", *names], cwd=repo, env=env,
                           check=True, capture_output=True)

        def ours_keep():
            subprocess.run([sys.executable, "-m", "engine.cli.merge_branches", "--keep-branches", "main", *names],
                           cwd=repo, env=env, check=True, capture_output=True)

        baseline = min(timed(loop) for _ in range(rounds))
        report(f"git merge --no-ff loop, {N} branches (baseline)", baseline, baseline, "")
        report(f"merge-branches, {N} branches (+ safe deletes)", min(timed(ours) for _ in range(rounds)), baseline,
               "merge loop")
        report(f"merge-branches --keep-branches, {N} branches", min(timed(ours_keep) for _ in range(rounds)),
               baseline, "merge loop")
        reset()
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "engine.cli.merge_branches", "--dry-run", "main", *names], cwd=repo,
                       env=env, capture_output=True)
        report(f"merge-branches --dry-run matrix, {N} branches", time.perf_counter() - t, baseline, "merge loop")


if __name__ == "__main__":
    main()
