"""Pipeline state handlers, one module per state.

`HANDLERS` maps a state name to the dotted path of its handler; handlers are imported
lazily so that a CLI call only pays for the state it runs. The handlers themselves arrive
with the pipeline (issue 5); until then the registry is empty and `handler_for` says so.
"""

from engine.errors import OrchestratorError

HANDLERS = {}


def handler_for(state):
    """Return the handler callable registered for `state`."""
    try:
        dotted = HANDLERS[state]
    except KeyError:
        raise OrchestratorError(f"no handler registered for state {state}") from None
    import importlib

    module_name, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module_name), attr)
