"""Errors that tell the truth: user errors are one prefixed line with exit 1; an unexpected git
failure is internal (exit 70, traceback with ORCH_DEBUG=1) unless a caller says what it means."""

import os
import subprocess
import sys

import click
import pytest

from engine.errors import ExitCode, GitError, OrchestratorError, format_line, prefix_for
from tests.conftest import PYTHON, git, invoke, python_env


@click.command()
@click.argument("repo")
def unexpected_git(repo):
    from engine import git as g

    g.run(repo, "rev-parse", "--verify", "-q", "refs/heads/no-such-branch")


@click.command()
def user_error():
    raise OrchestratorError("the plan names no tasks")


def test_unexpected_git_failure_is_internal_not_a_user_error(repo):
    assert not issubclass(GitError, OrchestratorError)
    r = invoke(unexpected_git, "state-transition", str(repo))
    assert r.code == ExitCode.INTERNAL == 70
    assert r.err.startswith("ERROR: internal error (GitError: git rev-parse --verify failed")
    assert r.err.rstrip("\n").endswith("set ORCH_DEBUG=1 for the traceback") and len(r.err.splitlines()) == 1


def test_orch_debug_shows_the_traceback(repo):
    code = ("import sys, click; from engine.cli.common import exit_with; from tests.test_errors import unexpected_git;"
            f"sys.argv=['x', {str(repo)!r}]; exit_with(unexpected_git, 'state-transition')")
    env = dict(python_env(), ORCH_DEBUG="1")
    p = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=env, cwd=str(repo))
    assert p.returncode != 0 and "Traceback (most recent call last)" in p.stderr and "GitError" in p.stderr
    env.pop("ORCH_DEBUG")
    p = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=env, cwd=str(repo))
    assert p.returncode == 70 and "Traceback" not in p.stderr and len(p.stderr.splitlines()) == 1


@pytest.mark.parametrize("prog,args,line", [
    ("state-transition", [], "ERROR: the plan names no tasks"),
    ("checkpoint-manager", [], "ERROR: the plan names no tasks"),
    ("merge-branches", [], "ERROR: the plan names no tasks"),
    ("orchestrator", [], "ERROR: the plan names no tasks"),
    ("pool-manager", [], "[ERROR] the plan names no tasks"),
    ("setup-worktree", [], "[ERROR] the plan names no tasks"),
])
def test_the_prefix_comes_from_the_command_not_the_raise(prog, args, line):
    r = invoke(user_error, prog, *args)
    assert (r.code, r.err) == (1, line + "\n")


def test_prefix_rules():
    assert prefix_for("orchestrator", ["pool", "status"]) == "[ERROR] "
    assert prefix_for("orchestrator", ["worktree"]) == "[ERROR] "
    assert prefix_for("orchestrator", ["run", "plan.yaml"]) == "ERROR: "
    assert format_line("[ERROR] kept as it is", "ERROR: ") == "[ERROR] kept as it is"
    assert format_line("Usage: x y", "[ERROR] ") == "Usage: x y"
    assert format_line("Unknown status: x", "ERROR: ", verbatim=True) == "Unknown status: x"
    assert format_line("a\nb", "ERROR: ") == "ERROR: a\\nb"


def test_orchestrator_mirror_uses_the_drop_in_prefix(repo, monkeypatch, tmp_path):
    from engine.cli.orchestrator import cli

    monkeypatch.setenv("AUTO_WORKTREE_BASE", str(tmp_path / "wt"))
    r = invoke(cli, "orchestrator", "worktree", "t1", "no-such-base")
    assert (r.code, r.err) == (1, "[ERROR] Base branch does not exist: no-such-base\n")


def test_expected_git_failure_becomes_the_contract_line(repo, sw, monkeypatch, tmp_path):
    """setup-worktree turns git's refusal into the contract's `[ERROR] Failed to create worktree`."""
    monkeypatch.setenv("AUTO_WORKTREE_BASE", str(tmp_path / "wt"))
    os.makedirs(repo / ".git" / "refs" / "heads" / "auto")
    (repo / ".git" / "refs" / "heads" / "auto" / "t1.lock").write_text("")  # another git holds the ref
    r = sw("t1")
    assert r.code == 1 and r.err.startswith("[ERROR] Failed to create worktree: ") and len(r.err.splitlines()) == 1, r
    assert "auto/t1" not in git(repo, "branch", "--list")


def test_exit_codes_have_names():
    assert [int(c) for c in (ExitCode.OK, ExitCode.ERROR, ExitCode.TOKEN_CHECKPOINT, ExitCode.INTERNAL,
                             ExitCode.INTERRUPTED)] == [0, 1, 2, 70, 130]
    assert ExitCode.TOKEN_WARNING == 1 and OrchestratorError("x").exit_code == ExitCode.ERROR
    assert sys.modules["engine.errors"].GitError(["git", "x"], 3, "").exit_code == ExitCode.INTERNAL
