"""Parallelization settings: `.claude/auto-context.yaml` `parallelization:` with the skill's
defaults, then the file's `overrides:` block (a mapping of the same keys, or keyed by work
type), then `AUTO_PARALLEL_<KEY>` environment variables (e.g. AUTO_PARALLEL_MAX_AGENTS=2).

Every value is checked where it is read, and every block is checked on every load (all
work types' overrides, not only the one this run uses), so a file that loads for
`orchestrator validate` is a file no later step can trip over. Numbers must be finite and
in the documented range (`LIMITS`); booleans are real booleans or the usual words.
Unknown keys are tolerated (the skill's file carries other sections, e.g. `setup_command`).
"""

import math
import os
from dataclasses import dataclass

from engine import store
from engine.errors import OrchestratorError
from engine.paths import CONTEXT_REL, Layout

MAX_AGENTS = 256  # the pool's largest size (engine.pool.MAX_SIZE): one slot per agent
MAX_SECONDS = 30 * 24 * 3600  # 30 days: longer is a typo, and beyond a float timeout's reach


@dataclass
class Parallelization:
    enabled: bool = True
    min_tasks: int = 3
    max_agents: int = 5
    auto_cleanup: bool = True
    retry_on_failure: int = 3
    agent_timeout: float = 3600.0
    qa_timeout: float = 900.0


# key -> (kind, lowest, highest); the README's configuration section lists the same ranges.
LIMITS = {"enabled": (bool, None, None), "min_tasks": (int, 0, 10000), "max_agents": (int, 1, MAX_AGENTS),
          "auto_cleanup": (bool, None, None), "retry_on_failure": (int, 0, 100),
          "agent_timeout": (float, 1, MAX_SECONDS), "qa_timeout": (float, 1, MAX_SECONDS)}

TRUE_WORDS = ("1", "true", "yes", "on", "y")
FALSE_WORDS = ("0", "false", "no", "off", "n")


class ConfigError(OrchestratorError):
    """A configuration value that no run could use."""


def boolean(value):
    """A real boolean, 0/1, or one of the usual words; None when it is none of them."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in TRUE_WORDS:
            return True
        if text in FALSE_WORDS:
            return False
    return None


def number(value, whole=False):
    """A finite int/float (or its text); None for anything else (bools, NaN, inf, 2.5 when whole)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text) if whole and text.lstrip("+-").isdigit() else float(text)
        except ValueError:
            return None
    if not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
        return None
    if whole:
        if isinstance(value, float) and not value.is_integer():
            return None
        return int(value)
    try:
        return float(value)
    except OverflowError:  # an int beyond any float
        return None


def _show(value):
    """A short, printable rendering of a bad value for the error line."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int) and value.bit_length() > 200:
        return "a number with more than 60 digits"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:40] + "…"


def check_value(key, value, where):
    """The value of setting KEY, or raise ConfigError naming WHERE and the allowed range."""
    kind, low, high = LIMITS[key]
    if kind is bool:
        result = boolean(value)
        if result is None:
            raise ConfigError(f"{where}: `{key}` must be true or false, got {_show(value)}")
        return result
    result = number(value, whole=kind is int)
    if result is None or not low <= result <= high:
        what = "a whole number" if kind is int else "a number of seconds"
        raise ConfigError(f"{where}: `{key}` must be {what} from {low} to {high}, got {_show(value)}")
    return result


def seconds(value, where, key="timeout"):
    """A task's own timeout, held to the same range as agent_timeout and qa_timeout."""
    result = number(value)
    low, high = LIMITS["agent_timeout"][1:]
    if result is None or not low <= result <= high:
        raise ConfigError(f"{where}: `{key}` must be a number of seconds from {low} to {high}, "
                          f"got {_show(value)}")
    return result


def _layers(data):
    """Every block of settings in the file as (where, mapping, work type or None), all checked
    for shape: `parallelization`, the `overrides` keys, and each `overrides.<TYPE>` block."""
    rel = CONTEXT_REL
    layers = []
    section = data.get("parallelization")
    if section is not None and not isinstance(section, dict):
        raise ConfigError(f"{rel}: `parallelization` must be a mapping")
    layers.append((f"{rel} parallelization", section or {}, None))
    overrides = data.get("overrides")
    if overrides is None:
        return layers
    if not isinstance(overrides, dict):
        raise ConfigError(f"{rel}: `overrides` must be a mapping")
    layers.append((f"{rel} overrides", {k: v for k, v in overrides.items() if k in LIMITS}, None))
    for work_type, block in overrides.items():
        if work_type in LIMITS:
            continue
        if not isinstance(block, dict):
            raise ConfigError(f"{rel} overrides: `{_show(work_type)}` must be a mapping of settings "
                              f"(or a setting: {', '.join(LIMITS)})")
        layers.append((f"{rel} overrides.{work_type}", block, str(work_type)))
    return layers


def _check_setup_command(data):
    """`setup_command` (engine.worktree reads it from `worktree:` or `parallelization:`) runs in
    every leased worktree: a list or a number there would fail every acquire."""
    rel = CONTEXT_REL
    for section in ("worktree", "parallelization"):
        block = data.get(section)
        command = block.get("setup_command") if isinstance(block, dict) else None
        if command is not None and (not isinstance(command, str) or "\0" in command):
            raise ConfigError(f"{rel} {section}: `setup_command` must be one command string")


def load(root, work_type="", env=None):
    """The settings for WORK_TYPE; raises ConfigError (one line) for any bad value anywhere in
    the file or in AUTO_PARALLEL_* -- including other work types' blocks."""
    env = os.environ if env is None else env
    data, _ = store.load_yaml_mapping(Layout(root).context)
    settings = Parallelization()
    _check_setup_command(data or {})
    for where, block, block_type in _layers(data or {}):
        for key, value in block.items():
            if key not in LIMITS or value is None:
                continue
            checked = check_value(key, value, where)
            if block_type is None or block_type == work_type:
                setattr(settings, key, checked)
    for key in LIMITS:
        name = f"AUTO_PARALLEL_{key.upper()}"
        value = env.get(name)
        if value not in (None, ""):
            setattr(settings, key, check_value(key, value, name))
    return settings
