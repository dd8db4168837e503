"""`orchestrator dashboard` against real runs of the demo plan: the JSON it serves, what it
refuses, and that it keeps serving while the run's files are rewritten under it."""

import http.client
import json
import os
import re
import subprocess
import time

import pytest
from hypothesis import given, settings, strategies as st

from engine import demo
from tests.conftest import PYTHON, git, python_env

TASKS = ["models", "utils", "config", "api", "cli", "tests", "docs"]
HOSTILE = '<img src=x onerror="window.__pwned=1"></script><script>window.__pwned=2</script> & "quotes"'


# ---------------------------------------------------------------------------- helpers
def orchestrator(repo, *args, env=None, check=True):
    proc = subprocess.run([PYTHON, "-m", "engine.cli.orchestrator", *args], cwd=repo, env=env or python_env(),
                          capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc
    return proc


def plan_with(path, extra_tasks=""):
    """The demo plan, optionally with more tasks (same fake agent and check command)."""
    demo.write_plan(path)
    if extra_tasks:
        with open(path, "a") as fh:
            fh.write(extra_tasks)
    return path


def hostile_task(task_id="evil", depends_on="docs"):
    description = json.dumps(HOSTILE)  # a JSON string is a valid YAML scalar
    check = demo.check_command()
    return (f"  - {{id: {task_id}, description: {description}, depends_on: [{depends_on}], "
            f"verify: \"{check} {task_id}\", expected_output: {task_id} ok}}\n")


def start_run(repo, plan, sleep, **env):
    """`orchestrator run --all-groups PLAN` in the background; the caller stops or waits for it."""
    run_env = dict(python_env(), DEMO_AGENT_SLEEP=str(sleep), **env)
    return subprocess.Popen([PYTHON, "-m", "engine.cli.orchestrator", "run", "--all-groups", "--quiet", plan],
                            cwd=repo, env=run_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Dashboard:
    """`orchestrator dashboard` as a real subprocess, read over HTTP like the page reads it."""

    timeout = 30  # seconds a request may take

    def __init__(self, repo, *args, env=None):
        self.proc = subprocess.Popen([PYTHON, "-m", "engine.cli.orchestrator", "dashboard", *args], cwd=repo,
                                     env=env or python_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        line = self.proc.stdout.readline()
        match = re.fullmatch(r"Dashboard: http://127\.0\.0\.1:(\d+)/\n", line)
        assert match, (line, self.proc.stderr.read() if self.proc.poll() is not None else "")
        self.port = int(match.group(1))
        self.url = f"http://127.0.0.1:{self.port}/"

    def request(self, path, method="GET", host=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            conn.putrequest(method, path, skip_host=True)
            conn.putheader("Host", host or f"127.0.0.1:{self.port}")
            conn.endheaders()
            res = conn.getresponse()
            return res.status, dict(res.getheaders()), res.read()
        finally:
            conn.close()

    def get(self, path, status=200):
        code, _, body = self.request(path)
        assert code == status, (path, code, body[:300])
        return json.loads(body)

    def snapshot(self):
        return self.get("/api/snapshot")

    def wait(self, predicate, timeout=60, what="condition"):
        deadline = time.time() + timeout
        snap = None
        while time.time() < deadline:
            snap = self.snapshot()
            if predicate(snap):
                return snap
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}: {json.dumps(snap)[:2000]}")

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def demo_repo(sealed_env, tmp_path, monkeypatch):
    repo = demo.make_repo(str(tmp_path / "d"))
    monkeypatch.chdir(repo)
    return repo, str(tmp_path / "d" / "plan.yaml")


@pytest.fixture
def dashboards():
    opened = []

    def open_dashboard(repo, *args):
        board = Dashboard(repo, *args)
        opened.append(board)
        return board

    yield open_dashboard
    for board in opened:
        board.close()


def by_id(snap):
    return {t["id"]: t for t in snap["tasks"]}


# ---------------------------------------------------------------------------- a finished run
def test_finished_demo_run_graph_timeline_totals_and_task_views(demo_repo, dashboards):
    repo, plan = demo_repo
    plan_with(plan)
    orchestrator(repo, "run", "--all-groups", "--quiet", plan, env=dict(python_env(), DEMO_AGENT_SLEEP="0.05",
                                                                         DEMO_FLAKY="cli"))
    board = dashboards(repo)
    snap = board.snapshot()
    tasks = by_id(snap)
    assert sorted(tasks) == sorted(TASKS)
    assert {t["status"] for t in tasks.values()} == {"merged"}
    assert snap["run"]["status"] == "complete" and snap["machine"]["state"] == "COMPLETE"
    # the DAG by dependency layers, every edge pointing to a later layer
    assert [sorted(layer) for layer in snap["layers"]] == [["config", "models", "utils"], ["api", "cli"],
                                                           ["docs", "tests"]]
    for t in tasks.values():
        assert all(tasks[d]["layer"] < t["layer"] for d in t["depends_on"])
    # the critical path is a dependency chain from a root to a leaf, flagged on its tasks
    path = snap["critical_path"]
    assert len(path) == 3 and tasks[path[0]]["depends_on"] == []
    assert all(a in tasks[b]["depends_on"] for a, b in zip(path, path[1:]))
    assert {t for t in tasks if tasks[t]["critical"]} == set(path)
    # the timeline: one bar per attempt, on the slots the attempts ran in; cli ran twice
    bars = snap["gantt"]["bars"]
    assert sorted(b["n"] for b in bars if b["task"] == "cli" and b["kind"] == "agent") == [1, 2]
    assert {b["kind"] for b in bars} <= {"agent", "rebase", "qa", "merge"}
    assert all(b["n"] in (1, None) for b in bars if b["task"] != "cli")
    assert {b["slot"] for b in bars} <= set(snap["gantt"]["slots"])
    assert len([s for s in snap["gantt"]["slots"] if s != "merge queue"]) <= 3
    assert all(b["end"] is not None and b["end"] >= b["start"] for b in bars)
    totals = snap["totals"]
    assert (totals["merged"], totals["failed"], totals["running"], totals["tasks"]) == (7, 0, 0, 7)
    assert totals["agents"] == 3
    assert totals["lower_bound"] == pytest.approx(max(totals["critical_path"], totals["total_work"] / 3))
    assert totals["makespan"] >= totals["lower_bound"] - 1  # journal times have one-second resolution
    assert snap["attention"] == [] and snap["warnings"] == []
    # per task: attempts history, QA output, log, diff against the base
    detail = board.get("/api/task/cli")
    # (agent attempts 1 and 2; a rebase's look between them when the base had moved meanwhile)
    assert [a["n"] for a in detail["attempts"] if a.get("kind", "agent") == "agent"] == [1, 2]
    assert any("bug" in q["text"] for q in detail["qa"])  # what QA saw on the rejected attempt
    log = board.get("/api/task/cli/log")
    assert "agent cli: attempt 1" in log["text"] and "agent cli: attempt 2" in log["text"]
    for t in TASKS:  # each task's own change (not its dependencies', not a batch-mate's), after the merge
        diff = board.get(f"/api/task/{t}/diff")
        assert f"+++ b/app/{t}.py" in diff["text"] and f'return "{t} ok"' in diff["text"], (t, diff)
        assert re.findall(r"^\+\+\+ b/(.*)$", diff["text"], re.M) == [f"app/{t}.py"], (t, diff)
    # the page and its assets, with a policy that forbids inline script
    code, headers, body = board.request("/")
    assert code == 200 and b'<script src="/app.js"' in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    for asset in ("/app.js", "/style.css"):
        assert board.request(asset)[0] == 200


def test_only_reads_and_only_the_project(demo_repo, dashboards, tmp_path):
    repo, plan = demo_repo
    plan_with(plan)
    orchestrator(repo, "run", "--all-groups", "--quiet", plan, env=dict(python_env(), DEMO_AGENT_SLEEP="0"))
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET\n")
    os.unlink(os.path.join(repo, ".claude", "auto-logs", "models.log"))
    os.symlink(str(secret), os.path.join(repo, ".claude", "auto-logs", "models.log"))
    os.unlink(os.path.join(repo, ".claude", "auto-logs", "utils.log"))
    os.link(str(secret), os.path.join(repo, ".claude", "auto-logs", "utils.log"))  # a hard link: same file

    def disk():
        claude = os.path.join(repo, ".claude")
        return ({p: os.stat(os.path.join(claude, p)).st_mtime_ns for p in os.listdir(claude)},
                git(repo, "--no-optional-locks", "status", "--porcelain"), git(repo, "for-each-ref"),
                os.stat(os.path.join(repo, ".git", "index")).st_mtime_ns)

    before = disk()
    board = dashboards(repo)
    assert "+++ b/app/api.py" in board.get("/api/task/api/diff")["text"]
    assert board.get("/api/task/models/log")["exists"] is False  # a symlink is not followed
    assert board.get("/api/task/utils/log")["exists"] is False  # nor a hard link to a file elsewhere
    for path in ("/api/task/..%2F..%2Fsecret.txt/log", "/api/task/../log", "/api/task/nosuch", "/api/task/%2e%2e/log",
                 "/api/task/models%00/log", "/etc/passwd", "/static/../server.py", "/api/task/"):
        code, _, body = board.request(path)
        assert code == 404 and b"SECRET" not in body, path
    for method in ("POST", "PUT", "DELETE"):
        assert board.request("/api/snapshot", method=method)[0] == 405
    assert board.request("/api/snapshot", host="evil.example:80")[0] == 403  # DNS rebinding
    assert board.request("/api/snapshot", host=f"localhost:{board.port}")[0] == 200
    assert disk() == before  # nothing written: not a state file, not a ref, not the index


def test_cli_refuses_a_remote_bind_and_a_busy_port(demo_repo, dashboards):
    repo, _ = demo_repo
    r = orchestrator(repo, "dashboard", "--host", "0.0.0.0", check=False)
    assert r.returncode == 1 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and "--allow-remote" in r.stderr
    board = dashboards(repo)
    r = orchestrator(repo, "dashboard", "--port", str(board.port), check=False)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and "cannot listen" in r.stderr
    snap = board.snapshot()  # no run yet: an empty page, not an error
    assert snap["has_run"] is False and snap["tasks"] == []


# ---------------------------------------------------------------------------- a live run
def test_running_task_slot_timeline_and_streamed_log(demo_repo, dashboards):
    repo, plan = demo_repo
    plan_with(plan)
    board = dashboards(repo)  # opened before the run starts, as a person would
    run = start_run(repo, plan, sleep=2.5)
    try:
        snap = board.wait(lambda s: any(t["running"] for t in s["tasks"]), what="a running task")
        running = [t for t in snap["tasks"] if t["running"]]
        task = running[0]
        assert task["status"] == "running" and task["slot"] and task["attempt"] == 1
        assert snap["totals"]["running"] == len(running) and snap["run"]["status"] == "running"
        assert snap["machine"]["state"] == "EXECUTE"
        assert any(b["task"] == task["id"] and b["end"] is None for b in snap["gantt"]["bars"])
        deadline = time.time() + 10
        first = board.get(f"/api/task/{task['id']}/log")
        while f"{task['id']}:" not in first["text"] and time.time() < deadline:  # the header follows the start
            time.sleep(0.05)
            first = board.get(f"/api/task/{task['id']}/log")
        assert f"{task['id']}:" in first["text"] and "agent " not in first["text"]  # started, no output yet
        streamed, offset, inode = "", first["next"], first["inode"]
        deadline = time.time() + 30
        while f"agent {task['id']}: attempt 1" not in streamed and time.time() < deadline:
            chunk = board.get(f"/api/task/{task['id']}/log?offset={offset}&inode={inode}")
            assert chunk["reset"] is False and chunk["offset"] == offset
            streamed += chunk["text"]
            offset = chunk["next"]
            time.sleep(0.1)
        assert f"agent {task['id']}: attempt 1" in streamed  # arrived as new bytes after what was shown
    finally:
        orchestrator(repo, "abort", check=False)
        run.wait(timeout=30)
    snap = board.wait(lambda s: s["run"]["status"] == "aborted", what="the aborted run")
    assert any(n["level"] == "error" for n in snap["notices"])


def test_failed_and_permission_blocked_tasks_need_a_person(demo_repo, dashboards):
    from engine.paths import Layout
    from engine.progress import Progress

    repo, plan = demo_repo
    plan_with(plan, hostile_task())
    orchestrator(repo, "run", "--all-groups", "--quiet", plan,
                 env=dict(python_env(), DEMO_AGENT_SLEEP="0", DEMO_BROKEN="config"), check=False)
    board = dashboards(repo)
    snap = board.snapshot()
    tasks = by_id(snap)
    assert tasks["config"]["status"] == "failed"
    need = {a["task"]: a for a in snap["attention"]}
    assert need["config"]["status"] == "failed" and need["config"]["reason"] and need["config"]["todo"]
    assert need["config"]["waits_on"] == [] and "orchestrator retry config" in need["config"]["todo"]
    # cli depends on config: it never runs, and says it waits on config, after the cause
    assert tasks["cli"]["status"] == "failed" and need["cli"]["waits_on"] == ["config"]
    assert "never ran because config" in need["cli"]["todo"]
    order = [a["task"] for a in snap["attention"]]
    assert order.index("config") < order.index("cli")
    assert tasks["evil"]["name"] == HOSTILE  # hostile data is served as data, exactly
    assert board.get("/api/task/config/diff")["text"].count('return "bug"') == 1  # the kept branch's change
    # A `claude` agent that ended with permission denials (the preset records the tools):
    Progress(Layout(repo)).set_task("models", status="blocked_permission", permission_denials=["Bash", "WebFetch"])
    snap = board.wait(lambda s: any(a["task"] == "models" for a in s["attention"]), what="the blocked task")
    blocked = next(a for a in snap["attention"] if a["task"] == "models")
    assert "Bash, WebFetch" in blocked["reason"] and "Allow" in blocked["todo"]
    assert snap["totals"]["failed"] >= 2

    # cost and tokens as the claude preset records them: per attempt, summed on the task and the run
    def usage(data):
        data["tasks"]["api"]["attempts"] = [
            dict(data["tasks"]["api"]["attempts"][0] if data["tasks"]["api"].get("attempts") else {},
                 n=1, kind="agent", slot="wt-1", started_at="2026-01-01T00:00:00Z", ended_at="2026-01-01T00:01:00Z",
                 cost_usd=0.25, tokens_in=1000, tokens_out=200)]
        data["tasks"]["docs"].update(cost_usd=0.5, tokens_in=3000, tokens_out=400)
        data.pop("cost_usd", None)

    Progress(Layout(repo)).update(usage)
    snap = board.wait(lambda s: by_id(s)["api"]["cost_usd"] == 0.25, what="the recorded cost")
    tasks = by_id(snap)
    assert (tasks["api"]["tokens_in"], tasks["api"]["tokens_out"]) == (1000, 200)
    assert snap["totals"]["cost_usd"] == pytest.approx(0.75) and snap["totals"]["tokens_in"] == 4000
    Progress(Layout(repo)).update(lambda data: data.update(cost_usd=1.5))  # the run's own total wins
    assert board.wait(lambda s: s["totals"]["cost_usd"] == 1.5, what="the run's cost")


# ---------------------------------------------------------------------------- files rewritten under it
def test_serves_the_last_good_state_through_torn_and_corrupt_files(demo_repo):
    from engine.dashboard.model import RunModel

    repo, plan = demo_repo
    plan_with(plan)
    orchestrator(repo, "run", "--all-groups", "--quiet", plan, env=dict(python_env(), DEMO_AGENT_SLEEP="0"))
    claude = os.path.join(repo, ".claude")
    progress = os.path.join(claude, "auto-progress.yaml")
    journal = os.path.join(claude, "auto-journal.jsonl")
    good = open(progress).read()
    model = RunModel(repo)
    first = model.snapshot()
    assert len(first["tasks"]) == 7 and first["warnings"] == []
    bars = len(first["gantt"]["bars"])

    with open(progress, "w") as fh:  # a half-written, non-atomic edit
        fh.write(good[: len(good) // 2] + "\n  - [unbalanced: {\n")
    with open(journal, "a") as fh:  # a torn append
        fh.write('{"seq": 999, "event": "agent-start", "task": "mo')
    snap = model.snapshot()
    assert [t["id"] for t in snap["tasks"]] == [t["id"] for t in first["tasks"]]
    assert any("auto-progress.yaml" in w for w in snap["warnings"])
    assert len(snap["gantt"]["bars"]) == bars

    os.unlink(progress)  # gone for a moment (between an unlink and a rename)
    assert len(model.snapshot()["tasks"]) == 7
    assert len(RunModel(repo).snapshot()["tasks"]) == 0  # a cold start without the file: no run

    with open(progress, "w") as fh:
        fh.write("tasks: [this is: not a mapping\n")
    cold = RunModel(repo).snapshot()  # a cold start on a corrupt file: `.last-good` is used
    assert len(cold["tasks"]) == 7 and cold["warnings"]

    with open(progress + ".tmp", "w") as fh:  # the writer's atomic rename puts things right
        fh.write(good.replace("status: merged", "status: failed", 1))
    os.replace(progress + ".tmp", progress)
    with open(journal, "a") as fh:
        fh.write('del", "slot": "wt-9"}\n')  # completes the torn line: it fails its checksum
    snap = model.snapshot()
    assert snap["warnings"] == [] and snap["totals"]["failed"] == 1
    assert len(snap["gantt"]["bars"]) == bars and "wt-9" not in snap["gantt"]["slots"]

    os.replace(journal, journal + ".old")  # the journal replaced by a new file: read from the start
    with open(journal, "w"):
        pass
    snap = model.snapshot()
    assert model.journal.offset == 0 and len(snap["tasks"]) == 7
    assert len(snap["gantt"]["bars"]) == 7  # attempts now from started_at + elapsed (cli's two merged in one)


def test_a_long_journal_is_read_in_bounded_chunks(demo_repo, monkeypatch):
    from engine import store
    from engine.dashboard import model as dashboard_model
    from engine.paths import Layout

    repo, _ = demo_repo
    journal = store.Journal(Layout(repo).journal)
    for n in range(40):
        journal.append("agent-start", task=f"t{n % 4}", slot=f"wt-{n % 3}", attempt=n // 4 + 1)
    with open(journal.path, "a") as fh:
        fh.write("x" * 700 + "\n")  # a junk line longer than a chunk
    journal.append("agent-start", task="last", slot="wt-1", attempt=1)
    monkeypatch.setattr(dashboard_model, "JOURNAL_CHUNK", 500)
    source = dashboard_model.RunModel(repo).journal
    loads = 0
    while source.offset < os.path.getsize(journal.path) and loads < 100:
        source.load()
        loads += 1
    assert loads > 5  # several polls, each reading at most a chunk
    assert sum(len(v) for v in source.attempts.values()) == 41 and "last" in source.attempts


# ---------------------------------------------------------------------------- the graph rules
def dags():
    return st.integers(1, 9).flatmap(lambda n: st.tuples(
        st.lists(st.floats(0, 100), min_size=n, max_size=n),
        st.lists(st.lists(st.integers(0, n - 1), max_size=3), min_size=n, max_size=n)))


@settings(max_examples=150, deadline=None)
@given(dags())
def test_critical_path_is_the_heaviest_chain_and_layers_respect_dependencies(dag):
    from engine.dashboard.model import critical_path, layers_of

    weights, raw = dag
    ids = [f"t{i}" for i in range(len(weights))]
    deps = {ids[i]: sorted({ids[j] for j in raw[i] if j < i}) for i in range(len(ids))}  # acyclic by index
    w = dict(zip(ids, weights))

    def heaviest(t):
        return w[t] + max((heaviest(d) for d in deps[t]), default=0.0)

    length, path = critical_path(ids, deps, w.get)
    assert length == pytest.approx(max(heaviest(t) for t in ids))
    assert sum(w[t] for t in path) == pytest.approx(length)
    assert all(a in deps[b] for a, b in zip(path, path[1:])) and deps[path[0]] == []
    layer = layers_of(ids, deps)
    assert all(layer[d] < layer[t] for t in ids for d in deps[t])
    assert all(layer[t] == 0 for t in ids if not deps[t])


def test_a_dependency_cycle_in_hostile_data_does_not_hang():
    from engine.dashboard.model import critical_path, layers_of

    deps = {"a": ["b"], "b": ["a"], "c": ["c"]}
    assert set(layers_of(list(deps), deps)) == {"a", "b", "c"}
    length, path = critical_path(list(deps), deps, lambda t: 1.0)
    assert length >= 1 and len(path) == len(set(path))


# ---------------------------------------------------------------------------- any file content
junk = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
                    | st.sampled_from(["running", "merged", "failed", "blocked_permission", "2026-01-01T00:00:00Z",
                                       "auto/x", "wt-1", "9999-12-31T23:59:59+14:00", "inf", "1e400"]),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                        st.sampled_from(["status", "attempts", "started_at", "ended_at", "elapsed", "depends_on",
                                         "slot", "n", "cost_usd", "tokens_in", "permission_denials", "iterations",
                                         "failure", "qa_feedback", "group", "node", "branch"]), inner, max_size=6),
                    max_leaves=20)


@settings(max_examples=100, deadline=None)
@given(tasks=st.dictionaries(st.sampled_from(["a", "b", "c", "../x", "", "d e"]), junk, max_size=4),
       run=st.dictionaries(st.sampled_from(["status", "started_at", "completed_at", "cost_usd", "orchestrator_pid",
                                            "current_group", "base", "plan_file"]), junk, max_size=5),
       machine=st.dictionaries(st.sampled_from(["current_state", "completed_phases", "last_transition"]), junk,
                               max_size=3))
def test_any_progress_content_gives_a_snapshot_of_plain_json(tasks, run, machine):
    from engine.dashboard.model import JournalSource, build_snapshot, normalized_attempts
    from engine.dashboard.files import ProjectFiles

    progress = dict(run, tasks=tasks)
    snap = build_snapshot(progress, machine, {}, JournalSource(ProjectFiles("/nonexistent"), "/nonexistent/journal"), None, [],
                          1800000000.0, "/p")
    json.dumps(snap, allow_nan=False)  # what the server sends: strict JSON
    assert {t["id"] for t in snap["tasks"]} <= {"a", "b", "c"}
    for entry in tasks.values():
        if isinstance(entry, dict):
            json.dumps(normalized_attempts(entry, (), 1800000000.0), allow_nan=False)
