"""The run as the dashboard shows it: one JSON-ready snapshot built from the project's files.

The run's writers replace files by atomic rename and append to the journal, but a reader can
still meet a torn journal line, a file that is briefly missing, or a YAML file somebody is
editing by hand. Every source therefore keeps its last good parse and the snapshot is built
from those, with a warning saying which file was unreadable; nothing here ever writes.

Fields are read as MODEL.md describes them and every one may be missing: today's progress
file has no `attempts` list, so attempts then come from the journal's agent-start/agent-exit
records, and failing that from `started_at` + `elapsed`.
"""

import codecs
import json
import re
import threading
import time
from collections import deque
from datetime import datetime, timezone

from engine import store
from engine.dashboard.files import ProjectFiles, valid_task_id
from engine.errors import OrchestratorError
from engine.progress import shape_problem


PIPELINE = ("DECOMPOSE", "PARALLELIZE", "EXECUTE", "QA", "E2E", "INTEGRATE", "CHECKPOINT", "COMPLETE")
TERMINAL = ("merged", "failed", "blocked", "blocked_permission")
IN_FLIGHT = ("running", "executed", "verifying", "approved", "merging", "rejected", "conflicted")
NEEDS_PERSON = ("blocked_permission", "blocked", "failed")

LOG_TAIL = 64 * 1024
LOG_CHUNK = 256 * 1024
QA_TAIL = 32 * 1024
DIFF_LIMIT = 512 * 1024  # bytes of git's diff read per request (git is stopped there)
JOURNAL_RECENT = 200
JOURNAL_CHUNK = 8 * 1024 * 1024
# A run of more than BIG_RUN tasks is shown in part: every count and aggregate, but task rows for
# one page (PAGE_LIMIT by default, MAX_LIMIT at most), groups merged into at most about
# AGGREGATES aggregate nodes, the latest MAX_BARS attempts, the first MAX_ATTENTION to look at.
BIG_RUN = 200
PAGE_LIMIT = 100
MAX_LIMIT = 500
AGGREGATES = 48
MAX_BARS = 300
MAX_ATTENTION = 50
SLOW_PARSE = 0.5  # seconds: a progress file this slow to parse is re-read at most every
SLOW_PARSE_PAUSE = 3  # this many times as long

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_SHA = re.compile(r"[0-9a-f]{7,64}")
_BRANCH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,200}")


def clean_text(text):
    """Terminal escapes and control characters out (the page shows text, not a terminal)."""
    text = _ANSI.sub("", text.replace("\r\n", "\n"))
    return _CONTROL.sub("", text.replace("\r", "\n"))


def epoch(value):
    """Seconds since the epoch from an ISO-8601 string (`...Z`, fractions, offsets) or a number."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        value = number(value)
        return value if value is not None and 0 < value < 1e11 else None
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip().replace(" ", "T", 1)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        try:
            return epoch(float(text))
        except (ValueError, OverflowError):
            return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    try:
        return moment.timestamp()
    except (OverflowError, ValueError):
        return None


def number(value):
    """A finite float, or None for anything else (booleans and strings included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None


def text(value, limit=2000):
    """Any scalar as a bounded string (None stays None)."""
    if value is None:
        return None
    value = value if isinstance(value, str) else json.dumps(value, default=str) if isinstance(
        value, (list, dict)) else str(value)
    return value if len(value) <= limit else value[:limit] + "…"


def plain(value, depth=0):
    """Any parsed YAML value as JSON-safe data (dates and odd types as strings, depth bounded)."""
    if depth > 8:
        return text(value)
    if isinstance(value, dict):
        return {str(k): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, depth + 1) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return number(value)
    return str(value)


# ---------------------------------------------------------------------------- sources
class YamlSource:
    """One YAML mapping of the run, re-parsed when its (inode, size, mtime) changes; a parse
    failure, or a mapping CHECK finds of the wrong shape (it returns what is wrong, or None),
    keeps serving the last good mapping (or `<file>.last-good` on a cold start)."""

    def __init__(self, files, path, label, check=None):
        self.files, self.path, self.name = files, path, label
        self.check = check
        self.key = None
        self.data = {}
        self.error = None

    def load(self):
        raw, key = self.files.read(self.path)
        if raw is None:
            if self.key is not None:  # gone for a moment (or for good): keep the last state
                self.error = f"{self.name} is missing: showing the last state read"
            return self.data
        if key == self.key:
            return self.data
        parsed, problem = self._parse(raw)
        if parsed is not None:
            self.data, self.key, self.error = parsed, key, None
            return self.data
        if not self.data:  # a cold start on a bad file: the writer's last good copy
            backup, _ = self.files.read(self.path + store.LAST_GOOD_SUFFIX)
            self.data = (self._parse(backup)[0] if backup is not None else None) or {}
        self.error = (f"{self.name}: {problem}: showing the last good copy" if problem else
                      f"{self.name} cannot be read right now: showing the last good copy")
        return self.data

    def _parse(self, raw):
        """(mapping, None), or (None, what is wrong with its shape or None when it does not parse)."""
        try:
            data = store.parse_yaml(raw.decode("utf-8"), self.name)
        except (UnicodeDecodeError, OrchestratorError):
            return None, None
        if data is None:
            return {}, None
        if self.check:
            problem = self.check(data)
        else:
            problem = None if isinstance(data, dict) else "not a mapping"
        return (None, problem) if problem else (data, None)


class ProgressSource(YamlSource):
    """The progress snapshot rolled forward with its change log (engine.deltalog), as every
    command reads it: during a run the YAML file alone lags behind the task events."""

    def __init__(self, *args, **kwargs):
        from engine import deltalog

        super().__init__(*args, **kwargs)
        self.log = deltalog.DeltaLog(self.path)
        self._rolled = (object(), None, None, {})  # (a key no read has)

    def load(self):
        from engine import deltalog

        snapshot = super().load()
        key = (self.key, self.log.version(), id(snapshot))  # (a cold start's fallback has no file key)
        if self._rolled[:3] == key:
            return self._rolled[3]
        data = deltalog.roll_forward(snapshot, self.log)
        problem = self.check(data) if self.check and data is not snapshot else None
        if problem:
            self.error, data = f"{self.log.path}: {problem}: showing the last snapshot", snapshot
        self._rolled = (*key, data)
        return data


class JournalSource:
    """The journal read incrementally: only complete lines whose checksum holds; a torn tail is
    left for the next read. A replaced or truncated file is read again from the start."""

    def __init__(self, files, path):
        self.files, self.path = files, path
        self.reset()

    def reset(self):
        self.inode = None
        self.offset = 0
        self.states = []            # [(ts, state)] state-enter records
        self.attempts = {}          # task -> [attempt dicts] from agent-start / agent-exit
        self.transitions = {}       # task -> [{ts, src, dst, trigger}]
        self.recent = deque(maxlen=JOURNAL_RECENT)
        self.last_ts = None

    def load(self):
        st = self.files.stat(self.path)
        if st is None:
            if self.inode is not None:
                self.reset()
            return self
        inode, size, _ = st
        if inode != self.inode or size < self.offset:
            self.reset()
            self.inode = inode
        if size == self.offset:
            return self
        # at most JOURNAL_CHUNK per call: a long journal is caught up over a few polls, never all at once
        raw, _ = self.files.read(self.path, offset=self.offset, limit=min(size - self.offset, JOURNAL_CHUNK))
        if raw is None:
            return self
        end = raw.rfind(b"\n")
        if end < 0:
            if len(raw) >= JOURNAL_CHUNK:  # one line longer than a chunk: no record of ours, skip it
                self.offset += len(raw)
            return self  # else only a torn (or still being written) line
        for line in raw[:end].split(b"\n"):
            if line.strip():
                record = store.decode_journal_line(line.decode("utf-8", "replace"))
                if record is not None:
                    self._take(record)
        self.offset += end + 1
        return self

    def _take(self, r):
        ts = epoch(r.get("ts"))
        self.last_ts = ts or self.last_ts
        event = r.get("event")
        task = r.get("task")
        task = task if valid_task_id(task) else None
        if event == "state-enter" and isinstance(r.get("state"), str):
            self.states.append((ts, r["state"]))
        elif event == "agent-start" and task:
            self.attempts.setdefault(task, []).append({
                "n": r.get("attempt"), "kind": "agent", "slot": r.get("slot"), "started_at": ts,
                "ended_at": None, "outcome": None, "exit_code": None, "source": "journal"})
        elif event in ("agent-exit", "agent-orphan-stopped") and task and self.attempts.get(task):
            last = self.attempts[task][-1]
            if last["ended_at"] is None:
                last["ended_at"] = ts
                last["exit_code"] = r.get("code")
                last["outcome"] = ("timed out" if r.get("timed_out") else "stopped" if event != "agent-exit"
                                   else "exit 0" if r.get("code") == 0 else f"exit {r.get('code')}")
        elif (r.get("kind") == "task" or event == "task") and task:
            self.transitions.setdefault(task, []).append(
                {"ts": ts, "src": text(r.get("src"), 40), "dst": text(r.get("dst"), 40),
                 "trigger": text(r.get("trigger"), 200)})
            del self.transitions[task][:-100]
        summary = {k: text(v, 200) for k, v in r.items() if k not in ("sum", "pid", "ts", "seq")}
        self.recent.append({"seq": r.get("seq"), "ts": ts, **summary})


# ---------------------------------------------------------------------------- the model
class RunModel:
    """Everything the dashboard serves, read from one project root."""

    def __init__(self, root, git_repo=None):
        from engine.paths import Layout

        self.layout = layout = Layout(root)
        self.files = ProjectFiles(layout.root)
        self.root = self.files.root
        self.git_repo = git_repo or self.root
        self.progress = ProgressSource(self.files, layout.progress, layout.rel(layout.progress), check=shape_problem)
        self.state = YamlSource(self.files, layout.state_file, layout.rel(layout.state_file))
        self.context = YamlSource(self.files, layout.context, layout.rel(layout.context))
        self.journal = JournalSource(self.files, layout.journal)
        self.lock = threading.Lock()  # the sources are shared by the server's threads
        self.progress_due, self.progress_read = 0.0, {}  # see _progress

    def _progress(self):
        """The progress mapping (under self.lock). A file that takes long to parse (libyaml reads
        a 10,000-task one, 5.5 MB, in 3-5 s) is looked at again only after SLOW_PARSE_PAUSE
        times that long, the last read served meanwhile: a live big run rewrites it often, and
        the dashboard must not spend a core re-reading it."""
        if time.monotonic() < self.progress_due:
            return self.progress_read
        started = time.monotonic()
        self.progress_read = self.progress.load()
        took = time.monotonic() - started
        if took > SLOW_PARSE:
            self.progress_due = time.monotonic() + SLOW_PARSE_PAUSE * took
        return self.progress_read

    # ------------------------------------------------------------------ snapshot
    def snapshot(self, now=None, view=None):
        """The snapshot (VIEW: which page of a big run's tasks, see `paging`)."""
        with self.lock:
            progress = self._progress()
            machine = self.state.load()
            context = self.context.load()
            journal = self.journal.load()
            return build_snapshot(progress, machine, context, journal, self._pool_size(),
                                  [s.error for s in (self.progress, self.state) if s.error],
                                  now or time.time(), self.root, view)

    def _pool_size(self):
        raw, _ = self.files.read(self.layout.pool_state, limit=1 << 20)
        try:
            size = json.loads(raw.decode("utf-8")).get("pool_size") if raw else None
        except (ValueError, AttributeError, UnicodeDecodeError):
            return None
        return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None

    def task_ids(self):
        with self.lock:
            tasks = self._progress().get("tasks")
        return [t for t in tasks if valid_task_id(t)] if isinstance(tasks, dict) else []

    def known_task(self, task_id):
        """The task id as the progress file spells it, or None: URLs never name files directly."""
        if not valid_task_id(task_id):
            return None
        for t in self.task_ids():
            if t == task_id:
                return t
        return None

    def entry(self, task_id):
        with self.lock:
            tasks = self._progress().get("tasks") or {}
            entry = tasks.get(task_id) if isinstance(tasks, dict) else None
        return entry if isinstance(entry, dict) else {}

    # ------------------------------------------------------------------ per task
    def task_detail(self, task_id, now=None):
        """Fields, attempts, status history and QA output of one known task."""
        entry = self.entry(task_id)
        with self.lock:
            journal = self.journal.load()
            journal_attempts = list(journal.attempts.get(task_id, ()))
            history = list(journal.transitions.get(task_id, ()))
        names = self.files.listdir(self.layout.logs)
        exits = {}
        qa_numbers = []
        prefix = re.escape(task_id)
        for name in names:
            m = re.fullmatch(prefix + r"\.attempt-(\d{1,6})\.exit", name)
            if m:
                raw, _ = self.files.read(self.layout.attempt_exit(task_id, int(m.group(1))), limit=64)
                try:
                    exits[int(m.group(1))] = int((raw or b"").strip())
                except ValueError:
                    pass
            m = re.fullmatch(prefix + r"\.qa-(\d{1,6})\.log", name)
            if m:
                qa_numbers.append(int(m.group(1)))
        qa = []
        for n in sorted(qa_numbers, reverse=True):
            raw, key = self.files.read(self.layout.qa_log(task_id, n), offset=-QA_TAIL)
            if raw is not None:
                qa.append({"n": n, "text": clean_text(raw.decode("utf-8", "replace")),
                           "truncated": key[1] > len(raw)})
        if not qa and entry.get("qa_feedback"):
            qa.append({"n": entry.get("iterations"), "text": clean_text(text(entry["qa_feedback"], 20000)),
                       "truncated": False, "source": "qa_feedback"})
        attempts = normalized_attempts(entry, journal_attempts, now or time.time())
        for a in attempts:
            if a.get("exit_code") is None and isinstance(a.get("n"), int) and a["n"] in exits:
                a["exit_code"] = exits[a["n"]]
        return {"id": task_id, "fields": plain(entry), "attempts": attempts, "history": history, "qa": qa,
                "test_result": text(entry.get("test_result"), 200)}

    def log_chunk(self, task_id, offset=None, inode=None):
        """New bytes of TASK.log from `offset` (the last 64 KiB when None, or when the file was
        replaced or truncated since), cut at a UTF-8 character boundary."""
        st = self.files.stat(self.layout.task_log(task_id))
        if st is None:
            return {"exists": False, "text": "", "offset": 0, "next": 0, "size": 0, "inode": None, "reset": True}
        ino, size, _ = st
        reset = offset is None or offset > size or (inode is not None and inode != ino)
        if reset:
            offset = max(0, size - LOG_TAIL)
        raw, key = self.files.read(self.layout.task_log(task_id), offset=offset, limit=LOG_CHUNK)
        if raw is None:
            return {"exists": False, "text": "", "offset": 0, "next": 0, "size": 0, "inode": None, "reset": True}
        if reset and offset > 0:  # start the tail at a line boundary
            cut = raw.find(b"\n")
            if 0 <= cut < len(raw) - 1:
                raw, offset = raw[cut + 1:], offset + cut + 1
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        chunk = decoder.decode(raw, final=False)
        held = len(decoder.getstate()[0])
        return {"exists": True, "text": clean_text(chunk), "offset": offset, "next": offset + len(raw) - held,
                "size": key[1], "inode": key[0], "reset": reset}

    def diff(self, task_id):
        """The change of the task's branch against the base it started from (see task_change)."""
        from engine import git
        from engine.errors import GitError

        entry = self.entry(task_id)
        with self.lock:
            base = self._progress().get("base")
        try:
            return task_change(git, self.git_repo, task_id, entry, base)
        except GitError as exc:
            return {"text": "", "source": None, "message": clean_text(str(exc)), "truncated": False}


def task_change(git, repo, task_id, entry, base):
    """Which two commits show the task's work, and their diff.

    - The branch exists: from `base_commit` (the attempt's start) when it is an ancestor of the
      tip, else from the merge base with the base branch. When the branch is already merged
      (the merge base is its tip), from the merge base of the tip and the merge's first parent.
    - The branch is gone (deleted after the merge): the merge commit (`merged_commit`, or the
      base's first-parent merge whose subject ends in `Merge <branch>`), its second parent
      against the merge base with its first.
    """
    branch = entry.get("branch") if isinstance(entry.get("branch"), str) else f"auto/{task_id}"
    if not _BRANCH.fullmatch(branch) or ".." in branch or branch.endswith((".lock", "/", ".")):
        return {"text": "", "source": None, "message": "the task's branch name is not valid", "truncated": False}
    base = base if isinstance(base, str) and _BRANCH.fullmatch(base) and ".." not in base else None
    base_ref = f"refs/heads/{base}" if base else None
    base_commit = _sha(entry.get("base_commit"))
    tip = git.branch_commit(repo, branch)
    old = new = None
    source = None
    if tip:
        new, source = tip, f"branch {branch}"
        if base_commit and git.resolve_commit(repo, base_commit) and git.is_ancestor(repo, base_commit, tip):
            old = base_commit
        elif base_ref:
            old = git.merge_base(repo, base_ref, tip)
            if old == tip:  # merged, branch kept: find the merge to see what it brought
                merge = _merge_of(git, repo, base_ref, branch, tip, entry)
                if merge:
                    old = git.merge_base(repo, merge[1][0], tip)
    else:
        merge = _merge_of(git, repo, base_ref, branch, None, entry)
        if merge:
            commit, parents = merge
            if len(parents) >= 2:
                old, new = git.merge_base(repo, parents[0], parents[1]), parents[1]
            elif parents:
                old, new = base_commit or parents[0], commit
            source = f"merge {commit[:12]} (branch {branch} deleted)"
    if not (old and new):
        status = entry.get("status")
        message = ("no commits yet" if status in (None, "pending", "running") else
                   f"branch {branch} not found (deleted, or never created)")
        return {"text": "", "source": source, "message": message, "truncated": False}
    body, truncated = git.diff_text(repo, old, new, DIFF_LIMIT)  # read no further than shown
    return {"text": clean_text(body), "source": source, "old": old, "new": new,
            "message": None if body else "the branch changes nothing", "truncated": truncated}


def _sha(value):
    return value if isinstance(value, str) and _SHA.fullmatch(value) else None


def _merge_of(git, repo, base_ref, branch, tip, entry):
    """(commit, parents) of the merge that brought the task into the base, or None.

    Searched on the first-parent line from `merged_commit` (the base tip right after the task
    was merged: several merges can share it) or else from the base: the merge whose second
    parent is the branch tip, or, the branch being deleted, whose subject ends `Merge BRANCH`."""
    merged = _sha(entry.get("merged_commit"))
    for start in (merged, base_ref):
        if not start:
            continue
        for commit, parents, subject in git.first_parent_merges(repo, start):
            if (tip and tip in parents[1:]) or (tip is None and subject.endswith(f"Merge {branch}")):
                return commit, parents
    if merged and tip is None:  # merged some other way (squash, fast-forward): that commit's change
        parents = git.commit_parents(repo, merged)
        if parents:
            return merged, parents[:1]
    return None


# ---------------------------------------------------------------------------- snapshot
def normalized_attempts(entry, journal_attempts, now):
    """The task's attempts as [{n, kind, slot, node, start, end, outcome, ...}], oldest first."""
    out = []
    listed = entry.get("attempts")
    if isinstance(listed, list) and listed:
        for i, a in enumerate(listed, 1):
            if not isinstance(a, dict):
                continue
            out.append({
                "n": a.get("n") if isinstance(a.get("n"), int) else i,
                "kind": text(a.get("kind"), 20) or "agent", "slot": text(a.get("slot"), 60),
                "node": text(a.get("node"), 100), "start": epoch(a.get("started_at")),
                "end": epoch(a.get("ended_at")), "outcome": text(a.get("outcome"), 200),
                "exit_code": a.get("exit_code") if isinstance(a.get("exit_code"), int) else None,
                "cost_usd": number(a.get("cost_usd")), "tokens_in": number(a.get("tokens_in")),
                "tokens_out": number(a.get("tokens_out")), "turns": number(a.get("turns")),
                "result_subtype": text(a.get("result_subtype"), 100),
                "session_id": text(a.get("session_id"), 100), "submission_id": text(a.get("submission_id"), 100),
                "source": "progress"})
    elif journal_attempts:
        for a in journal_attempts:
            out.append({"n": a["n"] if isinstance(a["n"], int) else None, "kind": "agent",
                        "slot": text(a["slot"], 60), "node": None, "start": a["started_at"],
                        "end": a["ended_at"], "outcome": a["outcome"], "exit_code": a["exit_code"],
                        "source": "journal"})
    else:
        start = epoch(entry.get("started_at"))
        if start:
            elapsed = number(entry.get("elapsed"))
            running = entry.get("status") == "running"
            end = None if running else (start + elapsed if elapsed is not None else epoch(entry.get("completed_at")))
            out.append({"n": entry.get("iterations") if isinstance(entry.get("iterations"), int) else 1,
                        "kind": "agent", "slot": text(entry.get("slot"), 60), "node": None, "start": start,
                        "end": end, "outcome": None, "exit_code": None, "source": "started_at"})
    status = entry.get("status")
    for a in out:  # an attempt without an end is still running only while the task runs
        if a["end"] is None and status not in ("running", None) and a is not out[-1]:
            a["end"] = a["start"]
        a["duration"] = max(0.0, ((a["end"] if a["end"] is not None else now) - a["start"])) if a["start"] else None
        a["running"] = a["end"] is None and a["start"] is not None
    return out


PHASES = {"verifying": ("qa", None), "merging": ("merge", "merge queue")}


def phases(transitions, tries):
    """QA and merge spans of a task from its journaled status changes: QA on the slot of the
    attempt it checks, merges on one `merge queue` lane (they run one at a time on the base)."""
    spans, open_span, starts = [], None, 0
    for change in transitions:
        if open_span and change["src"] == open_span["from"] and change["ts"]:
            open_span["end"] = change["ts"]
            spans.append(open_span)
            open_span = None
        if change["dst"] == "running":
            starts += 1  # the attempt number: timestamps (1 s) cannot order attempts and checks
        if change["dst"] in PHASES and change["ts"]:
            kind, lane = PHASES[change["dst"]]
            checked = ([a for a in tries if a["n"] == starts and a["kind"] == "agent"]
                       or [a for a in tries if a["start"] is not None and a["start"] <= change["ts"]])
            slot = lane or ("/".join(x for x in (checked[-1].get("node"), checked[-1].get("slot")) if x)
                            if checked else None) or "(no slot)"
            open_span = {"from": change["dst"], "kind": kind, "slot": slot, "start": change["ts"], "end": None,
                         "n": checked[-1]["n"] if checked else None}
    if open_span:
        spans.append(open_span)
    for span in spans:
        del span["from"]
    return spans


def dependency_order(ids, deps):
    """(order, acyclic deps): every task after its dependencies, ties in plan order. A cycle
    (hostile or hand-edited data) is broken at its first task in plan order, whose edges into
    the cycle are dropped. O((tasks + edges) log tasks): a heap of the ready tasks."""
    import heapq

    index = {t: i for i, t in enumerate(ids)}
    waiting = {t: len(set(deps[t])) for t in ids}
    users = {t: [] for t in ids}
    for t in ids:
        for d in set(deps[t]):
            users[d].append(t)
    ready = [index[t] for t in ids if not waiting[t]]
    heapq.heapify(ready)
    order, placed = [], set()
    cursor = 0  # every task before it in plan order is placed
    while len(order) < len(ids):
        if not ready:  # only cycles left: release the first remaining task
            while ids[cursor] in placed:
                cursor += 1
            ready = [cursor]
        t = ids[heapq.heappop(ready)]
        if t in placed:
            continue
        order.append(t)
        placed.add(t)
        for u in users[t]:
            waiting[u] -= 1
            if not waiting[u] and u not in placed:
                heapq.heappush(ready, index[u])
    position = {t: i for i, t in enumerate(order)}
    return order, {t: [d for d in deps[t] if position[d] < position[t]] for t in ids}


def layers_of(ids, deps, ordered=None):
    """Dependency layer of each task (0 = no dependencies); ORDERED: dependency_order's answer."""
    order, acyclic = ordered or dependency_order(ids, deps)
    layer = {}
    for t in order:
        layer[t] = 1 + max((layer[d] for d in acyclic[t]), default=-1)
    return layer


def critical_path(ids, deps, weight, ordered=None):
    """(length, [task ids]) of the heaviest dependency chain; weight(t) in seconds."""
    if not ids:
        return 0.0, []
    order, acyclic = ordered or dependency_order(ids, deps)
    best, via = {}, {}
    for t in order:
        prev = max(acyclic[t], key=best.get, default=None)
        best[t] = weight(t) + (best[prev] if prev is not None else 0.0)
        via[t] = prev
    end = max(ids, key=best.get)
    path, t = [], end
    while t is not None:
        path.append(t)
        t = via[t]
    return best[end], path[::-1]


def aggregate(ids, entries, layer, status_of, running, on_path):
    """(aggregates, each task's group key, unit): the run's groups (or, when a task has
    no group, its dependency layers, numbered from 1) merged in order into at most about
    AGGREGATES buckets of consecutive groups, each with its tasks counted by status."""
    unit = "group" if ids and all(isinstance(entries[t].get("group"), int)
                                  and not isinstance(entries[t].get("group"), bool) for t in ids) else "layer"
    key = {t: entries[t]["group"] for t in ids} if unit == "group" else {t: layer[t] + 1 for t in ids}
    sizes = {}
    for k in key.values():
        sizes[k] = sizes.get(k, 0) + 1
    keys = sorted(sizes)
    target = -(-len(ids) // AGGREGATES) if len(keys) > AGGREGATES else 1
    buckets, bucket_of = [], {}
    for k in keys:
        if not buckets or buckets[-1]["tasks"] >= target:
            buckets.append({"lo": k, "hi": k, "tasks": 0, "by_status": {}, "running": 0, "under_way": 0,
                            "needs_you": 0, "critical": False})
        bucket = buckets[-1]
        bucket["hi"] = k
        bucket["tasks"] += sizes[k]
        bucket_of[k] = len(buckets) - 1
    for t in ids:
        bucket = buckets[bucket_of[key[t]]]
        status = status_of[t]
        bucket["by_status"][status] = bucket["by_status"].get(status, 0) + 1
        bucket["running"] += t in running or status in ("verifying", "merging")
        bucket["under_way"] += t in running or status in IN_FLIGHT
        bucket["needs_you"] += status in NEEDS_PERSON
        bucket["critical"] = bucket["critical"] or t in on_path
    return buckets, key, unit


def paging(ids, index, status_of, running, buckets, group_key, view):
    """The page of a big run's tasks the VIEW asks for: {tasks, selected, scale}.

    view: {"offset", "limit", "status": [statuses] or None, "group": (lo, hi), "all" or None
    (None: the aggregate where the run is: the first with a task under way, else with a task
    pending, else the last; with a status asked for, all), "task": the selected task, sent
    even when not on the page}.
    The tasks matching the filters in the order a person looks at them: under way, needing a
    person, pending, merged, the rest; then by group and plan order."""
    view = view or {}
    group = view.get("group")
    statuses = set(view.get("status") or ()) or None
    auto = group is None and statuses is None  # (a status asked for: over the whole run)
    if auto and buckets:
        pick = next((i for i, b in enumerate(buckets) if b["under_way"]), None)
        if pick is None:
            pick = next((i for i, b in enumerate(buckets) if b["by_status"].get("pending")), len(buckets) - 1)
        group = (buckets[pick]["lo"], buckets[pick]["hi"])
    if group == "all" or group is None or not buckets:
        group = None
    lo, hi = group if group is not None else (None, None)

    def rank(t):
        status = status_of[t]
        return (0 if t in running or status in IN_FLIGHT else 1 if status in NEEDS_PERSON else
                2 if status == "pending" else 3 if status == "merged" else 4)

    matched = [t for t in ids if (group is None or lo <= group_key[t] <= hi)
               and (statuses is None or status_of[t] in statuses)]
    matched.sort(key=lambda t: (rank(t), group_key[t], index[t]))
    limit = view.get("limit") or PAGE_LIMIT
    limit = max(1, min(MAX_LIMIT, limit))
    offset = max(0, view.get("offset") or 0)
    if offset >= len(matched):
        offset = max(0, (len(matched) - 1) // limit * limit)
    page = matched[offset:offset + limit]
    selected = view.get("task") if view.get("task") in index else None
    return {"tasks": page, "selected": selected if selected not in page else None,
            "scale": {"paged": True, "offset": offset, "limit": limit, "matched": len(matched),
                      "status": sorted(statuses) if statuses else None,
                      "group": list(group) if group is not None else None, "auto": auto}}


def _advice(t, entry, deps=(), entries=None):
    """(reason, what to do, [failed dependencies]) for a task that needs a person."""
    reason, todo = _advice_for(t, entry)
    stuck = [d for d in deps if (entries or {}).get(d, {}).get("status") in NEEDS_PERSON]
    if stuck and entry.get("status") == "failed" and not entry.get("attempts") and not entry.get("iterations"):
        todo = (f"Nothing to fix in {t} itself: it never ran because {', '.join(stuck)} did not finish. Deal with "
                f"that first, then `orchestrator retry {t}` too and `orchestrator resume`.")
    return reason, todo, stuck


def _advice_for(t, entry):
    status = entry.get("status")
    failure = text(entry.get("failure"), 500)
    feedback = text(entry.get("qa_feedback"), 500)
    branch = text(entry.get("branch"), 200) or f"auto/{t}"
    again = f"then `orchestrator retry {t}` and `orchestrator resume`."
    if status == "blocked_permission":
        tools = entry.get("permission_denials")
        tools = ", ".join(text(x, 200) for x in tools) if isinstance(tools, list) and tools else None
        hint = text(entry.get("hint"), 400)
        return ((f"the agent was denied: {tools}" if tools else failure or "the agent ended with permission denials"),
                (hint[0].upper() + hint[1:] + " (and `orchestrator resume`)." if hint else
                 "Allow the tool(s) for this task's agent (the `allowed_tools` of its claude preset, or the "
                 "project's Claude permissions), " + again))
    if status == "blocked":
        return (failure or feedback or "the QA check could not run",
                "The check itself cannot run, not the code: fix the task's verify command or its environment "
                "(see the QA output), " + again)
    if "conflict" in f"{failure or ''} {feedback or ''}".lower() or "merge" in (failure or "").lower():
        files = entry.get("changed_files")
        files = ", ".join(text(x, 100) for x in files[:8]) if isinstance(files, list) and files else None
        return ((failure or "merge conflict") + (f" (changes {files})" if files else ""),
                f"Rebase {branch} onto the base and resolve the conflict by hand (or change the plan so the "
                "tasks touch different files), " + again)
    tries = f" after {entry.get('iterations')} attempt(s)" if isinstance(entry.get("iterations"), int) else ""
    return ((failure or (f"QA rejected it{tries}: {feedback}" if feedback else f"failed{tries}")),
            f"Read its log and QA output below; fix the task (description, verify command) or the code on {branch}, "
            + again)


def build_snapshot(progress, machine, context, journal, pool_size, warnings, now, root, view=None):
    """The JSON the page polls: run, machine, tasks with layout, critical path, Gantt, totals.

    A run of more than BIG_RUN tasks is served in part (the VIEW: offset, limit, status, group,
    task): counts, aggregates and totals over every task, but task rows, layers and the critical
    path only for one page of tasks, the timeline's latest MAX_BARS attempts and the first
    MAX_ATTENTION tasks that need a person; `scale` says what was left out. Linear in the tasks
    (and their edges) but for a sort or two."""
    import os

    from engine.procs import alive

    raw_tasks = progress.get("tasks") if isinstance(progress.get("tasks"), dict) else {}
    entries = {t: e for t, e in raw_tasks.items() if valid_task_id(t) and isinstance(e, dict)}
    skipped = len(raw_tasks) - len(entries)
    ids = list(entries)
    deps = {t: [d for d in (entries[t].get("depends_on") or []) if isinstance(d, str) and d in entries]
            if isinstance(entries[t].get("depends_on"), list) else [] for t in ids}

    attempts = {t: normalized_attempts(entries[t], journal.attempts.get(t, ()), now) for t in ids}
    work = {}  # agent seconds per task: `elapsed` (finished attempts, to 1/100 s) plus a running
    for t in ids:  # attempt, else the attempts' spans (their timestamps have one-second resolution)
        tries = attempts[t]
        spans = [a["duration"] for a in tries if a["duration"] is not None]
        elapsed = number(entries[t].get("elapsed"))
        if elapsed is not None:
            work[t] = elapsed + sum(a["duration"] or 0.0 for a in tries if a["running"])
        elif spans:
            work[t] = sum(spans)
    known = [work[t] for t in ids if t in work and entries[t].get("status") in TERMINAL]
    estimate = (sum(known) / len(known)) if known else (sum(work.values()) / len(work) if work else 0.0)

    def weight(t):
        w = work.get(t)
        status = entries[t].get("status")
        if w is None or (status not in TERMINAL and w < estimate):
            return max(w or 0.0, estimate)  # what is left is at least a typical task
        return w

    ordered = dependency_order(ids, deps)
    layer = layers_of(ids, deps, ordered)
    index = {t: i for i, t in enumerate(ids)}
    layers = [[] for _ in range(max(layer.values(), default=-1) + 1)]
    for t in ids:
        layers[layer[t]].append(t)
    position = {}  # order in a layer: by the mean position of the dependencies (fewer crossings)
    for members in layers:
        members.sort(key=lambda t: (sum(position.get(d, 0) for d in deps[t]) / len(deps[t]) if deps[t] else 0,
                                    index[t]))
        for i, t in enumerate(members):
            position[t] = i
    cp_length, cp = critical_path(ids, deps, weight, ordered)
    on_path = set(cp)

    # a big run: aggregates for all, task rows for one page of them (see `paging`)
    status_of = {t: text(entries[t].get("status"), 40) or "pending" for t in ids}
    running_now = {t for t in ids if attempts[t] and attempts[t][-1]["running"]}
    buckets, group_key, unit = aggregate(ids, entries, layer, status_of, running_now, on_path)
    page = paging(ids, index, status_of, running_now, buckets, group_key, view) if len(ids) > BIG_RUN else None
    shown = set(page["tasks"]) if page else None
    if page and page["selected"]:
        shown.add(page["selected"])

    # run level
    cost_tasks = 0.0
    tokens_in = tokens_out = 0.0
    running = 0
    tasks_out = []
    slots = []
    bars = []
    counts = {}
    attention = []
    for t in ids:
        e = entries[t]
        status = status_of[t]
        counts[status] = counts.get(status, 0) + 1
        tries = attempts[t]
        cost = number(e.get("cost_usd"))
        if cost is None:
            costs = [a.get("cost_usd") for a in tries if a.get("cost_usd") is not None]
            cost = sum(costs) if costs else None
        t_in, t_out = number(e.get("tokens_in")), number(e.get("tokens_out"))
        if t_in is None:
            vals = [a.get("tokens_in") for a in tries if a.get("tokens_in") is not None]
            t_in = sum(vals) if vals else None
        if t_out is None:
            vals = [a.get("tokens_out") for a in tries if a.get("tokens_out") is not None]
            t_out = sum(vals) if vals else None
        cost_tasks += cost or 0.0
        tokens_in += t_in or 0.0
        tokens_out += t_out or 0.0
        last = tries[-1] if tries else None
        elapsed = (last["duration"] if last and last["running"] else number(e.get("elapsed")))
        if elapsed is None and last:
            elapsed = last["duration"]
        for a in tries:
            slot = "/".join(x for x in (a.get("node"), a.get("slot")) if x) or "(no slot)"
            if slot not in slots:
                slots.append(slot)
            if a["start"] is not None:
                bars.append({"task": t, "slot": slot, "n": a["n"], "kind": a["kind"], "start": a["start"],
                             "end": a["end"], "outcome": a["outcome"], "status": status,
                             "critical": t in on_path})
        for phase in phases(journal.transitions.get(t, ()), tries):
            if phase["slot"] not in slots:
                slots.append(phase["slot"])
            bars.append(dict(phase, task=t, status=status, critical=t in on_path, outcome=None))
        if status in ("verifying", "merging") or (last and last["running"]):
            running += 1
        if shown is not None and t not in shown:
            if status in NEEDS_PERSON:
                reason, todo, waits_on = _advice(t, e, deps[t], entries)
                attention.append({"task": t, "status": status, "reason": clean_text(reason), "todo": todo,
                                  "waits_on": waits_on})
            continue
        task = {"id": t, "name": text(e.get("name"), 500), "status": status, "group": e.get("group")
                if isinstance(e.get("group"), int) else None, "depends_on": deps[t], "layer": layer[t],
                # (the edges that only order tasks sharing a file: drawn dashed, they chain no failure)
                "file_order": [d for d in e.get("file_order") or [] if d in deps[t]]
                if isinstance(e.get("file_order"), list) else [],
                "order": position[t], "slot": text(e.get("slot") or (last or {}).get("slot"), 60),
                "node": text(e.get("node") or (last or {}).get("node"), 100),
                "attempt": e.get("iterations") if isinstance(e.get("iterations"), int) else len(tries) or None,
                "retry_count": e.get("retry_count") if isinstance(e.get("retry_count"), int) else None,
                "elapsed": elapsed, "work": work.get(t), "cost_usd": cost, "tokens_in": t_in, "tokens_out": t_out,
                "turns": number(e.get("turns")), "model": text(e.get("model"), 80),
                "branch": text(e.get("branch"), 200), "failure": text(e.get("failure"), 500),
                "qa_verified": e.get("qa_verified") if isinstance(e.get("qa_verified"), bool) else None,
                "critical": t in on_path, "running": bool(last and last["running"]),
                "started_at": epoch(e.get("started_at")), "completed_at": epoch(e.get("completed_at"))}
        tasks_out.append(task)
        if status in NEEDS_PERSON:
            reason, todo, waits_on = _advice(t, e, deps[t], entries)
            attention.append({"task": t, "status": status, "reason": clean_text(reason), "todo": todo,
                              "waits_on": waits_on})
    attention.sort(key=lambda a: bool(a["waits_on"]))  # causes first, the tasks stuck behind them after
    attention_total = len(attention)
    gantt_total = len(bars)
    selected = None
    if page:  # the rows in the page's order; the other lists bounded
        row = {task["id"]: task for task in tasks_out}
        selected = row.get(page["selected"])
        tasks_out = [row[t] for t in page["tasks"]]
        on_page = set(page["tasks"])
        layers = [members for members in ([t for t in members if t in on_page] for members in layers) if members]
        critical_edges = [[a, b] for a, b in zip(cp, cp[1:]) if a in row and b in row]
        del attention[MAX_ATTENTION:]
        if len(bars) > MAX_BARS:  # the latest attempts (and every running one): a window, not the whole run
            bars.sort(key=lambda b: b["start"] or 0)
            bars = [b for b in bars[:-MAX_BARS] if b["end"] is None] + bars[-MAX_BARS:]
            used = {b["slot"] for b in bars}
            slots = [s for s in slots if s in used]

    slots.sort(key=lambda s: (s in ("merge queue", "(no slot)"),  # slots first, wt-2 before wt-10
                              [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", s)]))

    # the run and its machine
    state = text(machine.get("current_state"), 60)
    status = text(progress.get("status"), 40)
    pid = progress.get("orchestrator_pid")
    pid_start = progress.get("orchestrator_pid_start")
    orchestrator_alive = (alive(pid, pid_start if isinstance(pid_start, str) else None)
                          if isinstance(pid, int) and not isinstance(pid, bool) else None)
    started = epoch(progress.get("started_at"))
    finished = epoch(progress.get("completed_at")) if status == "complete" else None
    if status == "running" and orchestrator_alive is not False:
        end = now
    else:
        end = finished or max([journal.last_ts or 0] + [b["end"] or 0 for b in bars]) or now
    makespan = max(0.0, end - started) if started else None
    agents = None
    parallel = context.get("parallelization") if isinstance(context.get("parallelization"), dict) else {}
    if isinstance(parallel.get("max_agents"), int) and not isinstance(parallel.get("max_agents"), bool):
        agents = parallel["max_agents"]
    agents = agents or pool_size or max(1, len([s for s in slots if s != "(no slot)"]))
    total_work = sum(weight(t) for t in ids)
    lower_bound = max(cp_length, total_work / agents) if ids else 0.0
    cost_run = number(progress.get("cost_usd"))
    notices = []
    if status == "running" and orchestrator_alive is False:
        notices.append({"level": "error", "text": "The run says it is running but its orchestrator process "
                        f"(pid {pid}) is gone: it crashed or was killed.",
                        "todo": "Run `orchestrator resume` in the project to continue exactly where it stopped."})
    elif status == "stopped":
        notices.append({"level": "info", "text": f"Stopped at the session boundary after group "
                        f"{progress.get('current_group')} of {progress.get('total_groups')}.",
                        "todo": "Run `orchestrator resume` to continue with the next group."})
    elif status == "aborted" or state == "FAILED":
        notices.append({"level": "error", "text": f"The run was {'aborted' if status == 'aborted' else 'stopped by a failure'}"
                        f" (state {state}).", "todo": "Fix what stopped it, then run `orchestrator resume`."})
    if skipped:
        warnings = list(warnings) + [f"{skipped} task(s) with invalid ids or entries are not shown"]
    states = [s for _, s in journal.states]
    return {
        "now": now,
        "project": os.path.basename(root),
        "has_run": bool(progress),
        "run": {"id": text(progress.get("run_id"), 100), "status": status, "base": text(progress.get("base"), 200),
                "plan": os.path.basename(progress["plan_file"]) if isinstance(progress.get("plan_file"), str) else None,
                "work_type": text(progress.get("work_type"), 40), "mode": text(progress.get("mode"), 40),
                "concurrency": progress.get("concurrency") if isinstance(progress.get("concurrency"), int) else None,
                "current_group": progress.get("current_group") if isinstance(progress.get("current_group"), int)
                else None,
                "total_groups": progress.get("total_groups") if isinstance(progress.get("total_groups"), int)
                else None,
                "started_at": started, "completed_at": finished, "orchestrator_alive": orchestrator_alive},
        "machine": {"state": state, "previous": text(machine.get("previous_state"), 60),
                    "completed_phases": [p for p in machine.get("completed_phases") or [] if isinstance(p, str)]
                    if isinstance(machine.get("completed_phases"), list) else [],
                    "pipeline": list(PIPELINE), "last_group": machine.get("last_parallel_group")
                    if isinstance(machine.get("last_parallel_group"), int) else None,
                    "last_group_status": text(machine.get("last_group_status"), 40),
                    "last_transition": epoch(machine.get("last_transition")), "visited": states[-30:]},
        "tasks": tasks_out,
        "layers": layers,
        "critical_path": [t for t in cp if t in row] if page else cp,
        "attention": attention,
        "notices": notices,
        "gantt": {"slots": slots, "bars": bars, "start": (min([b["start"] for b in bars] or [now]) if page and
                                                           gantt_total > len(bars) else
                                                           started or min([b["start"] for b in bars] or [now])),
                  "end": end, "total_bars": gantt_total},
        "aggregates": buckets,
        "scale": dict(page["scale"] if page else {"paged": False}, total=len(ids), threshold=BIG_RUN,
                      unit=unit, attention_total=attention_total, critical_path_tasks=len(cp)),
        "totals": {"tasks": len(ids), "by_status": counts,
                   "merged": counts.get("merged", 0),
                   "failed": sum(counts.get(s, 0) for s in NEEDS_PERSON),
                   "running": running,
                   "pending": counts.get("pending", 0),
                   "cost_usd": cost_run if cost_run is not None else (cost_tasks or None),
                   "tokens_in": tokens_in or None, "tokens_out": tokens_out or None,
                   "makespan": makespan, "lower_bound": lower_bound, "critical_path": cp_length,
                   "total_work": total_work, "agents": agents, "estimated_task": estimate},
        "events": list(journal.recent)[-40:],
        "warnings": warnings,
        **({"selected": selected, "critical_edges": critical_edges} if page else {}),
    }
