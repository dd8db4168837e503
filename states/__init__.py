"""Pipeline state handlers, one module per state.

`HANDLERS` maps a state name to the module whose `handle(run)` returns the next state.
Modules are imported lazily so a CLI call only pays for the state it runs.
"""

import importlib

from engine.errors import OrchestratorError

HANDLERS = {
    "DECOMPOSE": "states.decompose",
    "PARALLELIZE": "states.parallelize",
    "EXECUTE": "states.execute",
    "QA": "states.qa",
    "E2E": "states.e2e",
    "INTEGRATE": "states.integrate",
    "CHECKPOINT": "states.checkpoint",
}


def handler_for(state):
    """Return the `handle(run)` function registered for `state`."""
    try:
        module = HANDLERS[state]
    except KeyError:
        raise OrchestratorError(f"the pipeline has no step for state {state}; "
                                "start with `orchestrator run PLAN`") from None
    return importlib.import_module(module).handle
