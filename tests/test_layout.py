"""Every path the engine uses comes from Layout: checkpoints snapshot the pool state where
POOL_STATE_FILE puts it, and the modules that were converted spell no `.claude/...` path."""

import json
import os
import re

import pytest

from engine.paths import Layout
from tests.conftest import ROOT, invoke


def cm(*args):
    from engine.cli.checkpoint_manager import cli

    return invoke(cli, "checkpoint-manager", *args)


def pm(*args):
    from engine.cli.pool_manager import cli

    return invoke(cli, "pool-manager", *args)


def test_snapshot_follows_pool_state_file(repo, monkeypatch):
    monkeypatch.setenv("POOL_STATE_FILE", "state/pool.json")
    assert pm("init", "1").code == 0
    moved = repo / "state" / "pool.json"
    assert moved.exists() and not (repo / ".claude" / "pool-state.json").exists()
    r = cm("create", "--reason", "before")
    assert r.code == 0, r
    cp = sorted(os.listdir(repo / ".claude" / "checkpoints"))[0]
    manifest = json.loads((repo / ".claude" / "checkpoints" / cp / "manifest.json").read_text())
    assert "pool-state.json" in manifest["files"]
    assert (repo / ".claude" / "checkpoints" / cp / "pool-state.json").read_bytes() == moved.read_bytes()
    original = moved.read_bytes()
    moved.write_text('{"version": "1.0", "worktrees": []}')
    assert cm("restore", "--id", cp).code == 0
    assert moved.read_bytes() == original
    assert not (repo / ".claude" / "pool-state.json").exists()


def test_layout_names_every_engine_path(tmp_path):
    layout = Layout(str(tmp_path), env={"POOL_DIR": "/elsewhere/pool", "POOL_STATE_FILE": "p.json"})
    c = os.path.join(str(tmp_path), ".claude")
    assert layout.progress == os.path.join(c, "auto-progress.yaml")
    assert layout.task_log("t1") == os.path.join(c, "auto-logs", "t1.log")
    assert layout.task_log("t1", "qa-2.log") == os.path.join(c, "auto-logs", "t1.qa-2.log")
    assert layout.attempt_exit("t1", 3) == os.path.join(c, "auto-logs", "t1.attempt-3.exit")
    assert layout.pool_dir == "/elsewhere/pool" and layout.pool_state == os.path.join(str(tmp_path), "p.json")
    assert layout.pool_paths({}) == (os.path.join(c, "worktree-pool"), os.path.join(c, "pool-state.json"))


# The modules converted so far; the rest are listed in /work/coord/REQUESTS.md (files, 11:50).
CONVERTED = ["engine/statefile.py", "engine/memory.py", "engine/snapshot.py", "engine/worktree.py", "engine/store.py",
             "engine/cli/state_transition.py", "engine/cli/checkpoint_manager.py", "engine/cli/setup_worktree.py",
             "engine/pool.py", "engine/pool_health.py", "engine/config.py", "engine/plan.py", "engine/merge.py",
             "engine/cli/pool_manager.py", "engine/cli/merge_branches.py"]


@pytest.mark.parametrize("rel", CONVERTED)
def test_no_claude_path_literals_outside_layout(rel):
    code = [line for line in open(os.path.join(ROOT, rel), encoding="utf-8")
            if not line.lstrip().startswith("#") and "# manifest names" not in line]
    strings = re.findall(r"""["']([^"'\n]*)["']""", "".join(code))
    assert not [s for s in strings if s.startswith((".claude", "auto-")) and (s.endswith((".yaml", ".json", ".jsonl",
                                                                                          ".lock", ".log")) or
                                                                             s in (".claude", "auto-logs", "auto-memory"))]
