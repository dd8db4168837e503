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

from engine import git, store
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
    """Advance TARGET from old to new (a descendant) without touching uncommitted work.

    In a checkout, git moves it file by file, then its index, then the ref: a kill in between
    leaves files that refuse every later fast-forward. So the move is written down first (in
    the checkout's git directory: "TARGET OLD NEW") and removed once git has ended, all under
    a flock that makes moves into one checkout take turns; a record found under that flock is
    a killed move's, undone first (with the git locks its git left)."""
    where = git.checked_out_at(repo, target)
    if where is None:
        git.run(repo, "update-ref", "-m", "parallel-orchestrator merge", f"refs/heads/{target}", new, old)
        return
    # (git's own directory, where git itself writes the index: followed like git follows it)
    record = os.path.join(os.path.realpath(git.worktree_git_dir(where) or os.path.join(where, ".git")),
                          git.FAST_FORWARD_RECORD)
    with store.file_lock(record):
        if os.path.exists(record):
            _undo_a_killed_fast_forward(where, record)
        # (not flushed to the disk: git does not flush the checkout's files either)
        store.atomic_write(record, f"{target} {old} {new}\n", keep_last_good=False, durable=False)
        proc = git.run(where, "merge", "--ff-only", "-q", new, check=False)
        if proc.returncode < 0:  # git itself killed: the record stays for the next move
            raise OrchestratorError(f"cannot update {target} in {where}: git was killed (signal "
                                    f"{-proc.returncode}) while moving it (nothing was merged; the "
                                    "next merge puts the checkout back first)")
        os.unlink(record)
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["fast-forward refused"])[0]
        raise OrchestratorError(f"cannot update {target} in {where}: {detail} "
                                "(commit or stash your changes; nothing was merged)")


def _undo_a_killed_fast_forward(where, record):
    from engine import git_locks
    from engine.ui import warn

    try:
        with open(record, encoding="utf-8") as fh:
            target, old, new = fh.read().split()
    except ValueError:  # (not a record of ours: nothing to undo)
        target = None
    if target is not None:
        git_locks.clear_stale_in_worktree(where, target, where)  # (what the killed git left)
        # (when it cannot, what is there is left for git to refuse: a change since is a person's)
        if undo_a_killed_move(where, target, old, new):
            warn(f"[WARN] put {target}'s checkout back at {old[:12]}: a merge's fast-forward was killed mid-way")
    os.unlink(record)


def undo_a_killed_move(where, target, old, new):
    """Put back the checkout WHERE of TARGET that a fast-forward from OLD to NEW, killed mid-way,
    left between the two; True when it did. Git writes such a fast-forward file by file (each changed
    file unlinked, created empty, then written), then the index, then the ref: a kill before the
    ref leaves HEAD at OLD, each path the move changes holding OLD's content, NEW's, an empty
    file or nothing, and its index entry OLD's or NEW's. The next fast-forward (to NEW or to a
    later merge) then refuses those files as local changes, or, where it does not, leaves NEW's
    staged entries behind in a checkout whose HEAD lacks them (found by the kill campaign).

    OLD and NEW come from the record `_move_target` writes before git starts. Only when every
    such path is in one of those states, so that nothing in it is anyone else's, are those
    paths restored to OLD; anything else (a person's edit since) is left alone for the
    fast-forward to refuse."""
    if git.current_branch(where) != target or git.branch_commit(where, target) != old:
        return False  # the ref moved (the fast-forward ended, or someone moved it) or a person switched
    sides = {}  # path -> ((mode, oid) at OLD or None, (mode, oid) at NEW or None)
    diff = git.run(where, "diff", "--raw", "-z", "--no-renames", "--no-abbrev", old, new, "--", check=False)
    if diff.returncode != 0:
        return False  # (a commit no longer there: nothing to compare with)
    raw = diff.stdout.split("\0")
    for info, path in zip(raw[0::2], raw[1::2]):
        old_mode, new_mode, old_oid, new_oid, _ = info.lstrip(":").split()
        sides[path] = tuple(None if set(oid) == {"0"} else (mode, oid)
                            for mode, oid in ((old_mode, old_oid), (new_mode, new_oid)))
    if not sides:
        return False
    if any(m not in ("100644", "100755") for side in sides.values() for m, _ in filter(None, side)) \
            or any("\n" in p for p in sides):
        return False  # (a link, a submodule or an unusual name: left to git and a person)
    index = {}
    for entry in filter(None, git.run(where, "ls-files", "-s", "-z").stdout.split("\0")):
        info, _, path = entry.partition("\t")
        if path in sides:
            mode, oid, stage = info.split()
            index[path] = (mode, oid) if stage == "0" else "conflicted"
    if any(index.get(p) not in side for p, side in sides.items()):
        return False
    to_hash = []
    for path in sides:
        full = os.path.join(where, path)
        if os.path.islink(full) or (os.path.lexists(full) and not os.path.isfile(full)):
            return False
        if os.path.isfile(full) and os.path.getsize(full) > 0:
            to_hash.append(path)
    found = git.run(where, "hash-object", "--no-filters", "--stdin-paths",
                    input="".join(p + "\n" for p in to_hash)).stdout.split() if to_hash else []
    if any(oid not in {s[1] for s in sides[p] if s} for p, oid in zip(to_hash, found)):
        return False  # content that is neither side's: someone's since
    known = [p for p in sides if sides[p][0] or index.get(p)]
    if known:
        git.run(where, "--literal-pathspecs", "restore", "-q", f"--source={old}", "--staged", "--worktree",
                "--pathspec-from-file=-", "--pathspec-file-nul", input="".join(p + "\0" for p in known))
    for path in sides:
        if sides[path][0] is None and os.path.isfile(os.path.join(where, path)):
            os.unlink(os.path.join(where, path))  # NEW's file, never in the index: untracked
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
