"""Operations on `.claude/auto-state-machine.yaml` (CONTRACT.md §2.1 and §3.1).

Each public function is one subcommand of `state-transition`: it validates every input
before touching anything, then does its whole change as one locked read-modify-write and
one atomic file replace (the original rewrote the file 5 + N times per call). Functions
return what should be printed; the CLI prints it.

Transitions are journaled in `.claude/auto-journal.jsonl` *before* the state file is
replaced, and the file records the sequence number it reflects (`journal_seq`). If a
process is killed between the two writes, the next mutating call finds the journal one
step ahead of the file and rolls the file forward, so the file always ends up holding the
last journaled state.
"""

import math
import os
import re
import time

from engine import machine, store
from engine.errors import InvalidValue, NotInitialized, StateFileError
from engine.paths import Layout
from engine.skills import mandatory_skills

HEADER = "# Autonomous-Dev State Machine v3.0\n# Auto-generated - tracks execution state for resume capability"
DEFAULT_TOKENS = {"estimated": 0, "budget": 200000, "warning_threshold": 0.80, "checkpoint_threshold": 0.95}
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_CONTROL_OR_NEWLINE = re.compile(r"[\x00-\x1f\x7f]")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_INTEGER = re.compile(r"^[+-]?\d+$")
STATE_KIND = "state"  # the `kind` of run-state transition records in the shared journal
MAX_VALUE_LEN = 4096


# --------------------------------------------------------------------------- validation
def validate_state(name):
    if not machine.is_state(name):
        raise InvalidValue(f"Invalid state '{name}'. Valid states: {' '.join(machine.STATES)}")
    return name


def _validate_text(label, value, allow_newlines=False):
    pattern = _CONTROL if allow_newlines else _CONTROL_OR_NEWLINE
    if pattern.search(value):
        raise InvalidValue(f"{label} contains control characters")
    if len(value) > MAX_VALUE_LEN:
        raise InvalidValue(f"{label} is longer than {MAX_VALUE_LEN} characters")
    return value


def _parse_confidence(raw):
    if not _NUMBER.match(raw.strip()):
        raise InvalidValue(f"confidence must be a number, got '{raw}'")
    value = float(raw)
    if not math.isfinite(value):
        raise InvalidValue(f"confidence must be a finite number, got '{raw}'")
    return value


def _parse_tokens(raw):
    if not _INTEGER.match(raw.strip()):
        raise InvalidValue(f"token amount must be an integer, got '{raw}'")
    return int(raw)


# --------------------------------------------------------------------------- helpers
def _now_utc():
    return store.utc_now()


def _session_id():
    return time.strftime("auto-%Y%m%d-%H%M%S", time.localtime())


def _template(state):
    return {
        "version": "3.1",
        "current_state": state,
        "previous_state": "",
        "work_type": "",
        "focus": [],
        "mandatory_skills": [],
        "completed_phases": [],
        "checkpoint_files": [],
        "session_id": _session_id(),
        "started_at": _now_utc(),
        "token_usage": dict(DEFAULT_TOKENS),
    }


def as_text(value, default=""):
    """How yq -r would print a scalar: null -> default, everything else as text."""
    if value is None:
        return default
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _as_list(value):
    if value is None:
        return []
    if isinstance(value, list):
        return [as_text(v) for v in value]
    return [as_text(value)]


def current_state_of(data):
    return as_text(data.get("current_state"), "IDLE") if data is not None else "IDLE"


def _load(layout):
    return store.load_yaml_mapping(layout.state_file)


def _save(layout, data, header):
    store.write_yaml(layout.state_file, data, header or HEADER)


def _apply_transition(data, source, dest, when):
    data["previous_state"] = source
    data["current_state"] = dest
    data["last_transition"] = when
    phases = data.get("completed_phases")
    phases = list(phases) if isinstance(phases, list) else []
    if source not in phases:  # append-only, without the original's duplicates
        phases.append(source)
    data["completed_phases"] = phases
    data["mandatory_skills"] = mandatory_skills(dest, as_text(data.get("work_type")))


def is_state_transition(record):
    """True for the journal records the roll-forward acts on: a run-state transition written by
    `transition` below. Everything else that shares the journal (the runner's `state-enter`,
    agent and merge events, task transitions `{"kind": "task", ...}`) is ignored by recovery."""
    return (record.get("event") == "transition" and record.get("kind", STATE_KIND) == STATE_KIND
            and isinstance(record.get("from"), str) and isinstance(record.get("to"), str))


def _pending_transition(layout, data):
    """The transition journaled after the file's `journal_seq` whose file write a kill cut off,
    or None. Keyed on what the record means, not on its being the journal's last line."""
    seq = data.get("journal_seq") if data is not None else None
    if not isinstance(seq, int) or isinstance(seq, bool):
        return None
    for record in store.Journal(layout.journal).since(seq, event="transition"):  # newest first
        if is_state_transition(record):
            # `prev_seq` is the journal_seq the file had when the transition was decided; other
            # events (the runner's, the tasks') may sit before and after the record.
            if record.get("prev_seq", record["seq"] - 1) == seq and current_state_of(data) == record["from"]:
                return record
            return None
    return None


def _roll_forward(layout, data):
    """Finish a transition that was journaled but whose file write was cut off by a kill."""
    record = _pending_transition(layout, data)
    if record is None:
        return False
    _apply_transition(data, record["from"], record["to"], record["ts"])
    data["journal_seq"] = record["seq"]
    return True


def _init_data(layout, state, via):
    """A fresh template at STATE, journaled; the memory directory exists afterwards (as the
    original `init` made it)."""
    store.makedirs(layout.memory_dir)
    data = _template(state)
    record = store.Journal(layout.journal).append("init", to=state, via=via, forced=False)
    data["journal_seq"] = record["seq"]
    return data


def _init_line(layout):
    return f"State machine initialized at {layout.rel(layout.state_file)}"


# --------------------------------------------------------------------------- commands
def init(state="IDLE", layout=None):
    """Unconditional reset to STATE (§5.6). A corrupt file is kept as `.corrupt` first."""
    layout = layout or Layout()
    validate_state(state)
    with store.file_lock(layout.state_file):
        try:
            _load(layout)
        except StateFileError:
            store.replace(layout.state_file, layout.state_file + ".corrupt")
        data = _init_data(layout, state, via="init")
        _save(layout, data, HEADER)
    return [_init_line(layout)]


def read(layout=None):
    """The whole state mapping, or None when there is no state file. A transition that was
    journaled but not yet written (a kill between the two) is applied to what is returned, so
    `state` tells where the run is; the next mutating call writes it."""
    layout = layout or Layout()
    data = _load(layout)[0]
    if data is not None:
        _roll_forward(layout, data)
    return data


def get_state(layout=None):
    return current_state_of(read(layout))


def get_work_type(layout=None):
    data = read(layout)
    return as_text(data.get("work_type")) if data is not None else ""


def set_work_type(work_type, focus="", confidence="1.0", layout=None):
    layout = layout or Layout()
    _validate_text("work type", work_type)
    _validate_text("focus", focus)
    value = _parse_confidence(confidence)
    items = [item.strip() for item in focus.split(",") if item.strip()] if focus else None
    lines = []
    with store.file_lock(layout.state_file):
        data, header = _load(layout)
        if data is None:
            data = _init_data(layout, "IDLE", via="work-type")
            lines.append(_init_line(layout))
        else:
            _roll_forward(layout, data)
        data["work_type"] = work_type
        data["classification_confidence"] = value
        if items is not None:
            data["focus"] = items
        data["mandatory_skills"] = mandatory_skills(current_state_of(data), work_type)
        _save(layout, data, header)
    lines.append(f"Work type set to: {work_type} (confidence: {confidence})")
    return lines


def transition(new_state, force=False, layout=None):
    """Move to NEW_STATE along a legal edge (or any edge with force); return output lines."""
    layout = layout or Layout()
    validate_state(new_state)
    with store.file_lock(layout.state_file):
        data, header = _load(layout)
        journal = store.Journal(layout.journal)
        if data is None:
            # The contract initialises at the target; we also compute its skills (§6 item 29).
            data = _init_data(layout, new_state, via="transition")
            data["mandatory_skills"] = mandatory_skills(new_state, "")
            _save(layout, data, HEADER)
            lines = [_init_line(layout)]
        else:
            _roll_forward(layout, data)
            source = current_state_of(data)
            if not force:
                machine.check_transition(source, new_state)
            forced = force and source in machine.EDGES and new_state not in machine.EDGES[source]
            record = journal.append("transition", **{"kind": STATE_KIND, "from": source, "to": new_state,
                                                     "forced": forced, "prev_seq": data.get("journal_seq")})
            _apply_transition(data, source, new_state, record["ts"])
            data["journal_seq"] = record["seq"]
            _save(layout, data, header)
            lines = [f"Transitioned: {source} -> {new_state}"]
    skills = data["mandatory_skills"]
    if skills:
        lines.append("MANDATORY_SKILLS: " + ",".join(skills))
    return lines


def _memory_name(state):
    return re.sub(r"[^a-z0-9_-]", "_", state.lower()) or "unknown"


def add_checkpoint(path, description="", layout=None):
    layout = layout or Layout()
    _validate_text("checkpoint file", path)
    _validate_text("description", description, allow_newlines=True)

    def change(data):
        memory_file = os.path.join(layout.memory_dir, f"{_memory_name(current_state_of(data))}-checkpoint.md")
        block = [f"## Checkpoint: {path}", f"- Time: {_now_utc()}"]
        if description:
            block.append("- Description: " + description.replace("\n", "\n  "))
        store.append_text(memory_file, "\n".join(block) + "\n\n")  # first: the list never names a missing note
        files = data.get("checkpoint_files")
        data["checkpoint_files"] = (list(files) if isinstance(files, list) else []) + [path]

    if not _update_if_present(layout, change):
        raise NotInitialized("State machine not initialized")
    return [f"Checkpoint added: {path}"]


def _update_if_present(layout, change):
    """Apply `change(data)` to an existing state file in one locked write; no file, no-op."""
    layout = layout or Layout()
    if not os.path.exists(layout.state_file):
        return False
    with store.file_lock(layout.state_file):
        data, header = _load(layout)
        if data is None:
            return False
        _roll_forward(layout, data)
        change(data)
        _save(layout, data, header)
    return True


def record_checkpoint(rel_path, layout=None):
    """checkpoint-manager `write`: list the summary in checkpoint_files, stamp last_checkpoint."""
    def change(data):
        files = data.get("checkpoint_files")
        data["checkpoint_files"] = (list(files) if isinstance(files, list) else []) + [rel_path]
        data["last_checkpoint"] = _now_utc()

    return _update_if_present(layout, change)


def record_group(number, status, layout=None):
    """checkpoint-manager `group`: last_parallel_group (an int), last_group_status, last_checkpoint."""
    def change(data):
        data["last_parallel_group"] = number
        data["last_group_status"] = status
        data["last_checkpoint"] = _now_utc()

    return _update_if_present(layout, change)


def _token_number(usage, key):
    value = usage.get(key, DEFAULT_TOKENS[key])
    if value is None:
        value = DEFAULT_TOKENS[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise StateFileError(f"token_usage.{key} in the state file is not a number: {value!r}")
    return value


def _percent(ratio):
    text = f"{ratio * 100:.1f}"
    return text[:-2] if text.endswith(".0") else text


def add_tokens(amount, layout=None):
    """Add AMOUNT to token_usage.estimated; return (lines, exit code 0/1/2)."""
    delta = _parse_tokens(amount)
    numbers = {}

    def change(data):
        usage = data.get("token_usage")
        usage = usage if isinstance(usage, dict) else {}
        for key in DEFAULT_TOKENS:
            numbers[key] = _token_number(usage, key)
        numbers["estimated"] += delta
        usage["estimated"] = numbers["estimated"]
        data["token_usage"] = usage

    if not _update_if_present(layout, change):
        return [], 0  # the contract: silent no-op without a session
    if numbers["budget"] <= 0:
        return [], 0
    ratio = numbers["estimated"] / numbers["budget"]  # compared unrounded (§6 item 11)
    if ratio >= numbers["checkpoint_threshold"]:
        return [f"TOKEN_CHECKPOINT: Usage at {_percent(ratio)}% - checkpoint required"], 2
    if ratio >= numbers["warning_threshold"]:
        return [f"TOKEN_WARNING: Usage at {_percent(ratio)}% - start summarization"], 1
    return [], 0


def resume_info(layout=None):
    """The resume record, or None when there is no session. Missing keys read as empty."""
    layout = layout or Layout()
    data = read(layout)
    if data is None:
        return None
    memory = None
    if os.path.isdir(layout.memory_dir):
        memory = [layout.rel(os.path.join(layout.memory_dir, name)) for name in sorted(os.listdir(layout.memory_dir))]
    return {
        "session_id": as_text(data.get("session_id")),
        "current_state": current_state_of(data),
        "work_type": as_text(data.get("work_type")),
        "completed_phases": _as_list(data.get("completed_phases")),
        "memory_files": memory,
    }


def resume_lines(info):
    lines = [
        f"SESSION_ID: {info['session_id']}",
        f"CURRENT_STATE: {info['current_state']}",
        f"WORK_TYPE: {info['work_type']}",
        "COMPLETED_PHASES: " + ",".join(info["completed_phases"]),
    ]
    if info["memory_files"] is not None:
        lines.append("MEMORY_FILES:")
        lines.extend(f"  - {path}" for path in info["memory_files"])
    return lines


def skills(state=None, work_type=None, layout=None):
    if state is None or work_type is None:
        data = read(layout) or {}
        state = current_state_of(data) if state is None else state
        work_type = as_text(data.get("work_type")) if work_type is None else work_type
    return mandatory_skills(state, work_type)


def history(layout=None):
    layout = layout or Layout()
    return store.Journal(layout.journal).records()
