""".worktreeinclude copies the user's untracked files into every leased worktree, never the
engine's own: nothing under .claude/ but Claude Code's user files, nothing in a .git, nothing
of the pool's directory or state file, whatever the patterns say."""

import os

from tests.conftest import commit_file, git, invoke


def write(path, text="x\n"):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)


def copied_files(path):
    found = []
    for dirpath, dirnames, names in os.walk(path):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        found += [os.path.relpath(os.path.join(dirpath, n), path) for n in names]
    return sorted(f for f in found if f != ".git")


def test_patterns_naming_engine_files_copy_only_the_users(pm, repo, monkeypatch):
    monkeypatch.setenv("POOL_DIR", "pool")
    monkeypatch.setenv("POOL_STATE_FILE", "pool-state.json")
    commit_file(repo, ".gitignore", ".env\n")
    commit_file(repo, ".worktreeinclude", ".claude/\n.git\n.git/\n*\npool/\n")
    assert pm("init", "2").code == 0
    write(".env", "SECRET=1\n")
    write("notes/todo.txt")
    write(".claude/auto-progress.yaml", "tasks: {}\n")
    write(".claude/settings.local.json", "{}\n")
    write(".claude/commands/go.md")
    write("pool/stray.txt")
    r = pm("acquire", "a")
    assert r.code == 0, r
    path = r.out.strip().split("|")[1]
    assert copied_files(path) == sorted([".claude/commands/go.md", ".claude/settings.local.json", ".env",
                                         ".gitignore", ".worktreeinclude", "README.md", "notes/todo.txt"])
    # what .worktreeinclude brings from .claude/ is never seen (so never committed) in the worktree
    assert ".claude" not in git(path, "status", "--porcelain", "--untracked-files=all")


def test_setup_worktree_never_copies_engine_files(sw, repo, monkeypatch, tmp_path):
    monkeypatch.setenv("AUTO_WORKTREE_BASE", str(tmp_path / "wts"))
    commit_file(repo, ".worktreeinclude", ".claude/\n**/*.lock\n")
    write(".claude/auto-journal.jsonl", "{}\n")
    write(".claude/pool-state.json.lock", "")
    write("build/x.lock", "")
    r = sw("t1")
    assert r.code == 0, r
    path = str(tmp_path / "wts" / "t1")
    assert "build/x.lock" in copied_files(path)
    assert not [f for f in copied_files(path) if f.startswith(".claude/") and "auto-context" not in f]


def test_worktreeinclude_naming_claude_in_a_real_run(sealed_env, tmp_path, monkeypatch):
    """The bundled demo, run to the end with a `.worktreeinclude` that names `.claude/`:
    every task merged and nothing of `.claude` in any commit of any branch."""
    from engine import demo
    from engine.cli.orchestrator import cli

    repo = demo.make_repo(str(tmp_path / "d"))
    plan = str(tmp_path / "d" / "plan.yaml")
    demo.write_plan(plan)
    monkeypatch.chdir(repo)
    monkeypatch.setenv("DEMO_AGENT_SLEEP", "0")
    commit_file(repo, ".worktreeinclude", ".claude/\n.env\n")
    commit_file(repo, ".gitignore", ".env\n")
    write(".env", "TOKEN=1\n")
    r = invoke(cli, "orchestrator", "validate", plan)  # what validates, runs
    assert r.code == 0 and r.lines[0].startswith("Plan OK: 7 tasks"), r
    r = invoke(cli, "orchestrator", "run", "--all-groups", plan)
    assert r.code == 0, r
    names = git(repo, "log", "--all", "--format=", "--name-only").split()
    assert names and not [n for n in names if n.startswith(".claude") or n == ".env"], names
    for task in ("models", "utils", "config", "api", "cli", "tests", "docs"):
        assert git(repo, "show", f"main:app/{task}.py").endswith(f'return "{task} ok"')
