"""The streaming task flow that EXECUTE hosts: no barrier anywhere.

A task starts the moment every task it depends on is merged and one of `concurrency`
workers is free; its worker carries it through agent attempts and QA on its own slot until
it is approved (or ends); the approved branch goes straight into the merge queue, and its
dependents become ready at once. Tasks sharing a file are serialized by the plan (an
implicit dependency), so they never race. Among ready tasks the one heading the longest
remaining chain (by `complexity`) goes first, which keeps the critical path busy.

Workers never decide policy: every status change is an event on the task machine
(engine.tasks), and setbacks go through its one retry policy. The main thread only starts
tasks, merges and watches; on Ctrl-C or SIGTERM it sets `cancel`, stops the running
attempts (their tasks go back to pending without spending a retry) and re-raises.

Resuming is the same loop: a task left `running` is recovered from the backend (a live
orphan agent is waited for and its recorded exit status collected), `verifying` is
verified again, `merging`/`approved` are settled against the base.
"""

import concurrent.futures as cf
import os
import threading
import time

from engine import git, procs, store, worktree
from engine.errors import OrchestratorError
from engine.executor import Attempt
from engine.faults import crashpoint
from engine.procs import CommandLaunchError
from engine.tasks import TERMINAL, TaskStatus as S

WEIGHTS = {"S": 1, "M": 2, "L": 3, "XL": 5}
MERGE_GRACE = 3.0  # seconds a cancelled run waits for the merge in flight
START_FIRST = 0.5  # at most this long a merge nobody waits for lets starting tasks go first
GATHER = 0.03  # at most this long a merge nobody waits for waits for tasks about to be approved
HOLD_FOR_MERGE = 1.0  # at most this long a worker is kept for a task whose dependency is being merged
WARM_REAPERS = 8  # at most this many reapers kept started ahead of the agents' launches (engine.procs):
# one per agent, so a wave of agents ending together starts the next wave without a Python start-up each
STARTABLE = (S.PENDING, S.REJECTED, S.CONFLICTED)
IN_FLIGHT = (S.RUNNING, S.EXECUTED, S.VERIFYING)  # a worker's business (after a crash: resumed)


class TaskFailure(OrchestratorError):
    """A problem that fails one task, never the run (raised inside a worker)."""


class WaitForBase(Exception):
    """The worker lets go of a task whose next attempt must wait for the base to move."""


class BudgetHeld(OrchestratorError):
    """The run's budget is spent: the worker stops before the attempt; the task keeps its status."""


class Scheduler:
    def __init__(self, ctx, task_ids, concurrency):
        self.ctx = ctx
        self.plan = ctx.plan
        wanted = set(task_ids)
        self.scope = [t for t in self.plan.order if t in wanted]
        self.scope_set = set(self.scope)
        self.position = {t: i for i, t in enumerate(self.scope)}
        self.concurrency = max(1, int(concurrency))
        self.children = {t: [] for t in self.scope}  # who waits on whom (depends_on and file order)
        for t in self.scope:
            for d in self._deps(t):
                if d in self.children:
                    self.children[d].append(t)
        self.rank = self._ranks()
        # the order tasks start in (`start_order`); tasks that can no longer start are dropped
        # from it as the scan meets them, so a scan costs what it finds
        self.queue = sorted(self.scope, key=self.start_order)
        self.unreachable_seen = None  # the ended-unmerged tasks `_fail_unreachable` last looked at
        self.ended_seen = 0  # how many tasks had ended at the last scan (fewer now: one was retried)
        self.held_since = {}  # task -> (the dependencies it waits to see merged, since when a worker is kept for it)
        self.hold_for_merge = HOLD_FOR_MERGE
        self.jobs = {}
        self.budget_spent = None
        self.wake = threading.Event()  # a task was approved, merged or let go: look again now
        self.merge_wake = threading.Event()  # a task was approved: the merger takes it
        self.merging = False  # the merger holds approved tasks it has not recorded yet
        self.settling = set()  # tasks whose agent has ended and whose worker checks its work now
        self.launching = set()  # tasks handed to a worker whose agent has not started yet, and
        # ("after", T) while approved T's worker is about to free up for a task that is ready
        self.launched = threading.Condition()
        self.merge_error = None
        self.stopping = threading.Event()
        # git queries a worker asks alongside its own (QA's branch diff beside the checkout's status)
        self.queries = cf.ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="query")

    # ------------------------------------------------------------------ main thread
    def run(self):
        """Carry every task of the scope to a terminal status (or raise on cancel)."""
        ctx = self.ctx
        ctx.merges.settle(self.scope)
        self._reclaim_slots()
        workers = cf.ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="task")
        merger = threading.Thread(target=self._merger, name="merge-queue", daemon=True)
        merger.start()
        self.merge_wake.set()  # approved before a restart: merge them first
        warm = False
        try:
            while True:
                self.wake.clear()  # (before looking: a wake-up from now on is never lost)
                self._collect()
                self._fail_unreachable()
                started = self._start_ready(workers)
                if not warm:  # (once the first starts are under way, while their slots are prepared)
                    warm = True
                    if self.ctx.backend.needs_checkout:
                        procs.keep_reapers_warm(min(self.concurrency, WARM_REAPERS))
                    from engine import tasks

                    tasks.machine()  # (built here, not by the first task event, which waits for it)
                busy = self.merging or self.merge_wake.is_set() or bool(self._in((S.APPROVED,)))
                if not self.jobs and not busy and not started:
                    break
                if not started:
                    self.wake.wait(timeout=self._next_look())
        except BaseException:
            ctx.cancel.set()
            self.stopping.set()
            self.merge_wake.set()
            self._stop_running()
            workers.shutdown(wait=True, cancel_futures=True)
            self.queries.shutdown(wait=True)
            # a merge in flight normally ends in well under a second; one stuck in a hook is not
            # waited for (the task stays `merging`, and the next run settles it against the base)
            merger.join(timeout=MERGE_GRACE)
            ctx.slots.close()
            raise
        finally:
            procs.keep_reapers_warm(0)
        self.stopping.set()
        self.merge_wake.set()
        merger.join()
        workers.shutdown(wait=True)
        self.queries.shutdown(wait=True)
        ctx.slots.close()

    def _merger(self):
        """The merge queue's own thread: whatever is approved goes in, in batches, while the
        main thread goes on starting tasks; each merge wakes the main thread (dependents)."""
        while not self.stopping.is_set():
            self.merge_wake.wait(timeout=1.0)
            self.merge_wake.clear()
            if self.stopping.is_set() or self.merge_error is not None:
                return
            self._let_starts_go_first()
            self._gather_approvals()
            self.merging = True
            try:
                approved = sorted(self._in((S.APPROVED,)), key=self.position.get)
                if approved:
                    self.ctx.merges.merge(approved, on_recorded=self.wake.set)  # (dependents start then)
            except BaseException as exc:  # handed to the main thread, which stops the run
                self.merge_error = exc
                return
            finally:
                self.merging = False
                self.wake.set()

    def _let_starts_go_first(self):
        """A merge that no waiting task needs yet waits (up to START_FIRST) until the tasks
        being started have their agents running: on a busy machine the merge's git work would
        otherwise delay those agents, and it costs nothing while they run. A merge a pending
        task depends on goes at once (its dependents start from the base that contains it)."""
        deadline = time.monotonic() + START_FIRST
        while self.launching and not self.stopping.is_set() and not self._merge_awaited():
            with self.launched:  # (the statuses are read outside it: a worker never waits on the merger)
                remaining = deadline - time.monotonic()
                if not self.launching or remaining <= 0:
                    return
                self.launched.wait(remaining)

    def _gather_approvals(self):
        """A merge nobody waits for waits up to GATHER while other tasks are about to be
        approved (their agent has ended: its work is being checked, or QA runs), so tasks that
        end together go into the base in one merge: one pass of its git calls and records, not
        one each. A run's last agents end within milliseconds of each other, and a merge each
        made the run's end that much later. A task whose agent still runs is not waited for:
        it may run for seconds, and at a run's end the merge waiting for it was the run's end
        made GATHER later. (An approval wakes it; it goes once none is left.)"""
        deadline = time.monotonic() + GATHER
        while not self.stopping.is_set() and not self._merge_awaited() and \
                (self.settling or self._in((S.EXECUTED, S.VERIFYING))):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.merge_wake.wait(remaining)
            self.merge_wake.clear()

    def _merge_awaited(self):
        """Whether a task waiting to start depends on an approved, not yet merged, task."""
        tasks = self.ctx.tasks
        return any(tasks.status(child) in STARTABLE
                   for t in self._in((S.APPROVED, S.MERGING)) for child in self.children.get(t, ()))

    def _deps_done(self, task_id, statuses):
        """Whether TASK_ID may start as far as the plan's order goes: everything it depends on
        (`depends_on`) merged, and every task before it on a shared file ended, merged or not
        (file order serializes, it chains no failure; the task starts on the base as it is)."""
        task = self.plan.tasks[task_id]
        return all(statuses.get(d) == S.MERGED for d in task.depends_on) and \
            all(statuses.get(d) in TERMINAL for d in task.implicit_deps if d not in task.depends_on)

    def _ready_to_start(self):
        """Whether a task of the scope waits only for a worker (every dependency merged)."""
        return bool(self._startable(1))

    def _in(self, statuses):
        """The tasks of the scope with one of STATUSES (from the status index)."""
        found = self.ctx.tasks.ids_in(statuses)
        return found if len(found) <= len(self.scope_set) and found <= self.scope_set else found & self.scope_set

    def _startable(self, wanted):
        """Up to WANTED tasks that may start now (not in a worker, startable, dependencies
        done, not waiting for the base), in start order. Tasks that never start again (ended,
        in flight) leave the queue; tasks still waiting on others stay. A task whose only wait
        is a merge already under way (a dependency approved or merging) keeps a worker for
        itself, for at most `hold_for_merge` seconds, from the tasks after it in the order: a
        merge takes a fraction of a second, while a shorter chain started in its place would
        hold the worker for a whole agent run (the longest chain would start that much later)."""
        tasks, found, keep = self.ctx.tasks, [], []
        statuses = _StatusReader(tasks)
        ended = tasks.count_in(TERMINAL)
        if ended < self.ended_seen:  # a `retry` reopened a task the queue had dropped: from the scope again
            self.queue = sorted(self.scope, key=self.start_order)
        self.ended_seen = ended
        self._forget_holds_whose_merge_ended()
        queue, i, kept_for = self.queue, 0, 0
        while i < len(queue) and len(found) + kept_for < wanted:
            task_id = queue[i]
            i += 1
            status = tasks.status(task_id)
            if status in TERMINAL:
                continue  # (a `retry` puts it back: see `ended_seen`)
            keep.append(task_id)
            if task_id in self.jobs or status not in STARTABLE:
                continue
            if not self._deps_done(task_id, statuses):
                kept_for += self._keeps_a_worker(task_id, status, statuses)
                continue
            if status == S.PENDING and self._waits_for_base(task_id, statuses):
                continue
            found.append(task_id)
        self.queue = keep + queue[i:]
        return found

    def _keeps_a_worker(self, task_id, status, statuses):
        """Whether pending TASK_ID waits only for merges under way (every dependency merged,
        approved or merging; a task before it on a shared file ended, approved or merging),
        and has not waited for these merges longer than `hold_for_merge`."""
        task, under_merge = self.plan.tasks[task_id], set()
        if status == S.PENDING:
            for dep in task.all_deps:
                dep_status = statuses.get(dep)
                if dep_status in (S.APPROVED, S.MERGING):
                    under_merge.add(dep)
                elif dep_status != S.MERGED and (dep in task.depends_on or dep_status not in TERMINAL):
                    under_merge = set()
                    break
        if not under_merge:
            self.held_since.pop(task_id, None)
            return False
        now, under_merge = time.monotonic(), frozenset(under_merge)
        held = self.held_since.get(task_id)
        if held is None or held[0] != under_merge:
            held = self.held_since[task_id] = (under_merge, now)
        return now - held[1] < self.hold_for_merge

    def _next_look(self):
        """How long the main loop sleeps when nothing wakes it: a second, or until the first
        hold still running runs out (then a task after the held one may take its worker)."""
        now = time.monotonic()
        ends = [since + self.hold_for_merge - now for _, since in list(self.held_since.values())]
        return min([1.0] + [end + 0.01 for end in ends if end > 0])

    def _forget_holds_whose_merge_ended(self):
        """A hold ends with the merges it waited for: merged (its task starts) or sent back
        (a conflict); approved again later, they are new merges and hold afresh. (A scan stops
        early and may not reach the held task: this looks at every hold, few as they are.)"""
        if not self.held_since:
            return
        under_way = self.ctx.tasks.ids_in((S.APPROVED, S.MERGING))
        for task_id, (deps, _) in list(self.held_since.items()):
            if not deps <= under_way:
                self.held_since.pop(task_id, None)

    def _settle_placeholders(self, everything=False):
        """Placeholders of approved tasks whose worker is done (the main loop has looked)."""
        self._no_longer_launching(lambda k: isinstance(k, tuple) and (everything or k[1] not in self.jobs))

    def _launch_begun(self, task_id, successor_too=False):
        """TASK_ID's agent is starting now (or its attempt ended before): merges held back
        for it may go. SUCCESSOR_TOO: its worker goes on with it (a conflict after its
        approval), so no successor starts there either. (A worker done with its task keeps
        the placeholder: the main loop settles it once the successor is submitted.)"""
        mine = {task_id, ("after", task_id)} if successor_too else {task_id}
        self._no_longer_launching(mine.__contains__)

    def _no_longer_launching(self, which):
        """Drop the `launching` entries WHICH selects; a merge held back for them may go."""
        with self.launched:
            done = {k for k in self.launching if which(k)}
            if done:
                self.launching -= done
                self.launched.notify_all()

    def _reclaim_slots(self):
        """After a crash: a slot still leased by a task that no longer needs a checkout (it
        was approved, or it ended) goes back to the pool, so the others find one."""
        if not self.ctx.slots.exists():
            return
        statuses = self.ctx.tasks.statuses()
        for task_id in self.ctx.slots.leases():
            if statuses.get(task_id, S.PENDING) not in STARTABLE + IN_FLIGHT:
                self.ctx.slots.give_back(task_id)

    def _collect(self):
        if self.merge_error is not None:
            raise self.merge_error
        for task_id, future in list(self.jobs.items()):
            if not future.done():
                continue
            del self.jobs[task_id]
            error = future.exception()
            if error is not None:
                raise error  # an infrastructure failure: stop cleanly, `resume` picks up

    def _deps(self, task_id):
        return self.plan.tasks[task_id].all_deps

    def _fail_unreachable(self):
        """A pending task whose dependency (`depends_on`) ended without being merged can never
        start; nor can one waiting on a task outside the scope that will not run. A task before
        it on a shared file that failed does not stop it (file order chains no failure)."""
        ended = self.ctx.tasks.ids_in(TERMINAL - {S.MERGED})
        if ended == self.unreachable_seen:
            return  # nothing ended unmerged since the last look: nothing new is unreachable
        self.unreachable_seen = ended
        statuses = self.ctx.tasks.statuses()
        for task_id in self.scope:
            if statuses.get(task_id) != S.PENDING:
                continue
            explicit = set(self.plan.tasks[task_id].depends_on)
            for dep in self._deps(task_id):
                dep_status = statuses.get(dep, S.PENDING)
                stuck = dep not in self.scope and dep_status not in TERMINAL
                if (dep in explicit and dep_status in TERMINAL and dep_status != S.MERGED) or stuck:
                    reason = f"dependency {dep} is {dep_status.value}; not started"
                    self.ctx.tasks.fail(task_id, reason, blocked_by=dep)  # (`retry DEP` reopens it too)
                    self.ctx.reporter.task(task_id, reason)
                    statuses[task_id] = S.FAILED
                    break

    def _start_ready(self, workers):
        try:
            return self._submit_ready(workers)
        finally:  # an approved task's worker is free and what could start has: merges may go
            self._settle_placeholders(everything=self.ctx.cancel.is_set())

    def _submit_ready(self, workers):
        ctx = self.ctx
        if ctx.cancel.is_set():
            return 0
        statuses = _StatusReader(ctx.tasks)
        free = self.concurrency - len(self.jobs)
        if free <= 0:
            return 0
        # a crash's tasks in flight go first (a worker resumes each), then the startable ones
        resumed = sorted((t for t in self._in(IN_FLIGHT) if t not in self.jobs),
                         key=self.start_order)
        started = 0
        for task_id in resumed + self._startable(free):
            if len(self.jobs) >= self.concurrency:
                break
            allowed, why = self.may_start()
            if not allowed:
                if not self.jobs:
                    ctx.reporter.line(why)
                break
            self._announce(task_id, statuses)
            if statuses.get(task_id, S.PENDING) in STARTABLE:
                with self.launched:
                    self.launching.add(task_id)
            job = workers.submit(self._carry, task_id)
            # the main loop looks again once the job is done: `_carry` wakes it just before it
            # returns, and a look in between finds the job not yet done (then nothing else may
            # wake it for a while: the merge queue may be waiting for this very worker's successor)
            job.add_done_callback(lambda _: self.wake.set())
            self.jobs[task_id] = job
            started += 1
        return started

    def _waits_for_base(self, task_id, statuses):
        """A task whose agent failed on a base that has not moved since waits while another
        task may still move it (its next attempt would see the same code); once the base moves,
        or nothing else can move it, it goes. (A QA rejection with work to fix never waits.)"""
        waiting_on = self.ctx.tasks.field(task_id, "wait_base")
        if not waiting_on:
            return False
        if self._base_tip() != waiting_on:
            return False
        return any(self._may_move_base(t, s, statuses) for t, s in statuses.items() if t != task_id)

    def _may_move_base(self, task_id, status, statuses):
        """Whether TASK_ID may still merge something soon: it is in flight, or it could start
        now (its dependencies done) and is not itself waiting for the base."""
        if task_id not in self.position or status in TERMINAL:
            return False
        if status != S.PENDING:
            return True
        return self._deps_done(task_id, statuses) and not self.ctx.tasks.field(task_id, "wait_base")

    def _base_tip(self):
        return git.branch_commit(self.ctx.repo, self.ctx.base)

    def may_start(self):
        """(allowed, reason): no new attempt once the run's agents have spent its budget."""
        budget = self.ctx.run_budget()
        if budget is None:
            return True, ""
        spent = float(self.ctx.progress.get("cost_usd") or 0)
        if spent < budget:
            return True, ""
        self.budget_spent = (f"run budget of ${budget:.2f} spent (${spent:.2f}): no new attempts; "
                             "`orchestrator resume --max-budget-usd DOLLARS` goes on with a higher one"
                             + ("" if self.ctx.progress.get("max_budget_usd") is not None else
                                " (or raise `max_budget_usd` in the plan and `orchestrator resume --adopt-plan`)"))
        return False, self.budget_spent

    def attempt_budget(self, task_id):
        """What the next attempt of TASK_ID may spend (None: no cap), asked before EVERY attempt
        (first ones, retries, conflict re-runs). Raises BudgetHeld when the run's budget is
        spent (the task keeps its status; `resume` after raising it goes on) and TaskFailure
        when the task's own `max_budget_usd` is."""
        allowed, why = self.may_start()
        if not allowed:
            raise BudgetHeld(why)
        caps = []
        run_budget = self.ctx.run_budget()
        if run_budget is not None:
            caps.append(run_budget - float(self.ctx.progress.get("cost_usd") or 0))
        task_budget = self.plan.tasks[task_id].max_budget_usd
        if task_budget is not None:
            spent = float(self.ctx.tasks.entry(task_id).get("cost_usd") or 0)
            if spent >= task_budget:
                raise TaskFailure(f"task budget of ${task_budget:.2f} spent (${spent:.2f}): raise the task's "
                                  "`max_budget_usd` (`orchestrator resume --adopt-plan`), then "
                                  f"`orchestrator retry {task_id}`")
            caps.append(task_budget - spent)
        return min(caps) if caps else None

    def _announce(self, task_id, statuses):
        deps = self._deps(task_id)
        if not deps:
            return
        busy = sorted((t for t in self._in((S.RUNNING, S.EXECUTED, S.VERIFYING)) if t not in deps),
                      key=self.position.get)
        self.ctx.reporter.task(task_id, f"ready: {', '.join(deps)} merged"
                               + (f"; starting while {', '.join(busy)} still run(s)" if busy else ""))

    def _stop_running(self):
        entries = self.ctx.progress.get("tasks") or {}
        self.ctx.backend.stop({t: v for t, v in entries.items() if v.get("status") == S.RUNNING.value})

    def start_order(self, task_id):
        """Longest chain first (`_ranks`); among equal chains, the task more tasks wait on
        directly (it frees more of them at once); then the plan's order. (A simulation of this
        policy with no overhead over 300 random DAGs with estimates: the tie-break lowers the
        mean makespan a little and the worst seeds most, e.g. bench_dag's seed 6 from 1.09x
        to 1.02x the bound.)"""
        return -self.rank[task_id], -len(self.children[task_id]), self.position[task_id]

    def _ranks(self):
        """Length of the longest chain (by complexity weight) from each task to the end; an
        explicit stack, as a 10,000-task chain is deeper than Python's recursion. (A plan may
        list a task before what it depends on: not the file's order.)"""
        rank = {}
        for root in self.scope:
            stack = [root]
            while stack:
                t = stack[-1]
                if t in rank:
                    stack.pop()
                    continue
                waiting = [c for c in self.children[t] if c not in rank]
                if waiting:
                    stack.extend(waiting)
                    continue
                stack.pop()
                weight = WEIGHTS.get(str(self.plan.tasks[t].complexity or "").upper(), 1)
                rank[t] = weight + max((rank[c] for c in self.children[t]), default=0)
        return rank

    # ------------------------------------------------------------------ a worker
    def _carry(self, task_id):
        """Carry one task through agent attempts and QA until it is approved or ends."""
        ctx = self.ctx
        try:
            while not ctx.cancel.is_set():
                status = ctx.tasks.status(task_id)
                if status in (S.PENDING, S.REJECTED, S.RUNNING):
                    self._attempt(task_id, status)
                elif status == S.CONFLICTED:
                    self._launch_begun(task_id, successor_too=True)  # (a rebase first: merges need not wait)
                    self._attempt(task_id, status)
                elif status == S.EXECUTED:
                    self._verify(task_id)
                elif status == S.VERIFYING:
                    ctx.tasks.fire(task_id, "qa_interrupt")
                else:
                    break
        except (TaskFailure, CommandLaunchError) as exc:
            # one task's bad data (a value the kernel refuses) or broken checkout: that task only
            ctx.tasks.fail(task_id, exc.message, pid=None)
            ctx.reporter.task(task_id, f"failed: {exc.message}")
        except BudgetHeld as exc:
            ctx.reporter.task(task_id, f"held ({ctx.tasks.status(task_id).value}): {exc.message}")
        except WaitForBase:
            ctx.slots.give_back(task_id)  # (a slot is not kept idle while the task waits)
        finally:
            self.settling.discard(task_id)
            self._launch_begun(task_id)
            status = ctx.tasks.status(task_id)
            if status in (S.APPROVED, S.MERGING):  # (the merge queue may have taken it already)
                self._let_go(task_id)  # this worker is free for the next task now
            elif status in TERMINAL:
                ctx.slots.give_back(task_id)
            self.wake.set()
        self._show_progress()

    def _let_go(self, task_id):
        """An approved task's slot: parked for the next task to take over while tasks still
        wait to start (one checkout instead of a release and an acquire), else given back in
        the background."""
        slots = self.ctx.slots
        waiting = bool(self._in(STARTABLE))
        slot_id = slots.leases().get(task_id) if waiting and not self.ctx.cancel.is_set() else None
        if slot_id is not None:
            slots.park(task_id, slot_id)
        else:
            slots.release_later(task_id)

    def _attempt_for(self, task_id, n, path, feedback):
        ctx = self.ctx
        task = self.plan.tasks[task_id]
        entry = ctx.tasks.entry(task_id)
        command = self._agent(task_id)
        env = {"TASK_ID": task_id, "TASK_DESCRIPTION": task.description, "WORKTREE": path or "",
               "BRANCH": task.branch, "BASE": ctx.base, "QA_FEEDBACK": feedback or "",
               "TASK_ATTEMPT": str(n), "TASK_FILES": "\n".join(task.files), "TASK_VERIFY": task.verify or "",
               "ORCHESTRATOR_ROOT": ctx.layout.root}
        return Attempt(task_id=task_id, n=n, command=command, cwd=path, env=env, log_path=ctx.log_path(task_id),
                       exit_path=ctx.layout.attempt_exit(task_id, n),
                       timeout=task.timeout or ctx.settings.agent_timeout, branch=task.branch, base=ctx.base,
                       base_commit=entry.get("base_commit"), run_id=ctx.progress.get("run_id"),
                       entry=entry, layout=ctx.layout, cancel=ctx.cancel,
                       record=lambda **fields: ctx.tasks.record_attempt(task_id, n, **fields),
                       on_start=lambda pid, start: ctx.tasks.update(task_id, pid=pid, pid_start=start))

    def _agent(self, task_id):
        return self.plan.tasks[task_id].agent or self.ctx.options.agent or self.ctx.progress.get("agent")

    def _kind(self, task_id):
        from engine import agent_kinds

        return agent_kinds.kind_of(self._agent(task_id))

    def _launch(self, task_id, attempt, budget_usd):
        """Run ATTEMPT on the backend through its agent kind (engine.agent_kinds)."""
        from engine.agent_kinds import AttemptLimits

        limits = AttemptLimits(budget_usd=budget_usd, stagger=self.ctx.agent_stagger, cancel=self.ctx.cancel)
        return self._kind(task_id).run(self.ctx.backend, attempt, self.plan.tasks[task_id], limits)

    def _recover(self, task_id, attempt):
        return self._kind(task_id).recover(self.ctx.backend, attempt, self.plan.tasks[task_id])

    def _attempt(self, task_id, status):
        """One agent attempt (or the collection of one that outlived a killed orchestrator)."""
        ctx = self.ctx
        backend = ctx.backend
        entry = ctx.tasks.entry(task_id)
        n = int(entry.get("iterations") or 0)
        result = None
        self.settling.discard(task_id)  # (another attempt: its agent runs again)
        if status == S.RUNNING:  # left running by a dead orchestrator
            path = ctx.slots.hold(task_id)[1] if backend.needs_checkout else None
            result = self._recover(task_id, self._attempt_for(task_id, n, path, entry.get("qa_feedback")))
            if result is None:  # nothing to collect: the same attempt runs again, not counted
                ctx.tasks.fire(task_id, "interrupt", iterations=max(0, n - 1), pid=None)
                return
            ctx.journal.append("agent-collected", task=task_id, attempt=n, code=result.exit_code)
            ctx.reporter.task(task_id, f"collected attempt {n} (exit {result.exit_code}) from before the restart")
        else:
            budget_usd = self.attempt_budget(task_id)  # before every attempt, retries included
            n += 1
            feedback = entry.get("qa_feedback") if status in (S.REJECTED, S.CONFLICTED) else None
            slot, path = ctx.slots.hold(task_id, discard_edits=True, record=False) if backend.needs_checkout \
                else (None, None)
            # (a slot leased just now is at the base commit it was prepared from: no second look)
            base_commit = (ctx.slots.fresh_base(task_id) if slot else None) or self._base_tip()
            changes, kept = {}, None
            if n > 1:  # a retry (after a failure, a rejection or a conflict) starts from the base as it is now
                moved = self._onto_current_base(task_id, status, n, path) if path else None
                if moved == "verify":
                    return  # its work applied on the moved base: QA looks again first
                if moved:
                    slot, path, base_commit, kept = moved
                changes = self._merged_since(entry.get("base_commit"), base_commit)
                feedback = self._retry_feedback(entry, feedback, changes, kept)
            ctx.tasks.fire(task_id, "start", iterations=n, slot=slot, pid=None, base_commit=base_commit,
                           started_at=entry.get("started_at") or store.utc_now(), wait_base=None, recheck=None,
                           attempt={"n": n, "kind": "agent", "slot": slot, "started_at": store.utc_now(),
                                    "base_commit": base_commit})
            ctx.reporter.task(task_id, f"running in {slot or 'the backend'} (attempt {n})"
                              + (f"; merged since its last attempt: {', '.join(changes)}" if changes else ""))
            attempt = self._attempt_for(task_id, n, path, feedback)
            if changes:
                attempt.env["TASK_BASE_CHANGES"] = "\n".join(f"{t}: {' '.join(files)}" for t, files in changes.items())
            self._launch_begun(task_id)
            result = self._launch(task_id, attempt, budget_usd)
        self.settling.add(task_id)  # (its agent has ended: a merge may wait for its approval)
        self._settle_attempt(task_id, n, path, result)

    def _onto_current_base(self, task_id, status, n, path):
        """Bring a retry's branch, checked out at PATH, onto the base as it is now: the one way
        back for every setback (agent failure, QA rejection, merge conflict). With no work of
        its own the branch is moved to the base tip; with work it is rebased when that applies
        cleanly, and QA looks again before any agent runs ("verify": the base may hold what it
        lacked; after a rejection or a failure that look spends no retry, after a conflict it is
        the conflict's retry); else its work is kept under refs/orchestrator/attempts/TASK/N and
        the agent starts again from the base. Returns "verify" or (slot, path, the commit it
        starts from, the ref its work was kept at or None)."""
        ctx = self.ctx
        branch = self.plan.tasks[task_id].branch
        tip, current = git.branch_commit(ctx.repo, branch), self._base_tip()
        slot = ctx.slots.leases().get(task_id)
        if tip is None or not git.unique_commits(ctx.repo, branch, f"refs/heads/{ctx.base}"):
            if tip != current:
                git.restart_branch(path, branch, current)
            return slot, path, current, None
        if status != S.CONFLICTED and git.is_ancestor(ctx.repo, current, tip):
            return slot, path, current, None  # its rejected work already sits on the current base: the agent fixes it
        started = store.utc_now()
        if ctx.merges.bring_up_to_date(task_id, path):
            ctx.tasks.record_attempt(task_id, n - 1, kind="rebase", outcome="clean", slot=slot,
                                     started_at=started, ended_at=store.utc_now())
            ctx.tasks.fire(task_id, "rebased", base_commit=current, recheck=None if status == S.CONFLICTED else True)
            ctx.reporter.task(task_id, f"rebased onto the new {ctx.base} without the agent; verifying again")
            return "verify"
        ctx.slots.give_back(task_id)
        kept = ctx.merges.set_aside(task_id, n - 1)
        slot, path = ctx.slots.hold(task_id, discard_edits=True, record=False)
        ctx.reporter.task(task_id, f"its work does not apply on the new {ctx.base}: kept at {kept}; the agent "
                          "starts again from the base")
        return slot, path, ctx.slots.fresh_base(task_id) or self._base_tip(), kept

    def _merged_since(self, old, new):
        """{task: files it changed} of the tasks merged into the base between commits OLD and NEW."""
        if not old or not new or old == new:
            return {}
        try:
            fresh = git.commits_between(self.ctx.repo, old, new)
        except OrchestratorError:
            return {}
        tasks = self.ctx.progress.peek().get("tasks") or {}
        return {t: list(e.get("changed_files") or []) for t, e in tasks.items()
                if isinstance(e, dict) and e.get("status") == S.MERGED.value and e.get("merged_commit") in fresh}

    @staticmethod
    def _retry_feedback(entry, feedback, changes, kept):
        """What a retry is told: QA's verdict (or why its agent failed), what was merged into the
        base since its last attempt, and where its set-aside work is."""
        parts = [feedback or (f"Your previous attempt failed ({entry.get('last_setback')})."
                              if entry.get("last_setback") else "")]
        if changes:
            parts.append("Merged into the base since your previous attempt (your checkout has them now): " + "; ".join(
                f"{t} ({', '.join(files[:20]) or 'no files recorded'})" for t, files in changes.items()))
        if kept:
            parts.append(f"Your previous work did not apply on the new base; it is kept at {kept} "
                         "(`git show` it) and you start from the base.")
        return "\n\n".join(p for p in parts if p) or None

    def _settle_attempt(self, task_id, n, path, result):
        ctx = self.ctx
        entry = ctx.tasks.entry(task_id)
        elapsed = round(float(entry.get("elapsed") or 0) + result.duration, 2)
        done = {"ended_at": store.utc_now(), "exit_code": result.exit_code, **(result.details or {})}
        ctx.journal.append("agent-exit", task=task_id, code=result.exit_code, timed_out=result.timed_out)
        if result.interrupted or ctx.cancel.is_set():
            ctx.tasks.fire(task_id, "interrupt", iterations=n - 1, pid=None, elapsed=elapsed,
                           attempt=dict(done, n=n, outcome="interrupted"))
            return
        if result.denied:
            hint = result.hint or f"allow it, then `orchestrator retry {task_id}`"
            ctx.tasks.fire(task_id, "deny", pid=None, elapsed=elapsed, hint=hint,
                           failure=f"blocked on permission: the agent was denied {', '.join(result.denied)}; {hint}",
                           attempt=dict(done, n=n, outcome="blocked_permission"))
            ctx.reporter.task(task_id, f"blocked on permission: denied {', '.join(result.denied)}; {hint}")
            return
        if result.exit_code == 0 and not result.timed_out:
            problem, tip, changed = self._check_work(task_id, path)
            if problem:
                ctx.tasks.record_attempt(task_id, n, outcome="failed", reason=problem, **done)
                raise TaskFailure(problem)
            ctx.reporter.task(task_id, f"agent done in {result.duration:.1f}s")
            # straight on to QA: one write records both events, the checkout is not looked at twice
            self._verify(task_id, fresh=path, done=(task_id, "agent_done", {"pid": None, "elapsed": elapsed},
                                                    dict(done, n=n, outcome="executed")), tip=tip, changed=changed)
            return
        why = f"timed out after {result.duration:.0f}s" if result.timed_out else \
            (result.reason or f"exit {result.exit_code}")
        status = ctx.tasks.setback(task_id, "agent", f"agent {why}", pid=None, elapsed=elapsed,
                                   wait_base=entry.get("base_commit"),
                                   attempt=dict(done, n=n, outcome="failed", reason=why))
        if status == S.PENDING:
            ctx.reporter.task(task_id, f"agent {why}: retry {ctx.tasks.entry(task_id).get('retry_count')}/"
                              f"{ctx.settings.retry_on_failure}")
            if path and os.path.isdir(path):
                git.forget_operations(path)
                git.discard_changes(path, self.plan.tasks[task_id].branch)
            if self._waits_for_base(task_id, ctx.tasks.statuses(self.scope)):
                ctx.reporter.task(task_id, f"waits for {ctx.base} to move before its next attempt")
                raise WaitForBase()
        else:
            ctx.reporter.task(task_id, f"agent {why}: failed (retries exhausted, see {ctx.log_path(task_id)})")

    def _check_work(self, task_id, path):
        """(why an agent that exited 0 still has nothing to verify or None, its branch tip,
        the files it changes or None). Leftovers are committed first, so QA verifies exactly
        what will be merged. The usual case costs two git calls, at once: the checkout's status
        (its tip with it) and the files the branch changes since its fork from the base (some
        file: so it has commits the base has not; asked alongside, and not used when leftovers
        were committed after it looked); only an empty answer asks the history."""
        ctx = self.ctx
        task = self.plan.tasks[task_id]
        if path is not None:
            if not os.path.isdir(path):
                return "the agent deleted its worktree", None, None
            changed_files = self.queries.submit(git.changed_files, ctx.repo, ctx.base, task.branch)
            current, committed, tip = self._commit_leftovers(task_id, path)
            changed = changed_files.result()
            if current != task.branch:
                return f"the agent left {task.branch} (its checkout is on {current or 'a detached HEAD'}); " \
                       "its work is kept there", None, None
            if committed:
                ctx.reporter.task(task_id, "committed what the agent left uncommitted")
            elif tip and changed:
                return None, tip, changed
        ahead = git.commits_ahead(ctx.repo, task.branch, f"refs/heads/{ctx.base}")  # None: no branch
        if ahead is None:
            return f"the attempt left no branch {task.branch}", None, None
        if not ahead and not task.allow_empty:
            return "no changes: the agent exited 0 without committing anything beyond the base", None, None
        return None, (ahead[0] if ahead else None), None

    def _commit_leftovers(self, task_id, path):
        """(the branch checked out at PATH or None, whether leftovers were committed, its tip
        unless they were): one `git status` answers all, and leftovers are committed only on
        the task's own branch."""
        current, tip, dirty = git.head_status(path, *worktree.leftover_pathspec())
        committed = bool(dirty) and current == self.plan.tasks[task_id].branch and \
            worktree.commit_leftovers(path, f"{task_id}: uncommitted work left by the agent", known_dirty=True)
        return current, committed, (None if committed else tip)

    def _verify(self, task_id, fresh=None, done=None, tip=None, changed=None):
        """QA on the committed tip of the task's branch. FRESH is the checkout `_check_work`
        has just looked at (right after the agent), DONE the agent's event to record with the
        start of QA, TIP the branch tip it saw and CHANGED the files it found changed (None:
        not asked); otherwise the checkout is checked here. A task with no verify command is
        approved in the same write as the agent's end."""
        ctx = self.ctx
        task = self.plan.tasks[task_id]
        n = int(ctx.tasks.entry(task_id).get("iterations") or 1)
        path = fresh
        if path is None:
            _, path = ctx.slots.hold(task_id)
            if not os.path.isdir(path) or self._commit_leftovers(task_id, path)[0] != task.branch:
                raise TaskFailure(f"its checkout is no longer on {task.branch}")
        started = ([done] if done else []) + [(task_id, "verify", {}, None)]
        if not task.verify and done and tip:  # nothing to run, nothing can move the tip: one write
            ctx.journal.append("qa-result", task=task_id, verdict="APPROVED")
            self._approve(task_id, started, tip, changed)
            return
        ctx.tasks.fire_all(started)
        verdict = ctx.checks.verify(task_id, path, n)
        ctx.journal.append("qa-result", task=task_id, verdict=verdict.verdict)
        stamp = store.utc_now()
        if verdict.verdict == "INTERRUPTED":
            ctx.tasks.fire(task_id, "qa_interrupt")
        elif verdict.verdict == "APPROVED":
            self._approve(task_id, [], git.branch_commit(ctx.repo, task.branch))
        elif verdict.verdict == "BLOCKED":
            ctx.tasks.fire(task_id, "qa_blocked", qa_verified=False, qa_timestamp=stamp, test_result="blocked",
                           failure=f"QA_BLOCKED: {verdict.feedback[-300:]}")
            ctx.reporter.task(task_id, "QA_BLOCKED: the check could not run")
        elif ctx.tasks.entry(task_id).get("recheck"):  # a rebase's look, not an attempt: no retry spent
            status = ctx.tasks.fire(task_id, "reject", recheck=None, qa_verified=False, qa_timestamp=stamp,
                                    qa_feedback=verdict.feedback, test_result="failed")
            ctx.reporter.task(task_id, "TASK_REJECTED on the new base too: the agent goes on with the feedback")
        else:
            status = ctx.tasks.setback(task_id, "qa", "QA rejected", qa_verified=False, qa_timestamp=stamp,
                                       qa_feedback=verdict.feedback, test_result="failed")
            ctx.reporter.task(task_id, "TASK_REJECTED" + (", retrying with the feedback" if status == S.REJECTED
                                                          else ": retries exhausted"))

    def _approve(self, task_id, before, tip, changed=None):
        """Record TASK_ID approved at TIP (after the events BEFORE, in the same write), with
        the files it changes (CHANGED, when just asked at that tip); the merge queue takes it
        while this worker gives its slot back."""
        ctx = self.ctx
        if changed is None:
            changed = git.changed_files(ctx.repo, ctx.base, self.plan.tasks[task_id].branch)
        ctx.tasks.fire_all(before + [(task_id, "approve", dict(
            qa_verified=True, qa_timestamp=store.utc_now(), test_result="passed", changed_files=changed,
            slot=None, approved_tip=tip), None)])  # (slot: given back right after)
        ctx.reporter.task(task_id, "TASK_APPROVED")
        ready = self._ready_to_start()  # this worker is about to start the next task: that goes first
        self.settling.discard(task_id)
        with self.launched:
            if ready:
                self.launching.add(("after", task_id))
            self.launched.notify_all()  # (a merge held back may be awaited now)
        self.merge_wake.set()
        crashpoint("approved")

    def _show_progress(self):
        ctx = self.ctx
        if ctx.reporter.quiet:
            return  # (a pass over every task, for nobody)
        statuses = ctx.tasks.statuses(self.scope)
        ctx.reporter.group_progress(ctx.progress.get("mode", "PARALLEL"),
                                    {t: s.value for t, s in statuses.items()})


def run_scope(ctx):
    """EXECUTE's work: the scheduler over the session's scope at its concurrency. Returns
    why it stopped early (the run's budget is spent), or None."""
    data = ctx.progress.load()
    scope = ctx.scope_tasks()
    concurrency = int(data.get("concurrency") or 1)
    if any(ctx.tasks.status(t) not in TERMINAL for t in scope):
        # every backend needs slots: QA runs on a local checkout of the task's branch
        ctx.slots.ensure(max(ctx.settings.max_agents, concurrency) + ctx.slots.SPARE)
        started = time.time()
        scheduler = Scheduler(ctx, scope, concurrency)
        scheduler.run()
        ctx.journal.append("scope-done", tasks=len(scope), seconds=round(time.time() - started, 2))
        return scheduler.budget_spent
    return None



class _StatusReader:
    """`statuses.get(task)` for the helpers that take a mapping, read task by task from the
    progress file (no dict of the whole plan built per look); `items()` when one must look at
    every task (a task waiting for the base: rare)."""

    def __init__(self, tasks):
        self.tasks = tasks

    def get(self, task_id, default=None):
        return self.tasks.status(task_id)

    def items(self):
        return self.tasks.statuses().items()
