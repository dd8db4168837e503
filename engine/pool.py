"""The worktree pool (`pool-manager`): reusable git worktrees leased to agents.

State lives in `pool-state.json` (CONTRACT.md §3.2; extra fields allowed). Design:

- **Slots are real worktrees kept across leases.** `acquire` re-points a free slot at
  `auto/<task>` from the base with one `git checkout -f -B` and a `git clean`; a worktree is
  created only when the slot is missing or broken. `release` commits nothing away: leftovers
  are committed to the task branch, the slot is detached, and the branch is deleted only when
  it has no commits the base lacks (`--force` to override).
- **Concurrency.** Every read-modify-write of the state file holds its flock, but never while
  git works: `acquire` claims a slot (status busy, `preparing` with its own pid as owner),
  drops the lock, prepares the worktree, then confirms. `git worktree add/remove/prune` is
  serialized per repository (git.worktree_lock).
- **Crash safety.** A slot left `preparing`/`releasing` by a dead process is an interrupted
  operation that `health --repair` rolls back or finishes. Intent and outcome of every
  acquire/release go to `.claude/pool-journal.jsonl`.
- **Leases.** A ready slot records its owner: host and time always, and `owner.pid` when
  `POOL_OWNER_PID` names the process that holds the lease (the orchestrator sets it to
  itself; a shell can pass `POOL_OWNER_PID=$$`). The short-lived `pool-manager` process is
  never recorded as the owner, so `health` does not mistake a normal lease for a dead one.

Paths: `POOL_DIR` and `POOL_STATE_FILE` relative values resolve against the project root
(engine.paths), not the cwd. The `path` field keeps the contract's relative form; `acquire`
prints the absolute path so an agent can `cd` from anywhere.
"""

import contextlib
import datetime
import os
import re
import shutil

from engine import git, git_locks, store, worktree
from engine.faults import crashpoint
from engine.procs import alive, process_start_time
from engine.ui import warn
from engine.errors import GitError, InvalidValue, NotInitialized, OrchestratorError, StateFileError
from engine.paths import Layout

DEFAULT_SIZE = 8
MAX_SIZE = 256
SLOT_ID = re.compile(r"wt-([1-9][0-9]{0,3})")
NOT_INITIALIZED = "Pool not initialized. Run: ./pool-manager.sh init"


class Lease(tuple):
    """What `acquire` returns: (slot id, absolute path, branch), as callers unpack it, and
    `.base_commit`, the commit the slot was prepared from (the base a new branch starts at)."""

    def __new__(cls, slot_id, path, branch, base_commit):
        lease = super().__new__(cls, (slot_id, path, branch))
        lease.base_commit = base_commit
        return lease

    def __getnewargs__(self):  # (copy and pickle rebuild it through __new__)
        return (*self, self.base_commit)


class PoolExhausted(OrchestratorError):
    """No idle slot: the CLI prints POOL_EXHAUSTED on stdout as well."""


class LeaseHeld(OrchestratorError):
    """A live process holds a slot: cleanup, reset or init would pull its worktree away
    (committing an agent's half-written files as WIP and crashing its run)."""


def local_timestamp():
    """`date -Iseconds`: local time with offset, as the original pool wrote it."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def parse_size(raw, default=DEFAULT_SIZE):
    if raw is None or raw == "":
        return default
    text = str(raw).strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_SIZE:
        raise InvalidValue(f"Pool size must be a whole number from 1 to {MAX_SIZE}, got '{raw}'")
    return int(text)


def check_slot_id(value):
    if not value:
        raise InvalidValue("Worktree ID required")
    if not SLOT_ID.fullmatch(value):
        raise InvalidValue(f"invalid worktree id '{value}' (expected wt-N)")
    return value


def _hostname():
    """This machine's name (what `socket.gethostname()` returns on Linux, without importing
    `socket` on every pool command)."""
    return os.uname().nodename


def make_owner(pid=None):
    """Who holds a slot: host and time always; the pid when one is known to hold the lease."""
    return {"pid": pid, "host": _hostname(), "since": local_timestamp(),
            "start": process_start_time(pid) if pid else None}


def owner_alive(owner):
    """True/False for an owner on this host; None when it cannot be judged (other host)."""
    if not owner or not isinstance(owner.get("pid"), int) or owner.get("host") != _hostname():
        return None
    return alive(owner["pid"], owner.get("start"))


def idle_slot(slot_id, rel_path):
    return {"id": slot_id, "status": "idle", "task_id": None, "path": rel_path, "branch": None,
            "acquired_at": None}


class Pool:
    """One pool: its state file, its directory, its repository."""

    def __init__(self, layout=None, env=None, home=None):
        """HOME: where a new pool's slots go when POOL_DIR is not set (the engine passes its
        own, Layout.engine_pool_dir; the drop-in commands keep the contract's default)."""
        env = os.environ if env is None else env
        self.layout = layout or Layout()
        self.root = self.layout.root
        self.chosen_dir = bool(env.get("POOL_DIR"))
        self._default_dir, self.state_path = self.layout.pool_paths(env)
        self.home = home
        self._dir = None
        self.default_size = env.get("POOL_SIZE")
        self.lease_pid = env.get("POOL_OWNER_PID")
        self.journal = store.Journal(self.layout.pool_journal)
        self._repo = None

    @property
    def dir(self):
        """The slots' directory: POOL_DIR if set, else the existing pool's own (recorded in its
        state file), else HOME or the contract's `.claude/worktree-pool` for a new pool. A move
        of the pool that a kill cut short is finished (or rolled back) first, by whichever
        command looks next, so no command ever sees slots on both sides."""
        if self._dir is None:
            if self.chosen_dir:
                self._dir = self._default_dir
            else:
                recorded, moving = self._recorded()
                self._dir = recorded or self.home or self._default_dir
                if moving:
                    self._finish_move()
        return self._dir

    def _known(self, rel):
        """RELative (or absolute) directory from the state file, if it is one of the two places
        we make pools in; a pool elsewhere is found through POOL_DIR, as it was made."""
        if not isinstance(rel, str) or not rel:
            return None
        path = os.path.normpath(os.path.join(self.root, rel))
        known = {os.path.normpath(self._default_dir), os.path.normpath(self.layout.engine_pool_dir)}
        return path if path in known else None

    def _recorded(self):
        """(the directory an existing pool keeps its slots in, or None; an unfinished move
        {"from", "to"}, or None). The directory is its `pool_dir`, or (a pool written by an
        earlier version) its slots' paths."""
        try:
            data = store.load_json(self.state_path)
        except OrchestratorError:
            return None, None
        if not isinstance(data, dict):
            return None, None
        slots = data.get("worktrees") if isinstance(data.get("worktrees"), list) else []
        recorded = data.get("pool_dir")
        if not isinstance(recorded, str):
            first = next((s.get("path") for s in slots if isinstance(s, dict) and isinstance(s.get("path"), str)), None)
            recorded = os.path.dirname(first) if first else None
        moving = data.get("moving") if isinstance(data.get("moving"), dict) else None
        if moving and not (self._known(moving.get("from")) and self._known(moving.get("to"))):
            moving = None
        return self._known(recorded), moving

    # ------------------------------------------------------------------ basics
    @property
    def repo(self):
        if self._repo is None:
            self._repo = git.toplevel(self.root)
        return self._repo

    def slot_path(self, slot_id):
        return os.path.join(self.dir, check_slot_id(slot_id))

    def rel(self, path):
        rel = os.path.relpath(path, self.root)
        return path if rel.startswith("..") else rel

    def load(self):
        data = store.load_json(self.state_path)
        if data is None:
            raise NotInitialized(NOT_INITIALIZED)
        slots = data.get("worktrees") if isinstance(data, dict) else None
        if not isinstance(slots, list) or not all(
                isinstance(s, dict) and isinstance(s.get("id"), str) and SLOT_ID.fullmatch(s["id"]) for s in slots):
            raise StateFileError(f"{self.state_path} does not hold a valid pool (worktrees list)")
        return data

    def save(self, data):
        store.write_json(self.state_path, data)

    def lock(self):
        self.dir  # (resolved first: finishing a move a kill cut short takes this lock itself)
        return store.file_lock(self.state_path)

    def find(self, data, slot_id):
        for slot in data["worktrees"]:
            if slot["id"] == slot_id:
                return slot
        raise InvalidValue(f"{slot_id} is not a slot of this pool (size {len(data['worktrees'])})")

    # ------------------------------------------------------------------ init
    def init(self, size=None, force=False):
        size = parse_size(size if size is not None else self.default_size)
        repo = self.repo
        with self.lock():
            try:
                old = self.load()
            except NotInitialized:
                old = None
            except StateFileError:
                if not force:
                    raise
                store.replace(self.state_path, self.state_path + ".corrupt")
                old = None
            if old and not force:
                self.refuse_live_leases(old, "re-initialise the pool")
            busy = [s for s in (old or {}).get("worktrees", []) if s.get("status") == "busy"]
            if busy and not force:
                names = ", ".join(f"{s['id']} ({s.get('task_id')})" for s in busy)
                raise OrchestratorError(f"Pool has busy slots: {names}. Release them or use --force")
        for slot in busy:
            self.release(slot["id"], force=False, quiet=True)
        if os.path.isdir(self.dir):  # (with no directory there is no slot to remove; a record git
            self._remove_slot_worktrees(keep=lambda n: n <= size)  # kept of one is cleared by the acquire)
        store.makedirs(self.dir)
        worktree.exclude_from_status(repo, os.path.relpath(self.dir, repo))
        data = {"version": "1.0", "pool_size": size, "created_at": local_timestamp(), "pool_dir": self.rel(self.dir),
                "worktrees": [idle_slot(f"wt-{n}", self.rel(os.path.join(self.dir, f"wt-{n}")))
                              for n in range(1, size + 1)]}
        with self.lock():
            self.save(data)
        self.journal.append("pool-init", size=size)
        return size

    # ------------------------------------------------------------------ acquire
    def acquire(self, task, base=None, take_over=None, previous_merged=None):
        """Lease a slot for TASK; return a Lease: (slot id, absolute path, branch).

        TAKE_OVER names a slot this lease owner (POOL_OWNER_PID) holds for a task that no
        longer needs a checkout (the orchestrator's approved task, whose branch the merge
        queue takes from there): the slot passes to TASK directly, one checkout instead of
        a release and an acquire. The previous branch is kept unless the base already has it;
        PREVIOUS_MERGED, when given, answers that (asked once the slot has left the branch,
        so a merge recorded meanwhile is seen) instead of a look at the history.
        """
        git.check_ref_component(task)
        repo = self.repo
        branch = f"auto/{task}"
        # the usual case in one call: the base is a local branch, and whether TASK's branch exists
        tips = git.branch_tips(repo, base, branch) if base and not base.startswith("-") else {}
        base_label, base_commit = (base, tips[base]) if base in tips else worktree.resolve_base(repo, base)
        # Asked before taking the pool's lock (a git call under it would serialize every
        # acquire): the lock does not keep anyone else from checking a branch out anyway, and
        # two acquires of one task are told apart inside it. A branch that does not exist is
        # checked out nowhere: no listing then (git itself still refuses an unborn one that is).
        known_absent = base in tips and branch not in tips
        listing = None if known_absent else self._refuse_if_checked_out_elsewhere(repo, branch)
        with self.lock():
            data = self.load()
            for slot in data["worktrees"]:
                if slot.get("status") == "busy" and slot.get("task_id") == task:
                    raise OrchestratorError(f"Task {task} already holds {slot['id']}; release it first")
            if take_over is None:
                slot = next((s for s in data["worktrees"] if s.get("status") == "idle"), None)
                if slot is None:
                    raise PoolExhausted("No available worktrees in pool")
                previous = None
            else:
                slot = self.find(data, take_over)
                owner = slot.get("owner") if isinstance(slot.get("owner"), dict) else {}
                if slot.get("status") != "busy" or slot.get("preparing") or slot.get("releasing") or \
                        str(owner.get("pid")) != str(self.lease_pid):
                    raise OrchestratorError(f"{take_over} is not a slot this process can hand over")
                # (`checkout -f -B` does not refuse a branch checked out elsewhere: checked above)
                previous = slot.get("branch")
            path = self.slot_path(slot["id"])
            slot.update(status="busy", task_id=task, branch=branch, acquired_at=local_timestamp(),
                        path=self.rel(path), base=base_label, base_commit=base_commit, preparing=True,
                        owner=make_owner(os.getpid()))
            if previous and previous != branch:
                slot["previous_branch"] = previous  # dropped below if merged, or by a rollback
            self.save(data)
        self.journal.append("acquire-intent", slot=slot["id"], task=task, branch=branch, base=base_commit,
                            **({"took_over": previous} if take_over is not None else {}))
        try:
            created_branch = self._prepare(repo, path, branch, base_commit, listing, known_absent=known_absent)
            worktree.copy_into(self.root, path, never=(self.dir, self.state_path))
            worktree.run_setup(self.root, path, {"TASK_ID": task, "WORKTREE": path, "BRANCH": branch,
                                                 "BASE": base_label})
            if slot.get("previous_branch"):
                crashpoint("handed-over")  # the slot on the new branch, the record still preparing
                if previous_merged is None:
                    self._drop_if_merged(slot["previous_branch"], base_label, base_commit)
                elif previous_merged():  # (the merge queue could not drop it: it was checked out here)
                    git.delete_branch(repo, slot["previous_branch"], check=False)
        except BaseException:
            self._rollback_acquire(slot["id"])
            raise
        with self.lock():
            data = self.load()
            current = self.find(data, slot["id"])
            if current.get("task_id") != task or not current.get("preparing"):
                raise OrchestratorError(f"{slot['id']} was taken over while being prepared")
            current.pop("preparing", None)
            current.pop("previous_branch", None)
            current["owner"] = make_owner(int(self.lease_pid) if str(self.lease_pid or "").isdigit() else None)
            current["created_branch"] = created_branch
            self.save(data)
        self.journal.append("acquire-done", slot=slot["id"], task=task, branch=branch)
        return Lease(slot["id"], path, branch, base_commit)

    def _refuse_if_checked_out_elsewhere(self, repo, branch):
        """Refuse a branch checked out outside the pool; return the worktree listing."""
        listing = git.worktrees(repo)
        where = git.checked_out_at(repo, branch, listing)
        if where and os.path.dirname(os.path.realpath(where)) != os.path.realpath(self.dir):
            raise OrchestratorError(f"Branch {branch} is checked out in {where}")
        return listing

    def _prepare(self, repo, path, branch, base_commit, listing, known_absent=False):
        """Point the slot's worktree at BRANCH; return True if the branch was created/reset.

        The fast path is one `checkout -f -B` and one `clean` in the existing worktree; a
        missing or broken slot (the checkout fails) is re-created under the worktree lock.
        KNOWN_ABSENT: the caller has just seen that BRANCH does not exist. LISTING (git's
        worktree list) may be None: a slot with its `.git` file is then tried as it is, and
        the listing is asked for only if that fails.
        """
        unique = None if known_absent else git.unique_commits(repo, branch, base_commit)  # None: no such branch
        reuse = bool(unique)
        if reuse:
            warn(f"[WARN] Reusing existing branch {branch} ({unique} commit(s) not in the base)")
        real = os.path.realpath(path)
        entry = None if listing is None else next((e for e in listing if os.path.realpath(e["path"]) == real), None)
        if (listing is None or entry is not None and not entry["prunable"]) and \
                os.path.isfile(os.path.join(path, ".git")):
            git_locks.clear_stale_in_worktree(path, branch, repo)
            try:
                forgotten = git.forget_operations(path)  # a slot is handed out clean of every such state
                if forgotten:
                    warn(f"[WARN] Ended the {', '.join(forgotten)} left in progress in {os.path.basename(path)}")
                if reuse:
                    git.run(path, "checkout", "-q", "-f", branch, "--")
                else:
                    git.run(path, "checkout", "-q", "-f", "-B", branch, base_commit, "--")
                git.run(path, "clean", "-q", "-ffd")
                return not reuse
            except GitError:
                pass  # a broken slot: re-create it below
        start = None if reuse else base_commit
        if listing is None and not os.path.lexists(path):
            try:  # the usual new slot; git refuses a path it still lists, and that is cleared below
                worktree.add_worktree(repo, path, branch, start)
                return not reuse
            except GitError:
                pass
        # A fresh slot needs no clearing, unless git still lists a deleted worktree (which keeps
        # its branch "checked out"): then the discard's prune goes first.
        if listing is None:
            listing = git.worktrees(repo)
            entry = next((e for e in listing if os.path.realpath(e["path"]) == real), None)
        broken = entry is not None or os.path.lexists(path) or any(e["prunable"] for e in listing)
        try:
            worktree.add_worktree(repo, path, branch, start,
                                  discard=(lambda: self._discard_broken(repo, path)) if broken else None)
        except GitError as exc:  # the contract's line for it
            raise OrchestratorError(f"Failed to create worktree: {exc.detail}") from exc
        return not reuse

    def _discard_broken(self, repo, path):
        """Remove whatever is at a slot path that is not a usable worktree (caller holds the lock),
        the record of a `worktree add` of it killed half-way included: git's remove does not
        know that one and its prune keeps it (locked), and under the worktree lock no add of
        ours is at work (left alone, the next `health` found it broken two seconds later)."""
        git.run(repo, "worktree", "remove", "--force", "--force", path, check=False)
        if os.path.lexists(path) and os.path.realpath(os.path.dirname(path)) == os.path.realpath(self.dir):
            shutil.rmtree(path, ignore_errors=True)
        git.run(repo, "worktree", "prune", check=False)
        unfinished = git.unfinished_record(repo, path)
        if unfinished is not None:
            git.mend_worktree_record(unfinished, False)

    def _rollback_acquire(self, slot_id, takeover=False):
        """Undo a failed or interrupted acquire: detach, drop a fresh branch, slot idle."""
        repo = self.repo
        with self.lock():
            data = self.load()
            slot = self.find(data, slot_id)
            branch, base_commit = slot.get("branch"), slot.get("base_commit")
            base_label, previous = slot.get("base"), slot.get("previous_branch")
        path = self.slot_path(slot_id)
        git_locks.clear_stale_in_worktree(path, branch, repo, shared=takeover)
        if worktree.worktree_healthy(repo, path):
            git.run(path, "checkout", "-q", "-f", "--detach", check=False)
        elif os.path.lexists(path) or git.unfinished_record(repo, path):
            with git.worktree_lock(repo):  # a `worktree add` cut short: start the slot afresh
                self._discard_broken(repo, path)
        try:
            if branch and git.branch_exists(repo, branch) and base_commit and \
                    git.unique_commits(repo, branch, base_commit) == 0 and not git.checked_out_at(repo, branch):
                git.delete_branch(repo, branch, check=False)  # (git keeps one a prunable worktree still has)
            if previous:  # a hand-over cut short: the branch it took the slot from, as a release would
                self._drop_if_merged(previous, base_label, base_commit)
        finally:  # whatever git said, the slot is not left `preparing` under a live owner
            self.mark_idle(slot_id)
            self.journal.append("acquire-rollback", slot=slot_id, branch=branch)

    def mark_idle(self, slot_id):
        """Reset one slot to the contract's idle record (all task fields null)."""
        with self.lock():
            data = self.load()
            slot = self.find(data, slot_id)
            slot.clear()
            slot.update(idle_slot(slot_id, self.rel(self.slot_path(slot_id))))
            self.save(data)

    def _mark(self, slot_id, **fields):
        """Set (or, with None, remove) fields of one slot under the lock."""
        with self.lock():
            data = self.load()
            slot = self.find(data, slot_id)
            for key, value in fields.items():
                if value is None:
                    slot.pop(key, None)
                else:
                    slot[key] = value
            self.save(data)

    # ------------------------------------------------------------------ release
    def release(self, slot_id, force=False, quiet=False, discard_leftovers=False):
        """Return a slot to the pool; keep its branch if it holds work the base lacks.
        DISCARD_LEFTOVERS: files left in the checkout are dropped, not committed (the
        orchestrator's approved task: what QA left there is not the verified work)."""
        check_slot_id(slot_id)
        with self.lock():
            data = self.load()
            slot = self.find(data, slot_id)
            if slot.get("status") != "busy":
                if not quiet:
                    warn(f"[WARN] {slot_id} was already idle")
                return slot_id
            alive = owner_alive(slot.get("owner"))
            if (slot.get("preparing") or slot.get("releasing")) and alive:
                raise OrchestratorError(f"{slot_id} is being acquired or released by pid "
                                        f"{slot['owner']['pid']}; try again")
            takeover = bool(slot.get("releasing"))  # finishing a release whose process died
            snapshot_owner = None if takeover else slot.get("owner")
            if slot.get("preparing"):
                interrupted_acquire = True
            else:
                interrupted_acquire = False
                slot["releasing"] = True
                slot["owner"] = make_owner(os.getpid())
                self.save(data)
            snapshot = dict(slot)
        if interrupted_acquire:
            self._rollback_acquire(slot_id, takeover=True)
            return slot_id
        self.journal.append("release-intent", slot=slot_id, branch=snapshot.get("branch"), forced=force)
        try:
            kept = self._release_git(snapshot, force, takeover=takeover, quiet=quiet, discard=discard_leftovers)
        except BaseException:
            self._mark(slot_id, releasing=None, owner=snapshot_owner)  # still busy, as before
            raise
        self.mark_idle(slot_id)
        self.journal.append("release-done", slot=slot_id, branch=snapshot.get("branch"), kept=kept)
        return slot_id

    def _release_git(self, slot, force, takeover=False, quiet=False, discard=False):
        """Detach the slot (committing leftovers unless forced) and delete or keep its branch.

        Returns True when the branch was kept. Four git calls on the usual path: status,
        update-ref (detach without touching files), rev-list (unmerged?), branch -D.
        """
        repo = self.repo
        path = self.slot_path(slot["id"])
        branch = slot.get("branch")
        git_locks.clear_stale_in_worktree(path, branch, repo, shared=takeover)
        if os.path.isfile(os.path.join(path, ".git")):
            forgotten = []
            try:
                forgotten = git.forget_operations(path)
                current, dirty = git.status(path, *worktree.leftover_pathspec())
            except GitError:
                current, dirty = None, []  # a broken worktree: health re-creates or removes it
            if forgotten:
                warn(f"[WARN] Ended the {', '.join(forgotten)} left in progress in {slot['id']} "
                     f"({branch or 'no branch'} itself is unchanged)")
            if dirty and (force or discard):
                git.run(path, "reset", "-q", "--hard")
                git.run(path, "clean", "-q", "-ffd")
            elif dirty and current == branch and not forgotten:
                worktree.commit_leftovers(path, f"WIP: uncommitted work left in {slot['id']} at release",
                                          known_dirty=True)
                warn(f"[WARN] Committed uncommitted work left in {slot['id']} to {branch}")
            elif dirty:
                git.run(path, "stash", "push", "-q", "-u", "-m", f"left in {slot['id']} at release")
                why = f"mid-{forgotten[0]}" if forgotten else f"not on {branch}"
                warn(f"[WARN] Uncommitted work in {slot['id']} ({why}) saved with git stash")
            if current is not None:
                git.detach(path, "HEAD")
        if not branch:
            return False
        unique = self._unique(branch, slot.get("base"), slot.get("base_commit"))
        if unique is None:
            return False  # the branch is gone already
        if unique and not force:
            if quiet:  # the orchestrator keeps approved branches on purpose: the merge queue takes them
                return True
            warn(f"[WARN] Keeping branch {branch}: {unique} commit(s) not in {slot.get('base') or 'the base'} "
                 "(use --force to delete)")
            return True
        proc = git.delete_branch(repo, branch, check=False)
        if proc.returncode != 0:
            if not git.branch_exists(repo, branch):
                return False  # deleted meanwhile (the merge queue drops a merged branch too): nothing kept
            warn(f"[WARN] Keeping branch {branch}: {proc.stderr.strip().splitlines()[-1:] or ''}")
            return True
        return False

    def _unique(self, branch, base_label, base_commit):
        """Commits of BRANCH its base lacks (the base branch as it is now, else the commit
        the lease started from); None when the branch is gone."""
        unique = None
        if base_label:
            unique = git.unique_commits(self.repo, branch, f"refs/heads/{base_label}")
        if unique is None and base_commit:
            unique = git.unique_commits(self.repo, branch, base_commit)
        return unique

    def _drop_if_merged(self, branch, base_label, base_commit):
        """Delete BRANCH if the base has every commit of it and no worktree has it checked out."""
        if self._unique(branch, base_label, base_commit) == 0:
            git.delete_branch(self.repo, branch, check=False)

    def adopt(self, task_ids, pid):
        """Make `pid` the lease owner of the ready slots holding these tasks (a resumed
        orchestrator taking over from the dead one, so health does not reclaim them)."""
        with self.lock():
            data = self.load()
            adopted = []
            for slot in data["worktrees"]:
                if slot.get("status") == "busy" and slot.get("task_id") in task_ids and \
                        not slot.get("preparing") and not slot.get("releasing"):
                    slot["owner"] = make_owner(pid)
                    adopted.append(slot["id"])
            if adopted:
                self.save(data)
        return adopted

    # ------------------------------------------------------------------ moving the pool
    def relocate(self, new_dir):
        """Move every slot to NEW_DIR with `git worktree move` (a slot's checkout goes whole:
        a leased task's commits and uncommitted files included). Returns None when done, or why
        nothing moved: a live process other than this lease owner holds a slot, a slot is
        mid-operation (`health --repair` finishes that first), something is in the way at
        NEW_DIR, or git cannot move a slot (a submodule, a lock: the slots moved are moved back).

        The intent (`moving` in the state file) is written before the first slot moves, and
        the pool's directory changes in the same write as the last: a kill in between leaves
        the intent, and the next command that asks where the slots are finishes the move."""
        new_dir = os.path.normpath(new_dir)
        with self.lock():
            data = self.load()
            if os.path.normpath(self.dir) == new_dir:
                return None
            live = self.live_leases(data)
            if live:
                return f"{live[0][0]['id']} is leased to task {live[0][0].get('task_id')} by {live[0][1]}"
            odd = next((s["id"] for s in data["worktrees"] if s.get("preparing") or s.get("releasing")), None)
            if odd:
                return f"{odd} was left mid-operation (`pool-manager health --repair` finishes it)"
            for slot in data["worktrees"]:
                dest = os.path.join(new_dir, slot["id"])
                if os.path.islink(dest) or (os.path.lexists(dest) and not (os.path.isdir(dest) and not os.listdir(dest))):
                    return f"{self.rel(dest)} is in the way"
            data["moving"] = {"from": self.rel(self.dir), "to": self.rel(new_dir)}
            self.save(data)
            return self._move_slots(data)

    def _finish_move(self):
        """Finish a move a kill cut short (see relocate)."""
        with self.lock():
            data = self.load()
            if isinstance(data.get("moving"), dict):
                why = self._move_slots(data)
                if why:
                    warn(f"[WARN] the pool stays in {self.rel(self.dir)}: {why}")

    def _move_slots(self, data):
        """The moves of relocate, under the pool's lock, from data["moving"]. Idempotent: a slot
        already at its destination is left there."""
        repo = self.repo
        src_dir, dest_dir = self._known(data["moving"]["from"]), self._known(data["moving"]["to"])
        store.makedirs(dest_dir)
        worktree.exclude_from_status(repo, os.path.relpath(dest_dir, repo))
        moved = []
        with git.worktree_lock(repo):
            listed = {os.path.realpath(e["path"]) for e in git.worktrees(repo)}
            for slot in data["worktrees"]:
                src, dest = os.path.join(src_dir, slot["id"]), os.path.join(dest_dir, slot["id"])
                if os.path.realpath(src) not in listed:
                    if os.path.isdir(src) and not os.path.islink(src):
                        shutil.rmtree(src, ignore_errors=True)  # not a worktree git knows: no work in it
                    continue
                if os.path.isdir(dest) and not os.path.islink(dest) and not os.listdir(dest):
                    os.rmdir(dest)
                proc = git.run(repo, "worktree", "move", src, dest, check=False)
                if proc.returncode != 0:
                    for back_src, back_dest in reversed(moved):  # the pool stays whole where it was
                        git.run(repo, "worktree", "move", back_dest, back_src, check=False)
                    data.pop("moving", None)
                    self._dir = src_dir
                    self.save(data)
                    reason = " ".join((proc.stderr or proc.stdout or "").split())[:200]
                    return f"git cannot move {slot['id']} ({reason})"
                moved.append((src, dest))
                crashpoint("slot-moved")
        for slot in data["worktrees"]:
            slot["path"] = self.rel(os.path.join(dest_dir, slot["id"]))
        data["pool_dir"] = self.rel(dest_dir)
        data.pop("moving", None)
        self._dir = dest_dir
        self.save(data)
        with contextlib.suppress(OSError):
            os.rmdir(src_dir)  # (only if empty: anything else in it stays)
        self.journal.append("pool-moved", src=self.rel(src_dir), dest=self.rel(dest_dir))
        return None

    # ------------------------------------------------------------------ status
    def status(self):
        data = self.load()
        slots = data["worktrees"]
        counts = {k: sum(1 for s in slots if s.get("status") == k) for k in ("busy", "idle", "error")}
        return {"pool_size": data.get("pool_size", len(slots)), "busy": counts["busy"], "idle": counts["idle"],
                "error": counts["error"], "worktrees": slots}

    # ------------------------------------------------------------------ live leases
    def live_leases(self, data):
        """[(slot, who)] for busy slots someone is still working in, other than this process:
        the lease owner alive (pid and start time checked, so a reused pid does not count),
        or -- the owner dead, e.g. a SIGKILLed orchestrator -- the task's agent still running
        (its pid and start time as the progress file records them)."""
        mine = {os.getpid()}
        if str(self.lease_pid or "").isdigit():
            mine.add(int(self.lease_pid))  # the caller's own leases (POOL_OWNER_PID=$$)
        agents = None
        live = []
        for slot in data["worktrees"]:
            owner = slot.get("owner") or {}
            if slot.get("status") != "busy" or owner.get("pid") in mine:
                continue
            if owner_alive(owner):
                live.append((slot, f"running pid {owner['pid']}"))
                continue
            agents = self._running_agents() if agents is None else agents
            if slot.get("task_id") in agents:
                live.append((slot, f"its agent, pid {agents[slot['task_id']]}, which is still running"))
        return live

    def _running_agents(self):
        """{task: pid} of the agents the progress file records as running and that are alive."""
        from engine.progress import Progress

        try:  # (rolled forward with its change log: a pid recorded a moment ago counts)
            progress = Progress(self.layout).peek()
        except OrchestratorError:  # unreadable: no evidence either way; the lease owner decides
            return {}
        tasks = (progress or {}).get("tasks")
        running = {}
        for task_id, task in (tasks.items() if isinstance(tasks, dict) else ()):
            if isinstance(task, dict) and isinstance(task.get("pid"), int) and \
                    alive(task["pid"], task.get("pid_start")):
                running[task_id] = task["pid"]
        return running

    def _live_now(self):
        with self.lock():
            return {slot["id"] for slot, _ in self.live_leases(self.load())}

    def refuse_live_leases(self, data, what):
        live = self.live_leases(data)
        if live:
            slot, who = live[0]
            more = f" (and {len(live) - 1} more)" if len(live) > 1 else ""
            raise LeaseHeld(f"Cannot {what}: {slot['id']} is leased to task {slot.get('task_id')} by {who}{more}; "
                            "stop it first (`orchestrator abort`) or use --force")

    # ------------------------------------------------------------------ cleanup / reset
    def cleanup(self, force=False, ignore_live=False):
        """Release every busy slot (keeping unmerged branches unless forced), remove every slot
        worktree, prune; every slot ends idle. User branches are never touched. Refused, with
        nothing changed, while another live process holds a slot (unless ignore_live)."""
        released = kept = 0
        try:
            with self.lock():
                data = self.load()
                if not ignore_live:
                    self.refuse_live_leases(data, "clean up the pool")
        except NotInitialized:
            data = None
        if data is not None:
            for slot in data["worktrees"]:
                if slot.get("status") == "busy" and (ignore_live or slot["id"] not in self._live_now()):
                    branch = slot.get("branch")
                    self.release(slot["id"], force=force, quiet=True)
                    released += 1
                    kept += bool(branch and git.branch_exists(self.repo, branch))
        # A slot leased by a live process after the check above (a race, not a user's
        # intent) is not released and keeps its worktree and its record.
        live = set() if ignore_live or data is None else self._live_now()
        removed = self._remove_slot_worktrees(keep=lambda n: f"wt-{n}" in live)
        if data is not None:
            with self.lock():
                data = self.load()
                live = set() if ignore_live else {slot["id"] for slot, _ in self.live_leases(data)}
                data["worktrees"] = [s if s["id"] in live else idle_slot(s["id"], self.rel(self.slot_path(s["id"])))
                                     for s in data["worktrees"]]
                self.save(data)
        self.journal.append("pool-cleanup", released=released, removed=removed, kept=kept)
        return released, removed, kept

    def _remove_slot_worktrees(self, keep):
        """Remove worktrees at POOL_DIR/wt-N for which keep(N) is false; return how many."""
        repo = self.repo
        removed = 0
        real_dir = os.path.realpath(self.dir)
        with git.worktree_lock(repo):
            for entry in git.worktrees(repo):
                real = os.path.realpath(entry["path"])
                match = SLOT_ID.fullmatch(os.path.basename(real))
                if os.path.dirname(real) != real_dir or not match or keep(int(match.group(1))):
                    continue
                path = os.path.join(self.dir, os.path.basename(real))
                if entry["locked"] or os.path.islink(path):
                    self._discard_broken(repo, path)  # git's own remove: it knows a locked or odd one
                else:  # a plain slot: its files go, and the one prune below forgets them all
                    shutil.rmtree(path, ignore_errors=True)
                removed += 1
            git.run(repo, "worktree", "prune", check=False)
        return removed

    def reset(self, size=None, force=False):
        """Cleanup (unmerged branches kept) and init; refused while another live process holds
        a slot, unless forced."""
        parse_size(size if size is not None else self.default_size)  # a bad size changes nothing
        self.cleanup(force=False, ignore_live=force)
        return self.init(size, force=True)


