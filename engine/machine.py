"""The explicit state machine: which state may follow which.

States are the contract's 14 plus the pipeline's DECOMPOSE, QA, E2E, CHECKPOINT and a
terminal FAILED. The edges are the pipeline's (DESIGN.md) united with every sequence real
callers drive (CONTRACT.md §5.6):

- any state -> IDLE and -> COMPLETE (cancel, reset, stop-hook), and -> FAILED;
- IDLE, COMPLETE and FAILED are restartable: they may go to any *start* state;
- the documented chain IDLE -> DETECT -> CLASSIFY -> PLAN -> {PARALLELIZE | EXECUTE | DECOMPOSE};
- a stale interrupted state (DETECT .. REVIEW, RESEARCH, and the pipeline's) may be
  followed by PARALLELIZE or INTEGRATE: that is what `/auto` and `/auto-continue` do;
- the pipeline DECOMPOSE -> PARALLELIZE -> EXECUTE -> QA -> (EXECUTE | E2E | INTEGRATE),
  E2E -> INTEGRATE -> CHECKPOINT -> (PARALLELIZE | COMPLETE); PARALLELIZE -> INTEGRATE
  (the skill's own call after parallel execution) and INTEGRATE -> INTEGRATE;
- EXECUTE -> INTEGRATE -> REVIEW -> COMPLETE, RESEARCH -> COMPLETE, and the SMART chain.

The edge table below is the single source of truth. `build_machine()` turns it into a
`transitions.Machine` (one trigger `to_<STATE>` per target), which draws `graph` and which
the tests drive to prove it accepts exactly the table's edges. The per-call legality
check (`check_transition`) reads the same table directly: importing and building the
transitions machine costs ~25 ms, half again the cost of a whole `state-transition` call.
"""

from engine.errors import IllegalTransition

CONTRACT_STATES = (
    "IDLE", "DETECT", "CLASSIFY", "PLAN", "PARALLELIZE", "EXECUTE", "INTEGRATE", "REVIEW",
    "COMPLETE", "RESEARCH", "SMART_ANALYZE", "SMART_DIRECT", "SMART_ORCHESTRATED", "SMART_VERIFY",
)
PIPELINE_STATES = ("DECOMPOSE", "QA", "E2E", "CHECKPOINT", "FAILED")
STATES = CONTRACT_STATES + PIPELINE_STATES

WORK_TYPES = ("FRONTEND", "BACKEND", "FULLSTACK", "DOCUMENTATION", "DOCUMENTS", "INTEGRATION",
              "TESTING", "CREATIVE", "RESEARCH")

RESTARTABLE = ("IDLE", "COMPLETE", "FAILED")
START_STATES = ("DETECT", "CLASSIFY", "PLAN", "DECOMPOSE", "PARALLELIZE", "EXECUTE", "RESEARCH",
                "SMART_ANALYZE")
STALE = ("DETECT", "CLASSIFY", "PLAN", "PARALLELIZE", "EXECUTE", "INTEGRATE", "REVIEW", "RESEARCH",
         "DECOMPOSE", "QA", "E2E", "CHECKPOINT")


UNIVERSAL = ("IDLE", "COMPLETE", "FAILED")  # reachable from every state

# The documented chain and the pipeline's own edges.
CHAIN = [
    ("IDLE", "DETECT"), ("DETECT", "CLASSIFY"), ("CLASSIFY", "PLAN"),
    ("PLAN", "EXECUTE"), ("PLAN", "DECOMPOSE"),
    ("DECOMPOSE", "PARALLELIZE"), ("PARALLELIZE", "EXECUTE"),
    ("EXECUTE", "QA"), ("QA", "EXECUTE"), ("QA", "E2E"), ("QA", "INTEGRATE"),
    ("E2E", "INTEGRATE"), ("INTEGRATE", "CHECKPOINT"), ("CHECKPOINT", "PARALLELIZE"),
    ("INTEGRATE", "REVIEW"), ("REVIEW", "COMPLETE"), ("RESEARCH", "COMPLETE"),
    ("SMART_ANALYZE", "SMART_DIRECT"), ("SMART_ANALYZE", "SMART_ORCHESTRATED"),
    ("SMART_DIRECT", "SMART_VERIFY"), ("SMART_ORCHESTRATED", "SMART_VERIFY"),
    ("SMART_VERIFY", "COMPLETE"),
]


def _edges():
    edges = {state: set() for state in STATES}
    for state in STATES:
        edges[state].update(UNIVERSAL)
    for state in RESTARTABLE:
        edges[state].update(START_STATES)
    for state in STALE:
        edges[state].update(("PARALLELIZE", "INTEGRATE"))
    for source, dest in CHAIN:
        edges[source].add(dest)
    edges["FAILED"].discard("FAILED")
    return {state: frozenset(targets) for state, targets in edges.items()}


EDGES = _edges()


def is_state(name):
    return name in STATES


def allowed_targets(source):
    """Sorted legal targets of `source` in machine order; an unknown source allows any state."""
    targets = EDGES.get(source)
    if targets is None:
        return list(STATES)
    return [s for s in STATES if s in targets]


def check_transition(source, dest):
    """Raise IllegalTransition unless source -> dest is an edge of the machine."""
    if source in EDGES and dest not in EDGES[source]:
        allowed = ", ".join(allowed_targets(source))
        raise IllegalTransition(
            f"ERROR: Invalid transition {source} -> {dest}. Allowed: {allowed} (use --force to override)")


class _Model:
    pass


def build_machine(initial="IDLE"):
    """A `transitions.Machine` over STATES with one trigger per target state (`to_<STATE>`)."""
    from transitions import Machine

    model = _Model()
    machine = Machine(model=model, states=list(STATES), initial=initial if initial in STATES else "IDLE",
                      auto_transitions=False, ignore_invalid_triggers=False)
    for dest in STATES:
        sources = [s for s in STATES if dest in EDGES[s]]
        if sources:
            machine.add_transition(trigger=f"to_{dest}", source=sources, dest=dest)
    return machine, model


def mermaid(current=None):
    """The machine as a Mermaid state diagram; the current state, if any, is highlighted.

    Edges into IDLE, COMPLETE and FAILED exist from every state; drawing them all would
    bury the rest, so they are one note (and drawn only where the chain itself has them)."""
    machine, _ = build_machine()
    chain = set(CHAIN)
    lines = ["stateDiagram-v2", "    [*] --> IDLE",
             "    note right of IDLE: every state may also go to IDLE, COMPLETE or FAILED"]
    for dest in STATES:
        event = machine.events.get(f"to_{dest}")
        if event is None:
            continue
        for source in STATES:
            if source in event.transitions and (dest not in UNIVERSAL or (source, dest) in chain):
                lines.append(f"    {source} --> {dest}")
    if current in STATES:
        lines.append("    classDef current fill:#f96,stroke:#333,stroke-width:3px")
        lines.append(f"    class {current} current")
    return "\n".join(lines) + "\n"
