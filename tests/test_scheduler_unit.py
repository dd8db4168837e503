"""The scheduler's merge-versus-start priority, driven alone: a plan and a table of task
statuses, no run, no git (engine.scheduler.Scheduler only reads `ctx.plan` and
`ctx.tasks.statuses` for it)."""

import threading
import time

import pytest

from engine import plan as plans
from engine import scheduler as scheduler_module
from engine.scheduler import Scheduler
from engine.tasks import TaskStatus as S


class _Book:
    def __init__(self, statuses):
        self.table = statuses

    def statuses(self, task_ids=None):
        ids = self.table if task_ids is None else task_ids
        return {t: self.table.get(t, S.PENDING) for t in ids}

    def status(self, task_id):
        return self.table.get(task_id, S.PENDING)

    def ids_in(self, statuses):
        return {t for t, s in self.table.items() if s in statuses}

    def count_in(self, statuses):
        return len(self.ids_in(statuses))

    def field(self, task_id, key, default=None):
        return default

    def entry(self, task_id):
        return {}


class _Reporter:
    def task(self, task_id, text):
        pass

    def line(self, text):
        pass


class _Ctx:
    def __init__(self, plan, statuses):
        self.plan = plan
        self.tasks = _Book(statuses)
        self.cancel = threading.Event()
        self.reporter = _Reporter()

    def run_budget(self):
        return self.plan.max_budget_usd


def _scheduler(tasks, statuses):
    plan = plans.from_data({"agent": "true", "tasks": tasks}, "plan.yaml", 4)
    return Scheduler(_Ctx(plan, statuses), list(plan.order), 2)


def _yield_in_thread(scheduler):
    done = threading.Event()
    thread = threading.Thread(target=lambda: (scheduler._let_starts_go_first(), done.set()), daemon=True)
    thread.start()
    return done


def test_a_merge_nobody_waits_for_lets_the_starting_task_go_first():
    s = _scheduler([{"id": "a"}, {"id": "b"}], {"a": S.APPROVED, "b": S.PENDING})
    s.launching.add("b")
    done = _yield_in_thread(s)
    assert not done.wait(0.2), "the merge went while b was still being started"
    s._launch_begun("b")
    assert done.wait(5), "the merge still waits after b's agent started"


def test_a_merge_a_waiting_task_depends_on_goes_at_once():
    s = _scheduler([{"id": "a"}, {"id": "b"}, {"id": "c", "depends_on": ["a"]}],
                   {"a": S.APPROVED, "b": S.PENDING, "c": S.PENDING})
    s.launching.add("b")
    start = time.monotonic()
    s._let_starts_go_first()
    assert time.monotonic() - start < 0.2  # c needs a merged: no waiting for b's start


def test_the_wait_has_a_bound(monkeypatch):
    """A start that never reports (a setup command that takes minutes) holds merges back
    only for START_FIRST."""
    monkeypatch.setattr(scheduler_module, "START_FIRST", 0.3)
    s = _scheduler([{"id": "a"}, {"id": "b"}], {"a": S.APPROVED, "b": S.PENDING})
    s.launching.add("b")
    start = time.monotonic()
    s._let_starts_go_first()
    assert 0.25 <= time.monotonic() - start < 3


@pytest.mark.parametrize("stop", ["stopping", "nothing launching"])
def test_no_wait_when_stopping_or_nothing_is_starting(stop):
    s = _scheduler([{"id": "a"}, {"id": "b"}], {"a": S.APPROVED, "b": S.PENDING})
    if stop == "stopping":
        s.launching.add("b")
        s.stopping.set()
    start = time.monotonic()
    s._let_starts_go_first()
    assert time.monotonic() - start < 0.2


def _gather_in_thread(scheduler):
    done = threading.Event()
    threading.Thread(target=lambda: (scheduler._gather_approvals(), done.set()), daemon=True).start()
    return done


def test_a_merge_nobody_waits_for_gathers_the_approvals_of_tasks_ending_with_it(monkeypatch):
    """Tasks ending together go into the base in one merge: a's merge waits while b's QA runs,
    and goes the moment b is approved (its approval wakes the merger)."""
    monkeypatch.setattr(scheduler_module, "GATHER", 30)
    s = _scheduler([{"id": "a"}, {"id": "b"}], {"a": S.APPROVED, "b": S.VERIFYING})
    done = _gather_in_thread(s)
    assert not done.wait(0.2), "the merge went while b was still in QA"
    s.ctx.tasks.table["b"] = S.APPROVED
    s.merge_wake.set()
    assert done.wait(5), "b approved, nothing else under way: the merge still waits"


@pytest.mark.parametrize("case", ["awaited", "nothing under way", "stopping"])
def test_no_gathering_for_an_awaited_merge_or_when_nothing_else_is_under_way(monkeypatch, case):
    monkeypatch.setattr(scheduler_module, "GATHER", 30)
    tasks = [{"id": "a"}, {"id": "b"}, {"id": "c", "depends_on": ["a"]}]
    statuses = {"a": S.APPROVED, "b": S.RUNNING, "c": S.PENDING}
    if case == "nothing under way":
        statuses["b"] = S.MERGED
    s = _scheduler(tasks if case == "awaited" else tasks[:2], statuses)
    if case == "stopping":
        s.stopping.set()
    assert _gather_in_thread(s).wait(5)


def test_the_gathering_has_a_bound(monkeypatch):
    """A task whose QA runs for minutes holds a merge back only for GATHER."""
    monkeypatch.setattr(scheduler_module, "GATHER", 0.3)
    s = _scheduler([{"id": "a"}, {"id": "b"}], {"a": S.APPROVED, "b": S.VERIFYING})
    start = time.monotonic()
    s._gather_approvals()
    assert 0.25 <= time.monotonic() - start < 3


def test_a_merge_waits_for_a_task_whose_agent_has_ended_and_not_for_one_whose_agent_runs(monkeypatch):
    """A task still RUNNING whose agent has exited (its worker checks the work: the agent's end
    and the approval are one write) is about to be approved: the merge gathers it. One whose
    agent still runs may run for seconds: the merge goes at once (at a run's end, waiting for
    it made the end GATHER later, as the DAG benchmark's last merges showed)."""
    monkeypatch.setattr(scheduler_module, "GATHER", 30)
    s = _scheduler([{"id": "a"}, {"id": "b"}], {"a": S.APPROVED, "b": S.RUNNING})
    start = time.monotonic()
    s._gather_approvals()
    assert time.monotonic() - start < 1, "the merge waited for an agent still at work"
    s.settling.add("b")
    done = _gather_in_thread(s)
    assert not done.wait(0.2), "the merge went while b's agent had ended and its work was being checked"
    s.settling.discard("b")
    s.ctx.tasks.table["b"] = S.APPROVED
    s.merge_wake.set()
    assert done.wait(5)


def test_an_approval_that_frees_a_worker_for_a_ready_task_holds_merges_until_the_main_loop_has_looked():
    """The approving worker is about to pick the next task up; the merge it woke waits for
    that start too (the main thread settles the placeholder once the worker's job is done
    and whatever could start has been submitted)."""
    s = _scheduler([{"id": "a"}, {"id": "b"}, {"id": "c", "depends_on": ["x"]}, {"id": "x"}],
                   {"a": S.APPROVED, "b": S.PENDING, "c": S.PENDING, "x": S.RUNNING})
    s.jobs = {"a": object(), "x": object()}
    assert s._ready_to_start()  # b: nothing to wait for but a worker
    s.launching.add(("after", "a"))
    done = _yield_in_thread(s)
    s._settle_placeholders()  # a's worker has not finished: the placeholder stays
    s._launch_begun("a")  # (its worker's `finally`: done with a, the successor not started yet)
    assert not done.wait(0.2)
    del s.jobs["a"]
    s._settle_placeholders()
    assert done.wait(5)


def test_a_worker_that_goes_on_with_a_conflict_drops_its_placeholder():
    s = _scheduler([{"id": "a"}, {"id": "b"}], {"a": S.CONFLICTED, "b": S.PENDING})
    s.jobs = {"a": object()}
    s.launching.add(("after", "a"))
    done = _yield_in_thread(s)
    assert not done.wait(0.2)
    s._launch_begun("a", successor_too=True)
    assert done.wait(5)


def test_a_worker_is_kept_for_a_longer_chain_whose_dependency_is_being_merged():
    """DAG benchmark, seed 4: t0's agent ended and its merge was a few ms away when a worker
    freed; the scheduler started a short task that was ready (rank 2) in it, and t0's
    dependent, head of the longest chain (rank 13), waited a whole agent run for a worker.
    A task that waits only for a merge under way keeps a worker from the tasks after it,
    for at most `hold_for_merge`; not once its dependency went back to its agent."""
    tasks = [{"id": "a", "complexity": "M"}, {"id": "b", "depends_on": ["a"], "complexity": "XL"},
             {"id": "short", "complexity": "S"}]
    statuses = {"a": S.APPROVED, "b": S.PENDING, "short": S.PENDING}
    s = _scheduler(tasks, statuses)
    assert s._startable(1) == []  # b keeps the one free worker
    assert s._startable(2) == ["short"]  # a second one goes to the short task
    statuses["a"] = S.MERGING
    assert s._startable(1) == []
    statuses["a"] = S.MERGED
    assert s._startable(1) == ["b"]
    statuses["a"] = S.CONFLICTED  # back to its agent (its worker goes on with it): not a merge's wait
    s.jobs = {"a": object()}
    assert s._startable(1) == ["short"]
    s.jobs = {}
    statuses["a"] = S.APPROVED
    s.hold_for_merge = 0.2
    assert s._startable(1) == []
    time.sleep(0.25)
    assert s._startable(1) == ["short"]  # a merge that takes this long does not hold a worker


def test_the_main_loop_looks_again_when_a_hold_runs_out_not_a_second_later():
    """Red-team finding: with nothing to wake it, the main loop slept its usual second past a
    hold's end (a hold of 1 s lasted up to 2 s). An expired hold never makes it spin."""
    tasks = [{"id": "a"}, {"id": "b", "depends_on": ["a"]}, {"id": "short"}]
    s = _scheduler(tasks, {"a": S.APPROVED, "b": S.PENDING, "short": S.PENDING})
    assert s._next_look() == 1.0
    s.hold_for_merge = 0.3
    assert s._startable(1) == []
    assert 0.2 < s._next_look() <= 0.32
    time.sleep(0.35)
    assert s._next_look() == 1.0  # (run out: the next scan starts `short`)
    assert s._startable(1) == ["short"]


def test_no_task_is_ready_when_what_is_left_waits_for_a_dependency():
    s = _scheduler([{"id": "a"}, {"id": "c", "depends_on": ["a"]}], {"a": S.APPROVED, "c": S.PENDING})
    assert not s._ready_to_start()


def test_the_main_loop_is_woken_when_a_job_is_done_not_only_when_its_worker_says_so():
    """A worker wakes the main loop just before `_carry` returns; a look in between finds the
    job not done yet, and if nothing else wakes the loop (the merge queue holding a merge for
    this very worker's successor) the next task waited up to a second. The job's completion
    itself wakes the loop."""
    from concurrent.futures import ThreadPoolExecutor

    s = _scheduler([{"id": "a"}, {"id": "b"}], {"a": S.PENDING, "b": S.PENDING})
    release = threading.Event()
    s._carry = lambda task_id: release.wait(5)  # (a worker that does not wake anyone itself)
    with ThreadPoolExecutor(2) as workers:
        assert s._start_ready(workers) == 2
        s.wake.clear()
        release.set()
        assert s.wake.wait(5)
        for job in s.jobs.values():
            job.result(5)


def test_ranks_of_a_chain_deeper_than_pythons_recursion():
    n = 3000
    tasks = [{"id": "t0"}] + [{"id": f"t{i}", "depends_on": [f"t{i - 1}"]} for i in range(1, n)]
    s = _scheduler(tasks, {})
    assert s.rank["t0"] == n and s.rank[f"t{n - 1}"] == 1


from hypothesis import given, settings, strategies as st  # noqa: E402

STATUSES = [S.PENDING, S.REJECTED, S.CONFLICTED, S.RUNNING, S.APPROVED, S.MERGING, S.MERGED, S.FAILED]


@st.composite
def dags_with_statuses(draw):
    n = draw(st.integers(1, 25))
    tasks, statuses = [], {}
    for i in range(n):
        deps = sorted(set(draw(st.lists(st.integers(0, i - 1), max_size=2)))) if i else []
        task = {"id": f"t{i}", "depends_on": [f"t{d}" for d in deps]}
        if draw(st.booleans()):
            task["complexity"] = draw(st.sampled_from(["S", "M", "L", "XL"]))
        files = draw(st.lists(st.sampled_from(["a.py", "b.py"]), max_size=1))
        if files:  # tasks sharing a file run in plan order: an implicit edge that chains no failure
            task["files"] = files
        tasks.append(task)
        statuses[f"t{i}"] = draw(st.sampled_from(STATUSES))
    return tasks, statuses, draw(st.integers(1, 6)), draw(st.lists(st.integers(0, n - 1), max_size=3))


@settings(max_examples=150, deadline=None)
@given(case=dags_with_statuses(), changes=st.lists(st.tuples(st.integers(0, 24), st.sampled_from(STATUSES)),
                                                    max_size=6))
def test_the_start_queue_finds_what_a_scan_of_every_task_finds(case, changes):
    """`_startable` (a queue that drops the tasks that ended, scanned only as far as it must)
    picks exactly what the plain rule picks over every task: startable, not in a worker,
    dependencies done, in (longest chain first, most direct dependents, plan order), where a pending task whose
    dependencies are all merged, approved or merging (one at least not merged yet; a task
    before it on a shared file ended, approved or merging) keeps its place among the WANTED; also after statuses change between looks, a `retry` of an
    ended task included."""
    tasks, statuses, wanted, in_jobs = case
    s = _scheduler(tasks, statuses)
    s.hold_for_merge = 1e9  # (the hold's time limit has its own test)
    deps = {t["id"]: t["depends_on"] for t in tasks}
    before_on_a_file = {t: [d for d in s.plan.tasks[t].implicit_deps if d not in deps[t]] for t in deps}
    merging = (S.APPROVED, S.MERGING)
    for step in range(len(changes) + 1):
        s.jobs = {f"t{j}": None for j in in_jobs if f"t{j}" in statuses}

        def plain_rule():
            def ready(t):
                return all(statuses[d] == S.MERGED for d in deps[t]) and \
                    all(statuses[d] in scheduler_module.TERMINAL for d in before_on_a_file[t])

            def merging_soon(t):
                return statuses[t] == S.PENDING and not ready(t) and \
                    all(statuses[d] in (S.MERGED, *merging) for d in deps[t]) and \
                    all(statuses[d] in (*scheduler_module.TERMINAL, *merging) for d in before_on_a_file[t])
            candidates = [t for t in s.scope if t not in s.jobs and statuses[t] in scheduler_module.STARTABLE
                          and (ready(t) or merging_soon(t))]
            first = sorted(candidates, key=lambda t: (-s.rank[t], -len(s.children[t]), s.position[t]))[:wanted]
            return [t for t in first if ready(t)]

        assert s._startable(wanted) == plain_rule()
        if step < len(changes):
            index, status = changes[step]
            task = f"t{index % len(statuses)}"
            statuses[task] = status
