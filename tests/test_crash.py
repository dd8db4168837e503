"""SIGKILL a process that loops over transitions, at random moments, 100+ times.

After each kill the state file parses and holds either the last journaled state, or -- when
the kill fell after the journal append and before the file replace -- the state before it
(`from` of the last record, with `journal_seq` one behind). The next call then succeeds and
rolls the file forward first. We count how often each case happened.
"""

import os
import random
import signal
import subprocess
import time

import yaml

from engine import statefile, store
from engine.paths import Layout
from tests.conftest import PYTHON, python_env

CYCLE = ["PARALLELIZE", "EXECUTE", "QA", "INTEGRATE", "CHECKPOINT"]
NEXT = {s: CYCLE[(i + 1) % len(CYCLE)] for i, s in enumerate(CYCLE)}

LOOPER = r"""
import sys
from engine import statefile
from engine.paths import Layout
layout = Layout(sys.argv[1])
nxt = {"PARALLELIZE": "EXECUTE", "EXECUTE": "QA", "QA": "INTEGRATE", "INTEGRATE": "CHECKPOINT",
       "CHECKPOINT": "PARALLELIZE"}
print("ready", flush=True)
while True:
    statefile.transition(nxt[statefile.get_state(layout)], layout=layout)
"""


def test_sigkill_during_transitions(tmp_path):
    layout = Layout(str(tmp_path))
    statefile.init("PARALLELIZE", layout=layout)
    rng = random.Random(1234)
    outcomes = {"at_last_record": 0, "one_behind": 0, "torn_journal_tail": 0}
    kills = 110
    for _ in range(kills):
        proc = subprocess.Popen([PYTHON, "-c", LOOPER, str(tmp_path)], stdout=subprocess.PIPE,
                                env=python_env())
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0, 0.03))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()

        with open(layout.journal, "rb") as fh:
            if not fh.read().endswith(b"\n"):
                outcomes["torn_journal_tail"] += 1
        with open(layout.state_file) as fh:
            data = yaml.safe_load(fh)  # parses: never half-written
        last = store.Journal(layout.journal).last()
        if data["current_state"] == last["to"] and data["journal_seq"] == last["seq"]:
            outcomes["at_last_record"] += 1
        else:
            assert last["event"] == "transition"
            assert data["current_state"] == last["from"] and data["journal_seq"] == last["seq"] - 1
            outcomes["one_behind"] += 1

        # The next call succeeds, from the last *journaled* state.
        expected = NEXT[last["to"]]
        lines = statefile.transition(expected, layout=layout)
        assert lines[0] == f"Transitioned: {last['to']} -> {expected}"
        after = store.Journal(layout.journal).last()
        with open(layout.state_file) as fh:
            data = yaml.safe_load(fh)
        assert (data["current_state"], data["journal_seq"]) == (expected, after["seq"])

    records = store.Journal(layout.journal).records()
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    for before, after in zip(records[1:], records[2:]):
        assert after["from"] == before["to"]  # an unbroken chain: nothing lost, nothing doubled
    print(f"\n{kills} kills: {outcomes}, {len(records)} journaled transitions")
    assert sum(outcomes[k] for k in ("at_last_record", "one_behind")) == kills
