"""Red-team of the speed changes (warm reapers, exit_with, head_status QA, hand-over without
git clean, background branch drops, the ff-only clearing of a killed merge's files). Real git
repositories, real subprocesses and signals; every test states what must hold."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from engine import procs
from tests.conftest import PYTHON, branches, git, python_env
from tests.test_warm_reapers import ready as _ready

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _let_reapers_go():
    yield
    procs.keep_reapers_warm(0)


def _both_ways(tmp_path, monkeypatch, command, cwd, **kwargs):
    """{'cold': (code, output), 'warm': (code, output)} of the same run_command call."""
    seen = {}
    for mode in ("cold", "warm"):
        procs.keep_reapers_warm(0)
        if mode == "warm":
            procs.keep_reapers_warm(1)
            _ready(1)
        out = tmp_path / f"{mode}.out"
        waiting = {p.pid for p, _ in procs._warm._idle}
        try:
            result = procs.run_command(command, cwd, output_path=str(out), **kwargs)
            seen[mode] = (result.code, out.read_text(errors="replace"))
            seen[f"{mode} in a waiting reaper"] = result.pid in waiting
        except procs.CommandLaunchError as exc:
            seen[mode] = ("launch error", exc.message)
    return seen


# --------------------------------------------------------------------------- 1. warm reapers
def test_a_relative_cwd_means_the_same_directory_warm_or_cold(tmp_path, monkeypatch):
    """run_command's cwd is taken relative to our own directory (Popen's rule): a warm reaper,
    started in /, must not take it relative to /."""
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    seen = _both_ways(tmp_path, monkeypatch, "pwd", "sub")
    assert seen["cold"] == (0, f"{tmp_path / 'sub'}\n")
    assert seen["warm"] == seen["cold"] and seen["warm in a waiting reaper"]


def test_an_environment_popen_accepts_runs_the_command_in_a_warm_reaper_too(tmp_path, monkeypatch):
    """An empty variable name is what subprocess passes as it is ("=x"); os.execve refuses it,
    so the warm reaper's child dies with 127 before the shell runs, silently."""
    env = {"": "x", "PATH": os.environ["PATH"]}
    seen = _both_ways(tmp_path, monkeypatch, "echo ran", str(tmp_path), env=env)
    assert seen["cold"] == (0, "ran\n")
    assert seen["warm"] == seen["cold"]


# --------------------------------------------------------------------------- 2. exit_with
CLIS = ["orchestrator", "state_transition", "checkpoint_manager", "merge_branches"]


@pytest.mark.parametrize("closed", ["stdout", "stderr"])
def test_a_cli_keeps_its_exit_code_when_a_standard_stream_is_closed(tmp_path, closed):
    """`cmd >&-` / `cmd 2>&-`: Python sets sys.stdout/sys.stderr to None; click then writes
    nowhere and the command's code stands (as before exit_with). exit_with calls .flush() on
    None: AttributeError, a traceback and exit 1 for every CLI, whatever the command did."""
    git(str(tmp_path), "init", "-q", "-b", "main")
    codes = {}
    for mod in CLIS:
        redirect = ">&-" if closed == "stdout" else "2>&- >/dev/null"
        proc = subprocess.run(f"{PYTHON} -m engine.cli.{mod} --help {redirect}", shell=True, cwd=str(tmp_path),
                              env=python_env(), stderr=subprocess.PIPE if closed == "stdout" else None)
        codes[mod] = proc.returncode
    assert codes == {mod: 0 for mod in CLIS}


# --------------------------------------------------------------------------- 4. hand-over without git clean
def _demo_chain(tmp_path, agent_prefix, count=3, agent_suffix=""):
    """A demo repository, one agent at a time, COUNT tasks whose agent runs AGENT_PREFIX and
    then the bundled demo agent; the run's exit code and the tasks' (status, iterations)."""
    import yaml

    from engine import demo

    repo = demo.make_repo(str(tmp_path / "r"))
    with open(os.path.join(repo, ".claude", "auto-context.yaml"), "w") as fh:
        fh.write("parallelization:\n  max_agents: 1\n  min_tasks: 2\n  retry_on_failure: 0\n")
    agent = f"{agent_prefix} {PYTHON} {os.path.join(os.path.dirname(demo.__file__), 'demo_agent.py')}{agent_suffix}"
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"base: main\nagent: {json.dumps(agent)}\ntasks:\n" +
                    "".join(f"  - {{id: t{i}, description: task {i}}}\n" for i in range(count)))
    proc = subprocess.run([PYTHON, "-m", "engine.cli.orchestrator", "run", "--all-groups", "--quiet", str(plan)],
                          cwd=repo, env=dict(python_env(), DEMO_AGENT_SLEEP="0"), capture_output=True, text=True,
                          timeout=180)
    with open(os.path.join(repo, ".claude", "auto-progress.yaml")) as fh:
        tasks = yaml.safe_load(fh)["tasks"]
    return repo, proc, {t: (v["status"], v.get("iterations")) for t, v in tasks.items()}


def test_an_empty_directory_an_agent_left_does_not_reach_the_next_agent(tmp_path):
    """`git status` does not show an empty untracked directory, `git clean -ffd` removes it:
    the checkout is taken for clean and the next task's agent finds the previous one's
    directory (each agent here fails if it finds one, then leaves one)."""
    repo, proc, tasks = _demo_chain(tmp_path, "test ! -e scratch-dir && mkdir scratch-dir &&")
    assert tasks == {f"t{i}": ("merged", 1) for i in range(3)}, proc.stderr


def test_an_untracked_file_outside_the_status_pathspec_does_not_reach_the_next_agent(tmp_path):
    """The status after an agent leaves out .claude/auto-context.yaml (our copy's path), so a
    file an agent wrote there is neither committed nor seen: the checkout is taken for clean
    and, without the git clean, the next task's agent finds it."""
    repo, proc, tasks = _demo_chain(
        tmp_path, "test ! -e .claude/auto-context.yaml &&",
        agent_suffix=" && mkdir -p .claude && echo mine > .claude/auto-context.yaml")
    assert tasks == {f"t{i}": ("merged", 1) for i in range(3)}, proc.stderr


# --------------------------------------------------------------------------- 5. branches after a run
def test_a_branch_merged_while_its_slot_is_being_given_back_is_not_left_behind(tmp_path, monkeypatch):
    """(Regression, holds.) The last task's slot is given back in the background while the
    merge queue merges it: the release asks 'merged?' before the merge lands (so it keeps the
    branch) and the merge queue, seeing the slot still busy, leaves the branch to it; the
    run's closing sweep must still drop it. (The window between the release's look and its
    slot going idle is widened, as a pool lock held a moment from another shell widens it.)"""
    from engine import demo, merge, pool as poolmod, runner
    from engine.context import Options

    repo = demo.make_repo(str(tmp_path / "r"))
    plan = tmp_path / "plan.yaml"
    agent = f"{PYTHON} {os.path.join(os.path.dirname(demo.__file__), 'demo_agent.py')}"
    plan.write_text(f"base: main\nagent: {agent}\ntasks:\n  - {{id: t, description: x}}\n")
    monkeypatch.chdir(repo)
    monkeypatch.setenv("DEMO_AGENT_SLEEP", "0")
    merge_branches = merge.merge_branches
    monkeypatch.setattr(merge, "merge_branches", lambda *a, **k: (time.sleep(0.5), merge_branches(*a, **k))[1])
    mark_idle = poolmod.Pool.mark_idle
    monkeypatch.setattr(poolmod.Pool, "mark_idle", lambda self, slot_id: (time.sleep(1.5), mark_idle(self, slot_id))[1])

    runner.start(str(plan), Options(all_groups=True, quiet=True))

    from engine.paths import Layout
    from engine.progress import Progress

    assert Progress(Layout(str(repo))).load()["tasks"]["t"]["status"] == "merged"
    assert branches(repo) == ["main"]


def test_a_launch_the_kernel_refuses_fails_the_usual_way_in_a_warm_reaper_too(tmp_path):
    """The kernel's limit on a new program's arguments and environment is a quarter of the
    stack limit (at least 128 KB, the strings' pointers included): under `ulimit -s 256` an
    environment of many short variables, well under the 100 KB the warm path trusts, is
    refused. Cold: CommandLaunchError 'argument list too long'. Warm: the reaper's child dies
    with 127 before the shell, with no word of why."""
    script = f"""
import os, sys, time, resource
sys.path.insert(0, {ROOT!r})
resource.setrlimit(resource.RLIMIT_STACK, (256 * 1024, resource.getrlimit(resource.RLIMIT_STACK)[1]))
from engine import procs
env = dict({{"PATH": os.environ["PATH"]}}, **{{f"V{{i}}": "x" for i in range(9000)}})
for mode in ("cold", "warm"):
    procs.keep_reapers_warm(1 if mode == "warm" else 0)
    while mode == "warm" and not procs._warm._idle:
        time.sleep(0.01)
    try:
        r = procs.run_command("echo ran", {str(tmp_path)!r}, output_path={str(tmp_path / 'out')!r}, env=env)
        print(mode, r.code)
    except procs.CommandLaunchError as e:
        print(mode, "launch error:", e.message.split(":")[0])
procs.keep_reapers_warm(0)
"""
    proc = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.stdout.splitlines() == ["cold launch error: argument list too long",
                                        "warm launch error: argument list too long"], proc.stderr


# --------------------------------------------------------------------------- 3. QA's two git calls
def test_an_agent_that_changed_nothing_is_not_approved_when_a_tag_shares_the_base_s_name(tmp_path):
    """`has it commits beyond the base` now comes from `git diff BASE...refs/heads/BRANCH` with
    the base's bare name: a tag of the same name (a release tag `main`, or `release-1` for a
    branch `release-1`) wins git's lookup, so an agent that exits 0 having done nothing is
    taken to have changed what the base gained since the tag, approved and 'merged'. The
    rev-list beside it names refs/heads/ and says: no changes."""
    import yaml

    from engine import demo

    repo = demo.make_repo(str(tmp_path / "r"))
    with open(os.path.join(repo, ".claude", "auto-context.yaml"), "w") as fh:
        fh.write("parallelization:\n  max_agents: 1\n  min_tasks: 1\n  retry_on_failure: 0\n")
    git(repo, "tag", "main")  # a tag named like the branch, at the first commit
    with open(os.path.join(repo, "later.txt"), "w") as fh:
        fh.write("later\n")
    git(repo, "add", "later.txt")
    git(repo, "-c", "user.name=p", "-c", "user.email=p@e", "commit", "-qm", "later")
    plan = tmp_path / "plan.yaml"
    plan.write_text("base: main\nagent: 'true'\ntasks:\n  - {id: t, description: does nothing}\n")
    proc = subprocess.run([PYTHON, "-m", "engine.cli.orchestrator", "run", "--all-groups", "--quiet", str(plan)],
                          cwd=repo, env=python_env(), capture_output=True, text=True, timeout=120)
    with open(os.path.join(repo, ".claude", "auto-progress.yaml")) as fh:
        task = yaml.safe_load(fh)["tasks"]["t"]
    assert task["status"] == "failed", (task["status"], task.get("changed_files"), proc.stderr[-500:])
    assert "no changes" in task.get("failure", "")


def test_a_slot_deleted_by_hand_whose_registration_is_locked_is_made_again(repo, pool):
    """(Regression, holds.) The fast `git worktree add` of a new branch is refused at a path
    git still lists as a *locked* missing worktree (not prunable): the listing asked then
    must still clear it and the lease succeed, on the new branch."""
    import shutil

    slot, path, _ = pool.acquire("a", "main")
    pool.release(slot)
    git(str(repo), "worktree", "lock", path)
    shutil.rmtree(path)
    slot2, path2, _ = pool.acquire("b", "main")
    assert path2 == path and git(path, "symbolic-ref", "--short", "HEAD") == "auto/b"
    assert sorted(b for b in branches(repo)) == ["auto/b", "main"]


# --------------------------------------------------------------------------- 6. a killed merge's files
def test_a_persons_file_equal_only_after_a_clean_filter_still_refuses_the_merge(mb, repo):
    """`git hash-object -- PATH` hashes what the path's clean filter makes of the file, not
    the bytes on disk: a person's untracked config holding a secret that the repository's
    clean filter strips hashes like the branch's blank one, so it is taken for what a killed
    fast-forward left, deleted, and the secret is gone. Only bytes equal to the blob may go."""
    from tests.conftest import branch_with, commit_file

    commit_file(repo, ".gitattributes", "*.ini filter=secret\n")
    git(repo, "config", "filter.secret.clean", "sed -e 's/=.*/=/'")
    git(repo, "config", "filter.secret.smudge", "cat")
    branch_with(repo, "auto/a", {"app.ini": "password=\n"})
    with open(os.path.join(str(repo), "app.ini"), "w") as fh:
        fh.write("password=hunter2\n")  # the person's own, untracked
    before = git(repo, "rev-parse", "main")
    r = mb()
    assert open(os.path.join(str(repo), "app.ini")).read() == "password=hunter2\n"
    assert r.code == 1 and git(repo, "rev-parse", "main") == before
