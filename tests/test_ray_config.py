"""`executor: ray` configuration (no cluster needed) and the promise that the core never
imports Ray."""

import subprocess

import pytest
from hypothesis import given, strategies as st

from tests.conftest import PYTHON, python_env

from engine.config import ConfigError
from engine.ray_executor import RayConfig, attempt_refs, load_config, submission_id


def write_context(root, text):
    (root / ".claude").mkdir(exist_ok=True)
    (root / ".claude" / "auto-context.yaml").write_text(text)


def test_local_is_the_default_and_needs_nothing(tmp_path):
    assert load_config(str(tmp_path), {}, None, env={}) == ("local", None)


def test_context_file_then_plan_then_flag(tmp_path):
    write_context(tmp_path, "executor: ray\nray:\n  remote: /srv/repo.git\n  resources: {agent: 1}\n  num_cpus: 0.5\n")
    kind, config = load_config(str(tmp_path), {}, None, env={"RAY_ADDRESS": "127.0.0.1:8265"})
    assert kind == "ray"
    assert config == RayConfig(address="http://127.0.0.1:8265", remote="/srv/repo.git", resources={"agent": 1.0},
                               num_cpus=0.5)
    plan = {"executor": "ray", "ray": {"address": "http://head:8265", "memory": 4_000_000_000, "ship_code": "no"}}
    _, config = load_config(str(tmp_path), plan, None, env={})
    assert (config.address, config.remote, config.memory, config.ship_code) == (
        "http://head:8265", "/srv/repo.git", 4_000_000_000, False)
    assert load_config(str(tmp_path), plan, "local", env={}) == ("local", None)
    write_context(tmp_path, "ray:\n  remote: /srv/repo.git\n")
    assert load_config(str(tmp_path), {}, "ray", env={"RAY_ADDRESS": "http://h:1"})[0] == "ray"


@pytest.mark.parametrize("context, plan, env, message", [
    ("executor: ray\n", {}, {"RAY_ADDRESS": "http://h:1"}, "no `ray.remote`"),
    ("executor: ray\nray: {remote: /r.git}\n", {}, {}, "no cluster address"),
    ("executor: kubernetes\n", {}, {}, "`executor` must be one of local, ray"),
    ("", {"executor": "ray", "ray": {"resources": {"agent": 0}}}, {}, "`ray.resources.agent` must be a positive"),
    ("", {"ray": {"resources": ["agent"]}}, {}, "`ray.resources` must be a mapping"),
    ("", {"ray": {"remtoe": "/r.git"}}, {}, "unknown setting `ray.remtoe`"),
    ("", {"ray": "local"}, {}, "`ray` must be a mapping"),
    ("", {"ray": {"remote": ""}}, {}, "`ray.remote` must be a non-empty string"),
    ("", {"ray": {"num_cpus": -1}}, {}, "`ray.num_cpus` must be a non-negative number"),
])
def test_bad_settings_are_one_clear_line(tmp_path, context, plan, env, message):
    write_context(tmp_path, context)
    with pytest.raises(ConfigError) as err:
        load_config(str(tmp_path), plan, None, env=env)
    assert message in err.value.line and "\n" not in err.value.line


@given(st.from_regex(r"run-[0-9]{8}-[0-9]{6}", fullmatch=True),
       st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,40}", fullmatch=True), st.integers(1, 10_000))
def test_submission_ids_and_refs_are_plain_and_name_the_attempt(run_id, task, n):
    sid = submission_id(run_id, task, n)
    assert sid.endswith(f"-attempt-{n}") and all(c.isalnum() or c in "_-" for c in sid)
    assert sid != submission_id(run_id, task, n + 1)
    start, result = attempt_refs(run_id, task, n)
    assert (start, result) == (f"refs/orchestrator/{run_id}/{task}/base-{n}",
                               f"refs/orchestrator/{run_id}/{task}/attempt-{n}")


def test_the_core_never_imports_ray():
    code = ("import sys\n"
            "import engine.cli.orchestrator, engine.runner, engine.executor, engine.ray_executor, engine.ray_worker\n"
            "from engine.cli.orchestrator import cli\n"
            "assert 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray'))\n")
    proc = subprocess.run([PYTHON, "-c", code], env=python_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_without_ray_installed_the_backend_says_how_to_get_it():
    code = ("import sys\nsys.modules['ray'] = None\n"
            "from engine.ray_executor import RayBackend, RayConfig, RayExecutorError\n"
            "try:\n    RayBackend(RayConfig(address='http://127.0.0.1:9', remote='r'), '.').client\n"
            "except RayExecutorError as exc:\n    print(exc.line)\n")
    proc = subprocess.run([PYTHON, "-c", code], env=python_env(), capture_output=True, text=True)
    assert proc.stdout.strip() == "ERROR: executor ray needs Ray: pip install 'parallel-orchestrator[ray]'", proc.stderr


def test_the_backend_talks_to_the_remote_one_exchange_at_a_time(tmp_path):
    """Git does not support concurrent fetches into one repository; collecting three attempts
    at once after a resume failed once in CI ("remote.git did not send all necessary
    objects"). The backend's exchanges with the remote (push a start, fetch a start, collect a
    result) now run one at a time; the node's worker fetches into its shared cache under a lock."""
    import threading
    import time

    from engine.ray_executor import RayBackend

    backend = RayBackend(RayConfig(address="http://127.0.0.1:9", remote="r"), str(tmp_path))
    inside, overlaps = [], []

    def exchange():
        with backend._remote("test"):
            overlaps.extend(inside)
            inside.append(threading.current_thread().name)
            time.sleep(0.05)
            inside.pop()

    threads = [threading.Thread(target=exchange) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == []
