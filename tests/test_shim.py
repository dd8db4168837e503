"""The bash shims: static checks the upstream repo test makes, and pass-through behaviour."""

import os
import shutil
import subprocess

import pytest

from tests.conftest import PYTHON, ROOT, SCRIPTS

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
    assert "source" not in text and not os.path.exists(os.path.join(SCRIPTS, "lib"))  # self-contained


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


# --------------------------------------------------------------------------- copied alone
# What `help` prints first, per shim (merge-branches and setup-worktree have no `help`: the
# engine answers with its own contract line, which proves it was found).
FIRST = {"state-transition.sh": (0, "State Transition Engine v3.1", "out"),
         "checkpoint-manager.sh": (0, "Checkpoint Manager v3.0", "out"),
         "pool-manager.sh": (1, "Usage: ", "out"),  # the contract: usage on stdout, exit 1
         "merge-branches.sh": (1, "ERROR: Not in a git repository", "err"),
         "setup-worktree.sh": (1, "[ERROR] Not in a git repository", "err")}
VENV_BIN = os.path.dirname(PYTHON)


def alone(tmp_path, name, folder="scripts"):
    """NAME copied alone into a fresh folder (no lib/, no engine/, no .venv beside it)."""
    target = tmp_path / "plugin" / folder
    target.mkdir(parents=True)
    shutil.copy2(os.path.join(SCRIPTS, name), target / name)
    work = tmp_path / "w"
    work.mkdir(exist_ok=True)
    return str(target / name), str(work)


def bare_env(path_dirs):
    """No PYTHONPATH, no plugin data, and PATH = the system tools plus PATH_DIRS only."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CLAUDE_PLUGIN_DATA", "ORCH_PROG")}
    env["PATH"] = os.pathsep.join([*path_dirs, tmp_tools()])
    return env


def tmp_tools(_cache={}):
    """A PATH folder with the few tools the shim uses (bash, readlink, dirname, and no python3)."""
    import tempfile

    if "dir" not in _cache:
        d = tempfile.mkdtemp(prefix="shim-tools-")
        for tool in ("bash", "readlink", "dirname", "env", "cat", "git"):
            os.symlink(shutil.which(tool), os.path.join(d, tool))
        _cache["dir"] = d
    return _cache["dir"]


def check_first(r, name):
    code, first, stream = FIRST[name]
    text = r.stdout if stream == "out" else r.stderr
    assert r.returncode == code and text.startswith(first), (r.returncode, r.stdout[:200], r.stderr)
    assert "not found" not in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("name", SHIMS)
def test_copied_alone_with_the_console_script_on_path(tmp_path, name):
    script, work = alone(tmp_path, name)
    r = run(["bash", script, "help"], work, bare_env([VENV_BIN]))
    check_first(r, name)


@pytest.mark.parametrize("name", SHIMS)
def test_copied_alone_with_the_package_importable_by_python3(tmp_path, name):
    """No console script anywhere: `python3 -m` on an installed package (python3 = the venv's)."""
    py = tmp_path / "pybin"
    py.mkdir()
    os.symlink(PYTHON, py / "python3")
    script, work = alone(tmp_path, name)
    env = bare_env([str(py)])
    env["PYTHONPATH"] = ROOT  # what an installed package gives: importable from anywhere
    r = run(["bash", script, "help"], work, env)
    check_first(r, name)


@pytest.mark.parametrize("name", SHIMS)
def test_copied_alone_from_the_plugin_data_virtualenv(tmp_path, name):
    data = tmp_path / "plugin-data"
    (data / "venv" / "bin").mkdir(parents=True)
    wrapper = data / "venv" / "bin" / "python"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={ROOT} exec {PYTHON} \"$@\"\n")
    wrapper.chmod(0o755)
    script, work = alone(tmp_path, name)
    env = dict(bare_env([]), CLAUDE_PLUGIN_DATA=str(data))
    r = run(["bash", script, "help"], work, env)
    assert r.returncode == 127  # a venv the hook has not finished (no .plugin-version) is not used
    (data / "venv" / ".plugin-version").write_text("1\n")
    r = run(["bash", script, "help"], work, env)
    check_first(r, name)


@pytest.mark.parametrize("name", SHIMS)
def test_copied_alone_with_nothing_says_what_is_missing(tmp_path, name):
    script, work = alone(tmp_path, name)
    r = run(["bash", script, "help"], work, bare_env([]))
    assert r.returncode == 127 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and "parallel-orchestrator not found" in r.stderr
    assert f"no {name[:-3]} on PATH" in r.stderr and "pip install" in r.stderr


def test_upstream_plugin_test_help_command_works(tmp_path):
    """The upstream plugin's tests/test-state-transition.sh: state-transition.sh copied alone
    into a plugin's scripts/ folder; "Help command works" (help exits 0 and names the engine),
    then the state round trip it checks next."""
    script, work = alone(tmp_path, "state-transition.sh")
    env = bare_env([VENV_BIN])
    r = run([script, "help"], work, env)
    assert r.returncode == 0 and "State Transition Engine" in r.stdout, r.stderr
    assert run([script, "init"], work, env).returncode == 0
    assert run([script, "state"], work, env).stdout == "IDLE\n"
    r = run([script, "transition", "DECOMPOSE"], work, env)
    assert r.returncode == 0 and r.stdout.startswith("Transitioned: IDLE -> DECOMPOSE"), r.stderr
