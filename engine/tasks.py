"""Each task's lifecycle as an explicit machine, and the one retry policy.

A task moves pending → running → executed → verifying → approved → merging → merged, with
rejected (QA said no), conflicted (its approved branch no longer merges into the moved
base), failed, blocked (QA_BLOCKED) and blocked_permission (a `claude` agent was denied a
tool) beside them. `EDGES` is the single source of truth; `TaskBook.fire` is the only way a
status changes: it refuses an illegal edge, writes the new status into the progress file and
journals a `task` record, under the progress file's lock, so the file and the journal agree
and concurrent workers never lose an update.

The retry policy — agent failures, QA rejections and merge conflicts counted together
against `retry_on_failure` — is `TaskBook.setback`, and nowhere else.
"""

import enum
import threading

from engine.errors import OrchestratorError


class TaskStatus(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    EXECUTED = "executed"
    VERIFYING = "verifying"
    APPROVED = "approved"
    MERGING = "merging"
    MERGED = "merged"
    REJECTED = "rejected"
    CONFLICTED = "conflicted"
    FAILED = "failed"
    BLOCKED = "blocked"
    BLOCKED_PERMISSION = "blocked_permission"

    def __str__(self):
        return self.value


S = TaskStatus
_VALUES = frozenset(s.value for s in S)
TERMINAL = frozenset((S.MERGED, S.FAILED, S.BLOCKED, S.BLOCKED_PERMISSION))
ACTIVE = frozenset(set(S) - TERMINAL)  # every status a task can still leave on its own

# (trigger, sources, destination): the machine. Read top to bottom it is the happy path,
# then the ways back and out.
EDGES = (
    ("start", (S.PENDING, S.REJECTED, S.CONFLICTED), S.RUNNING),      # an agent attempt begins
    ("agent_done", (S.RUNNING,), S.EXECUTED),                          # exit 0, work committed
    ("verify", (S.EXECUTED,), S.VERIFYING),                            # QA runs on the branch tip
    ("approve", (S.VERIFYING,), S.APPROVED),                           # TASK_APPROVED
    ("merge", (S.APPROVED,), S.MERGING),                               # the merge queue takes it
    ("merged", (S.MERGING, S.APPROVED), S.MERGED),                     # (approved: already in the base)
    ("agent_retry", (S.RUNNING,), S.PENDING),                          # agent failed, a retry is left
    ("reject", (S.VERIFYING,), S.REJECTED),                            # TASK_REJECTED, a retry is left
    ("conflict", (S.MERGING,), S.CONFLICTED),                          # base moved under it, a retry is left
    ("rebased", (S.CONFLICTED, S.REJECTED, S.PENDING), S.EXECUTED),    # brought onto the base without the agent
    ("interrupt", (S.RUNNING,), S.PENDING),                            # we stopped it ourselves: not counted
    ("qa_interrupt", (S.VERIFYING,), S.EXECUTED),                      # QA cut off: verify again
    ("merge_interrupt", (S.MERGING,), S.APPROVED),                     # merge cut off before the base moved
    ("qa_blocked", (S.VERIFYING,), S.BLOCKED),                         # QA_BLOCKED: the check cannot run
    ("deny", (S.RUNNING, S.EXECUTED, S.VERIFYING), S.BLOCKED_PERMISSION),  # agent denied a tool
    ("fail", tuple(sorted(ACTIVE)), S.FAILED),                         # exhausted, or a reason no retry fixes
    ("retry", (S.FAILED, S.BLOCKED, S.BLOCKED_PERMISSION), S.PENDING),  # a person asks for another round
)

# What a setback becomes while retries are left; when they are exhausted it is `fail`.
SETBACKS = {"agent": "agent_retry", "qa": "reject", "conflict": "conflict"}


class IllegalTaskTransition(OrchestratorError):
    """A task event its current status does not allow (a bug or a hand-edited file)."""


def _targets():
    table = {}
    for trigger, sources, dest in EDGES:
        for source in sources:
            table[(trigger, source)] = dest
    return table


TARGET = _targets()


def status_of(entry):
    """The TaskStatus of a progress entry; an unknown or missing value reads as pending."""
    try:
        return S((entry if isinstance(entry, dict) else {}).get("status") or "pending")
    except ValueError:
        return S.PENDING


_machine_lock = threading.Lock()
_machine = None


def machine():
    """The `transitions` machine over EDGES (built once per process, ~20 ms): `fire` runs
    every event through it, and `mermaid` draws it."""
    global _machine
    with _machine_lock:
        if _machine is None:
            from transitions import Machine

            m = Machine(model=None, states=[s.value for s in S], initial=S.PENDING.value,
                        auto_transitions=False, ignore_invalid_triggers=False)
            for trigger, sources, dest in EDGES:
                m.add_transition(trigger, [s.value for s in sources], dest.value)
            _machine = m
        return _machine


class _Token:
    """A throwaway model: the machine moves it, so the machine decides legality."""

    def __init__(self, state):
        self.state = state


_decided = {}  # (status, trigger) -> what the machine answered: it never changes, ask it once


def next_status(current, trigger):
    """Where TRIGGER takes a task in CURRENT; IllegalTaskTransition if nowhere. The machine
    answers each (status, trigger) pair once (a model added and removed costs about a
    millisecond, and the run fires hundreds of events); later asks reuse its answer."""
    answer = _decided.get((current, trigger))
    if answer is None:
        answer = _decided.setdefault((current, trigger), _ask_machine(current, trigger))
    if isinstance(answer, IllegalTaskTransition):
        raise IllegalTaskTransition(answer.message)
    return answer


def _ask_machine(current, trigger):
    """The machine's answer: the next status, or the IllegalTaskTransition to raise."""
    # (from the package, never `transitions.core`: a thread importing the submodule while
    # another runs the package's __init__, which imports it, is a deadlock Python breaks with
    # _DeadlockError; CI's Ray kill campaign hit it once; tests/test_tasks.py forces it)
    from transitions import MachineError

    m = machine()
    token = _Token(current.value)
    with _machine_lock:
        m.add_model(token, initial=current.value)
        try:
            getattr(token, trigger)()
        except (MachineError, AttributeError):
            legal = sorted(t for (t, s) in TARGET if s == current)
            return IllegalTaskTransition(f"task event `{trigger}` is not allowed in status {current.value} "
                                         f"(allowed: {', '.join(legal) or 'none'})")
        finally:
            m.remove_model(token)
    return S(token.state)


class TaskBook:
    """The tasks of a run: their statuses and fields in the progress file, changed only by
    events. `progress` is engine.progress.Progress, `journal` a store.Journal."""

    def __init__(self, progress, journal, retries):
        self.progress = progress
        self.journal = journal
        self.retries = retries

    def entry(self, task_id):
        return self.progress.task(task_id)

    def field(self, task_id, key, default=None):
        """One field of a task, read without copying its entry (a scalar: never change it)."""
        entry = (self.progress.peek().get("tasks") or {}).get(task_id)
        return entry.get(key, default) if isinstance(entry, dict) else default

    def status(self, task_id):
        return status_of((self.progress.peek().get("tasks") or {}).get(task_id))

    def ids_in(self, statuses):
        """The set of tasks whose status is in STATUSES, from the progress file's status index
        (no pass over the plan); a missing or unknown status reads as pending, as `status`."""
        return self.progress.ids_with(self._values(statuses))

    def count_in(self, statuses):
        return self.progress.count_with(self._values(statuses))

    def _values(self, statuses):
        values = [s.value for s in statuses]
        if S.PENDING in statuses:
            values += [v for v in self.progress.status_values() if v not in _VALUES]
        return values

    def statuses(self, task_ids=None):
        tasks = self.progress.peek().get("tasks") or {}
        ids = tasks if task_ids is None else task_ids
        return {t: status_of(tasks.get(t)) for t in ids}

    def fire(self, task_id, trigger, attempt=None, **fields):
        """Move TASK_ID by TRIGGER, set FIELDS with it (and, with ATTEMPT = {"n": N, ...},
        record attempt N in the same write); returns the new status."""
        return self.fire_all([(task_id, trigger, fields, attempt)])[0]

    def fire_all(self, events):
        """Several events [(task, trigger, fields, attempt or None)], applied in order as one
        write of the progress file (all or none) and one journal record each; the new statuses."""
        def change(data):
            moves = []
            for task_id, trigger, fields, attempt in events:
                entry = data.setdefault("tasks", {}).setdefault(task_id, {})
                source = status_of(entry)
                dest = next_status(source, trigger)
                entry.update(fields)
                entry["status"] = dest.value
                if attempt:
                    _record(data, task_id, dict(attempt))
                moves.append((task_id, trigger, source, dest))
            return moves

        def journal(moves):  # (under the file's lock, right after the write: the same order)
            self.journal.append_many([("task", dict(task=task_id, src=source.value, dst=dest.value, trigger=trigger))
                                      for task_id, trigger, source, dest in moves])

        moves = self.progress.update(change, after=journal)
        return [dest for _, _, _, dest in moves]

    def setback(self, task_id, kind, reason, **fields):
        """The retry policy. An agent failure ("agent"), a QA rejection ("qa") or a merge
        conflict ("conflict") costs one retry; past `retry_on_failure` the task fails."""
        used = int(self.entry(task_id).get("retry_count") or 0)
        if used < self.retries:
            return self.fire(task_id, SETBACKS[kind], retry_count=used + 1, last_setback=reason, **fields)
        return self.fire(task_id, "fail", failure=f"{reason}; retries exhausted ({self.retries})", **fields)

    def fail(self, task_id, reason, **fields):
        """Fail for a reason no retry fixes (no changes, wrong branch, a lost worktree...)."""
        return self.fire(task_id, "fail", failure=reason, **fields)

    def reopen(self, task_id, **fields):
        """`retry` TASK_ID, and with it every task that failed only because it waited on it
        (`blocked_by`, transitively): one write; the tasks reopened besides TASK_ID, in order."""
        statuses, blocked_by = {}, {}
        for t, entry in (self.progress.load().get("tasks") or {}).items():
            statuses[t] = status_of(entry)
            blocked_by[t] = entry.get("blocked_by")
        chain, added = [task_id], True
        while added:
            waiting = [t for t, dep in blocked_by.items()
                       if dep in chain and t not in chain and statuses[t] == TaskStatus.FAILED]
            chain += waiting
            added = bool(waiting)
        self.fire_all([(t, "retry", dict(fields, blocked_by=None), None) for t in chain])
        return chain[1:]

    def update(self, task_id, **fields):
        """Record fields (pid, slot, costs...) without a status change."""
        self.progress.set_task(task_id, **fields)

    def record_attempt(self, task_id, n, **fields):
        """Create or update attempt N in the task's `attempts` list. Costs, tokens and turns
        are per attempt there; the task's and the run's figures are their sums."""
        self.progress.update(lambda data: _record(data, task_id, dict(fields, n=n)))


def _record(data, task_id, fields):
    n = fields.pop("n")
    entry = data.setdefault("tasks", {}).setdefault(task_id, {})
    old_cost = entry.get("cost_usd")
    attempts = [a for a in entry.get("attempts") or [] if isinstance(a, dict)]
    kind = fields.get("kind", "agent")
    for attempt in attempts:
        if attempt.get("n") == n and attempt.get("kind", "agent") == kind:
            if attempt.get("outcome") == "interrupted" and "started_at" in fields:
                # attempt n starts again after a stop: the stopped run keeps its record (and its
                # usage stays counted in the sums below) under a kind of its own
                attempt["kind"] = "interrupted"
                continue
            attempt.update(fields)
            break
    else:
        attempts.append(dict({"n": n, "kind": kind}, **fields))
    entry["attempts"] = attempts
    for key, value in fields.items():
        if key not in SUMMED and key in CURRENT:
            entry[key] = value
    for key in SUMMED:
        if any(key in a for a in attempts):
            entry[key] = _total(a.get(key) for a in attempts)
    if entry.get("cost_usd") != old_cost:  # the run's sum moves by this task's change, not a sum over the plan
        run_total = data.get("cost_usd")
        if _is_number(run_total) and (old_cost is None or _is_number(old_cost)):
            data["cost_usd"] = _total([run_total, entry["cost_usd"], -(old_cost or 0)])
        else:  # (first cost of the run, or a hand-edited total: summed once; read-only, nothing copied)
            data["cost_usd"] = _total([data.get("planner_cost_usd")] +
                                      [t.get("cost_usd") for t in dict.values(data["tasks"]) if isinstance(t, dict)])


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


SUMMED = ("cost_usd", "tokens_in", "tokens_out", "turns")  # per attempt; the task shows the sum
CURRENT = ("session_id", "model", "result_subtype", "permission_denials", "submission_id", "node")  # latest


def _total(values):
    total = sum(v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool))
    return round(total, 6) if isinstance(total, float) else total


def mermaid(statuses=None):
    """The task machine as a Mermaid state diagram, drawn from the transitions machine;
    with STATUSES ({task: status}) each status is annotated with the tasks in it."""
    m = machine()
    lines = ["stateDiagram-v2", f"    [*] --> {S.PENDING.value}"]
    for name, event in m.events.items():
        for source, transitions in event.transitions.items():
            for transition in transitions:
                if name == "fail" and source != S.PENDING.value:
                    continue  # every active status may fail: one edge and a note keep it readable
                lines.append(f"    {source} --> {transition.dest}: {name}")
    lines.append(f"    note right of {S.FAILED.value}: every unfinished status may fail")
    for status in TERMINAL:
        lines.append(f"    {status.value} --> [*]")
    if statuses:
        by_status = {}
        for task, status in statuses.items():
            by_status.setdefault(str(status), []).append(task)
        for status, tasks in by_status.items():
            lines.append(f"    note left of {status}: {', '.join(sorted(tasks))}")
    return "\n".join(lines) + "\n"
