"""The task machine alone (no run): its edges, the retry policy, persistence, and each
state handler driven through a context on a real repository, without the runner."""

import os
import time

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from engine import store, tasks
from engine.context import Options, RunContext
from engine.errors import OrchestratorError
from engine.paths import Layout
from engine.progress import Progress
from engine.tasks import EDGES, IllegalTaskTransition, TaskBook, TaskStatus as S

TRIGGERS = sorted({trigger for trigger, _, _ in EDGES})


def book(root, retries=2):
    layout = Layout(str(root))
    os.makedirs(layout.claude, exist_ok=True)
    return TaskBook(Progress(layout), store.Journal(layout.journal), retries), layout


def journal_records(layout):
    return [r for r in store.Journal(layout.journal).records() if r["event"] == "task"]


def test_the_happy_path_is_persisted_and_journaled(tmp_path):
    b, layout = book(tmp_path)
    for trigger in ("start", "agent_done", "verify", "approve", "merge", "merged"):
        b.fire("t", trigger)
    assert b.status("t") == S.MERGED
    with open(os.path.join(layout.claude, "auto-progress.yaml")) as fh:
        assert yaml.safe_load(fh)["tasks"]["t"]["status"] == "merged"
    assert [(r["src"], r["dst"]) for r in journal_records(layout)] == [
        ("pending", "running"), ("running", "executed"), ("executed", "verifying"), ("verifying", "approved"),
        ("approved", "merging"), ("merging", "merged")]


def test_an_illegal_event_raises_and_changes_nothing(tmp_path):
    b, layout = book(tmp_path)
    b.fire("t", "start")
    before = open(os.path.join(layout.claude, "auto-progress.yaml")).read()
    with pytest.raises(IllegalTaskTransition) as exc:
        b.fire("t", "merged")
    assert "not allowed in status running" in str(exc.value) and "agent_done" in str(exc.value)
    assert open(os.path.join(layout.claude, "auto-progress.yaml")).read() == before
    assert len(journal_records(layout)) == 1


def test_retries_count_agent_failures_rejections_and_conflicts_together(tmp_path):
    b, _ = book(tmp_path, retries=2)
    b.fire("t", "start")
    assert b.setback("t", "agent", "agent exit 1") == S.PENDING           # retry 1
    for trigger in ("start", "agent_done", "verify"):
        b.fire("t", trigger)
    assert b.setback("t", "qa", "QA rejected") == S.REJECTED              # retry 2
    for trigger in ("start", "agent_done", "verify", "approve", "merge"):
        b.fire("t", trigger)
    assert b.setback("t", "conflict", "merge conflict in a.txt") == S.FAILED  # the third setback
    entry = b.entry("t")
    assert entry["retry_count"] == 2 and entry["failure"] == "merge conflict in a.txt; retries exhausted (2)"


def test_costs_are_per_attempt_and_summed_for_the_task_and_the_run(tmp_path):
    b, _ = book(tmp_path)
    b.record_attempt("a", 1, kind="agent", cost_usd=0.25, tokens_in=100, session_id="s1")
    b.record_attempt("a", 1, cost_usd=0.5)  # a live update of the same attempt
    b.record_attempt("a", 2, kind="agent", cost_usd=0.25, turns=3, session_id="s2")
    b.record_attempt("b", 1, kind="agent", cost_usd=1.0)
    b.record_attempt("b", 2, kind="agent", cost_usd=True, turns="x")  # not numbers: not counted
    b.record_attempt("b", 3, kind="rebase")
    data = b.progress.load()
    assert data["tasks"]["a"]["cost_usd"] == 0.75 and data["tasks"]["a"]["session_id"] == "s2"
    assert data["tasks"]["a"]["tokens_in"] == 100 and data["tasks"]["a"]["turns"] == 3
    assert data["cost_usd"] == 1.75
    assert [a["n"] for a in data["tasks"]["a"]["attempts"]] == [1, 2]


def test_the_transitions_machine_and_the_table_agree():
    m = tasks.machine()
    for trigger, sources, dest in EDGES:
        for source in S:
            if source in sources:
                assert tasks.next_status(source, trigger) == dest
            else:
                with pytest.raises(IllegalTaskTransition):
                    tasks.next_status(source, trigger)
    assert set(m.events) == set(TRIGGERS)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(TRIGGERS + ["setback-agent", "setback-qa", "setback-conflict"]), max_size=25))
def test_any_event_sequence_follows_the_model(tmp_path_factory, events):
    """Against a model of the table: each event either moves exactly as the table says or is
    refused; the file, the journal and the model agree; retries never exceed the limit."""
    b, layout = book(tmp_path_factory.mktemp("m"), retries=2)
    table = tasks.TARGET
    status, used, fired = S.PENDING, 0, 0
    for event in events:
        if event.startswith("setback-"):
            kind = event.split("-", 1)[1]
            trigger = tasks.SETBACKS[kind] if used < 2 else "fail"
            if (trigger, status) not in table:
                with pytest.raises(IllegalTaskTransition):
                    b.setback("t", kind, "why")
                continue
            assert b.setback("t", kind, "why") == table[(trigger, status)]
            used += trigger != "fail"
        elif (event, status) in table:
            assert b.fire("t", event) == table[(event, status)]
        else:
            with pytest.raises(IllegalTaskTransition):
                b.fire("t", event)
            continue
        status = table[(trigger if event.startswith("setback-") else event, status)]
        fired += 1
        assert b.status("t") == status
    assert len(journal_records(layout)) == fired
    assert int(b.entry("t").get("retry_count") or 0) == used <= 2


# ---------------------------------------------------------------------------------- handlers
@pytest.fixture
def ctx(repo, tmp_path):
    """A run context on a real repository with a 3-task plan recorded, no runner."""
    plan = tmp_path / "plan.yaml"
    plan.write_text("base: main\nagent: 'true'\ntasks:\n  - {id: a}\n  - {id: b}\n  - {id: c, depends_on: [a]}\n")
    context = RunContext(Layout(str(repo)), Options(quiet=True))
    context.progress.update(lambda d: d.update(plan_file=str(plan), base="main", run_id="r"))
    return context


def test_decompose_then_parallelize_choose_the_scope(ctx):
    from states import decompose, parallelize

    assert decompose.handle(ctx) == "PARALLELIZE"
    assert parallelize.handle(ctx) == "EXECUTE"
    assert ctx.scope_tasks() == ["a", "b"]
    ctx.options.all_groups = True
    assert parallelize.handle(ctx) == "EXECUTE" and ctx.scope_tasks() == ["a", "b", "c"]


def test_qa_sends_an_unfinished_scope_back_to_execute_and_records_verdicts(ctx):
    from states import decompose, parallelize, qa

    decompose.handle(ctx)
    parallelize.handle(ctx)
    ctx.tasks.fire("a", "start")
    assert qa.handle(ctx) == "EXECUTE"
    ctx.tasks.fail("a", "x")
    for trigger in ("start", "agent_done", "verify", "approve", "merge", "merged"):
        ctx.tasks.fire("b", trigger)
    assert qa.handle(ctx) == "INTEGRATE"
    assert ctx.progress.load()["parallel_groups"]["group_1"]["qa"] == {"merged": ["b"], "blocked": [],
                                                                       "failed": ["a"]}


def test_checkpoint_stops_at_the_boundary_and_completes_at_the_end(ctx):
    from states import checkpoint, decompose, parallelize

    decompose.handle(ctx)
    parallelize.handle(ctx)
    for t in ("a", "b"):
        ctx.tasks.fail(t, "x")
    assert checkpoint.handle(ctx) == "PARALLELIZE" and ctx.stop_requested
    assert os.path.exists(os.path.join(ctx.layout.claude, "auto-memory", "parallel-group-1-failed.yaml"))
    ctx.stop_requested = False
    parallelize.handle(ctx)
    ctx.tasks.fail("c", "x")
    assert checkpoint.handle(ctx) == "COMPLETE"


def test_the_runs_last_checkpoint_cleans_the_pool_beside_its_memory_and_reports_what_failed(ctx, monkeypatch):
    """At the run's end the pool's cleanup runs in a thread while the memory files are written:
    the handler returns only once both are done, and a cleanup that fails fails the handler
    (nothing lost in the thread), with the memory files written all the same."""
    import threading

    from states import checkpoint, decompose, parallelize

    ctx.options.all_groups = True
    decompose.handle(ctx)
    parallelize.handle(ctx)
    for t in ("a", "b", "c"):
        ctx.tasks.fail(t, "x")
    finished = threading.Event()

    def slow_finish(context):
        time.sleep(0.3)
        finished.set()
        return "COMPLETE"
    monkeypatch.setattr(checkpoint, "finish", slow_finish)
    assert checkpoint.handle(ctx) == "COMPLETE" and finished.is_set()

    def failing_finish(context):
        raise OrchestratorError("cannot clean up the pool")
    monkeypatch.setattr(checkpoint, "finish", failing_finish)
    os.unlink(os.path.join(ctx.layout.claude, "auto-memory", "parallel-group-1-failed.yaml"))
    with pytest.raises(OrchestratorError, match="cannot clean up the pool"):
        checkpoint.handle(ctx)
    assert os.path.exists(os.path.join(ctx.layout.claude, "auto-memory", "parallel-group-1-failed.yaml"))


def test_integrate_settles_a_branch_the_base_already_contains(ctx, repo):
    from states import decompose, integrate, parallelize
    from tests.conftest import git

    decompose.handle(ctx)
    parallelize.handle(ctx)
    git(repo, "branch", "auto/a", "main")  # its work is (trivially) in the base already
    for trigger in ("start", "agent_done", "verify", "approve", "merge"):
        ctx.tasks.fire("a", trigger)
    assert integrate.handle(ctx) == "CHECKPOINT"
    assert ctx.tasks.status("a") == S.MERGED
    assert git(repo, "branch", "--list", "auto/a") == ""


def approved_with_work(ctx, repo):
    """Task a decomposed, its branch holding one commit, taken through to `approved`; its tip."""
    from states import decompose, parallelize
    from tests.conftest import branch_with, git

    decompose.handle(ctx)
    parallelize.handle(ctx)
    branch_with(repo, "auto/a", {"a.txt": "a\n"})
    tip = git(repo, "rev-parse", "auto/a")
    for trigger in ("start", "agent_done", "verify"):
        ctx.tasks.fire("a", trigger)
    ctx.tasks.fire("a", "approve", approved_tip=tip)
    return tip


def test_settle_knows_a_merged_task_whose_branch_a_killed_release_deleted(ctx, repo):
    """Killed right after the base moved: the task is still `merging`, and the killed run's
    slot release may already have deleted the branch (the base contains it). The tip recorded
    at approval says it is merged; without it the next merge found no branch and failed it."""
    from tests.conftest import git

    approved_with_work(ctx, repo)
    ctx.tasks.fire("a", "merge")
    git(repo, "merge", "-q", "--no-ff", "-m", "feat: Merge auto/a", "auto/a")  # the base moved...
    git(repo, "branch", "-D", "auto/a")  # ...and the release dropped the contained branch: then the kill
    ctx.merges.settle(["a"])
    assert ctx.tasks.status("a") == S.MERGED


def test_a_merge_wakes_the_scheduler_once_recorded_before_its_clean_up(ctx, repo):
    """A dependent may start as soon as its dependency is recorded merged: the merge's
    `on_recorded` (the scheduler's wake-up) comes then, not after the merged branches are
    deleted and the merge's outcome journaled, which a dependent's start never waited for."""
    from tests.conftest import git

    tip = approved_with_work(ctx, repo)
    seen = []

    def on_recorded():
        in_base = git(repo, "rev-parse", "main") != tip and git(repo, "merge-base", "--is-ancestor", tip, "main") == ""
        seen.append((ctx.tasks.status("a"), in_base, bool(git(repo, "branch", "--list", "auto/a")),
                     ctx.journal.records()[-1]["event"]))
    assert ctx.merges.merge(["a"], on_recorded=on_recorded) == {"a": S.MERGED}
    assert seen == [(S.MERGED, True, True, "task")]  # recorded, in the base; branch and outcome after
    assert git(repo, "branch", "--list", "auto/a") == "" and ctx.journal.records()[-1]["event"] == "merge-done"


RACE = r'''
import importlib.abc, importlib.machinery, sys, threading, time
from engine import tasks

inside = threading.Event()


class SlowLoader(importlib.abc.Loader):
    """Makes the package's module slowly: its import lock is taken, the module not yet in
    sys.modules, and no global import lock held (a finder runs under it), the window in which
    another thread's import of the submodule locks the submodule and then waits for the package."""

    def __init__(self, real):
        self.real = real

    def create_module(self, spec):
        inside.set()
        time.sleep(0.3)
        return None

    def exec_module(self, module):
        self.real.exec_module(module)


class SlowPackage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "transitions" or threading.current_thread() is not threading.main_thread():
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        spec.loader = SlowLoader(spec.loader)
        return spec


sys.meta_path.insert(0, SlowPackage())
errors = []


def first_event():
    inside.wait()
    try:
        tasks.next_status(tasks.TaskStatus.PENDING, "start")
    except Exception as exc:
        errors.append(repr(exc))


worker = threading.Thread(target=first_event)
worker.start()
try:
    tasks.machine()
except Exception as exc:
    errors.append(repr(exc))
worker.join()
print(errors)
'''


def test_a_task_event_while_the_main_thread_builds_the_machine_is_no_import_deadlock():
    """The scheduler builds the task machine in the main thread while the first workers may
    already fire events. The event's `from transitions.core import ...` took the submodule's
    import lock while the main thread ran the package's __init__ (which imports .core): Python
    broke the cycle with _DeadlockError, and CI's Ray kill campaign had a resume exit 70 with it."""
    import subprocess

    from tests.conftest import PYTHON, ROOT

    out = subprocess.run([PYTHON, "-c", RACE], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
