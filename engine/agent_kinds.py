"""Agent kinds: *what* runs as a task's agent, beside the backends (engine.executor's local,
engine.ray_executor's Ray) that decide *where* an attempt runs.

A plan's or task's `agent:` is either a shell command (the `shell` kind) or a preset, named as
a string (`claude`) or a mapping (`{preset: claude, model: ...}`). Each preset is one module
with a class that has:

- `validate(setting, where)`: the options checked at plan load (raise OrchestratorError: one line);
- `run(backend, attempt, task, limits)`: run one attempt through the backend and return its
  engine.executor.AgentResult (`denied`, `reason`, `details` filled as the kind knows them);
- `recover(backend, attempt, task)`: the result of an attempt that outlived a killed
  orchestrator, or None.

`limits` (AttemptLimits) carries what the run imposes on one attempt: the money it may still
spend, the start-up spacing and the cancel event. Another CLI agent is one new module and one
line in PRESETS; the scheduler does not change (as vibe-kanban keeps one executor per CLI).
"""

import importlib
import threading
import time
from dataclasses import dataclass

PRESETS = {"claude": "engine.claude:ClaudeAgent"}


@dataclass
class AttemptLimits:
    budget_usd: float = None  # what this attempt may still spend (run and task budgets), None: no cap
    stagger: object = None  # a Stagger: spaces out start-ups (for kinds whose start-ups race)
    cancel: object = None  # threading.Event: the run is stopping


class Stagger:
    """Spaces out agent start-ups within one orchestrator: `wait()` returns no sooner than
    `seconds` after the previous caller's return."""

    def __init__(self):
        self._lock = threading.Lock()
        self._last = None

    def wait(self, seconds, cancel=None):
        with self._lock:
            if self._last is not None and seconds > 0:
                delay = self._last + seconds - time.monotonic()
                if delay > 0:
                    if cancel is not None:
                        cancel.wait(delay)
                    else:
                        time.sleep(delay)
            self._last = time.monotonic()


class ShellAgent:
    """A shell command run in the attempt's checkout; task data in environment variables."""

    name = "shell"

    def __init__(self, command):
        self.command = command

    @staticmethod
    def validate(setting, where):
        return setting

    def run(self, backend, attempt, task, limits):
        return backend.run_attempt(attempt)

    def recover(self, backend, attempt, task):
        return backend.recover(attempt)


def preset_name(setting):
    """The preset a setting names (`claude`, `{preset: claude}`), or None for a shell command."""
    if isinstance(setting, dict):
        return setting.get("preset")
    if isinstance(setting, str) and setting.strip() in PRESETS:
        return setting.strip()
    return None


def _preset_class(name):
    module, _, attr = PRESETS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def validate(setting, where):
    """Check an agent setting at plan load; one-line OrchestratorError if it is wrong."""
    name = preset_name(setting)
    if isinstance(setting, dict) and not (isinstance(name, str) and name in PRESETS):
        from engine.errors import OrchestratorError

        shown = repr(name) if isinstance(name, (str, int, float, type(None))) else "a " + type(name).__name__
        raise OrchestratorError(f"ERROR: {where}: unknown preset {shown[:80]} (known: {', '.join(sorted(PRESETS))})")
    if name is not None:
        _preset_class(name).validate(setting, where)
    return setting


def kind_of(setting):
    """The agent kind object for a setting (a preset's class instance, or ShellAgent)."""
    name = preset_name(setting)
    if name is None:
        return ShellAgent(setting)
    return _preset_class(name)(setting)

