"""The Claude Code plugin: manifests agree with the package, the bin/ wrappers find the engine in
their documented order, the SessionStart hook is silent when up to date and says one line when
python3 or git is missing. Building a real venv from the hook is slow (pip): it runs under
`make plugin-check` (ORCH_SLOW_TESTS=1). `claude plugin validate` is in test_claude_cli.py."""

import configparser
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

NAMES = {"orchestrator": "orchestrator", "state-transition": "state_transition", "pool-manager": "pool_manager",
         "setup-worktree": "setup_worktree", "merge-branches": "merge_branches", "checkpoint-manager": "checkpoint_manager"}
HOOK = os.path.join(ROOT, "hooks", "session-start.sh")


def manifest(name):
    with open(os.path.join(ROOT, ".claude-plugin", name)) as fh:
        return json.load(fh)


def package_version():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    return cfg["metadata"]["version"]


def test_manifests_agree_with_the_package():
    plugin, market = manifest("plugin.json"), manifest("marketplace.json")
    assert plugin["version"] == package_version()  # the hook's venv stamp is this version
    for key in ("name", "version", "description", "author", "license", "keywords"):
        assert plugin.get(key), key
    entry, = market["plugins"]
    assert (entry["name"], entry["source"], entry["version"]) == (plugin["name"], "./", plugin["version"])
    hooks = json.load(open(os.path.join(ROOT, "hooks", "hooks.json")))["hooks"]
    assert "${CLAUDE_PLUGIN_ROOT}/hooks/session-start.sh" in hooks["SessionStart"][0]["hooks"][0]["command"]
    skill = open(os.path.join(ROOT, "skills", "parallel-orchestrator", "SKILL.md")).read()
    front = skill.split("---")[1]
    assert "description:" in front and "allowed-tools: Bash(orchestrator *)" in front
    for step in ("orchestrator plan", "orchestrator validate", "orchestrator run", "orchestrator status --json",
                 "orchestrator resume"):
        assert step in skill


def plugin_copy(tmp_path):
    """The plugin as Claude Code installs it: the repository's files, no .venv."""
    dest = tmp_path / "plugin"
    os.makedirs(dest)
    for item in ("bin", "hooks", ".claude-plugin", "skills", "engine", "states", "setup.py", "setup.cfg", "README.md"):
        src = os.path.join(ROOT, item)
        (shutil.copytree(src, dest / item, ignore=shutil.ignore_patterns("__pycache__"))
         if os.path.isdir(src) else shutil.copy(src, dest / item))
    return dest


def env_without(names, extra=None):
    """os.environ with PATH entries that hold any of `names` removed."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CLAUDE_PLUGIN_DATA",
                                                              "PARALLEL_ORCHESTRATOR_DATA", "ORCH_PROG")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep)
                                  if not any(os.path.exists(os.path.join(p, n)) for n in names))
    env.update(extra or {})
    return env


def run(cmd, env=None, cwd=None):
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


@pytest.mark.parametrize("name", sorted(NAMES))
def test_each_wrapper_runs_its_command_from_the_checkout_venv(name, tmp_path):
    if not os.path.exists(os.path.join(ROOT, ".venv", "bin", "python")):
        pytest.skip("no .venv in this checkout (make install)")
    env = env_without(NAMES)
    for args in (["--help"], ["help"], ["status"]):
        wrapped = run([os.path.join(ROOT, "bin", name), *args], cwd=tmp_path, env=env)
        direct = run([sys.executable, "-m", f"engine.cli.{NAMES[name]}", *args], cwd=tmp_path,
                     env=dict(env, ORCH_PROG=name, PYTHONPATH=ROOT))
        assert (wrapped.returncode, wrapped.stdout, wrapped.stderr) == (direct.returncode, direct.stdout, direct.stderr)
        assert "Traceback" not in wrapped.stderr


def fake_python(path, log):
    """A `venv/bin/python` that logs its use and runs the test's interpreter (which has the engine)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(f"#!/bin/sh\necho used >> '{log}'\nPYTHONPATH='{ROOT}' exec '{sys.executable}' \"$@\"\n")
    os.chmod(path, 0o755)


def test_wrapper_uses_the_plugin_data_venv(tmp_path):
    plugin = plugin_copy(tmp_path)
    data = tmp_path / "data"
    fake_python(str(data / "venv" / "bin" / "python"), tmp_path / "used")
    (data / "venv" / ".plugin-version").write_text(package_version())
    for var in ("CLAUDE_PLUGIN_DATA", "PARALLEL_ORCHESTRATOR_DATA"):
        (tmp_path / "used").unlink(missing_ok=True)
        r = run([str(plugin / "bin" / "merge-branches"), "--help"], env=env_without(NAMES, {var: str(data)}),
                cwd=tmp_path)
        assert r.returncode == 0 and r.stdout.startswith("Usage: merge-branches"), r.stderr
        assert (tmp_path / "used").read_text() == "used\n"
    # an unstamped (half-built) venv is not used
    (data / "venv" / ".plugin-version").unlink()
    r = run([str(plugin / "bin" / "orchestrator"), "--help"], env=env_without(NAMES, {"CLAUDE_PLUGIN_DATA": str(data)}))
    assert r.returncode == 127


def test_wrapper_falls_back_to_a_console_script_but_never_to_itself(tmp_path):
    plugin = plugin_copy(tmp_path)
    console = tmp_path / "console"
    console.mkdir()
    (console / "orchestrator").write_text("#!/bin/sh\necho console orchestrator \"$@\"\n")
    (console / "orchestrator").chmod(0o755)
    env = env_without(NAMES)
    env["PATH"] = f"{plugin / 'bin'}{os.pathsep}{console}{os.pathsep}{env['PATH']}"
    r = run(["orchestrator", "status"], env=env, cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, "console orchestrator status\n"), r.stderr


def test_wrapper_without_any_engine_says_how_to_get_it(tmp_path):
    plugin = plugin_copy(tmp_path)
    env = env_without(NAMES)
    env["PATH"] = f"{plugin / 'bin'}{os.pathsep}{env['PATH']}"
    r = run(["merge-branches", "--help"], env=env, cwd=tmp_path)
    assert r.returncode == 127 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("merge-branches: the parallel-orchestrator engine "
                                                                     "is not installed")


# --------------------------------------------------------------------------- the SessionStart hook
def tool_path(tmp_path, without=()):
    """A PATH directory with just the tools the hook uses, minus `without`."""
    tools = tmp_path / "tools"
    tools.mkdir(exist_ok=True)
    for name in ("bash", "sh", "cat", "dirname", "readlink", "mkdir", "rm", "flock", "python3", "git", "printf"):
        found = os.path.realpath(sys.executable) if name == "python3" else shutil.which(name)  # not a pyenv shim
        if found and name not in without:
            target = tools / name
            if not target.exists():
                os.symlink(found, target)
    return str(tools)


def hook(tmp_path, data, without=(), env_file=None):
    env = {"PATH": tool_path(tmp_path, without), "HOME": str(tmp_path), "CLAUDE_PLUGIN_ROOT": ROOT,
           "CLAUDE_PLUGIN_DATA": str(data)}
    if env_file:
        env["CLAUDE_ENV_FILE"] = str(env_file)
    return run(["/bin/bash", HOOK], env=env)


@pytest.mark.parametrize("missing", ["python3", "git"])
def test_hook_says_one_line_when_a_requirement_is_missing(tmp_path, missing):
    r = hook(tmp_path, tmp_path / "data", without=(missing,))
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.count("\n") == 1 and f"{missing} not found" in r.stdout
    assert not (tmp_path / "data" / "venv").exists()


def test_hook_is_silent_when_up_to_date_and_exports_the_data_dir(tmp_path):
    data = tmp_path / "data"
    fake_python(str(data / "venv" / "bin" / "python"), tmp_path / "used")
    (data / "venv" / ".plugin-version").write_text(package_version())
    env_file = tmp_path / "env"
    r = hook(tmp_path, data, env_file=env_file)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert env_file.read_text() == f"export PARALLEL_ORCHESTRATOR_DATA={data}\n"
    assert not (tmp_path / "used").exists()


@pytest.mark.skipif(not os.environ.get("ORCH_SLOW_TESTS"), reason="builds a real venv with pip (slow): "
                    "runs under `make plugin-check`")
def test_hook_builds_the_venv_once_per_version(tmp_path):
    plugin = plugin_copy(tmp_path)
    data = tmp_path / "data"
    env = {"PATH": tool_path(tmp_path), "HOME": str(tmp_path), "CLAUDE_PLUGIN_ROOT": str(plugin),
           "CLAUDE_PLUGIN_DATA": str(data)}
    r = run(["/bin/bash", str(plugin / "hooks" / "session-start.sh")], env=env)
    assert r.returncode == 0 and r.stdout == f"parallel-orchestrator: engine {package_version()} installed " \
                                             "(orchestrator is on PATH)\n", (r.stdout, (data / "venv-build.log").read_text()
                                                                              if (data / "venv-build.log").exists() else "")
    assert (data / "venv" / ".plugin-version").read_text() == package_version()
    again = run(["/bin/bash", str(plugin / "hooks" / "session-start.sh")], env=env)
    assert (again.returncode, again.stdout) == (0, "")
    work = tmp_path / "w"
    work.mkdir()
    r = run([str(plugin / "bin" / "state-transition"), "state"], cwd=work,
            env=env_without(NAMES, {"CLAUDE_PLUGIN_DATA": str(data)}))
    assert (r.returncode, r.stdout) == (0, "IDLE\n"), r.stderr
    # a new plugin version rebuilds
    meta = json.loads((plugin / ".claude-plugin" / "plugin.json").read_text())
    meta["version"] = "9.9.9"
    (plugin / ".claude-plugin" / "plugin.json").write_text(json.dumps(meta))
    r = run(["/bin/bash", str(plugin / "hooks" / "session-start.sh")], env=env)
    assert "engine 9.9.9 installed" in r.stdout
    assert (data / "venv" / ".plugin-version").read_text() == "9.9.9"


def test_make_plugin_check_installs_the_pinned_cli():
    """The Makefile reads the pinned version out of engine/claude.py; a comment added after it
    once made that read empty, so CI installed whatever npm calls latest (too old to know our
    manifest's fields). `make -n -B` shows what it would install."""
    import subprocess

    from engine import claude

    out = subprocess.run(["make", "-n", "-B", "plugin-check"], cwd=ROOT, capture_output=True,
                         text=True).stdout
    assert f"@anthropic-ai/claude-code@{claude.PINNED_CLI_VERSION}" in out.split()
