"""Parallelization settings: `.claude/auto-context.yaml` `parallelization:` with the skill's
defaults, then the file's `overrides:` block (a mapping of the same keys, or keyed by work
type), then `AUTO_PARALLEL_<KEY>` environment variables (e.g. AUTO_PARALLEL_MAX_AGENTS=2).
"""

import os
from dataclasses import dataclass

from engine import store
from engine.errors import OrchestratorError


@dataclass
class Parallelization:
    enabled: bool = True
    min_tasks: int = 3
    max_agents: int = 5
    auto_cleanup: bool = True
    retry_on_failure: int = 3
    agent_timeout: float = 3600.0
    qa_timeout: float = 900.0


_TYPES = {"enabled": bool, "min_tasks": int, "max_agents": int, "auto_cleanup": bool, "retry_on_failure": int,
          "agent_timeout": float, "qa_timeout": float}


def _coerce(key, value, where):
    kind = _TYPES[key]
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
    else:
        try:
            number = kind(str(value).strip()) if not isinstance(value, bool) else None
        except ValueError:
            number = None
        if number is not None and number >= 0 and (key not in ("max_agents",) or number >= 1):
            return number
    raise OrchestratorError(f"ERROR: {where}: `{key}` has an invalid value {value!r}")


def load(root, work_type="", env=None):
    env = os.environ if env is None else env
    path = os.path.join(root, ".claude", "auto-context.yaml")
    data, _ = store.load_yaml_mapping(path)
    data = data or {}
    settings = Parallelization()
    layers = [(data.get("parallelization"), f"{path} parallelization")]
    overrides = data.get("overrides")
    if isinstance(overrides, dict):
        by_type = overrides.get(work_type) if work_type else None
        layers.append(({k: v for k, v in overrides.items() if k in _TYPES}, f"{path} overrides"))
        if isinstance(by_type, dict):
            layers.append((by_type, f"{path} overrides.{work_type}"))
    for layer, where in layers:
        if isinstance(layer, dict):
            for key, value in layer.items():
                if key in _TYPES and value is not None:
                    setattr(settings, key, _coerce(key, value, where))
    for key in _TYPES:
        value = env.get(f"AUTO_PARALLEL_{key.upper()}")
        if value not in (None, ""):
            setattr(settings, key, _coerce(key, value, f"AUTO_PARALLEL_{key.upper()}"))
    return settings
