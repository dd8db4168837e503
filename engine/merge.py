"""Merging task branches into a target without ever harming the user's checkout.

Every merge is computed off-tree first: `git merge-tree --write-tree` (the same `ort`
strategy `git merge` uses) gives the merged tree or the conflicting files, `git commit-tree`
records the merge commit, and only when the whole sequence is computed does the target
move -- by `git merge --ff-only` in the worktree that has it checked out (git's own safety:
uncommitted files that would be overwritten stop it, untracked files survive), or by a
compare-and-swap `update-ref` when it is checked out nowhere.

Consequences: a conflicting branch is simply reported failed (there is no MERGE_HEAD to
abort, the index is never touched); nothing is ever staged with `add -A`; `--dry-run` runs
the identical computation and stops before the last step, so its prediction is exactly what
a real merge does.
"""

import os
import re
from dataclasses import dataclass, field

from engine import git
from engine.errors import OrchestratorError


@dataclass
class MergeReport:
    target: str
    branches: list
    merged: list = field(default_factory=list)
    already: list = field(default_factory=list)
    failed: list = field(default_factory=list)  # (branch, reason, [files])
    deleted: list = field(default_factory=list)
    kept: list = field(default_factory=list)
    new_commit: str = None
    dry_run: bool = False
    error: str = None  # set when the target could not be moved: nothing was merged
    candidate: str = None  # the commit the target would (dry run) or did move to


def detect_branches(repo):
    """Every local branch under refs/heads/auto/ (no `+`/`*` markers, no substring matches)."""
    return git.local_branches(repo, "refs/heads/auto/")


def default_target(repo):
    branch = git.current_branch(repo)
    if not branch:
        raise OrchestratorError("HEAD is detached; name the target branch to merge into")
    return branch


def merge_tree(repo, ours, theirs):
    """(tree sha, []) when the merge is clean, else (None, conflicting files).

    Raises GitError when there is no merge to compute (unrelated histories, a tip that is not
    a readable commit): git says so with exit 128, or exit 1 without a tree."""
    proc = git.run(repo, "merge-tree", "--write-tree", "--name-only", "--no-messages", ours, theirs, check=False)
    lines = proc.stdout.splitlines()
    if proc.returncode == 0:
        return lines[0].strip(), []
    if proc.returncode == 1 and lines and re.fullmatch(r"[0-9a-f]{40,64}", lines[0].strip()):
        return None, sorted(set(line for line in lines[1:] if line.strip()))
    raise git.GitError(["git", "merge-tree", ours, theirs], proc.returncode, proc.stderr or proc.stdout)


def unmergeable(exc, target):
    """Why a branch has no merge with TARGET at all, as a failure reason (one line)."""
    text = (exc.output or "").strip()
    if "unrelated histories" in text:
        return f"unrelated history: no common commit with {target}"
    detail = text.splitlines()[-1] if text else f"exit {exc.returncode}"
    return f"cannot be read: {detail.removeprefix('fatal: ')}"


def order_by_dependencies(branches, depends_on):
    """Stable topological order: a branch comes after the branches of the tasks it depends on.

    `depends_on` maps a branch to the branches it needs; unknown names are ignored.
    """
    index = {b: i for i, b in enumerate(branches)}
    done, order, visiting = set(), [], set()

    def visit(branch):
        if branch in done:
            return
        if branch in visiting:
            raise OrchestratorError(f"dependency cycle through {branch}")
        visiting.add(branch)
        for dep in sorted((d for d in depends_on.get(branch, ()) if d in index), key=index.get):
            visit(dep)
        visiting.discard(branch)
        done.add(branch)
        order.append(branch)

    for branch in branches:
        visit(branch)
    return order


def progress_dependencies(root):
    """Branch -> dependency branches from `.claude/auto-progress.yaml`, if it knows any."""
    from engine.paths import Layout
    from engine.progress import Progress

    data = Progress(Layout(root)).peek()  # (rolled forward with its change log)
    tasks = (data or {}).get("tasks")
    result = {}
    if isinstance(tasks, dict):
        for task_id, task in tasks.items():
            if not isinstance(task, dict):
                continue
            deps = task.get("depends_on") or []
            branch = task.get("branch") or f"auto/{task_id}"
            result[branch] = [f"auto/{d}" for d in deps if isinstance(d, str)]
    return result


def merge_branches(repo, target, branches, message="feat: Merge {branch}", delete_merged=True, dry_run=False):
    """Merge BRANCHES into TARGET in the given order; see the module docstring."""
    target = target or default_target(repo)
    trees = {}
    try:
        tips = git.branch_tips(repo, trees=trees)  # (one call: every branch tip and tree, the target's among them)
    except git.GitError:  # a branch whose tip cannot be read (its tree neither): it fails alone below
        trees.clear()
        tips = git.branch_tips(repo)
    if target.startswith("-") or target not in tips:
        raise OrchestratorError(f"target branch does not exist: {target}")
    report = MergeReport(target=target, branches=list(branches), dry_run=dry_run)
    start = tips[target]
    current, current_tree = start, trees.get(target)
    for branch in branches:
        tip = tips.get(branch)
        if tip is None:
            report.failed.append((branch, "branch not found", []))
            continue
        try:
            tree, conflicts = merge_tree(repo, current, tip)
        except git.GitError as exc:  # this branch cannot be merged at all: it fails, the others go on
            report.failed.append((branch, unmergeable(exc, target), []))
            continue
        if tree is None:
            report.failed.append((branch, "conflicts", conflicts))
            continue
        # A branch the target already contains merges to the target's own tree; only then is
        # the history asked (the same tree can also come from a branch whose changes are in)
        if current_tree is None:
            current_tree = git.resolve_commit(repo, current, "tree")
        if tree == current_tree and git.is_ancestor(repo, tip, current):
            report.already.append(branch)
            report.merged.append(branch)
            continue
        # Also in a dry run: an unreferenced commit object changes nothing a user can see, and
        # the next branch must be merged onto the real cumulative result.
        msg = message.format(branch=branch)
        current = git.committing(repo, "commit-tree", tree, "-p", current, "-p", tip, "-m", msg).stdout.strip()
        current_tree = tree
        report.merged.append(branch)
    report.candidate = current
    if dry_run or current == start:
        return report
    try:
        _move_target(repo, target, start, current)
    except (OrchestratorError, git.GitError) as exc:  # e.g. update-ref lost a race with another writer
        report.error = exc.message
        moved = [b for b in report.merged if b not in report.already]
        report.failed += [(b, "not merged: the target could not be updated", []) for b in moved]
        report.merged = list(report.already)
        return report
    report.new_commit = current
    if delete_merged and report.merged:
        # Every merged tip is an ancestor of the new target by construction, so this is the
        # safe delete; a branch still checked out (a pool slot) is kept for its release.
        checked_out = {e["branch"] for e in git.worktrees(repo) if not e["prunable"]}
        report.kept = [b for b in report.merged if b in checked_out]
        doomed = [b for b in report.merged if b not in checked_out]
        if doomed:
            git.delete_branch(repo, *doomed)
            report.deleted = doomed
    return report


def _move_target(repo, target, old, new):
    """Advance TARGET from old to new (a descendant) without touching uncommitted work."""
    where = git.checked_out_at(repo, target)
    if where is None:
        git.run(repo, "update-ref", "-m", "parallel-orchestrator merge", f"refs/heads/{target}", new, old)
        return
    proc = git.run(where, "merge", "--ff-only", "-q", new, check=False)
    if proc.returncode != 0 and _clear_what_a_killed_merge_left(where, new, proc.stderr):
        proc = git.run(where, "merge", "--ff-only", "-q", new, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["fast-forward refused"])[0]
        raise OrchestratorError(f"cannot update {target} in {where}: {detail} "
                                "(commit or stash your changes; nothing was merged)")


def _clear_what_a_killed_merge_left(where, new, refusal):
    """A fast-forward killed while it wrote the checkout's files (before its index) leaves
    them behind: new files untracked, changed ones as local changes, every one already with the
    content the fast-forward writes (or, the one it was writing, a new file still empty); the
    next one refuses to overwrite them. When every file git names (REFUSAL) holds exactly the
    bytes of its blob in NEW (no filter applied: a clean filter could make a person's file hash
    like it), or is a new one still empty, nothing of anyone's is lost: the untracked ones are
    removed and the changed ones restored, and True says try again. A file
    with any other content (a person's work, or one a checkout filter rewrote) keeps the
    refusal."""
    untracked, changed, section = [], [], None
    for line in refusal.splitlines():
        if line.endswith("would be overwritten by merge:"):
            section = untracked if "untracked" in line else changed
        elif line.startswith("\t") and section is not None:
            if line[1:].startswith('"'):
                return False  # (a quoted, unusual name: left to a person)
            section.append(line[1:])
        else:
            section = None
    paths = untracked + changed
    if not paths:
        return False
    listed = git.run(where, "ls-tree", "-z", new, "--", *paths, check=False).stdout.split("\0")
    wanted = {}
    for entry in filter(None, listed):
        info, _, path = entry.partition("\t")
        mode, kind, oid = info.split()
        if kind == "blob" and mode in ("100644", "100755"):
            wanted[path] = oid
    if set(wanted) != set(paths) or any(os.path.islink(os.path.join(where, p)) or
                                        not os.path.isfile(os.path.join(where, p)) for p in paths):
        return False
    # A new file git had created but not yet written when it was killed is empty: it holds
    # nothing of anyone's (found by the Ray kill campaign: `app/docs.py`, 0 bytes).
    empty = {p for p in untracked if os.path.getsize(os.path.join(where, p)) == 0}
    written = [p for p in paths if p not in empty]
    # (the bytes as they are: a clean filter could make a person's file hash like the commit's)
    found = git.run(where, "hash-object", "--no-filters", "--", *written, check=False).stdout.split() \
        if written else []
    if found != [wanted[p] for p in written]:
        return False
    for path in untracked:
        os.unlink(os.path.join(where, path))
    if changed:
        git.run(where, "checkout", "-q", "--", *changed)
    return True


def header_lines(report):
    return [f"Merging branches into {report.target}:", *[f"  - {b}" for b in report.branches], ""]


def branch_lines(report):
    failed = {b: (reason, files) for b, reason, files in report.failed}
    lines = []
    for branch in report.branches:
        lines.append(f"Merging {branch}...")
        if branch in failed:
            reason, files = failed[branch]
            if reason == "conflicts":
                lines.append(f"  ✗ Conflicts in: {' '.join(files)}")
            else:
                lines.append(f"  ✗ {reason[0].upper()}{reason[1:]}")
        elif branch in report.already:
            lines.append("  ✓ Already merged")
        else:
            lines.append("  ✓ Merged successfully" if not report.dry_run else "  ✓ Would merge cleanly")
    return lines


def summary_lines(report):
    failed = [b for b, _, _ in report.failed]
    lines = ["=== MERGE SUMMARY ===", "Merged: " + (" ".join(report.merged) or "none"),
             "Failed: " + (" ".join(failed) or "none")]
    if failed:
        lines += ["", "To resolve conflicts manually:", *[f"  git merge {b}" for b in failed]]
    if report.error:
        lines += ["", f"ERROR: {report.error}"]
    return lines


def conflict_matrix(repo, target, branches):
    """For each branch: the files that would conflict merging it alone into TARGET, and
    with each other branch (pairwise, symmetric: computed once per pair)."""
    tips = {b: git.branch_commit(repo, b) for b in branches}
    base = git.branch_commit(repo, target)
    matrix = {b: {"target": [], "branches": {}} for b in branches}
    def conflicts(ours, theirs):
        try:
            return merge_tree(repo, ours, theirs)[1]
        except git.GitError as exc:
            return ["<unrelated history>" if "unrelated histories" in (exc.output or "") else "<unreadable>"]

    for i, b in enumerate(branches):
        if tips[b] is None:
            matrix[b]["target"] = ["<missing branch>"]
            continue
        matrix[b]["target"] = conflicts(base, tips[b])
        for other in branches[i + 1:]:
            files = [] if tips[other] is None else conflicts(tips[b], tips[other])
            matrix[b]["branches"][other] = files
            matrix[other]["branches"][b] = files
    return matrix


def report_dict(report):
    return {"target": report.target, "branches": report.branches, "merged": report.merged,
            "already_merged": report.already, "deleted": report.deleted, "kept": report.kept,
            "failed": [{"branch": b, "reason": r, "files": f} for b, r, f in report.failed],
            "new_commit": report.new_commit, "dry_run": report.dry_run}
