"""A progress file of any shape (issue 20): `status`, `status --json`, `graph`, `graph --tasks`,
`abort`, `resume`, `retry TASK` and the dashboard's snapshot, on a real run's
`.claude/auto-progress.yaml` replaced by random YAML (any nesting of mappings, lists and
scalars at the top level, under `tasks`, under a task, under its known fields). A file of the
wrong shape is one stderr line naming the file and what is wrong, exit 1, nothing changed on
disk (the dashboard: one warning saying the same, the last good copy shown); a file whose
shape is right works as before. Never a traceback, never exit 70 (a bug)."""

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine import demo, store
from engine.errors import format_line
from engine.progress import RUN_FIELDS, TASK_FIELDS, shape_problem
from tests.conftest import PYTHON, git, python_env

TASKS = ["models", "utils", "config", "api", "cli", "tests", "docs"]
COMMANDS = [["status"], ["status", "--json"], ["graph"], ["graph", "--tasks"], ["abort"], ["retry", "cli"],
            ["resume", "--quiet"]]
STATUSES = ["pending", "running", "executed", "verifying", "approved", "merging", "merged", "rejected", "conflicted",
            "failed", "blocked", "blocked_permission", "complete", "stopped", "aborted", "banana"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A real run of the demo plan, complete, kept as it is: each example works on a copy made at
    one fixed path (the run records absolute paths)."""
    base = tmp_path_factory.mktemp("shapes")
    repo = demo.make_repo(str(base / "live"))
    plan = os.path.join(repo, "plan.yaml")
    demo.write_plan(plan)
    git(repo, "add", "plan.yaml")
    git(repo, "commit", "-qm", "plan")
    env = dict(python_env(), DEMO_AGENT_SLEEP="0")
    done = subprocess.run([PYTHON, "-m", "engine.cli.orchestrator", "run", "--all-groups", "--quiet", "plan.yaml"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done
    keep = str(base / "pristine")
    shutil.copytree(repo, keep, symlinks=True)
    with open(os.path.join(keep, ".claude", "auto-progress.yaml")) as fh:
        data = yaml.safe_load(fh)
    assert sorted(data["tasks"]) == sorted(TASKS) and shape_problem(data) is None
    return repo, keep, data, env


def fresh_copy(repo, keep):
    shutil.rmtree(repo)
    shutil.copytree(keep, repo, symlinks=True)


def disk(repo):
    """Every file under .claude (name and bytes), the refs, HEAD and the worktrees."""
    h = hashlib.sha256()
    claude = os.path.join(repo, ".claude")
    for top, dirs, files in sorted(os.walk(claude)):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(top, name)
            h.update(os.path.relpath(path, claude).encode() + b"\0")
            with open(path, "rb") as fh:
                h.update(fh.read() + b"\0")
    dot_git = os.path.join(repo, ".git")  # the refs, HEAD and the worktrees git knows, read directly
    for name in ("HEAD", "packed-refs", "index", "refs", "worktrees"):
        path = os.path.join(dot_git, name)
        for top, dirs, files in sorted(os.walk(path)) if os.path.isdir(path) else [(dot_git, [], [name])]:
            dirs.sort()
            for leaf in sorted(files):
                h.update(os.path.relpath(os.path.join(top, leaf), dot_git).encode() + b"\0")
                with contextlib.suppress(FileNotFoundError), open(os.path.join(top, leaf), "rb") as fh:
                    h.update(fh.read())
    return h.hexdigest()


def in_process(repo, args):
    """The command as its console script runs it (exit-code mapping included), in this process."""
    from engine.cli.common import run
    from engine.cli.orchestrator import cli

    out, err = io.StringIO(), io.StringIO()
    here, handler = os.getcwd(), signal.getsignal(signal.SIGTERM)  # (`resume` sets a SIGTERM handler)
    os.chdir(repo)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                pytest.MonkeyPatch.context() as mp:
            mp.setenv("DEMO_AGENT_SLEEP", "0")
            code = run(cli, "orchestrator", list(args))
    finally:
        os.chdir(here)
        signal.signal(signal.SIGTERM, handler)
    return code, out.getvalue(), err.getvalue()


def subprocess_cli(repo, args, env):
    r = subprocess.run([PYTHON, "-m", "engine.cli.orchestrator", *args], cwd=repo, env=env, capture_output=True,
                       text=True, timeout=300)
    return r.returncode, r.stdout, r.stderr


# ---------------------------------------------------------------------------- random shapes
scalars = (st.none() | st.booleans() | st.integers(-(2 ** 40), 2 ** 40) | st.floats() | st.text(max_size=8)
           | st.sampled_from(STATUSES + ["wt-1", "auto/models", "41638", "plan.yaml", "models", ""]))
keys = st.sampled_from(sorted(set(TASK_FIELDS) | set(RUN_FIELDS) | {"tasks", "x"})) | st.text(max_size=5)
odd_keys = keys | st.integers(-3, 3) | st.booleans() | st.none()
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(odd_keys, inner, max_size=3),
                    max_leaves=8)
task_ids = st.sampled_from(TASKS) | st.sampled_from(["new", "", "a b"]) | st.integers(0, 3) | st.none()
# one change: where it goes, and what
changes = st.one_of(
    st.tuples(st.just("top"), st.just(None), st.just(None), junk),
    st.tuples(st.just("run"), st.sampled_from(sorted(RUN_FIELDS) + ["tasks", "parallel_groups", "x"]), st.just(None),
              junk),
    st.tuples(st.just("task"), task_ids, st.just(None), junk),
    st.tuples(st.just("field"), st.sampled_from(TASKS), st.sampled_from(
        ["status", "iterations", "depends_on", "files", "slot", "attempts", "pid", "pid_start", "retry_count", "group",
         "elapsed", "cost_usd", "verify"] + sorted(TASK_FIELDS)), junk | st.sampled_from(STATUSES)),
    st.tuples(st.just("group"), st.sampled_from(["group_1", "group_2", "group_9"]), st.sampled_from(["tasks", None]),
              junk),
)


def apply(data, change):
    where, key, sub, value = change
    if where == "top":
        return value
    if not isinstance(data, dict):
        return data
    if where == "run":
        data[key] = value
    elif where == "task":
        if isinstance(data.get("tasks"), dict):
            data["tasks"][key] = value
    elif where == "field":
        if isinstance(data.get("tasks"), dict) and isinstance(data["tasks"].get(key), dict):
            data["tasks"][key][sub] = value
    elif isinstance(data.get("parallel_groups"), dict):
        groups = data["parallel_groups"]
        if sub is None:
            groups[key] = value
        elif isinstance(groups.get(key), dict):
            groups[key][sub] = value
    return data


def render(document):
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)


# ---------------------------------------------------------------------------- the property
def check(pristine, text, real):
    repo, keep, _, env = pristine
    fresh_copy(repo, keep)
    progress = os.path.join(repo, ".claude", "auto-progress.yaml")
    with open(progress, "w") as fh:
        fh.write(text)
    parsed = store.parse_yaml(text, progress)  # as the engine reads it (timestamps stay strings)
    problem = shape_problem({} if parsed is None else parsed)
    before = disk(repo)
    for args in COMMANDS:
        code, out, err = subprocess_cli(repo, args, env) if real else in_process(repo, args)
        what = (args, text[:2000], code, out[-1000:], err[-1000:])
        assert "Traceback" not in err and "internal error" not in err, what
        assert code in (0, 1), what
        if problem:
            assert code == 1, what
            if isinstance(parsed, dict):  # the one line: the file, what is wrong
                assert err == format_line(f".claude/auto-progress.yaml: {problem} (file left untouched)") + "\n", what
            else:
                assert err == format_line(f"cannot parse {progress}: top level is not a mapping "
                                          "(file left untouched)") + "\n", what
            assert disk(repo) == before, what  # nothing written, nothing moved
    from engine.dashboard.model import RunModel

    snap = RunModel(repo).snapshot()
    json.dumps(snap, allow_nan=False)
    named = [w for w in snap["warnings"] if "auto-progress.yaml" in w]
    if problem:
        assert named == [f".claude/auto-progress.yaml: {problem}: showing the last good copy"], snap["warnings"]
        assert len(snap["tasks"]) == len(TASKS)  # the writer's last good copy
    else:
        assert named == [], snap["warnings"]
    if problem:
        assert disk(repo) == before


SLOW = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]


@settings(max_examples=35, deadline=None, suppress_health_check=SLOW)
@given(picks=st.lists(changes, min_size=1, max_size=3), real=st.integers(0, 9).map(lambda n: n == 7))
@example(picks=[("run", "tasks", None, [1, 2])], real=True)
@example(picks=[("task", "models", None, "x")], real=True)
@example(picks=[("field", "models", "iterations", "x")], real=False)
@example(picks=[("run", "status", None, 5)], real=False)
@example(picks=[("top", None, None, [{"tasks": {}}])], real=False)
@example(picks=[("field", "cli", "status", [1])], real=False)
@example(picks=[("task", 5, None, {})], real=False)
@example(picks=[("field", "api", "depends_on", "models")], real=False)
@example(picks=[("field", "api", "attempts", [["n", 1]])], real=False)
@example(picks=[("run", "parallel_groups", None, [1])], real=False)
@example(picks=[("group", "group_1", "tasks", {"a": 1})], real=False)
def test_any_shape_is_one_line_naming_the_file_or_works(pristine, picks, real):
    document = json.loads(json.dumps(pristine[2]))
    for change in picks:
        document = apply(document, change)
    check(pristine, render(document), real)


@pytest.mark.parametrize("text, problem", [
    ("x: &a [*a]\ntasks: {}\n", "x[0] repeats a value through a YAML alias"),
    ("x: &a {b: 1}\ny: *a\ntasks: {}\n", "x repeats a value through a YAML alias"),
    ("? !!binary aGk=\n: 1\ntasks: {a: {status: merged}}\n", "the top level has the key b'hi', a bytes"),
    ("x: !!pairs [a: {? !!binary aGk= : 1}]\ntasks: {}\n", "x[0][1] has the key b'hi', a bytes"),
    ("tasks:\n", "tasks is null, expected a mapping"),
    ("tasks: {a: }\n", "tasks.a is null, expected a mapping (a task)"),
    ('plan_file: "a\\0b"\ntasks: {a: {}}\n', "plan_file holds a NUL character"),
    ('tasks: {"a\\0": {}}\n', "tasks has the key 'a\\x00', which holds a NUL character"),
    ("tasks: {models: {status: pending, base_commit: --help}}\n",
     "tasks.models.base_commit is the string '--help', expected a commit id"),
])
def test_yaml_only_a_hand_can_write(pristine, text, problem):
    """Aliases (a loop, or a value shared by two places), keys JSON cannot hold, nulls where the
    engine adds to a mapping, a NUL or an option where git wants a name: what a generator of
    plain data rarely or never produces."""
    assert shape_problem(store.parse_yaml(text, "-")).startswith(problem)
    check(pristine, text, real=True)
