"""Configuration values: the skill's defaults, the layers in order, and every value held to
a finite, documented range (refused with one line naming the file, block, key and range)."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import config
from engine.config import LIMITS, ConfigError, Parallelization


def write(root, text):
    (root / ".claude").mkdir(exist_ok=True)
    (root / ".claude" / "auto-context.yaml").write_text(text)


def load(root, work_type="", env=None):
    return config.load(str(root), work_type, env={} if env is None else env)


def test_defaults_are_the_skills(tmp_path):
    assert load(tmp_path) == Parallelization(True, 3, 5, True, 3, 3600.0, 900.0)


def test_layers_in_order(tmp_path):
    write(tmp_path, "parallelization: {max_agents: 4, min_tasks: 2, enabled: 'no'}\n"
                    "overrides: {max_agents: 3, FRONTEND: {max_agents: 2, qa_timeout: 60}}\n"
                    "other_section: {anything: [1, 2]}\n")
    assert (load(tmp_path).max_agents, load(tmp_path).min_tasks, load(tmp_path).enabled) == (3, 2, False)
    front = load(tmp_path, "FRONTEND")
    assert (front.max_agents, front.qa_timeout) == (2, 60.0)
    assert load(tmp_path, "FRONTEND", {"AUTO_PARALLEL_MAX_AGENTS": "7"}).max_agents == 7
    assert load(tmp_path, "", {"AUTO_PARALLEL_ENABLED": "on", "AUTO_PARALLEL_MAX_AGENTS": ""}).enabled is True


@pytest.mark.parametrize("text,message", [
    ("parallelization: {qa_timeout: .inf}", "`qa_timeout` must be a number of seconds from 1 to 2592000, got inf"),
    ("parallelization: {qa_timeout: 1e20}", "`qa_timeout` must be a number of seconds from 1 to 2592000"),
    ("parallelization: {qa_timeout: 0}", "`qa_timeout` must be a number of seconds from 1"),
    ("parallelization: {agent_timeout: .nan}", "`agent_timeout` must be a number of seconds"),
    ("parallelization: {agent_timeout: -5}", "`agent_timeout`"),
    ("parallelization: {max_agents: 300}", "`max_agents` must be a whole number from 1 to 256, got 300"),
    ("parallelization: {max_agents: 0}", "`max_agents` must be a whole number from 1 to 256, got 0"),
    ("parallelization: {max_agents: 2.5}", "got 2.5"),
    ("parallelization: {max_agents: true}", "got true"),
    ("parallelization: {max_agents: '3; rm -rf /'}", "`max_agents` must be a whole number"),
    ("parallelization: {retry_on_failure: 1000}", "`retry_on_failure` must be a whole number from 0 to 100"),
    ("parallelization: {min_tasks: -1}", "`min_tasks`"),
    ("parallelization: {enabled: maybe}", "`enabled` must be true or false, got 'maybe'"),
    ("parallelization: {auto_cleanup: 2}", "`auto_cleanup` must be true or false, got 2"),
    ("parallelization: {max_agents: 100000000000000000000000000000000000000000000000000000000000000000000}",
     "got a number with more than 60 digits"),
    ("parallelization: [max_agents, 3]", "`parallelization` must be a mapping"),
    ("overrides: [1]", "`overrides` must be a mapping"),
    ("overrides: {BACKEND: 3}", "overrides: `'BACKEND'` must be a mapping"),
    ("overrides: {BACKEND: {max_agents: 0}}", "overrides.BACKEND: `max_agents`"),
    ("overrides: {qa_timeout: .inf}", "overrides: `qa_timeout`"),
    ("parallelization: {setup_command: [npm, ci]}", "parallelization: `setup_command` must be one command string"),
    ("worktree: {setup_command: 3}", "worktree: `setup_command` must be one command string"),
])
def test_bad_values_refused_in_every_block(tmp_path, text, message):
    write(tmp_path, text + "\n")
    for work_type in ("", "FRONTEND", "BACKEND"):  # every block is checked, whatever the work type
        with pytest.raises(ConfigError) as info:
            load(tmp_path, work_type)
        assert message in info.value.line and info.value.line.startswith("ERROR: .claude/auto-context.yaml")
        assert "\n" not in info.value.line


@pytest.mark.parametrize("name,value", [("AUTO_PARALLEL_QA_TIMEOUT", "inf"), ("AUTO_PARALLEL_QA_TIMEOUT", "nan"),
                                        ("AUTO_PARALLEL_MAX_AGENTS", "300"), ("AUTO_PARALLEL_ENABLED", "sometimes"),
                                        ("AUTO_PARALLEL_RETRY_ON_FAILURE", "2.5")])
def test_bad_environment_overrides_refused(tmp_path, name, value):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, env={name: value})
    assert info.value.line.startswith(f"ERROR: {name}: `")


@pytest.mark.parametrize("word,expected", [(True, True), ("yes", True), ("On", True), (1, True), ("1", True),
                                           (False, False), ("no", False), ("OFF", False), (0, False)])
def test_booleans_are_booleans_or_the_usual_words(tmp_path, word, expected):
    assert config.check_value("enabled", word, "x") is expected


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from([k for k, (kind, _, _) in LIMITS.items() if kind is not bool]),
       value=st.one_of(st.integers(-10 ** 30, 10 ** 30), st.floats(allow_nan=True, allow_infinity=True),
                       st.text(max_size=12)))
def test_numbers_are_finite_and_in_range_or_refused(key, value):
    kind, low, high = LIMITS[key]
    try:
        result = config.check_value(key, value, "x")
    except ConfigError as exc:
        assert exc.line.startswith(f"ERROR: x: `{key}` must be") and "\n" not in exc.line
        return
    assert isinstance(result, kind) and not isinstance(result, bool)
    assert math.isfinite(result) and low <= result <= high


def test_max_agents_fits_the_pool():
    from engine.pool import MAX_SIZE

    assert config.MAX_AGENTS == MAX_SIZE
