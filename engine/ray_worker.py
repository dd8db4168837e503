"""The entrypoint of one Ray job = one agent attempt, on whichever node Ray placed it.

    python -m engine.ray_worker --remote R --start-ref REF --start-commit SHA \
        --push-ref REF --branch auto/T --task T --timeout S --command CMD

It needs python3, git and this package on the node (not Ray: the job supervisor starts it).
Steps: fetch the attempt's start commit from the shared remote into a per-node cache (one
bare clone per remote under NODE_WORKDIR, plus one worktree per attempt, like the local
pool), check out `auto/TASK` there, run the agent exactly as the local executor does
(`engine.executor.run_agent`: task data only in environment variables, same timeout, its
own session stopped as a group), commit what a successful agent left uncommitted, push HEAD
to the attempt's own ref, and exit with the agent's status. Output goes to stdout, which Ray
keeps as the job's log and the orchestrator streams into the task's log.

Stopping: `stop_job` sends TERM; run_agent stops the agent's whole tree (its reaper is a
child subreaper: what the agent detached is stopped too, also when it ends by itself) and
nothing is pushed (like an interrupted local attempt). Each attempt gets a fresh directory;
an earlier attempt's directory is removed only once its worker and agent are both gone
(an agent whose worker died is an orphan no one can collect: it is stopped).
"""

import argparse
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import threading
import time

from engine import git, store
from engine.errors import OrchestratorError
from engine.executor import AgentSpec, run_agent
from engine.procs import alive, process_start_time, stop_group

END_MARK = "ORCHESTRATOR_ATTEMPT_END "  # the last line: a JSON summary the backend reads
TIMEOUT_EXIT = 124  # the status `timeout(1)` uses


class Stopped(BaseException):
    """TERM/INT from Ray's stop_job: unwinds through run_agent, which stops the agent."""


def node_workdir():
    """NODE_WORKDIR (set on a node's `ray start`, inherited by its jobs), else the user's cache."""
    if os.environ.get("NODE_WORKDIR"):
        return os.path.abspath(os.environ["NODE_WORKDIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "parallel-orchestrator", "ray-node")


def say(text):
    sys.stdout.write(f"[ray-worker {socket.gethostname()}] {text}\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- the node's cache
def cache_repo(workdir, remote):
    """The bare clone of REMOTE kept on this node (created once, shared by its attempts)."""
    path = os.path.join(workdir, "repos", hashlib.sha1(remote.encode()).hexdigest()[:16] + ".git")
    with store.file_lock(path + ".init"):
        if not os.path.exists(os.path.join(path, "HEAD")):
            os.makedirs(path, exist_ok=True)
            git.run(path, "init", "-q", "--bare")
            git.run(path, "config", "gc.auto", "0")  # attempts run concurrently; no surprise repacks
    return path


def _owner_file(attempt_dir):
    return attempt_dir + ".owner"


def _write_owner(attempt_dir, **fields):
    path = _owner_file(attempt_dir)
    data = store.load_json(path) if os.path.exists(path) else {}
    data.update(fields)
    store.atomic_write(path, json.dumps(data), keep_last_good=False)


def sweep(cache, attempts_dir):
    """Remove the directories of earlier attempts whose worker is gone; stop their agent if it
    still runs (no one can collect it: its worker, which pushes, is dead)."""
    if not os.path.isdir(attempts_dir):
        return
    for name in os.listdir(attempts_dir):
        if not name.endswith(".owner"):
            continue
        attempt_dir = os.path.join(attempts_dir, name[:-len(".owner")])
        try:
            owner = store.load_json(os.path.join(attempts_dir, name)) or {}
        except Exception:  # a torn owner file: the worker died while writing it
            owner = {}
        if alive(owner.get("pid"), owner.get("pid_start")):
            continue
        if alive(owner.get("agent_pid"), owner.get("agent_start")):
            say(f"stopping the orphaned agent of {os.path.basename(attempt_dir)} (pid {owner['agent_pid']})")
            stop_group(owner["agent_pid"], owner.get("agent_start"))
        git.run(cache, "worktree", "remove", "--force", "--force", attempt_dir, check=False)
        for leftover in (attempt_dir, attempt_dir + ".data"):
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in (attempt_dir + ".log", os.path.join(attempts_dir, name)):
            try:
                os.unlink(leftover)
            except FileNotFoundError:
                pass
    git.run(cache, "worktree", "prune", check=False)


def checkout(cache, attempts_dir, attempt_dir, branch, commit):
    """A fresh worktree for this attempt on BRANCH at COMMIT; detached if a live orphan of the
    same task still holds the branch in this cache."""
    with store.file_lock(os.path.join(cache, "orchestrator-worktree")):
        sweep(cache, attempts_dir)
        proc = git.run(cache, "worktree", "add", "-q", "-B", branch, attempt_dir, commit, check=False)
        if proc.returncode != 0:
            say(f"{branch} is held by a still-running earlier attempt here; working on a detached HEAD")
            git.run(cache, "worktree", "add", "-q", "--detach", attempt_dir, commit)


class _Echo(threading.Thread):
    """Copies the agent's log file to our stdout as it grows: Ray keeps our stdout as the job's
    log, which the orchestrator streams while the attempt runs."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path, self.done = path, threading.Event()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.join()
        return False

    def run(self):
        while not os.path.exists(self.path) and not self.done.wait(0.05):
            pass
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return
        with fh:
            while True:
                finished = self.done.is_set()
                chunk = fh.read(65536)
                if chunk:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.buffer.flush()
                elif finished:
                    return
                else:
                    self.done.wait(0.1)


# --------------------------------------------------------------------------- one attempt
def parse(argv):
    p = argparse.ArgumentParser(prog="python -m engine.ray_worker", description=__doc__.split("\n")[0])
    p.add_argument("--remote", required=True)
    p.add_argument("--start-ref", required=True)
    p.add_argument("--start-commit", required=True)
    p.add_argument("--push-ref", required=True)
    p.add_argument("--branch", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--timeout", type=float, default=None)
    p.add_argument("--command", required=True)
    p.add_argument("--task-vars", default="", help="comma-separated names of the task-data variables")
    return p.parse_args(argv)


def run(args):
    """The attempt; returns the worker's exit status."""
    workdir = node_workdir()
    cache = cache_repo(workdir, args.remote)
    with store.file_lock(os.path.join(cache, "orchestrator-fetch")):  # attempts on this node share the cache
        commit = git.fetch_ref(cache, args.remote, args.start_ref)
    if commit != args.start_commit:
        say(f"the remote's {args.start_ref} is {commit}, expected {args.start_commit}")
        return 2
    attempts_dir = os.path.join(workdir, "attempts")
    os.makedirs(attempts_dir, exist_ok=True)
    attempt_dir = os.path.join(attempts_dir, f"{args.task}.{os.getpid()}.{secrets.token_hex(3)}")
    _write_owner(attempt_dir, pid=os.getpid(), pid_start=process_start_time(os.getpid()))
    try:
        checkout(cache, attempts_dir, attempt_dir, args.branch, commit)
        env = {k: os.environ[k] for k in filter(None, args.task_vars.split(",")) if k in os.environ}
        env.update(WORKTREE=attempt_dir, BRANCH=args.branch)
        spec = AgentSpec(args.task, args.command, attempt_dir, env, attempt_dir + ".log", args.timeout)
        if hasattr(spec, "files_dir"):  # whole task texts, outside the worktree
            spec.files_dir = attempt_dir + ".data"
        say(f"{args.task}: running in {attempt_dir} from {commit[:12]}")
        with _Echo(spec.log_path):
            result = run_agent(spec, on_start=lambda pid, start: _write_owner(attempt_dir, agent_pid=pid,
                                                                                agent_start=start))
        code = result.exit_code
        if code < 0:
            code = 128 - code
        if result.timed_out:
            say(f"agent timed out after {args.timeout:g}s")
            code = TIMEOUT_EXIT
        elif code == 0:
            from engine import worktree

            if worktree.commit_leftovers(attempt_dir, f"{args.task}: uncommitted work left by the agent"):
                say("committed what the agent left uncommitted")
        head = git.resolve_commit(attempt_dir, "HEAD")
        git.push_ref(attempt_dir, args.remote, head, args.push_ref)
        print(END_MARK + json.dumps({"exit": code, "timed_out": result.timed_out, "head": head,
                                      "duration": round(result.duration, 3)}), flush=True)
        return code
    finally:
        with store.file_lock(os.path.join(cache, "orchestrator-worktree")):
            git.run(cache, "worktree", "remove", "--force", "--force", attempt_dir, check=False)
            for leftover in (attempt_dir, attempt_dir + ".data"):
                shutil.rmtree(leftover, ignore_errors=True)
            for leftover in (attempt_dir + ".log", _owner_file(attempt_dir)):
                try:
                    os.unlink(leftover)
                except FileNotFoundError:
                    pass


def main(argv=None):
    args = parse(argv)

    def stop(signum, frame):
        raise Stopped(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    started = time.time()
    try:
        return run(args)
    except Stopped:
        say(f"stopped after {time.time() - started:.1f}s; nothing pushed")
        return 128 + signal.SIGTERM
    except git.GitError as exc:
        say(f"{exc.message} {(exc.output or '').strip()[-500:]}")
        return 2
    except OrchestratorError as exc:  # the agent could not be started (AgentLaunchError): say why
        print(END_MARK + json.dumps({"exit": 127, "timed_out": False, "head": None, "reason": exc.line}), flush=True)
        return 127


if __name__ == "__main__":
    sys.exit(main())
