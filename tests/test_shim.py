"""The bash shims: static checks the upstream repo test makes, and pass-through behaviour."""

import os
import shutil
import subprocess

import pytest

from tests.conftest import ROOT, SCRIPTS

SHIMS = ["state-transition.sh", "pool-manager.sh", "setup-worktree.sh", "merge-branches.sh", "checkpoint-manager.sh"]


@pytest.mark.parametrize("name", SHIMS)
def test_static_contract(name):
    path = os.path.join(SCRIPTS, name)
    assert os.access(path, os.X_OK)
    text = open(path).read()
    # the originals' shebangs: pool-manager used env, the other four /bin/bash
    assert text.splitlines()[0] == ("#!/usr/bin/env bash" if name == "pool-manager.sh" else "#!/bin/bash")
    assert any(line.startswith("set -euo pipefail") for line in text.splitlines())
    assert "bc" not in text
    assert "bc" not in open(os.path.join(SCRIPTS, "lib", "shim.sh")).read()


def run(cmd, cwd, env=None):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)


def test_through_symlink_from_another_directory(tmp_path):
    link = tmp_path / "bin" / "st"
    link.parent.mkdir()
    os.symlink(os.path.join(SCRIPTS, "state-transition.sh"), link)
    work = tmp_path / "w"
    work.mkdir()
    r = run([str(link), "help"], work)
    assert r.returncode == 0 and r.stdout.startswith("State Transition Engine")
    r = run([str(link), "transition"], work)
    assert r.returncode == 1 and r.stderr == f"Usage: {link} transition <new_state>\n"
    assert run([str(link), "init"], work).returncode == 0
    r = run([str(link), "tokens", "195000"], work)
    assert (r.returncode, r.stdout) == (2, "TOKEN_CHECKPOINT: Usage at 97.5% - checkpoint required\n")
    r = run([str(link), "tokens", "x"], work)
    assert r.returncode == 1 and "Traceback" not in r.stderr


def test_fallback_without_venv_uses_python3_on_the_checkout(tmp_path):
    """A copy of the scripts and engine with no .venv: the shim runs `python3 -m` on it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not shutil.which("state-transition", path=p))
    probe = run(["python3", "-c", "import click, yaml"], tmp_path, env)
    if probe.returncode != 0:
        pytest.skip("python3 on PATH lacks click/PyYAML; the venv path is tested above")
    copy = tmp_path / "checkout"
    shutil.copytree(SCRIPTS, copy / "scripts")
    shutil.copytree(os.path.join(ROOT, "engine"), copy / "engine", ignore=shutil.ignore_patterns("__pycache__"))
    work = tmp_path / "w"
    work.mkdir()
    r = run([str(copy / "scripts" / "state-transition.sh"), "state"], work, env)
    assert (r.returncode, r.stdout) == (0, "IDLE\n"), r.stderr


@pytest.mark.parametrize("name,args,code,first", [
    ("pool-manager.sh", ["status"], 1, ""),
    ("setup-worktree.sh", ["t1"], 1, ""),
    ("merge-branches.sh", [], 1, ""),
    ("checkpoint-manager.sh", ["bogus"], 0, "Checkpoint Manager v3.0"),
])
def test_every_shim_passes_exit_codes_through(tmp_path, name, args, code, first):
    r = run([os.path.join(SCRIPTS, name), *args], tmp_path)
    assert r.returncode == code, r.stderr
    assert (r.stdout.splitlines() or [""])[0] == first
    assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) <= 1
