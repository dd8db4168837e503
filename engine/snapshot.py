"""Restorable checkpoints: what `execution/checkpoint-manager.md` promised (create, list,
restore, verify) and the original script never had.

A checkpoint is a directory `.claude/checkpoints/<id>/` holding byte copies of the state
machine, the progress file and the pool state (those that exist), and `manifest.json`
with the id, time, reason, each file's SHA-256, the tips of the branches the pool and
progress name, and a checksum over the manifest itself. `restore` verifies, then writes
each file back atomically under its own lock and journals the restore; `verify` checks
the checksums and that the named branches still exist.
"""

import contextlib
import hashlib
import json
import os
import re
import time

from engine import git, store
from engine.errors import InvalidValue, OrchestratorError
from engine.paths import Layout

# The names a checkpoint stores its copies under (the manifest's keys); where each lives is
# the layout's business (POOL_STATE_FILE can move the pool state).
FILES = STATE, PROGRESS, POOL = ("auto-state-machine.yaml", "auto-progress.yaml", "pool-state.json")  # manifest names


def _sources(layout):
    return {STATE: layout.state_file, PROGRESS: layout.progress, POOL: layout.pool_state}
MANIFEST = "manifest.json"
_ID = re.compile(r"cp-\d{8}-\d{6}(-\d+)?")


def check_id(value):
    if not value or not _ID.fullmatch(value):
        raise InvalidValue(f"invalid checkpoint id '{value or ''}' (expected cp-YYYYMMDD-HHMMSS[-N])")
    return value


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def _manifest_sum(manifest):
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return _sha(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8"))


class Snapshots:
    def __init__(self, layout=None):
        self.layout = layout or Layout()
        self.dir = self.layout.checkpoints

    def path(self, cp_id):
        return os.path.join(self.dir, check_id(cp_id))

    def _branches(self, contents):
        """Branch -> tip for the branches named by the pool and progress files."""
        names = set()
        pool = contents.get(POOL)
        if pool:
            try:
                for slot in json.loads(pool).get("worktrees", []):
                    if isinstance(slot, dict) and isinstance(slot.get("branch"), str):
                        names.add(slot["branch"])
            except (ValueError, AttributeError):
                pass
        progress = contents.get(PROGRESS)
        if progress:
            try:
                data = store.parse_yaml(progress.decode("utf-8", "replace"), PROGRESS) or {}
            except OrchestratorError:
                data = {}
            tasks = data.get("tasks") if isinstance(data, dict) else None
            for task in (tasks or {}).values() if isinstance(tasks, dict) else []:
                if isinstance(task, dict) and isinstance(task.get("branch"), str):
                    names.add(task["branch"])
        tips = {}
        try:
            repo = git.toplevel(self.layout.root)
        except OrchestratorError:
            return tips
        for name in sorted(names):
            tip = git.branch_commit(repo, name) if not name.startswith("-") else None
            if tip:
                tips[name] = tip
        return tips

    def create(self, reason=""):
        if any(c in reason for c in "\x00\r") or len(reason) > 4096:
            raise InvalidValue("reason contains control characters or is too long")
        contents = {}
        if os.path.exists(self.layout.progress):  # the progress file with its change log folded in
            from engine.progress import Progress

            with contextlib.suppress(OrchestratorError):  # (unreadable: copied as it is, as before)
                Progress(self.layout).compact()
        for name, path in _sources(self.layout).items():
            with store.file_lock(path) if os.path.exists(path) else contextlib.nullcontext():
                try:
                    contents[name] = store.read_bytes(path)
                except FileNotFoundError:
                    pass
        if not contents:
            raise OrchestratorError("nothing to checkpoint (no state, progress or pool file)")
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime())
        cp_id, n = f"cp-{stamp}", 1
        while os.path.exists(os.path.join(self.dir, cp_id)):
            n += 1
            cp_id = f"cp-{stamp}-{n}"
        staging = os.path.join(self.dir, f".{cp_id}.partial")
        store.makedirs(staging)
        for name, data in contents.items():
            store.atomic_write(os.path.join(staging, name), data, keep_last_good=False)
        manifest = {"id": cp_id, "created_at": store.utc_now(), "reason": reason,
                    "files": {name: _sha(data) for name, data in contents.items()},
                    "branches": self._branches(contents)}
        manifest["checksum"] = _manifest_sum(manifest)
        store.write_json(os.path.join(staging, MANIFEST), manifest)
        store.replace(staging, os.path.join(self.dir, cp_id))  # a checkpoint appears whole or not at all
        store.Journal(self.layout.journal).append("checkpoint-create", id=cp_id, reason=reason)
        return manifest

    def manifest(self, cp_id):
        path = os.path.join(self.path(cp_id), MANIFEST)
        data = store.load_json(path)
        if data is None:
            raise OrchestratorError(f"no checkpoint {cp_id}")
        return data

    def list(self):
        try:
            names = sorted(n for n in os.listdir(self.dir) if _ID.fullmatch(n))
        except FileNotFoundError:
            return []
        result = []
        for name in names:
            try:
                result.append(self.manifest(name))
            except OrchestratorError as exc:
                result.append({"id": name, "created_at": "?", "reason": f"unreadable: {exc.message}", "files": {}})
        return result

    def latest(self):
        items = self.list()
        if not items:
            raise OrchestratorError("NO_CHECKPOINTS")
        return items[-1]["id"]

    def verify(self, cp_id):
        """A list of problems (empty when the checkpoint is intact and its branches exist)."""
        manifest = self.manifest(cp_id)
        problems = []
        if manifest.get("checksum") != _manifest_sum(manifest):
            problems.append("manifest checksum mismatch")
        for name, digest in (manifest.get("files") or {}).items():
            if name not in FILES:
                problems.append(f"unexpected file {name}")
                continue
            try:
                if _sha(store.read_bytes(os.path.join(self.path(cp_id), name))) != digest:
                    problems.append(f"{name} does not match its checksum")
            except FileNotFoundError:
                problems.append(f"{name} is missing")
        branches = manifest.get("branches") or {}
        if branches:
            try:
                repo = git.toplevel(self.layout.root)
            except OrchestratorError:
                repo = None
            for branch in sorted(branches):
                if repo is None or not git.branch_exists(repo, branch):
                    problems.append(f"branch {branch} no longer exists")
        return problems

    def restore(self, cp_id):
        problems = [p for p in self.verify(cp_id) if not p.startswith("branch ")]
        if problems:
            raise OrchestratorError(f"checkpoint {cp_id} failed verification: {'; '.join(problems)}")
        manifest = self.manifest(cp_id)
        for name in manifest["files"]:
            data = store.read_bytes(os.path.join(self.path(cp_id), name))
            target = _sources(self.layout)[name]
            with store.file_lock(target):
                if name == PROGRESS:  # the restored file is the whole truth: no later change rolls it forward
                    from engine import deltalog

                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(target + deltalog.SUFFIX)  # (first: a kill after it leaves a file standing alone)
                store.atomic_write(target, data)
        store.Journal(self.layout.journal).append("checkpoint-restore", id=cp_id, files=sorted(manifest["files"]))
        return manifest

