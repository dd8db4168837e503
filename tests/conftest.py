"""Shared fixtures: every test runs sealed off from the developer's git config and cwd."""

import contextlib
import io
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")


@pytest.fixture(autouse=True)
def sealed_env(tmp_path, monkeypatch):
    """HOME, git identity and dates fixed; no inherited GIT_DIR; cwd is a fresh temp dir."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Test Author")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "author@example.com")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "Test Committer")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "committer@example.com")
    monkeypatch.setenv("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
    monkeypatch.setenv("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
    monkeypatch.setenv("GIT_EDITOR", "false")
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "ORCHESTRATOR_ROOT", "ORCH_PROG",
                "POOL_SIZE", "POOL_DIR", "POOL_STATE_FILE", "AUTO_WORKTREE_BASE"):
        monkeypatch.delenv(var, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


class Result:
    def __init__(self, code, out, err):
        self.code, self.out, self.err = code, out, err

    @property
    def lines(self):
        return self.out.splitlines()

    def __repr__(self):
        return f"Result(code={self.code}, out={self.out!r}, err={self.err!r})"


def invoke(group, prog, *args):
    """Run a CLI group in-process exactly as its console script would (exit-code mapping included)."""
    from engine.cli.common import run

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run(group, prog, list(args))
    return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture
def st():
    from engine.cli.state_transition import cli

    return lambda *args: invoke(cli, "state-transition", *args)


def git(cwd, *args, check=True):
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"git {args} failed: {proc.stderr}")
    return proc.stdout.strip()


@pytest.fixture
def repo(sealed_env):
    """A real git repository with one commit on `main`, as the cwd."""
    git(sealed_env, "init", "-q", "-b", "main")
    (sealed_env / "README.md").write_text("hello\n")
    git(sealed_env, "add", "README.md")
    git(sealed_env, "commit", "-q", "-m", "initial")
    return sealed_env


def python_env():
    """Environment for subprocesses that import the engine from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


PYTHON = sys.executable


@pytest.fixture
def orch():
    from engine.cli.orchestrator import cli

    return lambda *args: invoke(cli, "orchestrator", *args)


@pytest.fixture
def pm():
    from engine.cli.pool_manager import cli

    return lambda *args: invoke(cli, "pool-manager", *args)


@pytest.fixture
def sw():
    from engine.cli.setup_worktree import cli

    return lambda *args: invoke(cli, "setup-worktree", *args)


def commit_file(cwd, name, content, message=None):
    path = os.path.join(str(cwd), name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(content)
    git(cwd, "add", "--", name)
    git(cwd, "commit", "-q", "-m", message or f"add {name}")
    return git(cwd, "rev-parse", "HEAD")


def branches(cwd):
    return sorted(git(cwd, "for-each-ref", "--format=%(refname:short)", "refs/heads/").split())


def worktree_paths(cwd):
    out = git(cwd, "worktree", "list", "--porcelain")
    return [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("worktree ")]


@pytest.fixture
def mb():
    from engine.cli.merge_branches import cli

    return lambda *args: invoke(cli, "merge-branches", *args)


@pytest.fixture
def cm():
    from engine.cli.checkpoint_manager import cli

    return lambda *args: invoke(cli, "checkpoint-manager", *args)


def branch_with(repo, branch, files, base="main"):
    """Create BRANCH from BASE with one commit writing FILES ({name: content}); stay on main."""
    git(repo, "checkout", "-q", "-b", branch, base)
    for name, content in files.items():
        path = os.path.join(str(repo), name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            fh.write(content)
        git(repo, "add", "--", name)
    git(repo, "commit", "-q", "-m", f"work on {branch}")
    git(repo, "checkout", "-q", "main")


@pytest.fixture
def pool(repo, monkeypatch):
    """A two-slot pool (engine API) whose leases this test process owns (POOL_OWNER_PID)."""
    from engine.paths import Layout
    from engine.pool import Pool

    monkeypatch.setenv("POOL_OWNER_PID", str(os.getpid()))
    p = Pool(Layout(str(repo)))
    p.init(2)
    return p


def wait_until(check, timeout=120, what="condition", step=0.2):
    """Poll CHECK until it is true; fail the test naming WHAT after TIMEOUT seconds."""
    deadline = time.time() + timeout
    while not check():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(step)
