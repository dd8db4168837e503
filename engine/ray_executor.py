"""The Ray executor backend: one agent attempt = one Ray job, with exact resume.

Selected by `executor: ray` (plan, `.claude/auto-context.yaml`, or `--executor ray`) with a
`ray:` block: `address` (the dashboard URL, default RAY_ADDRESS), `remote` (a bare repository
path or URL that the orchestrator and every node reach), `resources` (e.g. `{agent: 1}`: only
nodes started with that resource run agents), `num_cpus`, `memory`, `python` (the node's
interpreter), `ship_code` (send this package with each job; false when it is installed on
every node).

Per attempt: the start commit is pushed to `refs/orchestrator/RUN/TASK/base-N` on the remote;
the submission id (run + task + attempt) is recorded in the progress file *before* submitting;
the job (`python -m engine.ray_worker`) runs the agent on a node and pushes its result to
`refs/orchestrator/RUN/TASK/attempt-N`, which is fetched into `auto/TASK` here. The job's log
is streamed into the task's log while it runs (a lost node takes its logs with it). After a
crash a recorded id the cluster knows is re-attached, never submitted again; one it does not
know (404: never submitted, or a head restart lost it) is a lost attempt.

Ray is imported only here, and only when a Ray backend is used: the core never needs it.
"""

import contextlib
import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field, fields

from engine import git, store
from engine.config import ConfigError, boolean, number
from engine.errors import OrchestratorError

EXECUTORS = ("local", "ray")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
LOST_EXIT = -1  # the attempt ended without an exit status (its node or supervisor died)


class RayExecutorError(OrchestratorError):
    """The cluster cannot run an attempt at all (unreachable, no node offers the resources)."""


# --------------------------------------------------------------------------- configuration
@dataclass
class RayConfig:
    address: str = None
    remote: str = None
    resources: dict = field(default_factory=dict)
    num_cpus: float = 1.0
    memory: int = None
    python: str = "python3"
    ship_code: bool = True
    poll: float = 0.5


def _ray_block(block, where, config):
    """Apply one `ray:` mapping onto CONFIG, every value checked."""
    if block is None:
        return
    if not isinstance(block, dict):
        raise ConfigError(f"{where}: `ray` must be a mapping")
    for key, value in block.items():
        if value is None:
            continue
        if key in ("address", "remote", "python"):
            if not isinstance(value, str) or not value.strip() or "\0" in value:
                raise ConfigError(f"{where}: `ray.{key}` must be a non-empty string")
            setattr(config, key, value.strip())
        elif key == "resources":
            if not isinstance(value, dict) or not all(isinstance(k, str) and k for k in value):
                raise ConfigError(f"{where}: `ray.resources` must be a mapping of resource name to amount")
            checked = {}
            for name, amount in value.items():
                n = number(amount)
                if n is None or n <= 0:
                    raise ConfigError(f"{where}: `ray.resources.{name}` must be a positive number")
                checked[name] = n
            config.resources = checked
        elif key in ("num_cpus", "memory", "poll"):
            n = number(value, whole=key == "memory")
            if n is None or n < 0 or (key == "poll" and not 0.05 <= n <= 60):
                raise ConfigError(f"{where}: `ray.{key}` must be a non-negative number")
            setattr(config, key, (n or None) if key == "memory" else n)
        elif key == "ship_code":
            b = boolean(value)
            if b is None:
                raise ConfigError(f"{where}: `ray.ship_code` must be true or false")
            config.ship_code = b
        else:
            raise ConfigError(f"{where}: unknown setting `ray.{key}` (address, remote, resources, "
                              "num_cpus, memory, python, ship_code)")


def _executor_value(value, where):
    if value is None:
        return None
    if value not in EXECUTORS:
        raise ConfigError(f"{where}: `executor` must be one of {', '.join(EXECUTORS)}, got {value!r}")
    return value


def load_config(root, plan_data=None, executor=None, env=None):
    """(executor name, RayConfig or None) from `.claude/auto-context.yaml`, then the plan's
    mapping (PLAN_DATA, as engine.plan.read returns it), then EXECUTOR (`--executor`).
    Raises ConfigError (one line) for a bad value or a Ray executor without a remote/address."""
    env = os.environ if env is None else env
    from engine.paths import CONTEXT_REL as rel

    context, _ = store.load_yaml_mapping(os.path.join(root, rel))
    config, kind = RayConfig(), "local"
    for where, data in ((rel, context or {}), ("plan", plan_data or {})):
        kind = _executor_value(data.get("executor"), where) or kind
        _ray_block(data.get("ray"), where, config)
    kind = _executor_value(executor, "--executor") or kind
    if kind != "ray":
        return kind, None
    config.address = config.address or env.get("RAY_ADDRESS")
    if not config.address:
        raise ConfigError("executor ray: no cluster address (set `ray.address` or RAY_ADDRESS, e.g. "
                          "http://HEAD:8265)")
    if not config.remote:
        raise ConfigError("executor ray: no `ray.remote` (a bare repository path or URL that the "
                          "orchestrator and every node reach)")
    if "://" not in config.address:
        config.address = "http://" + config.address
    return kind, config


# --------------------------------------------------------------------------- names
def submission_id(run_id, task_id, n):
    """Run + task + attempt, in the characters Ray and URLs take as they are."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{run_id}-{task_id}-attempt-{n}")


def attempt_refs(run_id, task_id, n):
    """(start ref, result ref) of one attempt on the remote."""
    run = re.sub(r"[^A-Za-z0-9._-]", "_", str(run_id)).strip(".") or "run"
    prefix = f"refs/orchestrator/{run}/{task_id}"
    return f"{prefix}/base-{n}", f"{prefix}/attempt-{n}"


def _result(**kw):
    """An AgentResult; fields this version of it lacks are still set on the instance."""
    from engine.executor import AgentResult

    known = {f.name for f in fields(AgentResult)}
    result = AgentResult(**{k: v for k, v in kw.items() if k in known})
    for key, value in kw.items():
        if key not in known:
            setattr(result, key, value)
    return result


def _is_404(exc):
    text = str(exc)
    return "404" in text or "does not exist" in text or "not found" in text.lower()


# --------------------------------------------------------------------------- the backend
class RayBackend:
    """Runs attempts as Ray jobs; `needs_checkout = False`: no local slot while the agent runs."""

    needs_checkout = False

    def __init__(self, config, repo):
        self.config = config
        self.repo = repo
        self._client = None
        self._lock = threading.Lock()
        self._remote_lock = threading.Lock()  # one exchange with the remote at a time (_remote)
        self._active = {}  # submission id -> task id, for stop()
        self._stopped = set()  # submission ids we stopped (their result is `interrupted`)
        self._nodes = {}  # node id -> name shown in status
        self._checked = False

    # ------------------------------------------------------------------ cluster access
    @property
    def client(self):
        with self._lock:
            if self._client is None:
                try:
                    from ray.job_submission import JobSubmissionClient
                except ImportError:
                    raise RayExecutorError("executor ray needs Ray: pip install 'parallel-orchestrator[ray]'")
                import logging

                # after the import (which configures Ray's logging; the Jobs SDK modules set INFO
                # on their own loggers): "Uploading package ..." lines are not the user's business
                for name in ("ray", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk"):
                    logging.getLogger(name).setLevel(logging.WARNING)
                try:
                    self._client = JobSubmissionClient(self.config.address)
                except Exception as exc:  # ConnectionError, or a version mismatch (RuntimeError)
                    raise RayExecutorError(f"cannot reach the Ray cluster at {self.config.address}: "
                                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
                        from None
            return self._client

    def alive_nodes(self):
        """[{node_id, node_name, resources_total}] of the cluster's live nodes (dashboard state API)."""
        import ray  # noqa: F401  (the package whole first: ray/__init__ imports ray.util itself; a thread
        # importing the submodule while another runs that __init__ deadlocks: tests/test_import_deadlocks.py)
        from ray.util.state import list_nodes

        nodes = list_nodes(address=self.config.address, filters=[("state", "=", "ALIVE")], detail=True,
                           raise_on_missing_output=False)
        out = []
        for node in nodes:
            node = node if isinstance(node, dict) else node.__dict__
            out.append({"node_id": node.get("node_id"), "node_name": node.get("node_name") or node.get("node_ip"),
                        "resources_total": dict(node.get("resources_total") or {})})
        return out

    def needs(self):
        """The resources one attempt asks for, as node totals name them."""
        wanted = dict(self.config.resources)
        if self.config.num_cpus:
            wanted["CPU"] = self.config.num_cpus
        if self.config.memory:
            wanted["memory"] = self.config.memory
        return wanted

    def unsatisfiable(self, nodes=None):
        """None if some live node offers everything an attempt needs; else a one-line why not."""
        nodes = self.alive_nodes() if nodes is None else nodes
        wanted = self.needs()
        if any(all(n["resources_total"].get(k, 0) >= v for k, v in wanted.items()) for n in nodes):
            return None
        offered = "; ".join(f"{n['node_name']}: " + ", ".join(f"{k}={v:g}" for k, v in sorted(
            n["resources_total"].items()) if not k.startswith("node:") and k != "object_store_memory")
            for n in nodes) or "no live node"
        want = ", ".join(f"{k}={v:g}" for k, v in sorted(wanted.items()))
        return f"no node of the Ray cluster offers what an agent attempt needs ({want}); offered: {offered}"

    def git_dirs(self):
        """The remote's git directory when it is a path on this machine: a push or fetch
        killed with the orchestrator leaves its ref lock there too (a receive-pack is a child of
        the killed push). A remote elsewhere is its own server's business."""
        remote = self.config.remote or ""
        if remote.startswith("file://"):
            remote = remote[len("file://"):]
        if "://" in remote or not os.path.isdir(remote):
            return []
        dot_git = os.path.join(remote, ".git")
        return [dot_git if os.path.isdir(dot_git) else remote]

    def check(self):
        """Fail fast, before any submission: cluster reachable, some node can run an attempt."""
        self.client  # noqa: B018 -- reach the cluster
        why = self.unsatisfiable()
        if why:
            raise RayExecutorError(f"executor ray: {why}")
        self._checked = True

    def node_name(self, node_id):
        if not node_id:
            return None
        if node_id not in self._nodes:
            try:
                nodes = self.alive_nodes()
            except Exception:  # the name is cosmetic; the id will do
                nodes = []
            names = [n["node_name"] for n in nodes]
            for n in nodes:
                name = n["node_name"]
                self._nodes[n["node_id"]] = f"{name}/{n['node_id'][:6]}" if names.count(name) > 1 else name
        return self._nodes.get(node_id, node_id[:12])

    # ------------------------------------------------------------------ one attempt
    def start_commit(self, attempt):
        """Where the attempt starts: `auto/TASK` when it already carries work the base lacks
        (a retry after QA feedback continues it, as the local pool does), else the base."""
        tip = git.branch_commit(self.repo, attempt.branch)
        if tip and git.unique_commits(self.repo, attempt.branch, attempt.base_commit):
            return tip
        return attempt.base_commit

    def entrypoint(self, attempt, start, start_ref, result_ref):
        import shlex

        task_vars = ",".join(sorted(self._task_env(attempt)))
        args = ["--remote", self.config.remote, "--start-ref", start_ref, "--start-commit", start,
                "--push-ref", result_ref, "--branch", attempt.branch, "--task", attempt.task_id,
                "--command", attempt.command, "--task-vars", task_vars]
        if attempt.timeout:
            args += ["--timeout", f"{float(attempt.timeout):g}"]
        return f"exec {self.config.python} -m engine.ray_worker " + " ".join(shlex.quote(a) for a in args)

    @staticmethod
    def _task_env(attempt):
        """Task data for the node: strings only, and no path of this machine (ORCHESTRATOR_ROOT,
        WORKTREE: the worker sets its own)."""
        return {k: str(v) for k, v in (attempt.env or {}).items()
                if k not in ("ORCHESTRATOR_ROOT", "WORKTREE") and v is not None}

    def runtime_env(self, attempt):
        env = {"env_vars": self._task_env(attempt)}
        if self.config.ship_code:
            import engine

            env["py_modules"] = [os.path.dirname(os.path.abspath(engine.__file__))]
        return env

    def run_attempt(self, attempt):
        """Submit the attempt (once: its id is recorded first) and follow it to the end."""
        if not self._checked:
            self.check()
        sid = submission_id(attempt.run_id, attempt.task_id, attempt.n)
        start_ref, result_ref = attempt_refs(attempt.run_id, attempt.task_id, attempt.n)
        start = self.start_commit(attempt)
        with self._remote("push the attempt's start commit to"):
            git.push_ref(self.repo, self.config.remote, start, start_ref)
        attempt.record(submission_id=sid, node=None)
        kwargs = dict(entrypoint=self.entrypoint(attempt, start, start_ref, result_ref), submission_id=sid,
                      runtime_env=self.runtime_env(attempt), entrypoint_num_cpus=self.config.num_cpus or None,
                      entrypoint_resources=self.config.resources or None,
                      metadata={"task": attempt.task_id, "attempt": str(attempt.n), "run": str(attempt.run_id)})
        if self.config.memory:
            kwargs["entrypoint_memory"] = int(self.config.memory)
        self._log(attempt, f"submitting Ray job {sid} (start {start[:12]})")
        with self._lock:
            self._active[sid] = attempt.task_id
        try:
            self.client.submit_job(**kwargs)
        except RuntimeError as exc:
            if "already exists" not in str(exc):
                with self._lock:
                    self._active.pop(sid, None)
                raise RayExecutorError(f"Ray refused job {sid}: {str(exc).strip().splitlines()[-1]}") \
                    from None
            self._log(attempt, f"Ray job {sid} already exists: following it instead of submitting again")
        return self._follow(attempt, sid, start, result_ref)

    def recover(self, attempt):
        """After a crash: re-attach to the attempt's recorded job if the cluster knows it;
        None when it does not (never submitted, or lost with a restarted head)."""
        entry = attempt.entry or {}
        sid = submission_id(attempt.run_id, attempt.task_id, attempt.n)
        if entry.get("submission_id") != sid:
            return None
        try:
            self.client.get_job_info(sid)
        except RuntimeError as exc:
            if _is_404(exc):
                return None
            raise
        start_ref, result_ref = attempt_refs(attempt.run_id, attempt.task_id, attempt.n)
        with self._remote("fetch the attempt's start commit from"):
            start = git.fetch_ref(self.repo, self.config.remote, start_ref) or attempt.base_commit
        self._log(attempt, f"re-attached to Ray job {sid} after a restart (its whole log follows)")
        with self._lock:
            self._active[sid] = attempt.task_id
        return self._follow(attempt, sid, start, result_ref)

    def stop(self, entries=None):
        """Abort/Ctrl-C: stop every job this backend follows, and any recorded in ENTRIES."""
        with self._lock:
            sids = set(self._active)
        for entry in (entries or {}).values():
            if (entry or {}).get("submission_id") and (entry or {}).get("status") in (None, "running"):
                sids.add(entry["submission_id"])
        for sid in sids:
            self._stop_job(sid)
        return sorted(sids)

    def _stop_job(self, sid):
        with self._lock:
            self._stopped.add(sid)
        try:
            self.client.stop_job(sid)
        except Exception:  # already gone, or unknown: nothing left to stop
            pass

    # ------------------------------------------------------------------ following a job
    def _log(self, attempt, text):
        with store.open_append(attempt.log_path, binary=False) as fh:
            fh.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {attempt.task_id}: {text}\n")

    def _follow(self, attempt, sid, start, result_ref):
        """Stream the job's log into the task's log until it ends; then bring its result ref
        into `auto/TASK` and return the AgentResult."""
        tail = _Tail(self.client, sid, attempt.log_path)
        tail.start()
        began, node, info = time.time(), None, None
        pending_checked = time.time()
        try:
            while True:
                try:
                    info = self.client.get_job_info(sid)
                except RuntimeError as exc:
                    if _is_404(exc):  # deleted under us, or the head restarted
                        info = None
                        break
                    raise
                status = str(getattr(info.status, "value", info.status))
                if node is None and getattr(info, "driver_node_id", None):
                    node = self.node_name(info.driver_node_id)
                    attempt.record(node=node)
                if status in TERMINAL:
                    break
                cancel = getattr(attempt, "cancel", None)
                if cancel is not None and cancel.is_set() and sid not in self._stopped:
                    self._stop_job(sid)  # Ctrl-C/abort: the scheduler stops its attempts
                if status == "PENDING" and time.time() - pending_checked > 10:
                    pending_checked = time.time()
                    why = self.unsatisfiable()
                    if why:
                        self.client.stop_job(sid)
                        raise RayExecutorError(f"executor ray: task {attempt.task_id}: {why}")
                if status == "RUNNING" and attempt.timeout and time.time() - began > attempt.timeout + 300:
                    self._log(attempt, f"Ray job {sid} overran its timeout by 300s: stopping it")
                    self.client.stop_job(sid)
                time.sleep(self.config.poll)
        finally:
            tail.finish(self.client)
            with self._lock:
                self._active.pop(sid, None)
        summary = tail.summary()
        status = str(getattr(info.status, "value", info.status)) if info else "LOST"
        interrupted = sid in self._stopped and summary is None
        if summary is not None:
            code, timed_out = int(summary["exit"]), bool(summary.get("timed_out"))
        elif info is not None and info.driver_exit_code is not None:
            code, timed_out = int(info.driver_exit_code), False
        else:
            code, timed_out = LOST_EXIT, False
        reason = (summary or {}).get("reason")
        if summary is None and not interrupted:
            message = (getattr(info, "message", None) or "the job is gone").strip().splitlines()
            reason = f"ray job {status.lower()}: {message[0] if message else status}"
            self._log(attempt, f"Ray job {sid} ended without a result: {reason}")
        commit = self._collect(attempt, start, result_ref)
        duration = summary.get("duration") if summary else None
        if duration is None and info is not None and info.start_time and info.end_time:
            duration = (info.end_time - info.start_time) / 1000.0
        return _result(task_id=attempt.task_id, exit_code=code, timed_out=timed_out,
                       duration=float(duration if duration is not None else time.time() - began),
                       interrupted=interrupted, reason=reason,
                       details={"submission_id": sid, "node": node, "ray_status": status, "head": commit})

    @contextlib.contextmanager
    def _remote(self, what):
        """A git failure against the remote is the cluster set-up's problem: one clear line (a
        resume re-attaches to the finished job and tries again). Exchanges go one at a time:
        git does not support concurrent fetches into one repository (three attempts collected
        at once after a resume failed once with "did not send all necessary objects")."""
        with self._remote_lock:
            try:
                yield
            except git.GitError as exc:
                raise RayExecutorError(f"executor ray: cannot {what} the remote {self.config.remote}: "
                                       f"{exc.detail}") from None

    def _collect(self, attempt, start, result_ref):
        """`auto/TASK` := the attempt's pushed result (or its start, when nothing was pushed)."""
        with self._remote("bring the attempt's result into " + attempt.branch + " from"):
            local = "refs/orchestrator/incoming/" + result_ref[len("refs/orchestrator/"):]
            commit = git.fetch_ref(self.repo, self.config.remote, result_ref, local)
            if commit:
                git.set_branch(self.repo, attempt.branch, commit)
                git.delete_ref(self.repo, local)
            elif not git.branch_exists(self.repo, attempt.branch):
                git.set_branch(self.repo, attempt.branch, start)
            start_ref = result_ref.rsplit("/", 1)[0] + "/base-" + result_ref.rsplit("-", 1)[1]
            git.delete_remote_refs(self.repo, self.config.remote, start_ref, result_ref)
        return commit


class _Tail(threading.Thread):
    """Appends a job's log to the task's log as it is produced (websocket tail), keeping the
    last lines to read the worker's summary."""

    def __init__(self, client, sid, log_path):
        super().__init__(daemon=True, name=f"ray-tail-{sid}")
        self.client, self.sid, self.log_path = client, sid, log_path
        self.written = 0
        self.last = ""
        self._lock = threading.Lock()
        self._closed = False
        self._loop = self._task = None
        self._ready = threading.Event()

    def _write(self, text):
        with self._lock:
            if not self._closed:
                self._append(text)

    def run(self):
        import asyncio  # (only here: a local run reads this module's configuration, never streams)

        async def follow():
            async for chunk in self.client.tail_job_logs(self.sid):
                self._write(chunk)

        self._loop = asyncio.new_event_loop()
        try:
            self._task = self._loop.create_task(follow())
            self._ready.set()
            self._loop.run_until_complete(self._task)
        except (asyncio.CancelledError, Exception):  # cancelled, or a lost node closed the stream
            pass
        finally:
            self._ready.set()
            self._loop.close()

    def finish(self, client):
        """The job has ended: stop streaming, then add from the stored log (the same text from
        its beginning) whatever the stream had not delivered yet."""
        self._ready.wait(5)
        with self._lock:
            self._closed = True  # the stream writes no more
        if self._task is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._task.cancel)
            except RuntimeError:  # the loop closed meanwhile
                pass
        try:
            text = client.get_job_logs(self.sid)
        except Exception:  # the node holding the log is gone: keep what was streamed
            return
        with self._lock:
            if len(text) > self.written:
                self._append(text[self.written:])

    def _append(self, text):
        with store.open_append(self.log_path, binary=False) as fh:
            fh.write(text)
        self.written += len(text)
        self.last = (self.last + text)[-8192:]

    def summary(self):
        for line in reversed(self.last.splitlines()):
            if line.startswith("ORCHESTRATOR_ATTEMPT_END "):
                try:
                    return json.loads(line[len("ORCHESTRATOR_ATTEMPT_END "):])
                except ValueError:
                    return None
        return None


def backend_from(root, repo, plan_data=None, executor=None):
    """The backend a run uses: None for the local executor, else a RayBackend."""
    kind, config = load_config(root, plan_data, executor)
    return RayBackend(config, repo) if kind == "ray" else None


if __name__ == "__main__":  # pragma: no cover - a manual probe: python -m engine.ray_executor ADDRESS
    backend = RayBackend(RayConfig(address=sys.argv[1], remote="."), os.getcwd())
    print(json.dumps(backend.alive_nodes(), indent=1))
