"""Pool slots as the task flow uses them: a task holds one only while it needs a checkout
(its agent attempts and its QA), and lets go of it the moment it is approved, so the next
task starts at once; the branch outlives the slot and the merge queue takes it from there.
While tasks wait to start, an approved task's slot is parked and the next task takes it
over (one checkout); otherwise it is given back in the background.

Every lease records this orchestrator's pid as its owner (POOL_OWNER_PID), and the task's
`slot` field in the progress file always names the slot it holds, or nothing.
"""

import os
import threading

from engine import git
from engine.tasks import TaskStatus


class Slots:
    SPARE = 2  # slots beyond the concurrency, so a new task never waits for a release in flight

    def __init__(self, ctx):
        self.ctx = ctx
        self._pool = None
        self._lock = threading.Lock()
        self._releaser = None
        self._releasing = {}  # task id -> Future of its slot's release (or hand-over)
        self._parked = {}  # approved task id -> the slot it still holds, for the next task to take over
        self._fresh = {}  # task id -> the base commit of the slot just leased to it
        self._dropping = []  # Futures of merged branches a hand-over left to drop

    @property
    def pool(self):
        with self._lock:
            if self._pool is None:
                from engine.pool import Pool

                env = dict(os.environ, POOL_OWNER_PID=str(os.getpid()))
                self._pool = Pool(self.ctx.layout, env=env, home=self.ctx.layout.engine_pool_dir)
            return self._pool

    def exists(self):
        return os.path.exists(self.pool.state_path)

    def ensure(self, size):
        """A pool of at least SIZE slots (grown only while no slot is busy)."""
        from engine.errors import NotInitialized

        try:
            status = self.pool.status()
        except NotInitialized:
            self.pool.init(size)
            return
        self.move_home()
        if status["pool_size"] < size and status["busy"] == 0:
            self.pool.init(size, force=True)

    def move_home(self):
        """A pool made by an earlier version or by `pool-manager init` lives in
        `.claude/worktree-pool`, where a `claude` agent cannot edit a file: its slots move, work
        and all, to the engine's place (unless POOL_DIR chose the place). If a live process holds
        one of them, they stay for now and a warning says why."""
        pool = self.pool
        home = self.ctx.layout.engine_pool_dir
        if pool.chosen_dir or os.path.normpath(pool.dir) == os.path.normpath(home):
            return
        why = pool.relocate(home)
        if why:
            self.ctx.reporter.line(f"[WARN] the pool stays in {pool.rel(pool.dir)} for now ({why}); a `claude` "
                                   "agent cannot edit files there")
        else:
            self.ctx.reporter.line(f"pool moved to {pool.rel(home)} (Claude Code refuses edits under .claude/)")

    def leases(self):
        """{task id: slot id} for every busy slot."""
        if not self.exists():
            return {}
        return {s["task_id"]: s["id"] for s in self.pool.status()["worktrees"]
                if s.get("status") == "busy" and s.get("task_id")}

    def path(self, slot_id):
        return self.pool.slot_path(slot_id)

    def hold(self, task_id, discard_edits=False, record=True):
        """The slot TASK_ID holds (edits of a killed attempt discarded if asked), or a fresh
        lease at the current base; recorded as the task's `slot` unless the caller records
        it with its own next write (RECORD false)."""
        from engine.pool import PoolExhausted

        with self._lock:  # (approved, then conflicted: its own slot if still parked, else wait for it to go)
            self._parked.pop(task_id, None)
            leaving = self._releasing.get(task_id)
        self._wait(leaving)
        slot_id = self.leases().get(task_id)
        if slot_id is not None:
            with self._lock:
                self._fresh.pop(task_id, None)  # (not a fresh lease: its base is looked up, not assumed)
            path = self.path(slot_id)
            if os.path.isdir(path) and discard_edits:
                git.forget_operations(path)  # a rebase/am/bisect an attempt left half done
                git.discard_changes(path, self.ctx.plan.tasks[task_id].branch)
        else:
            lease = self._take_over(task_id)
            if lease is None:
                try:
                    lease = self.pool.acquire(task_id, self.ctx.base)
                except PoolExhausted:  # every slot busy or still being given back: wait for those
                    self.settle_releases()
                    lease = self.pool.acquire(task_id, self.ctx.base)
            slot_id, path, _ = lease
            with self._lock:
                self._fresh[task_id] = lease.base_commit
        if record and self.ctx.tasks.entry(task_id).get("slot") != slot_id:
            self.ctx.tasks.update(task_id, slot=slot_id)
        return slot_id, path

    def fresh_base(self, task_id):
        """The base commit of the slot `hold` has just leased to TASK_ID (once), or None when
        it held one already."""
        with self._lock:
            return self._fresh.pop(task_id, None)

    def release(self, task_id):
        """Give back the slot TASK_ID holds, if any; its branch stays when it holds work."""
        slot_id = self.leases().get(task_id)
        with self._lock:
            self._fresh.pop(task_id, None)
        if slot_id is not None:
            # An approved task's branch is what QA verified: files QA left in the checkout are
            # dropped, not committed onto it (the merge takes the branch's tip)
            done = self.ctx.tasks.status(task_id) in (TaskStatus.APPROVED, TaskStatus.MERGING, TaskStatus.MERGED)
            self.pool.release(slot_id, quiet=True, discard_leftovers=done)
            self.ctx.journal.append("release", slot=slot_id, task=task_id)
        if self.ctx.tasks.entry(task_id).get("slot") is not None:
            self.ctx.tasks.update(task_id, slot=None)
        return slot_id

    def park(self, task_id, slot_id):
        """Keep the slot of approved TASK_ID leased for the next task to take over (one
        checkout instead of a release and an acquire); `settle_releases` gives back what no
        task took."""
        with self._lock:
            self._parked[task_id] = slot_id

    def _take_over(self, task_id):
        """The lease of a parked slot handed to TASK_ID, or None (none parked, or the
        hand-over failed: that slot is given back the usual way and a fresh one leased)."""
        from concurrent.futures import Future
        from engine.errors import OrchestratorError

        with self._lock:
            if not self._parked:
                return None
            previous = next(iter(self._parked))
            slot_id = self._parked.pop(previous)
            done = self._releasing[previous] = Future()  # its task waits for this if it needs a checkout again
        try:
            # (the previous branch, once merged, is dropped in the background below, not
            # between the checkout and the agent's start)
            lease = self.pool.acquire(task_id, self.ctx.base, take_over=slot_id, previous_merged=lambda: False)
        except OrchestratorError as exc:
            self.ctx.reporter.line(f"{slot_id} not handed over ({exc.message}); leasing another slot")
            self.give_back(previous)
            return None
        finally:
            done.set_result(None)
        with self._lock:
            self._dropping.append(self._background().submit(self._drop_if_merged, previous))
        return lease

    def _drop_if_merged(self, task_id):
        """The branch of merged TASK_ID, which the merge queue could not delete while a slot
        had it checked out (one left by a kill is dropped by the merge queue's settle)."""
        if self.ctx.tasks.status(task_id) == TaskStatus.MERGED:
            git.delete_branch(self.ctx.repo, self.ctx.plan.tasks[task_id].branch, check=False)

    def _background(self):
        """The two threads that give slots back and drop branches (caller holds the lock)."""
        from concurrent.futures import ThreadPoolExecutor

        if self._releaser is None:
            self._releaser = ThreadPoolExecutor(max_workers=2, thread_name_prefix="release")
        return self._releaser

    def release_later(self, task_id):
        """Give the slot back in the background: the task's worker is free at once, and the
        next task takes one of the spare slots meanwhile."""
        with self._lock:  # (recorded as it is submitted: `hold` waits for it)
            self._releasing[task_id] = self._background().submit(self.give_back, task_id)

    def give_back(self, task_id):
        """`release`, or, when the slot cannot be released (its worktree was deleted), a
        repair of the pool; the task's `slot` is cleared either way."""
        from engine.errors import OrchestratorError

        try:
            self.release(task_id)
        except OrchestratorError:
            for line in self.repair():
                self.ctx.reporter.line(f"pool repaired: {line}")
            self.ctx.tasks.update(task_id, slot=None)

    def settle_releases(self):
        """Give back every parked slot and wait for every release in flight (before the scope
        ends, or when no slot is free)."""
        with self._lock:
            parked, self._parked = list(self._parked), {}
        for task_id in parked:
            self.release_later(task_id)
        with self._lock:
            dropping, self._dropping = self._dropping, []
        for future in list(self._releasing.values()) + dropping:
            self._wait(future)

    def close(self):
        """Settle every release and end the background threads (a scope's end; they start
        again if needed)."""
        self.settle_releases()
        with self._lock:
            releaser, self._releaser = self._releaser, None
        if releaser is not None:
            releaser.shutdown(wait=True)

    def _wait(self, future):
        if future is not None:
            future.result()

    def repair(self):
        """After an agent broke its slot (deleted the worktree): put the pool back in order."""
        from engine import pool_health

        _, _, repaired = pool_health.health(self.pool, repair=True)
        return repaired
