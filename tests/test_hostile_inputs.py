"""Hostile input across every command: one clear line on stderr, a non-zero exit, no
traceback, and nothing changed on disk (the .claude tree, refs and worktrees)."""

import hashlib
import os

import pytest

from tests.conftest import git, invoke

HOSTILE = ["../x", "a b", "$(touch p)", "-rf", "ünïcødé", "x" * 5000, "a\nb", "..", "/etc/passwd", "`id`"]


def snapshot(repo):
    files = {}
    for dirpath, _, names in os.walk(repo / ".claude"):
        for name in names:
            path = os.path.join(dirpath, name)
            if name.endswith(".lock"):
                continue
            with open(path, "rb") as fh:
                files[os.path.relpath(path, repo)] = hashlib.sha256(fh.read()).hexdigest()
    return files, git(repo, "for-each-ref"), git(repo, "worktree", "list", "--porcelain")


@pytest.fixture
def ready(repo, st, pm):
    st("init", "EXECUTE")
    pm("init", "2")
    return repo


def cli(name):
    from importlib import import_module

    return import_module(f"engine.cli.{name}").cli


CASES = []
for bad in HOSTILE:
    CASES += [
        ("state_transition", ["init", bad]),
        ("state_transition", ["transition", bad]),
        ("state_transition", ["tokens", bad]),
        ("pool_manager", ["acquire", bad]),
        ("pool_manager", ["release", bad]),
        ("pool_manager", ["init", bad]),
        ("setup_worktree", [bad]),
        ("checkpoint_manager", ["group", bad, "pre"]),
        ("checkpoint_manager", ["write", bad, "summary"]),
        ("checkpoint_manager", ["task", bad, "learning"]),
        ("checkpoint_manager", ["restore", "--id", bad]),
        ("orchestrator", ["validate", bad]),
    ]


@pytest.mark.parametrize("command,args", CASES, ids=[f"{c}-{a[0]}-{i}" for i, (c, a) in enumerate(CASES)])
def test_refused_cleanly_nothing_changed(ready, command, args):
    before = snapshot(ready)
    r = invoke(cli(command), command.replace("_", "-"), *args)
    assert r.code != 0, r
    assert r.out in ("", "POOL_EXHAUSTED\n")
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err, r.err
    assert snapshot(ready) == before
    assert not os.path.exists(ready / "p") and not os.path.exists(ready.parent / "x")
