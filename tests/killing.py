"""Kills that land inside git: the orchestrator's whole process group SIGKILLed at a moment when
one of its own git children is running (an agent's git is in the agent's own group and lives
on), the way an OOM kill or a closed terminal takes a run down mid-merge or mid-checkout."""

import os
import random
import signal
import time


def group_processes(pgid):
    """{pid: argv} of the live processes of process group PGID (zombies left out)."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                fields = fh.read().rpartition(")")[2].split()
            if fields[0] == "Z" or int(fields[2]) != pgid:
                continue
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                argv = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        found[int(name)] = argv
    return found


def kill_inside_git(proc, rng: random.Random, timeout=60.0):
    """Wait until the group of PROC (started with start_new_session=True) has a git child
    running, skipping a random number of sightings first so the kills spread over the run's
    git commands; SIGKILL the whole group then. Returns the git command line it landed in, or
    None when PROC ended first (or no git ran within TIMEOUT)."""
    skip = rng.randrange(0, 40)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        gits = [argv for argv in group_processes(proc.pid).values()
                if argv and os.path.basename(argv[0]) == "git"]
        if gits:
            if skip <= 0:
                time.sleep(rng.uniform(0, 0.012))  # anywhere in the command, not only at its start
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    return None
                return " ".join(gits[0][1:4])
            skip -= 1
        time.sleep(rng.uniform(0, 0.004))
    return None


def run_with_kills_inside_git(cmd, repo, plan, env, rng, budget, finished, options=(), kill_timeout=60.0):
    """Run PLAN (`CMD run --all-groups PLAN`, then `CMD resume --all-groups` after each kill)
    (with OPTIONS) until FINISHED(repo) says the run is complete, killing inside git at most BUDGET times.
    Every run or resume that was not killed must exit 0: one that fails is a wedged run.
    Returns the git command lines the kills landed in."""
    import subprocess

    landed, started = [], False
    while True:
        args = ["resume", "--all-groups", *options] if started else ["run", "--all-groups", *options, plan]
        proc = subprocess.Popen([*cmd, *args], cwd=repo, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        where = kill_inside_git(proc, rng, kill_timeout) if len(landed) < budget else None
        code = proc.wait(timeout=600)
        err = proc.stderr.read()
        proc.stderr.close()
        if where is not None:
            landed.append(where)
        else:
            assert code == 0, (args, code, err[-1500:])
        # killed before `run` recorded anything: a person runs it again (there is nothing to resume)
        started = os.path.exists(os.path.join(repo, ".claude", "auto-progress.yaml"))
        if where is None and started and finished(repo):
            return landed
