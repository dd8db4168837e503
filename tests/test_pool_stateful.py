"""Hypothesis: random acquire / commit / release / cleanup / health sequences on a real
repository, checked against a model after every step."""

import os
import shutil
import subprocess
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from engine import pool_health
from engine.errors import OrchestratorError
from engine.paths import Layout
from engine.pool import Pool, PoolExhausted
from tests.conftest import branches, commit_file, git

SIZE = 3
TASKS = [f"t{i}" for i in range(5)]


class PoolModel(RuleBasedStateMachine):
    @initialize()
    def setup(self):
        self.dir = tempfile.mkdtemp()
        git(self.dir, "init", "-q", "-b", "main")
        commit_file(self.dir, "README.md", "hi\n")
        self.pool = Pool(Layout(self.dir), env={})
        self.pool.init(SIZE)
        self.slots = {f"wt-{n}": None for n in range(1, SIZE + 1)}
        self.work = set()  # branches holding commits that main lacks
        self.parked = set()  # branches that exist but no slot holds (kept by a release)
        self.counter = 0

    def teardown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(task=st.sampled_from(TASKS))
    def acquire(self, task):
        held = task in self.slots.values()
        free = [s for s, t in sorted(self.slots.items(), key=lambda kv: int(kv[0][3:])) if t is None]
        try:
            slot, path, branch = self.pool.acquire(task)
        except PoolExhausted:
            assert not free and not held
            return
        except OrchestratorError as exc:
            assert held, exc
            return
        assert not held and slot == free[0] and branch == f"auto/{task}"
        self.slots[slot] = task
        self.parked.discard(branch)

    @rule(data=st.data())
    def commit_work(self, data):
        busy = sorted(s for s, t in self.slots.items() if t)
        if not busy:
            return
        slot = data.draw(st.sampled_from(busy))
        self.counter += 1
        commit_file(os.path.join(self.pool.dir, slot), f"f{self.counter}.txt", "x\n")
        self.work.add(f"auto/{self.slots[slot]}")

    @rule(data=st.data(), force=st.booleans())
    def release(self, data, force):
        slot = data.draw(st.sampled_from(sorted(self.slots)))
        self.pool.release(slot, force=force, quiet=True)
        task = self.slots[slot]
        if task:
            self._let_go(f"auto/{task}", force)
        self.slots[slot] = None

    def _let_go(self, branch, force):
        if force:
            self.work.discard(branch)
        elif branch in self.work:
            self.parked.add(branch)

    @rule(force=st.booleans())
    def cleanup(self, force):
        self.pool.cleanup(force=force)
        for task in self.slots.values():
            if task:
                self._let_go(f"auto/{task}", force)
        self.slots = {s: None for s in self.slots}

    @rule()
    def merge_everything(self):
        """The user merges all kept work into main: nothing is 'unmerged' any more."""
        for branch in sorted(self.work):
            git(self.dir, "merge", "-q", "--no-ff", "-m", f"merge {branch}", branch)
        self.work = set()

    @invariant()
    def matches_model(self):
        if not hasattr(self, "pool"):
            return
        status = self.pool.status()
        assert {s["id"]: s["task_id"] for s in status["worktrees"]} == self.slots
        for slot, task in self.slots.items():
            if task:
                assert git(os.path.join(self.pool.dir, slot), "symbolic-ref", "--short", "HEAD") == f"auto/{task}"
        held = {f"auto/{t}" for t in self.slots.values() if t}
        assert set(branches(self.dir)) == {"main"} | held | self.parked
        assert pool_health.find_issues(self.pool) == []
        assert subprocess.run(["git", "status", "--porcelain", "--", ".claude/worktree-pool"], cwd=self.dir,
                              capture_output=True, text=True).stdout == ""


PoolModel.TestCase.settings = settings(max_examples=25, stateful_step_count=15, deadline=None,
                                       suppress_health_check=[HealthCheck.too_slow])
TestPool = PoolModel.TestCase
