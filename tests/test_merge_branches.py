"""merge-branches against real repositories: CONTRACT.md §2.4 with defects 18, 21, 25, 26 fixed."""

import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import branch_with, branches, commit_file, git


def test_not_a_repository(mb):
    r = mb()
    assert (r.code, r.out, r.err) == (1, "", "ERROR: Not in a git repository\n")


def test_nothing_to_merge(mb, repo):
    r = mb()
    assert (r.code, r.out) == (0, "No branches to merge\n")


def test_clean_merges_output_and_effects(mb, repo):
    branch_with(repo, "auto/a", {"a.txt": "a\n"})
    branch_with(repo, "auto/b", {"b.txt": "b\n"})
    git(repo, "branch", "feature/auto/x")  # `auto/` elsewhere in a name is not a task branch
    r = mb()
    assert r.code == 0, r
    assert r.lines == ["Merging branches into main:", "  - auto/a", "  - auto/b", "",
                       "Merging auto/a...", "  ✓ Merged successfully",
                       "Merging auto/b...", "  ✓ Merged successfully",
                       "=== MERGE SUMMARY ===", "Merged: auto/a auto/b", "Failed: none"]
    assert git(repo, "log", "-1", "--format=%s") == "feat: Merge auto/b"
    assert git(repo, "rev-list", "--count", "--merges", "main") == "2"
    assert branches(repo) == ["feature/auto/x", "main"]  # merged branches safely deleted
    assert git(repo, "status", "--porcelain") == ""


def test_conflict_reported_others_merge_clean_state(mb, repo):
    branch_with(repo, "auto/a", {"same.txt": "a\n"})
    branch_with(repo, "auto/b", {"same.txt": "b\n"})
    branch_with(repo, "auto/c", {"c.txt": "c\n"})
    r = mb()
    assert r.code == 1
    assert "  ✗ Conflicts in: same.txt" in r.lines
    assert r.lines[-5:] == ["Merged: auto/a auto/c", "Failed: auto/b", "", "To resolve conflicts manually:",
                            "  git merge auto/b"]
    assert not os.path.exists(".git/MERGE_HEAD")
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "show", "main:same.txt") == "a" and git(repo, "show", "main:c.txt") == "c"
    assert "auto/b" in branches(repo)  # kept for manual resolution


def test_missing_branch_is_a_failure_never_resolved(mb, repo):
    branch_with(repo, "auto/a", {"a.txt": "a\n"})
    r = mb("main", "auto/a", "auto/nope")
    assert r.code == 1
    assert "  ✗ Branch not found" in r.lines and "Failed: auto/nope" in r.lines
    assert "Merged: auto/a" in r.lines
    assert git(repo, "status", "--porcelain") == ""


def test_branch_names_are_never_options(mb, repo):
    r = mb("main", "--", "-rf", "--exec=touch p")
    assert r.code == 1 and not os.path.exists("p")
    assert git(repo, "status", "--porcelain") == ""


def test_user_files_survive_byte_identical(mb, repo):
    commit_file(repo, "tracked.txt", "v1\n")
    branch_with(repo, "auto/a", {"a.txt": "a\n"})
    with open("tracked.txt", "w") as fh:
        fh.write("my uncommitted edit\n")
    with open("untracked.txt", "wb") as fh:
        fh.write(b"\x00precious\n")
    r = mb()
    assert r.code == 0, r
    assert open("tracked.txt").read() == "my uncommitted edit\n"
    assert open("untracked.txt", "rb").read() == b"\x00precious\n"
    assert git(repo, "show", "main:a.txt") == "a"
    assert git(repo, "diff", "--cached") == ""  # nothing staged


def test_dirty_file_the_merge_would_overwrite_refuses_everything(mb, repo):
    commit_file(repo, "shared.txt", "v1\n")
    branch_with(repo, "auto/a", {"shared.txt": "from branch\n"})
    before = git(repo, "rev-parse", "main")
    with open("shared.txt", "w") as fh:
        fh.write("mine\n")
    r = mb()
    assert r.code == 1
    assert "cannot update main" in r.out and "nothing was merged" in r.out
    assert git(repo, "rev-parse", "main") == before
    assert open("shared.txt").read() == "mine\n"
    assert "auto/a" in branches(repo)


def test_target_not_checked_out_moves_without_checkout(mb, repo):
    branch_with(repo, "auto/a", {"a.txt": "a\n"})
    git(repo, "branch", "release")
    r = mb("release")
    assert r.code == 0
    assert git(repo, "symbolic-ref", "--short", "HEAD") == "main"  # the user's checkout is never switched
    assert git(repo, "show", "release:a.txt") == "a"
    assert not os.path.exists("a.txt")


def test_detached_head_harmless(mb, repo):
    branch_with(repo, "auto/a", {"a.txt": "a\n"})
    git(repo, "checkout", "-q", "--detach")
    r = mb()
    assert r.code == 1 and "HEAD is detached" in r.err
    r = mb("main")
    assert r.code == 0 and git(repo, "show", "main:a.txt") == "a"


def test_branches_checked_out_in_pool_worktrees(mb, pm, repo):
    pm("init", "2")
    paths = {}
    for task in ("x", "y"):
        _, path, _ = pm("acquire", task).out.strip().split("|")
        commit_file(path, f"{task}.txt", f"{task}\n")
        paths[task] = path
    r = mb()  # the skill's order: merge while the worktrees still exist, then release
    assert r.code == 0, r
    assert r.lines[:4] == ["Merging branches into main:", "  - auto/x", "  - auto/y", ""]  # no `+` junk
    assert git(repo, "show", "main:x.txt") == "x" and git(repo, "show", "main:y.txt") == "y"
    assert set(branches(repo)) == {"main", "auto/x", "auto/y"}  # kept: still checked out in slots
    for slot in ("wt-1", "wt-2"):
        assert pm("release", slot).err == ""  # merged, so release deletes them without a warning
    assert branches(repo) == ["main"]


def test_dependency_order_from_progress_file(mb, repo):
    branch_with(repo, "auto/a", {"a.txt": "a\n"})
    branch_with(repo, "auto/b", {"b.txt": "b\n"})
    branch_with(repo, "auto/c", {"c.txt": "c\n"})
    os.makedirs(".claude")
    with open(".claude/auto-progress.yaml", "w") as fh:
        fh.write("tasks:\n  a:\n    depends_on: [c]\n  b: {}\n  c:\n    depends_on: [b]\n")
    r = mb()
    assert r.lines[1:4] == ["  - auto/b", "  - auto/c", "  - auto/a"]
    assert git(repo, "log", "--format=%s", "--merges", "main").splitlines() == [
        "feat: Merge auto/a", "feat: Merge auto/c", "feat: Merge auto/b"]


def test_already_merged_is_idempotent(mb, repo):
    branch_with(repo, "auto/a", {"a.txt": "a\n"})
    assert mb("--keep-branches").code == 0
    head = git(repo, "rev-parse", "main")
    r = mb()
    assert r.code == 0 and "  ✓ Already merged" in r.lines
    assert git(repo, "rev-parse", "main") == head  # nothing merged twice


def test_dry_run_matrix_and_json_change_nothing(mb, repo):
    branch_with(repo, "auto/a", {"same.txt": "a\n"})
    branch_with(repo, "auto/b", {"same.txt": "b\n"})
    branch_with(repo, "auto/c", {"c.txt": "c\n"})
    refs = git(repo, "for-each-ref")
    r = mb("--dry-run")
    assert r.code == 1 and "Conflict matrix" in r.out and "✗1" in r.out
    data = json.loads(mb("--dry-run", "--json").out)
    assert data["matrix"]["auto/a"]["branches"]["auto/b"] == ["same.txt"]
    assert data["matrix"]["auto/c"]["target"] == []
    assert [f["branch"] for f in data["failed"]] == ["auto/b"]
    assert git(repo, "for-each-ref") == refs and git(repo, "status", "--porcelain") == ""


# --------------------------------------------------------------------------- prediction == reality
file_sets = st.lists(st.sets(st.sampled_from(["f1", "f2", "f3", "f4", "f5", "dir/f6"]), min_size=1, max_size=3),
                     min_size=1, max_size=5)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file_sets, st.booleans())
def test_dry_run_predicts_exactly_what_merge_does(mb, tmp_path_factory, file_sets, same_content):
    repo = tmp_path_factory.mktemp("gen")
    git(repo, "init", "-q", "-b", "main")
    commit_file(repo, "f1", "base\n")
    for i, files in enumerate(file_sets):
        branch_with(repo, f"auto/t{i}", {f: ("same\n" if same_content else f"t{i}\n") for f in files})
    cwd = os.getcwd()
    os.chdir(repo)
    try:
        predicted = json.loads(mb("--dry-run", "--json").out)
        actual = json.loads(mb("--json").out)
    finally:
        os.chdir(cwd)
    assert predicted["merged"] == actual["merged"]
    assert predicted["failed"] == actual["failed"]


def unrelated_and_unreadable(repo):
    """auto/unrel: a root commit of its own (no common history with main);
    auto/gone: a branch whose tip commit does not exist (a corrupt or half-copied repository)."""
    git(repo, "checkout", "-q", "--orphan", "auto/unrel")
    git(repo, "rm", "-rqf", ".")
    commit_file(repo, "u.txt", "u\n")
    git(repo, "checkout", "-q", "-f", "main")
    with open(os.path.join(repo, ".git", "refs", "heads", "auto", "gone"), "w") as fh:
        fh.write("0123456789abcdef0123456789abcdef01234567\n")


def test_unrelated_or_unreadable_branch_fails_alone(mb, repo):
    branch_with(repo, "auto/a", {"a.txt": "a\n"})
    unrelated_and_unreadable(repo)
    branch_with(repo, "auto/z", {"z.txt": "z\n"})
    r = mb("main", "auto/a", "auto/unrel", "auto/gone", "auto/z")
    assert r.code == 1 and r.err == "", r
    assert r.lines[6:] == [
        "Merging auto/a...", "  ✓ Merged successfully",
        "Merging auto/unrel...", "  ✗ Unrelated history: no common commit with main",
        "Merging auto/gone...", "  ✗ Cannot be read: merge-tree: 0123456789abcdef0123456789abcdef01234567 - "
                                "not something we can merge",
        "Merging auto/z...", "  ✓ Merged successfully",
        "=== MERGE SUMMARY ===", "Merged: auto/a auto/z", "Failed: auto/unrel auto/gone",
        "", "To resolve conflicts manually:", "  git merge auto/unrel", "  git merge auto/gone"]
    assert git(repo, "show", "main:a.txt") == "a" and git(repo, "show", "main:z.txt") == "z"
    assert git(repo, "show", "main:u.txt", check=False) == ""
    assert "auto/unrel" in branches(repo) and git(repo, "status", "--porcelain") == ""
    r = mb("--dry-run", "--json", "main", "auto/unrel", "auto/gone")  # the prediction says the same
    data = json.loads(r.out)
    assert [f["branch"] for f in data["failed"]] == ["auto/unrel", "auto/gone"]
    assert data["matrix"]["auto/unrel"]["target"] == ["<unrelated history>"]
    assert data["matrix"]["auto/gone"]["target"] == ["<missing branch>"]  # its commit is not there


def test_engine_merge_fails_only_the_unmergeable_branch(repo):
    from engine import merge

    unrelated_and_unreadable(repo)
    branch_with(repo, "auto/a", {"a.txt": "a\n"})
    report = merge.merge_branches(str(repo), "main", ["auto/unrel", "auto/gone", "auto/a"], delete_merged=False)
    assert report.merged == ["auto/a"] and report.error is None
    assert [(b, reason.split(":")[0]) for b, reason, _ in report.failed] == [
        ("auto/unrel", "unrelated history"), ("auto/gone", "cannot be read")]
    assert report.new_commit == git(repo, "rev-parse", "main")


def test_run_with_an_unrelated_history_branch_merges_the_others(sealed_env, tmp_path, monkeypatch):
    """A real run whose agent for `bad` replaces its branch with an unrelated root commit:
    that task fails with the reason, the others are merged, the run ends."""
    import shlex
    import sys

    import yaml

    from engine import demo
    from engine.cli.orchestrator import cli
    from tests.conftest import invoke

    repo = demo.make_repo(str(tmp_path / "d"))
    monkeypatch.chdir(repo)
    monkeypatch.setenv("DEMO_AGENT_SLEEP", "0")
    orphan = ("git checkout -q --orphan tmp && git rm -rqf . && echo u > u.txt && git add u.txt && "
              "git -c user.name=a -c user.email=a@a commit -qm unrelated && git branch -D auto/bad && "
              "git branch -m auto/bad")
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({
        "agent": f"{shlex.quote(sys.executable)} {shlex.quote(demo.AGENT)}",
        "tasks": [{"id": "good1", "verify": "test -f app/good1.py"},
                  {"id": "bad", "agent": orphan, "verify": "test -f u.txt"},
                  {"id": "good2", "verify": "test -f app/good2.py"}]}))
    r = invoke(cli, "orchestrator", "run", "--all-groups", str(plan))
    assert r.code == 1 and "Traceback" not in r.err, r  # completed, not every task merged
    tasks = yaml.safe_load(open(".claude/auto-progress.yaml"))["tasks"]
    assert tasks["good1"]["status"] == tasks["good2"]["status"] == "merged"
    assert tasks["bad"]["status"] == "failed" and "unrelated history" in tasks["bad"]["failure"]
    assert git(repo, "show", "main:app/good1.py") and git(repo, "show", "main:app/good2.py")
    assert git(repo, "show", "main:u.txt", check=False) == ""


def what_a_killed_fast_forward_leaves(repo, files):
    """The checkout a `git merge --ff-only` SIGKILLed mid-write leaves: the new commit's files
    written (new ones untracked, changed ones differing from the index), the index and the
    ref as before (its index.lock, never committed, is removed by the next run's lock sweep)."""
    for name, content in files.items():
        path = os.path.join(str(repo), name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            fh.write(content)


def test_a_persons_file_in_the_way_still_refuses_the_merge_untouched(mb, repo):
    """With no record of a killed move of ours (engine.merge._move_target), files in the way
    are a person's, whatever they hold: the merge refuses and touches nothing (a killed move
    of ours is undone: tests/test_killed_fast_forward.py)."""
    commit_file(repo, "shared.txt", "v1\n")
    branch_with(repo, "auto/a", {"app/a.py": "a\n", "shared.txt": "v2\n"})
    what_a_killed_fast_forward_leaves(repo, {"app/a.py": "a\n", "shared.txt": "my own edit\n"})
    before = git(repo, "rev-parse", "main")
    r = mb()
    assert r.code == 1 and "nothing was merged" in r.out
    assert git(repo, "rev-parse", "main") == before
    assert open("shared.txt").read() == "my own edit\n" and open("app/a.py").read() == "a\n"
