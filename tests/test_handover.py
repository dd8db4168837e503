"""The fast paths of the task flow hold the same rules as the slow ones: a slot handed from an
approved task to the next (one checkout, no release + acquire), the progress file's group
commit (many threads, one write, each change still all-or-nothing), and journal records
appended in one write. Real repositories, real threads and processes."""

import json
import os
import subprocess
import threading

import pytest

from engine import store
from engine.errors import OrchestratorError
from engine.paths import Layout
from engine.pool import Pool
from engine.progress import Progress
from tests.conftest import PYTHON, branches, commit_file, git, python_env

STATE = ".claude/pool-state.json"


SIX_TASKS = "".join(f"  - {{id: t{i}, description: task {i}}}\n" for i in range(6))


def demo_plan(tmp_path, tasks, max_agents=None):
    """A demo repository and a plan of TASKS (its `tasks:` lines) for the bundled demo agent:
    (repository, plan path)."""
    from engine import demo

    repo = demo.make_repo(str(tmp_path / "r"))
    if max_agents:
        with open(os.path.join(repo, ".claude", "auto-context.yaml"), "w") as fh:
            fh.write(f"parallelization:\n  max_agents: {max_agents}\n  min_tasks: 2\n")
    plan = tmp_path / "plan.yaml"
    agent = f"{PYTHON} {os.path.join(os.path.dirname(demo.__file__), 'demo_agent.py')}"
    plan.write_text(f"base: main\nagent: {agent}\ntasks:\n{tasks}")
    return repo, plan


def slow_merges(monkeypatch, seconds):
    """Every merge of the merge queue starts SECONDS late (what a run does meanwhile shows)."""
    import time

    from engine import merge

    merge_branches = merge.merge_branches
    monkeypatch.setattr(merge, "merge_branches", lambda *a, **k: (time.sleep(seconds), merge_branches(*a, **k))[1])


def slot_record(repo, slot_id):
    with open(os.path.join(repo, STATE)) as fh:
        return next(s for s in json.load(fh)["worktrees"] if s["id"] == slot_id)


def test_a_slot_handed_over_is_on_the_new_task_from_the_base_and_the_work_before_it_is_kept(repo, pool):
    slot, path, _ = pool.acquire("a", "main")
    commit_file(path, "a.txt", "a\n")
    (open(os.path.join(path, "scratch.tmp"), "w")).write("left by QA\n")  # untracked: must not reach b
    same, path_b, branch = pool.acquire("b", "main", take_over=slot)
    assert (same, path_b, branch) == (slot, path, "auto/b")
    assert git(path, "symbolic-ref", "--short", "HEAD") == "auto/b"
    assert git(path, "rev-parse", "HEAD") == git(repo, "rev-parse", "main")
    assert git(path, "status", "--porcelain") == ""
    assert not os.path.exists(os.path.join(path, "a.txt"))
    assert "auto/a" in branches(repo)  # not merged yet: the merge queue takes it from there
    record = slot_record(repo, slot)
    assert record["task_id"] == "b" and record["status"] == "busy"
    assert "preparing" not in record and "previous_branch" not in record
    journal = [json.loads(line) for line in open(os.path.join(repo, ".claude/pool-journal.jsonl"))]
    assert any(r["event"] == "acquire-intent" and r.get("took_over") == "auto/a" for r in journal)


def test_a_merged_branch_goes_with_the_hand_over(repo, pool):
    slot, path, _ = pool.acquire("a", "main")
    commit_file(path, "a.txt", "a\n")
    git(repo, "merge", "-q", "--no-edit", "auto/a")  # the base has it now, the slot still has it checked out
    pool.acquire("b", "main", take_over=slot)
    assert "auto/a" not in branches(repo)
    assert "auto/b" in branches(repo)


def test_the_scheduler_s_answer_on_the_previous_branch_is_asked_after_the_checkout(repo, pool):
    """The orchestrator tells the hand-over whether the previous task is merged (no look at
    the history), asked only once the slot has left that branch: a merge recorded while the
    checkout ran is seen, and the branch the merge queue could not drop goes."""
    slot, path, _ = pool.acquire("a", "main")
    commit_file(path, "a.txt", "a\n")
    git(repo, "merge", "-q", "--no-edit", "auto/a")
    seen = []

    def merged():
        seen.append(git(path, "symbolic-ref", "--short", "HEAD"))
        return True
    lease = pool.acquire("b", "main", take_over=slot, previous_merged=merged)
    assert seen == ["auto/b"] and "auto/a" not in branches(repo)
    assert lease.base_commit == git(repo, "rev-parse", "main")
    slot_c = pool.acquire("c", "main")[0]
    commit_file(pool.slot_path(slot_c), "c.txt", "c\n")
    pool.acquire("d", "main", take_over=slot_c, previous_merged=lambda: False)
    assert "auto/c" in branches(repo)  # not merged: the merge queue takes it from there


def test_only_the_lease_owner_hands_a_slot_over_and_nothing_changes_otherwise(repo, pool, monkeypatch):
    slot, path, _ = pool.acquire("a", "main")
    before = open(os.path.join(repo, STATE), "rb").read()
    other = Pool(Layout(str(repo)), env=dict(os.environ, POOL_OWNER_PID="1"))
    with pytest.raises(OrchestratorError, match="not a slot this process can hand over"):
        other.acquire("b", "main", take_over=slot)
    idle = "wt-2"
    with pytest.raises(OrchestratorError, match="not a slot this process can hand over"):
        pool.acquire("b", "main", take_over=idle)
    assert open(os.path.join(repo, STATE), "rb").read() == before
    assert "auto/b" not in branches(repo)


def test_a_hand_over_cut_short_by_a_kill_is_rolled_back_like_an_acquire(repo, pool):
    """The state a SIGKILL between the claim and the confirmation leaves: the slot says
    `preparing` for b with a's branch as `previous_branch`, owned by a dead pid. The repair
    gives the slot back, drops b's empty branch and a's branch once the base has it."""
    slot, path, _ = pool.acquire("a", "main")
    commit_file(path, "a.txt", "a\n")
    git(repo, "merge", "-q", "--no-edit", "auto/a")
    dead = subprocess.Popen(["true"])
    dead.wait()
    data = json.load(open(os.path.join(repo, STATE)))
    record = next(s for s in data["worktrees"] if s["id"] == slot)
    record.update(task_id="b", branch="auto/b", preparing=True, previous_branch="auto/a",
                  base_commit=git(repo, "rev-parse", "main"), owner=dict(record["owner"], pid=dead.pid))
    git(path, "checkout", "-q", "-f", "-B", "auto/b", "main")  # killed right after the checkout
    store.write_json(os.path.join(repo, STATE), data)
    pool.release(slot, quiet=True)
    record = slot_record(repo, slot)
    assert record["status"] == "idle" and "previous_branch" not in record
    assert "auto/a" not in branches(repo) and "auto/b" not in branches(repo)


def test_a_run_hands_slots_over_and_leaves_no_branch_or_worktree(tmp_path):
    """Six tasks at two agents: most slots pass from an approved task to the next without a
    release; every task is merged once and nothing is left behind."""
    repo, plan = demo_plan(tmp_path, SIX_TASKS, max_agents=2)
    env = dict(python_env(), DEMO_AGENT_SLEEP="0.2")
    proc = subprocess.run([PYTHON, "-m", "engine.cli.orchestrator", "run", "--all-groups", "--quiet", str(plan)],
                          cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    journal = [json.loads(line) for line in open(os.path.join(repo, ".claude/pool-journal.jsonl"))]
    handed = [r for r in journal if r["event"] == "acquire-intent" and r.get("took_over")]
    assert handed, "no slot was handed over"
    merges = git(repo, "log", "--format=%s", "main")
    assert sorted(line for line in merges.splitlines() if line.startswith("feat: Merge")) == \
        sorted(f"feat: Merge auto/t{i}" for i in range(6))
    assert branches(repo) == ["main"]
    assert len(git(repo, "worktree", "list").splitlines()) == 1


# --------------------------------------------------------------------------- group commit
def test_concurrent_updates_all_land_and_a_failing_change_fails_alone(tmp_path):
    root = tmp_path / "p"
    (root / ".claude").mkdir(parents=True)
    progress = Progress(Layout(str(root)))
    errors, barrier = [], threading.Barrier(16)

    def writer(i):
        barrier.wait()
        try:
            if i == 7:
                def broken(data):
                    data["tasks"]["t7"] = {"half": True}
                    raise ValueError("boom")
                progress.update(broken)
            else:
                assert progress.update(lambda d: d.setdefault("tasks", {}).update({f"t{i}": {"n": i}}) or i) == i
        except ValueError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == ["boom"]
    on_disk, _ = store.load_yaml_mapping(progress.path)
    assert sorted(on_disk["tasks"]) == sorted(f"t{i}" for i in range(16) if i != 7)
    assert on_disk == Progress(Layout(str(root))).load()  # a fresh reader sees what the cache says


def test_another_process_writing_the_file_is_seen_by_the_cache(tmp_path):
    root = tmp_path / "p"
    (root / ".claude").mkdir(parents=True)
    progress = Progress(Layout(str(root)))
    progress.update(lambda d: d.update(a=1))
    assert progress.get("a") == 1
    code = ("import sys; from engine.progress import Progress; from engine.paths import Layout; "
            "Progress(Layout(sys.argv[1])).update(lambda d: d.update(a=2, b=[1]))")
    subprocess.run([PYTHON, "-c", code, str(root)], env=python_env(), check=True)
    assert progress.get("a") == 2 and progress.get("b") == [1]
    progress.update(lambda d: d.update(c=3))
    assert store.load_yaml_mapping(progress.path)[0] == {"a": 2, "b": [1], "c": 3}


# --------------------------------------------------------------------------- journal batches
def test_journal_batches_keep_one_sequence_with_other_writers(tmp_path):
    path = str(tmp_path / "j.jsonl")
    mine = store.Journal(path)
    mine.append_many([("a", {"i": 1}), ("b", {"i": 2})])
    code = ("import sys; from engine import store; j = store.Journal(sys.argv[1]); "
            "j.append('other', i=3); open(sys.argv[1], 'ab').write(b'{\"torn')")
    subprocess.run([PYTHON, "-c", code, path], env=python_env(), check=True)
    mine.append_many([("c", {"i": 4})])
    records = store.Journal(path).records()
    assert [(r["seq"], r["event"]) for r in records] == [(1, "a"), (2, "b"), (3, "other"), (4, "c")]
    assert open(path, "rb").read().endswith(b"\n")  # the torn tail was cut before the append


def test_a_slot_is_let_go_when_the_merge_queue_takes_its_task_before_its_worker_looks(tmp_path, monkeypatch):
    """The merge queue may move an approved task to `merging` before its worker's `finally`
    reads the status: the slot must still be parked or given back, not kept for good (four
    slots for six tasks at two agents ran out as leaked slots piled up: PoolExhausted)."""
    import time

    from engine import runner, scheduler
    from engine.context import Options
    from engine.tasks import TaskStatus as S

    repo, plan = demo_plan(tmp_path, SIX_TASKS, max_agents=2)
    monkeypatch.chdir(repo)
    monkeypatch.setenv("DEMO_AGENT_SLEEP", "0")
    slow_merges(monkeypatch, 0.3)  # the task stays `merging` a while
    approve = scheduler.Scheduler._approve
    seen = []

    def approve_then_wait_for_the_merge_queue(self, task_id, before, tip, changed=None):
        approve(self, task_id, before, tip, changed)
        deadline = time.monotonic() + 10
        while self.ctx.tasks.status(task_id) == S.APPROVED and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(self.ctx.tasks.status(task_id))
    monkeypatch.setattr(scheduler.Scheduler, "_approve", approve_then_wait_for_the_merge_queue)
    held = []
    from engine.slots import Slots

    hold = Slots.hold

    def hold_and_count(self, task_id, **kwargs):
        held.append(len(self.leases()))  # busy slots when a task asks for one
        return hold(self, task_id, **kwargs)
    monkeypatch.setattr(Slots, "hold", hold_and_count)

    runner.start(str(plan), Options(all_groups=True, quiet=True))

    assert S.MERGING in seen  # the interleaving happened
    statuses = Progress(Layout(str(repo))).load()["tasks"]
    assert {t: v["status"] for t, v in statuses.items()} == {f"t{i}": "merged" for i in range(6)}
    assert max(held) <= 2 + 1  # the other agent's slot and one parked; never the leaked ones
    assert branches(repo) == ["main"]


def test_what_qa_leaves_in_an_approved_task_s_slot_is_not_merged(tmp_path, monkeypatch):
    """A verify that leaves a file behind (a report, a build output): when the approved
    task's slot is given back before the merge reads the branch, the release must drop that
    file, not commit it onto the branch as "WIP" (the merge takes the branch's tip, so it
    would merge what QA never verified, or keep an orphan branch)."""
    from engine import runner
    from engine.context import Options

    repo, plan = demo_plan(tmp_path, "  - {id: t, verify: 'echo report > qa-report.txt'}\n")
    monkeypatch.chdir(repo)
    monkeypatch.setenv("DEMO_AGENT_SLEEP", "0")
    slow_merges(monkeypatch, 1.0)  # the slot's release (in the background) goes first

    runner.start(str(plan), Options(all_groups=True, quiet=True))

    assert Progress(Layout(str(repo))).load()["tasks"]["t"]["status"] == "merged"
    assert "qa-report.txt" not in git(repo, "ls-tree", "-r", "--name-only", "main").split()
    assert "WIP" not in git(repo, "log", "--format=%s", "main")
    assert branches(repo) == ["main"]


def test_a_new_branch_is_leased_without_a_worktree_listing_and_a_slot_deleted_by_hand_is_made_again(
        repo, pool, monkeypatch):
    """A branch that does not exist is checked out nowhere, so its lease asks git for no
    worktree listing; a slot whose directory a person deleted (git still lists it) is made
    again, the listing asked for only then."""
    from engine import git as gitmod

    listings = []
    real = gitmod.worktrees
    monkeypatch.setattr(gitmod, "worktrees", lambda r: listings.append(r) or real(r))
    slot, path, _ = pool.acquire("a", "main")
    assert listings == [] and os.path.isfile(os.path.join(path, ".git"))
    pool.release(slot)
    import shutil

    shutil.rmtree(path)  # git still lists it, as prunable
    assert any(e["prunable"] for e in real(str(repo)))
    listings.clear()
    slot2, path2, _ = pool.acquire("b", "main")
    assert slot2 == slot and path2 == path and listings  # the listing, asked for once git refused
    assert git(path, "symbolic-ref", "--short", "HEAD") == "auto/b"
    assert not any(e["prunable"] for e in real(str(repo)))


def test_a_hand_over_drops_the_merged_previous_branch_after_the_next_task_starts(tmp_path):
    """In a run, an approved task's slot goes to the next task at once; its branch, merged
    meanwhile, is dropped in the background (not between the checkout and the agent's
    start), and no merged branch is left when the run ends."""
    repo, plan = demo_plan(tmp_path, SIX_TASKS, max_agents=2)
    proc = subprocess.run([PYTHON, "-m", "engine.cli.orchestrator", "run", "--all-groups", "--quiet", str(plan)],
                          cwd=repo, env=python_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    journal = [json.loads(line) for line in open(os.path.join(repo, ".claude/pool-journal.jsonl"))]
    assert any(r["event"] == "acquire-intent" and r.get("took_over") for r in journal)  # hand-overs happened
    assert [b for b in branches(repo) if b.startswith("auto/")] == []


def _git_commands(trace_path):
    """The git subcommands a GIT_TRACE file records (one per `trace: built-in: git ...` line)."""
    commands = []
    for line in open(trace_path, errors="replace"):
        if "trace: built-in: git " in line:
            commands.append(line.split("trace: built-in: git ", 1)[1].split()[0].strip("'"))
    return commands


def test_files_a_check_left_in_the_checkout_are_cleaned_before_the_next_task(tmp_path):
    """QA's own command runs in the checkout after its `git status`: what it leaves is
    cleaned at the hand-over, so the next task's agent starts in a clean checkout (its agent
    fails if it finds the file, and every task merges at its first attempt)."""
    from engine import demo

    agent = (f"test ! -e qa-artifact.txt && {PYTHON} "
             f"{os.path.join(os.path.dirname(demo.__file__), 'demo_agent.py')}")
    repo, plan = demo_plan(tmp_path, "".join(f"  - {{id: t{i}, description: task {i}, verify: 'touch qa-artifact.txt'}}\n"
                                             for i in range(4)), max_agents=1)
    plan.write_text(plan.read_text().replace("agent: ", f"agent: {json.dumps(agent)}\n# was: ", 1))
    trace = tmp_path / "trace"
    proc = subprocess.run([PYTHON, "-m", "engine.cli.orchestrator", "run", "--all-groups", "--quiet", str(plan)],
                          cwd=repo, env=dict(python_env(), GIT_TRACE=str(trace)), capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr
    with open(os.path.join(repo, ".claude", "auto-progress.yaml")) as fh:
        import yaml

        tasks = yaml.safe_load(fh)["tasks"]
    assert {t: (v["status"], v["iterations"]) for t, v in tasks.items()} == {f"t{i}": ("merged", 1) for i in range(4)}
    assert "clean" in _git_commands(trace)
