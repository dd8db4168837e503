"""The explicit machine: every edge real callers drive is legal; the rest is refused."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import machine
from engine.errors import IllegalTransition

# CONTRACT.md §5.6, edge by edge.
LEGACY = []
LEGACY += [(s, "PARALLELIZE") for s in ("IDLE", "DETECT", "CLASSIFY", "PLAN", "EXECUTE", "INTEGRATE", "REVIEW",
                                        "COMPLETE", "RESEARCH")]
LEGACY += [(s, "INTEGRATE") for s in ("PARALLELIZE", "EXECUTE", "INTEGRATE")]
LEGACY += [("IDLE", "DETECT"), ("DETECT", "CLASSIFY"), ("CLASSIFY", "PLAN"), ("PLAN", "PARALLELIZE"),
           ("PLAN", "EXECUTE"), ("PARALLELIZE", "EXECUTE"), ("EXECUTE", "INTEGRATE"), ("INTEGRATE", "REVIEW"),
           ("REVIEW", "COMPLETE"), ("RESEARCH", "COMPLETE"), ("SMART_ANALYZE", "SMART_DIRECT"),
           ("SMART_ANALYZE", "SMART_ORCHESTRATED"), ("SMART_DIRECT", "SMART_VERIFY"),
           ("SMART_ORCHESTRATED", "SMART_VERIFY"), ("SMART_VERIFY", "COMPLETE")]
LEGACY += [(s, "IDLE") for s in machine.STATES] + [(s, "COMPLETE") for s in machine.STATES]
# §5.4: stale interrupted states are followed by PARALLELIZE or INTEGRATE.
LEGACY += [(s, t) for s in ("DETECT", "CLASSIFY", "PLAN", "EXECUTE", "INTEGRATE", "REVIEW", "RESEARCH")
           for t in ("PARALLELIZE", "INTEGRATE")]

PIPELINE = [("DECOMPOSE", "PARALLELIZE"), ("PARALLELIZE", "EXECUTE"), ("EXECUTE", "QA"), ("QA", "EXECUTE"),
            ("QA", "E2E"), ("QA", "INTEGRATE"), ("E2E", "INTEGRATE"), ("INTEGRATE", "CHECKPOINT"),
            ("CHECKPOINT", "PARALLELIZE"), ("CHECKPOINT", "COMPLETE"), ("PARALLELIZE", "FAILED")]


@pytest.mark.parametrize("source,dest", sorted(set(LEGACY + PIPELINE)))
def test_required_edges_are_legal(source, dest):
    machine.check_transition(source, dest)


@pytest.mark.parametrize("source,dest", [("EXECUTE", "SMART_VERIFY"), ("IDLE", "REVIEW"), ("DETECT", "QA"),
                                         ("COMPLETE", "CHECKPOINT"), ("SMART_DIRECT", "EXECUTE")])
def test_illegal_edges_name_the_allowed_targets(source, dest):
    with pytest.raises(IllegalTransition) as info:
        machine.check_transition(source, dest)
    assert info.value.message.startswith(f"ERROR: Invalid transition {source} -> {dest}. Allowed: ")
    for target in machine.allowed_targets(source):
        assert target in info.value.message


def test_transitions_machine_agrees_with_the_table():
    m, model = machine.build_machine()
    for source in machine.STATES:
        m.set_state(source)
        triggers = {t[len("to_"):] for t in m.get_triggers(source)}
        assert triggers == set(machine.EDGES[source]), source


@given(st.lists(st.sampled_from(machine.STATES), min_size=1, max_size=40))
def test_transitions_model_walk_matches_check(path):
    """Drive the transitions machine along a random path; it accepts exactly the table's edges."""
    from transitions import MachineError

    m, model = machine.build_machine("IDLE")
    for dest in path:
        source = model.state
        legal = dest in machine.EDGES[source]
        try:
            model.trigger(f"to_{dest}")
            accepted = True
        except MachineError:
            accepted = False
        assert accepted == legal
        assert model.state == (dest if legal else source)


def test_every_state_reaches_complete_and_idle():
    for state in machine.STATES:
        assert "COMPLETE" in machine.EDGES[state] and "IDLE" in machine.EDGES[state]
