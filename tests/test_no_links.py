"""Files: never write through a link. A cloned repository can carry symlinks under `.claude/`;
every command refuses with one line and the link's target stays byte-identical."""

import os
import stat
import subprocess

import pytest

from engine import store
from engine.errors import UnsafePath
from engine.paths import Layout
from tests.conftest import ROOT, git, invoke

SECRET = b"my precious dotfile\n"


def commands():
    from engine.cli import checkpoint_manager, pool_manager, setup_worktree, state_transition

    return {"st": (state_transition.cli, "state-transition"), "cm": (checkpoint_manager.cli, "checkpoint-manager"),
            "pm": (pool_manager.cli, "pool-manager"), "sw": (setup_worktree.cli, "setup-worktree")}


def run(which, *args):
    group, prog = commands()[which]
    return invoke(group, prog, *args)


@pytest.fixture
def outside(tmp_path):
    """A file and a directory outside the repository, the links' targets."""
    home = tmp_path / "victim"
    home.mkdir()
    (home / "dotfile").write_bytes(SECRET)
    (home / "dir").mkdir()
    (home / "dir" / "keep").write_bytes(SECRET)
    return home


def snapshot(directory):
    """Every file under DIRECTORY with its bytes and mode (what must not change)."""
    seen = {}
    for base, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = os.path.join(base, name)
            info = os.lstat(path)
            data = open(path, "rb").read() if stat.S_ISREG(info.st_mode) else None
            seen[os.path.relpath(path, directory)] = (data, stat.S_IMODE(info.st_mode))
    return seen


def cloned_with_link(tmp_path, repo, rel, target, commit=True):
    """A fresh clone of REPO whose tree carries the symlink REL -> TARGET (committed, as a
    hostile repository would ship it)."""
    link = os.path.join(str(repo), rel)
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(str(target), link)
    if not commit:
        return str(repo)
    git(repo, "add", "-f", "--", rel)
    git(repo, "commit", "-q", "-m", f"ship {rel}")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    assert os.path.islink(os.path.join(str(clone), rel))
    os.chdir(clone)
    return str(clone)


def refused(r):
    assert r.code == 1, r
    assert len(r.err.splitlines()) == 1 and "symbolic link" in r.err and "Traceback" not in r.err, r.err


# (link inside the repository, file or dir target, the commands that run with it in place)
CASES = [
    (".claude/auto-state-machine.yaml.last-good.tmp", "dotfile", [("st", "init")]),
    (".claude/auto-state-machine.yaml.last-good", "dotfile", [("st", "init")]),
    (".claude/auto-state-machine.yaml", "dotfile", [("st", "init")]),
    (".claude/auto-state-machine.yaml.lock", "dotfile", [("st", "init")]),
    (".claude/auto-journal.jsonl", "dotfile", [("st", "init")]),
    (".claude/auto-journal.jsonl.lock", "dotfile", [("st", "init")]),
    (".claude/auto-memory", "dir", [("st", "init")]),
    (".claude", "dir", [("st", "init")]),
    (".claude/auto-memory/idle-checkpoint.md", "dotfile", [("st", "checkpoint", "notes.md")]),
    (".claude/auto-memory/context-summary.md", "dotfile", [("cm", "context")]),
    (".claude/auto-memory/phase-plan-summary.md", "dotfile", [("cm", "write", "PLAN", "decided")]),
    (".claude/auto-memory/task-t1-learnings.md", "dotfile", [("cm", "task", "t1", "learned")]),
    (".claude/auto-memory-archive", "dir", [("cm", "cleanup")]),
    (".claude/checkpoints", "dir", [("cm", "create")]),
    (".claude/pool-state.json.last-good.tmp", "dotfile", [("pm", "init", "1")]),
    (".claude/pool-state.json.lock", "dotfile", [("pm", "init", "1")]),
    (".claude/pool-state.json", "dotfile", [("pm", "init", "1")]),
]


@pytest.mark.parametrize("rel,target,calls", CASES, ids=[c[0] + ":" + c[2][0][1] for c in CASES])
def test_link_planted_in_a_clone_is_refused_and_its_target_untouched(tmp_path, repo, outside, rel, target, calls):
    needs_state = any(c[1] in ("checkpoint", "context", "write", "task", "cleanup", "create") for c in calls)
    clone = cloned_with_link(tmp_path, repo, rel, outside / target)
    if needs_state:  # a session exists (its memory notes are what the link is waiting for)
        assert run("st", "init").code == 0, "init must work beside this link"
        if rel == ".claude/auto-memory-archive":
            run("cm", "context")
    before = snapshot(outside)
    for call in calls:
        refused(run(*call))
    assert snapshot(outside) == before
    assert os.path.islink(os.path.join(clone, rel))  # the link itself is left for the user to see


def test_last_good_tmp_link_refused_before_anything_is_replaced(tmp_path, repo, outside):
    """The refusal comes before the state file is replaced, not half-way."""
    run("st", "init")
    state = os.path.join(str(repo), ".claude", "auto-state-machine.yaml")
    old = open(state, "rb").read()
    os.symlink(str(outside / "dotfile"), state + ".last-good.tmp")
    refused(run("st", "transition", "DECOMPOSE"))
    assert open(state, "rb").read() == old
    assert (outside / "dotfile").read_bytes() == SECRET


def test_lock_link_refused_even_when_its_target_is_missing(tmp_path, repo):
    """O_CREAT through a dangling link would create the target: refused instead."""
    missing = tmp_path / "victim-missing"
    cloned_with_link(tmp_path, repo, ".claude/auto-state-machine.yaml.lock", missing)
    refused(run("st", "init"))
    assert not os.path.lexists(missing)


def test_store_helpers_refuse_links_anywhere_below_the_root(tmp_path, outside):
    root = tmp_path / "proj"
    (root / ".claude").mkdir(parents=True)
    layout = Layout(str(root))
    os.symlink(str(outside / "dir"), os.path.join(layout.claude, "auto-logs"))
    log = layout.task_log("t1")
    with pytest.raises(UnsafePath, match="auto-logs is a symbolic link"):
        with store.open_append(log) as fh:
            fh.write(b"agent output\n")
    with pytest.raises(UnsafePath):
        store.open_fd(layout.attempt_exit("t1", 1), os.O_WRONLY | os.O_CREAT)
    with pytest.raises(UnsafePath):
        store.makedirs(os.path.join(layout.logs, "planner"))
    with pytest.raises(UnsafePath):
        store.copy_file(str(outside / "dotfile"), os.path.join(layout.logs, "copy"))
    assert sorted(os.listdir(outside / "dir")) == ["keep"]
    # and the same helpers work on real directories
    os.unlink(layout.logs)
    with store.open_append(log) as fh:
        fh.write(b"ok\n")
    with store.open_append(log, binary=False) as fh:
        fh.write("again\n")
    assert open(log).read() == "ok\nagain\n"


def test_replace_refuses_a_link_at_the_destination(tmp_path, outside):
    root = tmp_path / "proj"
    (root / ".claude").mkdir(parents=True)
    Layout(str(root))
    src = root / ".claude" / "a"
    src.write_text("new")
    os.symlink(str(outside / "dotfile"), root / ".claude" / "b")
    with pytest.raises(UnsafePath):
        store.replace(str(src), str(root / ".claude" / "b"))
    assert (outside / "dotfile").read_bytes() == SECRET and src.read_text() == "new"


# --------------------------------------------------------------------------- setup-worktree's base
def test_worktree_base_that_others_can_write_is_refused(tmp_path, repo, monkeypatch):
    base = tmp_path / "shared-base"
    base.mkdir()
    os.chmod(base, 0o777)
    monkeypatch.setenv("AUTO_WORKTREE_BASE", str(base))
    r = run("sw", "t1")
    assert r.code == 1 and r.err.startswith("[ERROR] ") and "writable by other users" in r.err, r
    assert len(r.err.splitlines()) == 1
    assert os.listdir(base) == [] and "auto/t1" not in git(repo, "branch", "--list", "auto/t1")
    os.chmod(base, 0o700)
    r = run("sw", "t1")
    assert r.code == 0 and r.out.strip() == f"{base}/t1|auto/t1", r


def test_worktree_base_replaced_by_a_link_is_refused(tmp_path, repo, outside, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    base = tmp_path / f"auto-worktrees-{os.getuid()}"
    os.symlink(str(outside / "dir"), base)
    r = run("sw", "t1")
    assert r.code == 1 and "symbolic link" in r.err and len(r.err.splitlines()) == 1, r
    assert sorted(os.listdir(outside / "dir")) == ["keep"]


def test_default_worktree_base_is_created_private(tmp_path, repo, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    r = run("sw", "t1")
    assert r.code == 0, r
    info = os.lstat(tmp_path / f"auto-worktrees-{os.getuid()}")
    assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.getuid()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to make a directory that belongs to someone else")
def test_worktree_base_owned_by_another_user_is_refused(tmp_path, repo, monkeypatch):
    base = tmp_path / "theirs"
    base.mkdir(mode=0o700)
    os.chown(base, 65534, 65534)
    monkeypatch.setenv("AUTO_WORKTREE_BASE", str(base))
    r = run("sw", "t1")
    assert r.code == 1 and "belongs to another user" in r.err, r


def test_shim_refuses_with_one_line_in_a_subprocess(tmp_path, repo, outside):
    """The same through the real console entry (the bash shim), not just in-process."""
    cloned_with_link(tmp_path, repo, ".claude/auto-journal.jsonl", outside / "dotfile")
    r = subprocess.run([os.path.join(ROOT, "scripts", "state-transition.sh"), "init"], capture_output=True, text=True)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and "symbolic link" in r.stderr, r
    assert (outside / "dotfile").read_bytes() == SECRET


@pytest.mark.parametrize("rel", [".claude/auto-progress.yaml.last-good.tmp", ".claude/auto-progress.yaml",
                                 ".claude/auto-journal.jsonl"])
def test_orchestrator_run_refuses_a_committed_link(tmp_path, sealed_env, outside, monkeypatch, rel):
    """The issue's reproduction: a committed `.claude/auto-progress.yaml.last-good.tmp` pointing
    into the user's home got that file replaced with progress YAML."""
    from engine import demo
    from engine.cli.orchestrator import cli

    source = demo.make_repo(str(tmp_path / "d"))
    plan = str(tmp_path / "plan.yaml")
    demo.write_plan(plan)
    monkeypatch.setenv("DEMO_AGENT_SLEEP", "0")
    clone = cloned_with_link(tmp_path, source, rel, outside / "dotfile")
    before = snapshot(outside)
    r = invoke(cli, "orchestrator", "run", "--quiet", plan)
    refused(r)
    assert snapshot(outside) == before and os.path.islink(os.path.join(clone, rel))


@pytest.mark.parametrize("rel", [".claude/auto-logs/models.log", ".claude/auto-logs"])
def test_agent_log_link_is_never_written_through(tmp_path, sealed_env, outside, monkeypatch, rel):
    """A committed `.claude/auto-logs/TASK.log` (or the whole logs directory) linked outside:
    agent output never reaches the target, and the run does not pretend all went well."""
    from engine import demo
    from engine.cli.orchestrator import cli

    source = demo.make_repo(str(tmp_path / "d"))
    plan = str(tmp_path / "plan.yaml")
    demo.write_plan(plan)
    monkeypatch.setenv("DEMO_AGENT_SLEEP", "0")
    cloned_with_link(tmp_path, source, rel, outside / ("dir" if rel.endswith("auto-logs") else "dotfile"))
    before = snapshot(outside)
    r = invoke(cli, "orchestrator", "run", "--quiet", plan)
    assert snapshot(outside) == before
    assert "Traceback" not in r.err, r


def test_pool_directory_link_is_refused_before_git_checks_out_into_it(tmp_path, repo, outside):
    """git follows links: a committed `.claude/worktree-pool -> ~/dir` would get the slot's
    checkout written into ~/dir. init refuses it already (it makes the pool directory through
    engine.store); acquire refuses too (engine.worktree.add_worktree claims the path)."""
    cloned_with_link(tmp_path, repo, ".claude/worktree-pool", outside / "dir")
    before = snapshot(outside)
    refused(run("pm", "init", "1"))
    assert run("pm", "acquire", "t1").code == 1  # not initialised
    assert snapshot(outside) == before
    (tmp_path / "clone" / ".claude" / "pool-state.json").write_text(
        '{"version": "1.0", "pool_size": 1, "worktrees": [{"id": "wt-1", "status": "idle", "task_id": null, '
        '"path": ".claude/worktree-pool/wt-1", "branch": null, "acquired_at": null}]}')
    refused(run("pm", "acquire", "t1"))
    assert snapshot(outside) == before


def test_slot_path_link_is_refused(tmp_path, repo, outside):
    cloned_with_link(tmp_path, repo, ".claude/worktree-pool/wt-1", outside / "dir")
    before = snapshot(outside)
    run("pm", "init", "1")
    r = run("pm", "acquire", "t1")
    assert r.code != 0 and "Traceback" not in r.err, r
    assert snapshot(outside) == before


# --------------------------------------------------------------------------- for every path
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as hst  # noqa: E402

WRITERS = {
    "atomic_write": lambda p: store.atomic_write(p, "x: 1\n"),
    "append_text": lambda p: store.append_text(p, "note\n"),
    "open_append": lambda p: store.open_append(p).close(),
    "open_fd": lambda p: os.close(store.open_fd(p, os.O_WRONLY | os.O_CREAT)),
    "makedirs": lambda p: store.makedirs(p),
    "file_lock": lambda p: store.file_lock(os.path.join(p, "state")).__enter__(),  # locks p/state.lock
    "journal": lambda p: store.Journal(p).append("e"),
    "claim_path": lambda p: store.claim_path(p),
}
NAME = hst.sampled_from([".claude", "auto-logs", "auto-memory", "a", "wt-1", "x.yaml", "j.jsonl.lock"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=hst.lists(NAME, min_size=1, max_size=5), at=hst.integers(min_value=0, max_value=4),
       to_dir=hst.booleans(), writer=hst.sampled_from(sorted(WRITERS)))
def test_a_link_at_any_depth_below_the_root_is_refused(tmp_path_factory, parts, at, to_dir, writer):
    """For any path under the root with a link at any component, every writer refuses and the
    link's target is unchanged."""
    base = tmp_path_factory.mktemp("prop")
    root, victim = base / "root", base / "victim"
    root.mkdir()
    victim.mkdir()
    (victim / "f").write_bytes(SECRET)
    Layout(str(root))
    at = min(at, len(parts) - 1)
    link = root.joinpath(*parts[:at + 1])
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(str(victim if to_dir else victim / "f"), link)
    target = str(root.joinpath(*parts))
    before = snapshot(victim)
    with pytest.raises(UnsafePath):
        WRITERS[writer](target)
    assert snapshot(victim) == before
