"""`pool-manager health [--repair]`: find every drift between pool-state.json and reality.

Each check yields an Issue with a `fix` that `--repair` applies. The fixes reuse the pool's
own operations (release, rollback) so a repaired pool is exactly what a clean run leaves.
"""

import os
from dataclasses import dataclass, field
from typing import Callable, Optional

from engine import git, store, worktree
from engine.errors import NotInitialized, StateFileError
from engine.pool import SLOT_ID, idle_slot, local_timestamp, owner_alive


@dataclass
class Issue:
    kind: str
    subject: str
    detail: str
    fix: Optional[Callable[[], None]] = field(default=None, repr=False)


def rebuild_state(pool, size):
    """A pool state reconstructed from the worktrees on disk (for a missing or corrupt file)."""
    listing = git.worktrees(pool.repo)
    slots = []
    for n in range(1, size + 1):
        path = os.path.join(pool.dir, f"wt-{n}")
        slot = idle_slot(f"wt-{n}", pool.rel(path))
        entry = next((e for e in listing if os.path.realpath(e["path"]) == os.path.realpath(path)), None)
        if entry and entry["branch"] and entry["branch"].startswith("auto/") and not entry["prunable"]:
            slot.update(status="busy", task_id=entry["branch"][len("auto/"):], branch=entry["branch"],
                        acquired_at=local_timestamp(), owner=None)
        slots.append(slot)
    return {"version": "1.0", "pool_size": size, "created_at": local_timestamp(), "worktrees": slots}


def find_issues(pool):
    issues = []
    repo = pool.repo
    try:
        data = pool.load()
    except NotInitialized:
        size = int(pool.default_size) if str(pool.default_size or "").isdigit() else 8

        def fix_missing():
            with pool.lock():
                pool.save(rebuild_state(pool, size))

        return [Issue("state-missing", pool.state_path, "State file missing", fix_missing)]
    except StateFileError as exc:
        def fix_corrupt():
            with pool.lock():
                store.replace(pool.state_path, pool.state_path + ".corrupt")
                pool.save(rebuild_state(pool, _size_on_disk(pool)))

        return [Issue("state-unparseable", pool.state_path, exc.message, fix_corrupt)]

    broken = git.broken_worktree_records(repo)
    if broken:  # git lists no worktree until these are mended: they come first, alone
        return [Issue("worktree-record-broken", admin,
                      f"git's record of worktree '{os.path.basename(admin)}' is half written (an interrupted "
                      "`git worktree add`, or a crash): git commands that look at all worktrees or all refs fail",
                      lambda admin=admin, finished=finished: git.mend_worktree_record(admin, finished))
                for admin, finished in broken]
    from engine import git_locks

    # first: a lock left by a git killed mid-command makes the slot fixes below fail
    for lock in git_locks.find_stale(git_locks.lock_files(git.common_dir(repo))):
        issues.append(Issue("stale-lock", os.path.relpath(lock, repo), f"stale git lock {lock} (no process has it open)",
                            lambda lock=lock: git_locks.clear_stale([lock])))
    listing = git.worktrees(repo)
    by_path = {os.path.realpath(e["path"]): e for e in listing}
    slot_ids = set()
    for slot in data["worktrees"]:
        sid = slot["id"]
        slot_ids.add(sid)
        path = pool.slot_path(sid)
        entry = by_path.get(os.path.realpath(path))
        healthy = worktree.worktree_healthy(repo, path, listing)
        busy = slot.get("status") == "busy"
        if busy and (slot.get("preparing") or slot.get("releasing")):
            if owner_alive(slot.get("owner")) is False:
                what = "acquire" if slot.get("preparing") else "release"
                issues.append(Issue(f"interrupted-{what}", sid, f"{what} of {sid} was interrupted (owner pid "
                                    f"{slot['owner']['pid']} is dead)",
                                    lambda sid=sid: pool.release(sid, quiet=True)))
            continue
        if busy:
            branch = slot.get("branch")
            if not healthy:
                issues.append(Issue("busy-without-worktree", sid, f"Worktree {sid} marked busy but path "
                                    f"doesn't exist or is broken: {path}",
                                    lambda sid=sid, branch=branch: _recreate(pool, sid, branch)))
            elif entry and entry["branch"] != branch:
                issues.append(Issue("wrong-branch", sid, f"{sid} should be on {branch} but is on "
                                    f"{entry['branch'] or 'a detached HEAD'}",
                                    lambda path=path, branch=branch: _checkout(path, branch)))
            if owner_alive(slot.get("owner")) is False:
                issues.append(Issue("dead-owner", sid, f"{sid} is leased to pid {slot['owner']['pid']}, "
                                    "which is dead", lambda sid=sid: pool.release(sid, quiet=True)))
        elif not healthy and (os.path.lexists(path) or entry is not None):
            issues.append(Issue("broken-worktree", sid, f"idle slot {sid} has a broken worktree at {path}",
                                lambda sid=sid: _remove_stray(pool, sid)))
        elif healthy and entry and entry["branch"]:
            issues.append(Issue("idle-holds-branch", sid, f"idle slot {sid} still has {entry['branch']} "
                                "checked out", lambda path=path, sid=sid: _detach(path, sid)))
        operations = [] if busy or not healthy else git.operations_in_progress(path)
        if operations:
            issues.append(Issue("operation-in-progress", sid, f"idle slot {sid} has a {', '.join(operations)} "
                                "left in progress", lambda path=path: git.forget_operations(path)))

    real_dir = os.path.realpath(pool.dir)
    for entry in listing:
        real = os.path.realpath(entry["path"])
        if os.path.dirname(real) != real_dir or os.path.basename(real) in slot_ids:
            continue
        name = os.path.basename(real)
        fix = None
        if SLOT_ID.fullmatch(name) and (entry["prunable"] or not os.path.isdir(real) or
                                       not worktree.has_leftovers(real)):
            fix = (lambda name=name: _remove_stray(pool, name))
        issues.append(Issue("worktree-without-slot", name, f"worktree {entry['path']} belongs to no slot"
                            + ("" if fix else " and has uncommitted work: left for you to inspect"), fix))

    for entry in listing:
        if entry["prunable"]:
            issues.append(Issue("stale-worktree-entry", entry["path"], f"git still lists a worktree at "
                                f"{entry['path']}, which is gone",
                                lambda: git.run(repo, "worktree", "prune", check=False)))

    seen = {}
    for entry in listing:
        if entry["branch"] and not entry["prunable"]:
            seen.setdefault(entry["branch"], []).append(entry["path"])
    for branch, paths in seen.items():
        if len(paths) > 1:
            owners = {pool.slot_path(s["id"]) for s in data["worktrees"] if s.get("branch") == branch}
            extras = [p for p in paths if os.path.dirname(os.path.realpath(p)) == real_dir and p not in owners]
            issues.append(Issue("branch-checked-out-twice", branch, f"{branch} is checked out in "
                                f"{', '.join(paths)}",
                                (lambda extras=extras: [_detach(p, os.path.basename(p)) for p in extras])
                                if extras else None))
    return issues


def _size_on_disk(pool):
    names = os.listdir(pool.dir) if os.path.isdir(pool.dir) else []
    numbers = [int(m.group(1)) for m in (SLOT_ID.fullmatch(n) for n in names) if m]
    default = int(pool.default_size) if str(pool.default_size or "").isdigit() else 8
    return max([default, *numbers])


def _recreate(pool, sid, branch):
    repo = pool.repo
    path = pool.slot_path(sid)
    if branch and git.branch_exists(repo, branch) and not git.checked_out_at(repo, branch):
        worktree.add_worktree(repo, path, branch, discard=lambda: pool._discard_broken(repo, path))
        return
    pool.mark_idle(sid)
    with git.worktree_lock(repo):
        pool._discard_broken(repo, path)


def _checkout(path, branch):
    if not worktree.has_leftovers(path):
        git.run(path, "checkout", "-q", branch, "--")


def _detach(path, sid):
    branch = git.current_branch(path)
    worktree.commit_leftovers(path, f"WIP: uncommitted work left in {sid} (pool repair)")
    git.run(path, "checkout", "-q", "-f", "--detach")
    return branch


def _remove_stray(pool, name):
    with git.worktree_lock(pool.repo):
        pool._discard_broken(pool.repo, os.path.join(pool.dir, name))


def health(pool, repair=False, passes=3):
    """Return (issues found, issues remaining after repair, repaired descriptions).

    A repair can uncover the next drift (rolling back an interrupted acquire reveals the
    half-made worktree it left), so repair runs up to `passes` rounds.
    """
    found = find_issues(pool)
    remaining, repaired = found, []
    for _ in range(passes if repair else 0):
        fixable = [issue for issue in remaining if issue.fix is not None]
        if not fixable:
            break
        for issue in fixable:
            try:
                issue.fix()
                repaired.append(f"{issue.kind}: {issue.subject}")
            except Exception as exc:  # one failed fix must not stop the others; reported below
                repaired.append(f"{issue.kind}: {issue.subject} FAILED ({getattr(exc, 'output', '') or exc})")
        remaining = find_issues(pool)
    return found, remaining, repaired


def pool_worktree_count(pool):
    real_dir = os.path.realpath(pool.dir)
    return sum(1 for e in git.worktrees(pool.repo) if os.path.dirname(os.path.realpath(e["path"])) == real_dir)
