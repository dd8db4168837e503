"""8 processes transitioning the same file at once, and a reader polling it throughout."""

import subprocess
import time

import yaml

from engine import statefile, store
from engine.paths import Layout
from tests.conftest import PYTHON, python_env

WRITER = r"""
import sys
from engine import statefile
from engine.paths import Layout
layout = Layout(sys.argv[1])
targets = ["PARALLELIZE", "IDLE", "COMPLETE"]
for i in range(int(sys.argv[2])):
    statefile.transition(targets[i % 3], layout=layout)
"""

READER = r"""
import sys, time, yaml
path, stop = sys.argv[1], sys.argv[2]
import os
reads = 0
while not os.path.exists(stop):
    with open(path) as fh:
        data = yaml.safe_load(fh)
    assert isinstance(data, dict) and data["current_state"] in ("PARALLELIZE", "IDLE", "COMPLETE"), data
    assert isinstance(data["mandatory_skills"], list)
    reads += 1
print(reads)
"""


def test_eight_writers_lose_nothing(tmp_path):
    layout = Layout(str(tmp_path))
    statefile.init("IDLE", layout=layout)
    per_writer, writers = 25, 8
    stop = tmp_path / "stop"
    reader = subprocess.Popen([PYTHON, "-c", READER, layout.state_file, str(stop)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=python_env())
    procs = [subprocess.Popen([PYTHON, "-c", WRITER, str(tmp_path), str(per_writer)], stderr=subprocess.PIPE,
                              text=True, env=python_env()) for _ in range(writers)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    time.sleep(0.05)
    stop.touch()
    out, err = reader.communicate(timeout=30)
    assert reader.returncode == 0, err
    assert int(out) > 0

    records = store.Journal(layout.journal).records()
    transitions = [r for r in records if r["event"] == "transition"]
    assert len(transitions) == writers * per_writer
    assert len({r["pid"] for r in transitions}) == writers
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    for before, after in zip(transitions, transitions[1:]):
        assert after["from"] == before["to"]  # serialized: every write saw the previous one
    with open(layout.state_file) as fh:
        data = yaml.safe_load(fh)
    assert data["journal_seq"] == records[-1]["seq"]
    assert data["current_state"] == transitions[-1]["to"]
    assert statefile.get_state(layout) == transitions[-1]["to"]
