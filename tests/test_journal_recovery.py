"""One journal, one recovery rule: a run-state transition journaled but not written (a kill
between the journal append and the file replace) is rolled forward by the next call, whatever
else was appended to the shared journal after it (the runner's `state-enter`, task transitions)."""

import os
import signal
import subprocess

import pytest
import yaml

from engine import statefile, store
from engine.paths import Layout
from tests.conftest import PYTHON, invoke, python_env


def others_after(journal):
    """What the runner and the task machine append after a transition record."""
    journal.append("state-enter", state="EXECUTE")
    journal.append("transition", kind="task", task="t1", src="pending", dst="running", trigger="start")
    journal.append("task", kind="task", task="t1", src="running", dst="executed", trigger="agent-exit")
    journal.append("agent-start", task="t2", slot="wt-1", attempt=1)


def file_state(layout):
    return yaml.safe_load(open(layout.state_file))


def test_constructed_kill_with_records_after_it_rolls_forward(tmp_path):
    layout = Layout(str(tmp_path))
    statefile.init("IDLE", layout=layout)
    statefile.transition("DECOMPOSE", layout=layout)
    statefile.transition("PARALLELIZE", layout=layout)
    before = open(layout.state_file, "rb").read()
    journal = store.Journal(layout.journal)
    # exactly what `transition EXECUTE` leaves when killed after its journal append
    seq = file_state(layout)["journal_seq"]
    torn = journal.append("transition", kind="state", **{"from": "PARALLELIZE", "to": "EXECUTE", "forced": False,
                                                        "prev_seq": seq})
    others_after(journal)
    assert journal.last()["event"] == "agent-start"  # the transition is NOT the last record
    assert open(layout.state_file, "rb").read() == before
    assert statefile.get_state(layout) == "EXECUTE"  # `state` tells the truth already
    assert open(layout.state_file, "rb").read() == before  # reading writes nothing
    # the next mutating call writes the rolled-forward file first, then does its own change
    lines = statefile.transition("QA", layout=layout)
    assert lines[0] == "Transitioned: EXECUTE -> QA"
    data = file_state(layout)
    assert data["previous_state"] == "EXECUTE" and data["current_state"] == "QA"
    assert data["completed_phases"] == ["IDLE", "DECOMPOSE", "PARALLELIZE", "EXECUTE"]
    transitions = [r for r in journal.records() if statefile.is_state_transition(r)]
    assert [r["to"] for r in transitions] == ["DECOMPOSE", "PARALLELIZE", "EXECUTE", "QA"]
    assert transitions[-1]["prev_seq"] == torn["seq"]


def test_old_records_without_kind_still_recover(tmp_path):
    layout = Layout(str(tmp_path))
    statefile.init("PARALLELIZE", layout=layout)
    journal = store.Journal(layout.journal)
    journal.append("transition", **{"from": "PARALLELIZE", "to": "EXECUTE", "forced": False,
                                   "prev_seq": file_state(layout)["journal_seq"]})
    others_after(journal)
    statefile.set_work_type("backend", layout=layout)  # any mutating call rolls forward
    assert file_state(layout)["current_state"] == "EXECUTE"


def test_task_transitions_never_move_the_run_state(tmp_path):
    """A task record shaped like a transition (event "transition", from/to) is not a run transition."""
    layout = Layout(str(tmp_path))
    statefile.init("EXECUTE", layout=layout)
    journal = store.Journal(layout.journal)
    journal.append("transition", kind="task", task="t1", **{"from": "EXECUTE", "to": "QA"},
                   prev_seq=file_state(layout)["journal_seq"])
    assert statefile.get_state(layout) == "EXECUTE"
    statefile.add_tokens("1", layout=layout)
    assert file_state(layout)["current_state"] == "EXECUTE"


def test_a_transition_already_written_is_not_applied_twice(tmp_path):
    layout = Layout(str(tmp_path))
    statefile.init("IDLE", layout=layout)
    statefile.transition("DECOMPOSE", layout=layout)
    others_after(store.Journal(layout.journal))
    before = file_state(layout)
    statefile.add_tokens("1", layout=layout)
    after = file_state(layout)
    assert after["completed_phases"] == before["completed_phases"] == ["IDLE"]
    assert after["current_state"] == "DECOMPOSE"


def test_journal_since_reads_back_across_windows(tmp_path, monkeypatch):
    monkeypatch.setattr(store.Journal, "TAIL_BYTES", 128)
    j = store.Journal(str(tmp_path / "j.jsonl"))
    for i in range(50):
        j.append("e", n=i, pad="x" * 40)
    assert [r["seq"] for r in j.since(44)] == [50, 49, 48, 47, 46, 45]
    assert len(j.since(0)) == 50 and j.since(50) == []
    with open(j.path, "ab") as fh:
        fh.write(b'{"seq":51,"torn')
    assert [r["seq"] for r in j.since(48)] == [50, 49]


KILL_AFTER_JOURNAL = r"""
import os, signal, sys
from engine import statefile, store
from engine.paths import Layout

def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)  # after the journal append, before the file replace

store.write_yaml = killed
statefile.transition(sys.argv[2], layout=Layout(sys.argv[1]))
"""

RUNNER_EVENTS = r"""
import sys
from engine import store
from engine.paths import Layout

journal = store.Journal(Layout(sys.argv[1]).journal)
journal.append("state-enter", state=sys.argv[2])
journal.append("transition", kind="task", task="t1", src="pending", dst="running", trigger="start")
"""


@pytest.mark.parametrize("cli_call", [("transition", "QA"), ("tokens", "10"), ("work-type", "backend")])
def test_real_sigkill_between_journal_and_file_then_others_append(tmp_path, cli_call):
    from engine.cli.state_transition import cli

    root = str(tmp_path / "proj")
    os.makedirs(root)
    layout = Layout(root)
    statefile.init("IDLE", layout=layout)
    for state in ("DECOMPOSE", "PARALLELIZE"):
        statefile.transition(state, layout=layout)
    before = open(layout.state_file, "rb").read()
    p = subprocess.run([PYTHON, "-c", KILL_AFTER_JOURNAL, root, "EXECUTE"], env=python_env(), capture_output=True)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert open(layout.state_file, "rb").read() == before  # the kill left the file as it was
    assert store.Journal(layout.journal).last()["to"] == "EXECUTE"
    p = subprocess.run([PYTHON, "-c", RUNNER_EVENTS, root, "EXECUTE"], env=python_env(), capture_output=True)
    assert p.returncode == 0, p.stderr
    os.environ["ORCHESTRATOR_ROOT"] = root
    try:
        assert invoke(cli, "state-transition", "state").out == "EXECUTE\n"
        r = invoke(cli, "state-transition", *cli_call)
    finally:
        del os.environ["ORCHESTRATOR_ROOT"]
    assert r.code in (0, 1, 2) and "Traceback" not in r.err, r
    data = file_state(layout)
    expected = "QA" if cli_call[0] == "transition" else "EXECUTE"
    assert data["current_state"] == expected
    assert data["completed_phases"][:3] == ["IDLE", "DECOMPOSE", "PARALLELIZE"]
    assert "EXECUTE" in data["completed_phases"] or expected == "EXECUTE"


def test_a_torn_transition_under_thousands_of_task_records_is_found_without_decoding_them(tmp_path, monkeypatch):
    """A large run appends thousands of task records while the state file stays at EXECUTE's
    journal_seq; every state read looks past them for a torn transition. The records of other
    events are passed over on their bytes (engine.store.Journal.since(event=...)): only the
    candidates are decoded, and a torn transition under 5,000 of them is still found."""
    layout = Layout(str(tmp_path))
    statefile.init("IDLE", layout=layout)
    statefile.transition("DECOMPOSE", layout=layout)
    journal = store.Journal(layout.journal)
    seq = file_state(layout)["journal_seq"]
    journal.append_many([("task", {"task": f"t{i}", "src": "pending", "dst": "running"}) for i in range(2500)])
    journal.append("transition", kind="state", **{"from": "DECOMPOSE", "to": "PARALLELIZE", "forced": False,
                                                 "prev_seq": seq})
    journal.append_many([("task", {"task": f"t{i}", "src": "running", "dst": "merged"}) for i in range(2500)])
    decoded = []
    real = store._decode_line
    monkeypatch.setattr(store, "_decode_line", lambda line: decoded.append(1) or real(line))
    assert statefile.get_state(layout) == "PARALLELIZE"
    assert len(decoded) < 20  # the candidates once per window read, not 5,000 task records
    decoded.clear()
    statefile.transition("EXECUTE", layout=layout)  # writes the rolled-forward file, then its own
    journal.append_many([("task", {"task": f"t{i}", "src": "pending", "dst": "running"}) for i in range(3000)])
    assert statefile.get_state(layout) == "EXECUTE"  # nothing torn: still no pass decoding every record
    assert len(decoded) < 20
