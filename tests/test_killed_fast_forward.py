"""A fast-forward of the base's checkout killed mid-way is undone before the next merge.

Git 2.39 moves a checked-out branch file by file (each changed file unlinked, created empty,
then written), then writes the index, then the ref. The kills here are real SIGKILLs that
strace delivers at one exact syscall of a real `git merge --ff-only`:
- `creating`: at its first write into `app/b.py`, a file it adds (git writes in path order):
  that new file is left empty, `app/a.py` written, untracked, the index and the ref as before;
- `writing`: at its first write into `shared.txt` (a tracked file it changes): that file is
  left empty, NEW's new files untracked beside it, the index and the ref as before;
- `indexed`: at its creation of HEAD.lock: the whole of NEW is in the checkout and staged,
  the ref still at OLD.

Found by the kill-inside-git campaign on CI (stop 27): the `resume` after such a kill exited 1,
"Your local changes to the following files would be overwritten by merge", for good. The
orchestrator journals each move (OLD, NEW) before git starts, and puts those paths back."""

import os
import shutil
import subprocess

import pytest

from engine import demo, merge
from tests.conftest import PYTHON, branches, commit_file, git, python_env, worktree_paths

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to kill git at one syscall")

KILL_AT = {
    "creating": lambda checkout: ["-P", os.path.join(checkout, "app", "b.py"), "-e", "trace=write",
                                  "-e", "inject=write:signal=KILL"],
    "writing": lambda checkout: ["-P", os.path.join(checkout, "shared.txt"), "-e", "trace=write",
                                 "-e", "inject=write:signal=KILL"],
    "indexed": lambda checkout: ["-P", os.path.join(checkout, ".git", "HEAD.lock"), "-e", "trace=openat",
                                 "-e", "inject=openat:signal=KILL"],
}


def fast_forward_killed(checkout, commit, at):
    """`git merge --ff-only COMMIT` in CHECKOUT, SIGKILLed at the point AT (see the module docstring)."""
    proc = subprocess.run(["strace", "-qq", "-f", "-o", os.devnull, *KILL_AT[at](checkout),
                           "git", "merge", "--ff-only", "-q", commit], cwd=checkout, capture_output=True)
    if proc.returncode not in (-9, 137) and b"ptrace" in proc.stderr:
        pytest.skip("strace may not trace here: " + proc.stderr.decode(errors="replace").strip()[:200])
    assert proc.returncode in (-9, 137), proc
    for lock in ("index.lock", "HEAD.lock"):  # (what the next run's lock sweep removes)
        if os.path.exists(os.path.join(checkout, ".git", lock)):
            os.unlink(os.path.join(checkout, ".git", lock))


def commit_of(repo, parent, files):
    """An unreferenced commit on PARENT writing FILES, as the merge computes them (commit-tree)."""
    env = dict(os.environ, GIT_INDEX_FILE=os.path.join(str(repo), ".git", "scratch-index"))
    subprocess.run(["git", "read-tree", parent], cwd=repo, env=env, check=True)
    for name, content in files.items():
        blob = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=repo, input=content, text=True,
                              capture_output=True, check=True).stdout.strip()
        subprocess.run(["git", "update-index", "--add", "--cacheinfo", f"100644,{blob},{name}"], cwd=repo,
                       env=env, check=True)
    tree = subprocess.run(["git", "write-tree"], cwd=repo, env=env, capture_output=True, text=True,
                          check=True).stdout.strip()
    os.unlink(env["GIT_INDEX_FILE"])
    return git(repo, "commit-tree", tree, "-p", parent, "-m", "merge")


@pytest.fixture
def moves(repo):
    """(OLD, NEW, LATER): main with a tracked shared.txt; NEW changes it and adds two files;
    LATER, what a resumed merge computes instead, changes it again and has only one of them."""
    commit_file(repo, "shared.txt", "v1\n")
    old = git(repo, "rev-parse", "HEAD")
    new = commit_of(repo, old, {"shared.txt": "v2\n", "app/a.py": "a\n", "app/b.py": "b\n"})
    later = commit_of(repo, old, {"shared.txt": "v3\n", "app/a.py": "a\n", "app/c.py": "c\n"})
    return str(repo), old, new, later


@pytest.mark.parametrize("at", ["creating", "writing", "indexed"])
def test_a_killed_fast_forward_is_undone_and_a_later_merge_goes_in_clean(moves, at):
    repo, old, new, later = moves
    fast_forward_killed(repo, new, at)
    assert git(repo, "rev-parse", "main") == old
    if at == "creating":
        assert os.path.getsize("app/b.py") == 0 and open("shared.txt").read() == "v1\n"
    elif at == "writing":
        assert os.path.getsize("shared.txt") == 0
    else:
        assert "A  app/b.py" in git(repo, "status", "--porcelain")
    # without the undo, git refuses the later merge ("Your local changes ...")
    refused = subprocess.run(["git", "merge", "--ff-only", "-q", later], cwd=repo, capture_output=True, text=True)
    assert refused.returncode != 0 and "would be overwritten by merge" in refused.stderr

    assert merge.undo_a_killed_move(repo, "main", old, new) is True
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""
    assert open("shared.txt").read() == "v1\n"
    git(repo, "merge", "--ff-only", "-q", later)
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""
    assert sorted(os.listdir("app")) == ["a.py", "c.py"]  # NEW's b.py neither staged nor left


def test_a_fast_forward_killed_after_its_index_leaves_nothing_staged_behind_a_merge_git_accepts(moves):
    """The subtler half: git accepts a later merge that leaves out a file NEW staged (the
    index matches neither side, git keeps it as a person's addition): the checkout ends with
    a staged file the base does not have, the next commit anyone makes would carry it."""
    repo, old, new, _ = moves
    without_b = commit_of(repo, old, {"app/a.py": "a\n"})
    fast_forward_killed(repo, new, "indexed")
    copy = repo + "-as-left"  # without the undo: git takes the merge and keeps NEW's entries staged
    shutil.copytree(repo, copy, symlinks=True)
    git(copy, "merge", "--ff-only", "-q", without_b)
    assert set(git(copy, "status", "--porcelain").splitlines()) == {"A  app/b.py", "M  shared.txt"}
    assert merge.undo_a_killed_move(repo, "main", old, new) is True
    git(repo, "merge", "--ff-only", "-q", without_b)
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""


def test_a_persons_edit_after_the_kill_is_left_alone(moves):
    repo, old, new, later = moves
    fast_forward_killed(repo, new, "writing")
    with open("shared.txt", "w") as fh:
        fh.write("my own edit\n")
    assert merge.undo_a_killed_move(repo, "main", old, new) is False
    assert open("shared.txt").read() == "my own edit\n" and open("app/a.py").read() == "a\n"


def test_nothing_is_undone_once_the_ref_moved_or_for_another_move(moves):
    repo, old, new, later = moves
    git(repo, "checkout", "-q", "-b", "other")  # a person switched branches: not the record's checkout
    assert merge.undo_a_killed_move(repo, "main", old, new) is False
    git(repo, "checkout", "-q", "main")
    git(repo, "merge", "--ff-only", "-q", new)  # the fast-forward ended: nothing to undo
    assert merge.undo_a_killed_move(repo, "main", old, new) is False
    assert git(repo, "status", "--porcelain") == "" and open("shared.txt").read() == "v2\n"


# ------------------------------------------------------- through the orchestrator and the drop-in

def under_strace(cmd, cwd, kill_git_at, env=None):
    """CMD run with strace SIGKILLing git at KILL_GIT_AT (only git writes the base's checkout)."""
    return subprocess.run(["strace", "-qq", "-f", "-o", os.devnull, *kill_git_at, *cmd],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_a_run_whose_base_fast_forward_is_killed_resumes_clean(tmp_path):
    """A real run whose git is SIGKILLed at its first write into the base's shared.txt (the
    first merge, which changes that tracked file: left empty); the run stops, `resume` ends
    it: every task merged once, the checkout clean. Before the record, that resume exited 1.
    (strace counts per process: each merge's git is a new one.)"""
    from tests.test_streaming_crash import TASKS, assert_clean_and_once

    repo = demo.make_repo(str(tmp_path / "p"))
    plan = str(tmp_path / "plan.yaml")
    demo.write_plan(plan)
    with open(os.path.join(repo, ".claude", "auto-context.yaml"), "w") as fh:
        fh.write("parallelization:\n  min_tasks: 3\n  max_agents: 3\n  retry_on_failure: 10\n")
    env = dict(python_env(), DEMO_AGENT_SLEEP="0", DEMO_CONFLICT_FILE="shared.txt")
    commit_file(repo, "shared.txt", "tracked before the run\n")
    shared = os.path.join(repo, "shared.txt")
    first = under_strace([PYTHON, "-m", "engine.cli.orchestrator", "run", "--all-groups", "--quiet", plan], repo,
                         ["-P", shared, "-e", "trace=write", "-e", "inject=write:signal=KILL"], env)
    assert first.returncode == 1 and "git was killed" in first.stderr, first.stderr[-800:]
    assert os.path.getsize(shared) == 0 and git(repo, "status", "--porcelain", "--", "shared.txt") == "M shared.txt"

    done = subprocess.run([PYTHON, "-m", "engine.cli.orchestrator", "resume", "--all-groups", "--quiet"], cwd=repo,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-800:]
    assert_clean_and_once(repo, TASKS)
    assert branches(repo) == ["main"] and worktree_paths(repo) == [repo]
    assert [line for line in git(repo, "status", "--porcelain").splitlines() if ".claude/" not in line] == []


def test_merge_branches_run_again_after_its_git_was_killed_merges_clean(moves):
    repo, old, new, _ = moves
    git(repo, "branch", "auto/x", new)
    cmd = [PYTHON, "-m", "engine.cli.merge_branches", "main", "auto/x"]
    first = under_strace(cmd, repo, KILL_AT["writing"](repo), python_env())
    assert first.returncode == 1 and "git was killed" in first.stdout + first.stderr, first
    assert git(repo, "rev-parse", "main") == old and os.path.getsize("shared.txt") == 0
    again = subprocess.run(cmd, cwd=repo, env=python_env(), capture_output=True, text=True)
    assert again.returncode == 0, again
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""
    assert git(repo, "show", "main:shared.txt") == "v2" and open("shared.txt").read() == "v2\n"
