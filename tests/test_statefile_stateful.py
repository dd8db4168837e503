"""Random sequences of init / transition / work-type / checkpoint / tokens against a model.

After every step the file parses, equals the model on every key the model tracks, and the
unknown keys a hand-writer put there survive."""

import os
import shutil
import tempfile

import yaml
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from engine import machine, statefile
from engine.errors import IllegalTransition, InvalidValue, NotInitialized
from engine.paths import Layout
from engine.skills import mandatory_skills

UNKNOWN = {"initialized": True, "current_group": 3, "custom": {"nested": ["a", 1]}}
texts = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20)


class StateFileModel(RuleBasedStateMachine):
    @initialize()
    def setup(self):
        self.dir = tempfile.mkdtemp()
        self.layout = Layout(self.dir)
        self.model = None  # no file yet
        self.unknown = {}

    def teardown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def _fresh(self, state):
        return {"current_state": state, "previous_state": "", "work_type": "", "focus": [],
                "mandatory_skills": [], "completed_phases": [], "checkpoint_files": [], "estimated": 0,
                "confidence": None}

    @rule(state=st.sampled_from(machine.STATES))
    def init(self, state):
        statefile.init(state, layout=self.layout)
        self.model = self._fresh(state)
        self.unknown = {}

    @rule()
    def hand_edit_unknown_keys(self):
        if self.model is None:
            return
        data, header = statefile.store.load_yaml_mapping(self.layout.state_file)
        data.update(UNKNOWN)
        statefile.store.write_yaml(self.layout.state_file, data, header)
        self.unknown = dict(UNKNOWN)

    @rule(dest=st.sampled_from(machine.STATES), force=st.booleans())
    def transition(self, dest, force):
        if self.model is None:
            lines = statefile.transition(dest, force=force, layout=self.layout)
            self.model = self._fresh(dest)
            self.model["mandatory_skills"] = mandatory_skills(dest, "")
            assert lines[0].startswith("State machine initialized")
            return
        source = self.model["current_state"]
        legal = dest in machine.EDGES[source]
        try:
            lines = statefile.transition(dest, force=force, layout=self.layout)
        except IllegalTransition:
            assert not legal and not force
            return
        assert legal or force
        assert lines[0] == f"Transitioned: {source} -> {dest}"
        m = self.model
        m["previous_state"], m["current_state"] = source, dest
        if source not in m["completed_phases"]:
            m["completed_phases"].append(source)
        m["mandatory_skills"] = mandatory_skills(dest, m["work_type"])

    @rule(work_type=st.sampled_from(machine.WORK_TYPES + ("", "weird type")) | texts,
          focus=st.lists(st.text("abc xyz", min_size=1, max_size=5), max_size=3),
          confidence=st.sampled_from(["0.5", "1.0", "0.95", "x", "7"]))
    def work_type(self, work_type, focus, confidence):
        if not work_type:
            assert statefile.get_work_type(self.layout) == (self.model or {}).get("work_type", "")
            return
        try:
            statefile.set_work_type(work_type, ",".join(focus), confidence, layout=self.layout)
        except InvalidValue:
            assert confidence == "x"
            return
        if self.model is None:
            self.model = self._fresh("IDLE")
        m = self.model
        m["work_type"] = work_type
        m["confidence"] = float(confidence)
        items = [f.strip() for f in focus if f.strip()]
        if focus and items:
            m["focus"] = items
        elif focus:
            m["focus"] = []
        m["mandatory_skills"] = mandatory_skills(m["current_state"], work_type)

    @rule(path=texts)
    def checkpoint(self, path):
        try:
            statefile.add_checkpoint(path, "desc", layout=self.layout)
        except NotInitialized:
            assert self.model is None
            return
        self.model["checkpoint_files"].append(path)

    @rule(amount=st.integers(-1000, 100000))
    def tokens(self, amount):
        lines, code = statefile.add_tokens(str(amount), layout=self.layout)
        if self.model is None:
            assert (lines, code) == ([], 0)
            return
        self.model["estimated"] += amount
        ratio = self.model["estimated"] / 200000
        assert code == (2 if ratio >= 0.95 else 1 if ratio >= 0.80 else 0)

    @invariant()
    def file_matches_model(self):
        if getattr(self, "model", None) is None:
            assert not os.path.exists(self.layout.state_file)
            return
        with open(self.layout.state_file) as fh:
            data = yaml.safe_load(fh)
        m = self.model
        for key in ("current_state", "previous_state", "work_type", "focus", "mandatory_skills",
                    "completed_phases", "checkpoint_files"):
            assert data[key] == m[key], key
        assert data["token_usage"]["estimated"] == m["estimated"]
        if m["confidence"] is not None:
            assert data["classification_confidence"] == m["confidence"]
        for key, value in self.unknown.items():
            assert data[key] == value
        assert statefile.get_state(self.layout) == m["current_state"]
        last = statefile.store.Journal(self.layout.journal).last()
        assert data["journal_seq"] == last["seq"]


StateFileModel.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestStateFile = StateFileModel.TestCase
