"""Task data in environment variables: hostile values (NUL bytes, values over the kernel's
per-string limit, a bloated environment) reach a real agent cleaned and bounded, with the
whole text in a file, or fail that launch with AgentLaunchError — never the run."""

import os
import subprocess
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.agent_env import MAX_ARG_STRLEN, VALUE_LIMIT, AgentLaunchError, prepare_env
from engine.executor import AgentSpec, read_exit, run_agent

# The agent: records what it got (lengths, NULs cannot be in env at all) and copies the files.
RECORDER = ("printf '%s' \"$TASK_DESCRIPTION\" > seen-description; printf '%s' \"$QA_FEEDBACK\" > seen-feedback; "
            "cp \"$TASK_DESCRIPTION_FILE\" file-description; cp \"$QA_FEEDBACK_FILE\" file-feedback; "
            "env > seen-env")


def spec_for(tmp_path, env, command=RECORDER, **kw):
    work = tmp_path / "wt"
    work.mkdir(exist_ok=True)
    logs = tmp_path / "logs"
    return AgentSpec("t1", command, str(work), env, str(logs / "t1.log"),
                     exit_path=str(logs / "t1.attempt-1.exit"), **kw)


def test_nul_and_huge_description_reach_the_agent_cleaned_bounded_and_whole_in_a_file(tmp_path):
    description = "fix the\0bug " + "d" * 140000 + " END"
    feedback = "line\n" * 10 + "x" * 200000 + "\0tail"
    spec = spec_for(tmp_path, {"TASK_ID": "t1", "TASK_DESCRIPTION": description, "QA_FEEDBACK": feedback})
    result = run_agent(spec)
    assert result.exit_code == 0 and not result.interrupted
    work = tmp_path / "wt"
    seen = (work / "seen-description").read_bytes()
    assert b"\0" not in seen and len(seen) <= VALUE_LIMIT
    assert seen.startswith(b"fix the\\0bug ddd") and seen.endswith(b" END")
    assert b"TASK_DESCRIPTION_FILE" in seen  # the note says where the whole text is
    assert (work / "file-description").read_bytes() == description.encode()
    fed = (work / "seen-feedback").read_bytes()
    assert len(fed) <= VALUE_LIMIT and fed.endswith(b"\\0tail")
    assert (work / "file-feedback").read_bytes() == feedback.encode()
    assert read_exit(spec.exit_path) == 0


def test_small_values_pass_unchanged_and_files_are_offered_anyway(tmp_path):
    values = prepare_env({"TASK_ID": "t1", "TASK_DESCRIPTION": "add a button", "QA_FEEDBACK": "",
                          "TASK_FILES": "a.py\nb.py"}, str(tmp_path / "data"))
    assert values["TASK_DESCRIPTION"] == "add a button" and values["TASK_FILES"] == "a.py\nb.py"
    assert open(values["TASK_DESCRIPTION_FILE"]).read() == "add a button"
    assert open(values["QA_FEEDBACK_FILE"]).read() == ""
    assert "TASK_ID_FILE" not in values and "TASK_FILES_FILE" not in values


def test_launch_inputs_are_written_whole_without_waiting_for_the_disk(tmp_path, monkeypatch):
    """The task-data files and a `claude` attempt's argv and prompt feed a process started
    right after them and are written again at every launch: replaced atomically (the old
    file or the new one), never flushed (an fsync is 1-3 ms of every hand-over). A state
    file still is, file and directory."""
    from engine import claude, store

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    values = prepare_env({"TASK_DESCRIPTION": "x" * 10, "QA_FEEDBACK": "fix it"}, str(tmp_path / "data"))
    env = claude.attempt_env(["claude", "-p", "--", "the prompt"], str(tmp_path / "attempt.jsonl"))
    assert open(values["QA_FEEDBACK_FILE"]).read() == "fix it" and synced == []
    assert open(claude.spec_paths(env[claude.STREAM_ENV])[1]).read() == "the prompt"
    store.atomic_write(str(tmp_path / "state.yaml"), "a: 1\n")
    assert len(synced) == 2


def test_any_value_that_was_cut_gets_a_file(tmp_path):
    values = prepare_env({"TASK_VERIFY": "v" * 100000, "TASK_FILES": "a\0b"}, str(tmp_path / "data"))
    assert len(values["TASK_VERIFY"].encode()) <= VALUE_LIMIT
    assert open(values["TASK_VERIFY_FILE"]).read() == "v" * 100000
    assert values["TASK_FILES"] == "a\\0b"
    assert open(values["TASK_FILES_FILE"], "rb").read() == b"a\0b"


def test_bloated_inherited_environment_shrinks_our_values_to_fit(tmp_path):
    inherited = {f"BIG{i}": "z" * 100000 for i in range(int(os.sysconf("SC_ARG_MAX") // 100000) - 3)}
    values = prepare_env({"TASK_DESCRIPTION": "q" * 60000}, str(tmp_path / "d"), inherited=inherited)
    assert len(values["TASK_DESCRIPTION"]) < 60000
    assert open(values["TASK_DESCRIPTION_FILE"]).read() == "q" * 60000


def test_environment_that_cannot_fit_raises_agent_launch_error(tmp_path):
    inherited = {f"BIG{i}": "z" * 120000 for i in range(int(os.sysconf("SC_ARG_MAX") // 120000) + 1)}
    with pytest.raises(AgentLaunchError, match="too large"):
        prepare_env({"TASK_DESCRIPTION": "q"}, str(tmp_path / "d"), inherited=inherited)


def test_invalid_name_raises_agent_launch_error(tmp_path):
    for name in ("A=B", "", "NUL\0NAME", "1X"):
        with pytest.raises(AgentLaunchError, match="not a valid environment variable name"):
            prepare_env({name: "v"}, str(tmp_path / "d"))


def test_run_agent_in_a_missing_worktree_raises_agent_launch_error(tmp_path):
    spec = AgentSpec("t1", "true", str(tmp_path / "deleted"), {}, str(tmp_path / "logs" / "t1.log"))
    with pytest.raises(AgentLaunchError, match="does not exist"):
        run_agent(spec)


def test_files_dir_symlink_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, tmp_path / "data")
    with pytest.raises(AgentLaunchError, match="symbolic link"):
        prepare_env({"TASK_DESCRIPTION": "x"}, str(tmp_path / "data"))
    assert os.listdir(elsewhere) == []


def test_link_above_the_files_dir_is_refused_under_a_trusted_root(tmp_path):
    """A cloned repository's `.claude/auto-logs -> elsewhere`: nothing is written there."""
    from engine import store

    store.trust(str(tmp_path))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / ".claude").mkdir()
    os.symlink(elsewhere, tmp_path / ".claude" / "auto-logs")
    with pytest.raises(AgentLaunchError, match="symbolic link"):
        prepare_env({"TASK_DESCRIPTION": "x"}, str(tmp_path / ".claude" / "auto-logs" / "t.attempt-1.data"))
    assert os.listdir(elsewhere) == []


def test_run_agent_reports_an_attempt_we_stopped_as_interrupted(tmp_path):
    cancel = threading.Event()
    spec = spec_for(tmp_path, {"TASK_ID": "t1"}, command="touch started; sleep 60")
    threading.Timer(0.5, cancel.set).start()
    result = run_agent(spec, cancel=cancel)
    assert result.interrupted and result.exit_code != 0
    assert read_exit(spec.exit_path) is None  # nothing for a resume to collect: it re-runs


def test_run_agent_records_exit_status_and_logs_a_header(tmp_path):
    seen = []
    spec = spec_for(tmp_path, {"TASK_ID": "t1"}, command="echo working; exit 2")
    result = run_agent(spec, on_start=lambda pid, start: seen.append(pid))
    assert result.exit_code == 2 and not result.timed_out and not result.interrupted
    assert result.denied == () and result.reason is None and result.details is None
    assert read_exit(spec.exit_path) == 2
    log = open(spec.log_path).read().splitlines()
    assert log[0].startswith("=== ") and log[0].endswith("t1: echo working; exit 2") and log[1] == "working"
    assert len(seen) == 1


def test_run_agent_timeout(tmp_path):
    spec = spec_for(tmp_path, {"TASK_ID": "t1"}, command="sleep 60", timeout=0.5)
    result = run_agent(spec)
    assert result.timed_out and read_exit(spec.exit_path) is None


texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=3000)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,10}", fullmatch=True), texts, max_size=5),
       limit=st.integers(min_value=1024, max_value=4096))
def test_every_value_is_nul_free_bounded_and_kept_whole(tmp_path, values, limit):
    out = prepare_env(values, str(tmp_path / "d"), value_limit=limit)
    for name, value in values.items():
        passed = out[name]
        assert "\0" not in passed
        assert len(passed.encode("utf-8", "surrogateescape")) <= limit
        if f"{name}_FILE" in out:
            assert open(out[f"{name}_FILE"], "rb").read() == value.encode()
        else:
            assert passed == value
    for name in values:
        assert len(name) + len(out[name].encode("utf-8", "surrogateescape")) + 2 <= MAX_ARG_STRLEN


def test_cleaned_values_really_pass_exec(tmp_path):
    """A value with NUL and one far over MAX_ARG_STRLEN: exec succeeds with the cleaned ones."""
    out = prepare_env({"A": "x\0y", "B": "b" * (MAX_ARG_STRLEN + 10)}, str(tmp_path / "d"))
    proc = subprocess.run(["/bin/sh", "-c", 'printf "%s" "$A"'], env=dict(os.environ, **out),
                          capture_output=True, check=True)
    assert proc.stdout == b"x\\0y"


def test_lone_surrogate_and_bytes_values_pass(tmp_path):
    """Text that cannot be encoded as it is (a lone surrogate from a hostile YAML or JSON
    escape) and raw bytes that are not UTF-8 still reach the agent, escaped."""
    spec = spec_for(tmp_path, {"TASK_ID": "t1", "TASK_DESCRIPTION": "half \ud800 pair", "TASK_FILES": b"\xff\xfe"},
                    command='printf %s "$TASK_DESCRIPTION" > seen-d; printf %s "$TASK_FILES" > seen-f')
    assert run_agent(spec).exit_code == 0
    assert (tmp_path / "wt" / "seen-d").read_bytes() == b"half \\ud800 pair"
    assert (tmp_path / "wt" / "seen-f").read_bytes() == b"\xff\xfe"
