"""Every row of CONTRACT.md §2.1 through the CLI: stdout lines and exit codes exactly."""

import json
import os

import pytest
import yaml

from engine import machine
from engine.skills import mandatory_skills

STATE = ".claude/auto-state-machine.yaml"
BANNER = "State Transition Engine v3.1"


def load():
    with open(STATE) as fh:
        return yaml.safe_load(fh)


def raw():
    with open(STATE, "rb") as fh:
        return fh.read()


# ----------------------------------------------------------------------------- init
def test_init_default_writes_template(st):
    r = st("init")
    assert (r.code, r.lines, r.err) == (0, ["State machine initialized at .claude/auto-state-machine.yaml"], "")
    data = load()
    assert data["version"] == "3.1"
    assert data["current_state"] == "IDLE"
    assert data["previous_state"] == ""
    assert data["work_type"] == ""
    for key in ("focus", "mandatory_skills", "completed_phases", "checkpoint_files"):
        assert data[key] == []
    assert data["session_id"].startswith("auto-") and len(data["session_id"]) == len("auto-20260101-000000")
    assert data["started_at"].endswith("Z") and isinstance(data["started_at"], str)
    assert data["token_usage"] == {"estimated": 0, "budget": 200000, "warning_threshold": 0.8,
                                   "checkpoint_threshold": 0.95}
    assert os.path.isdir(".claude/auto-memory")
    assert raw().startswith(b"# Autonomous-Dev State Machine v3.0\n")


def test_init_state_argument_and_overwrite(st):
    st("init")
    st("work-type", "BACKEND")
    r = st("init", "EXECUTE")
    assert r.code == 0
    data = load()
    assert data["current_state"] == "EXECUTE" and data["work_type"] == ""


@pytest.mark.parametrize("bad", ["BOGUS", "idle", "", " IDLE", "IDLE\"\nx: 1", "../x", "$(touch p)"])
def test_init_rejects_invalid_state_and_creates_nothing(st, bad):
    r = st("init", bad) if bad else st("init", "")
    if bad == "":
        assert r.code == 0  # an empty argument means the default, as in the original
        return
    assert r.code == 1
    assert r.out == ""
    shown = bad.replace("\n", "\\n")  # echoed values are escaped: the error stays one line
    assert r.err.startswith(f"ERROR: Invalid state '{shown}'. Valid states: IDLE DETECT")
    assert not os.path.exists(".claude")
    assert not os.path.exists("p")


# ----------------------------------------------------------------------------- state
def test_state_missing_file_is_idle(st):
    r = st("state")
    assert (r.code, r.out) == (0, "IDLE\n")
    assert not os.path.exists(".claude")


def test_state_null_value_is_idle(st):
    os.makedirs(".claude")
    with open(STATE, "w") as fh:
        fh.write("current_state:\nwork_type: BACKEND\n")
    assert st("state").out == "IDLE\n"


def test_state_json(st):
    st("init", "PLAN")
    r = st("state", "--json")
    payload = json.loads(r.out)
    assert payload["initialized"] is True and payload["current_state"] == "PLAN"
    assert payload["state"]["version"] == "3.1"


# ----------------------------------------------------------------------------- work-type
def test_work_type_get_missing_and_empty(st):
    assert st("work-type").out == "\n"
    assert st("work-type", "").out == "\n"
    assert not os.path.exists(".claude")


def test_work_type_set_on_missing_file_inits_first(st):
    r = st("work-type", "FRONTEND", "ui,forms", "0.85")
    assert r.code == 0
    assert r.lines == ["State machine initialized at .claude/auto-state-machine.yaml",
                       "Work type set to: FRONTEND (confidence: 0.85)"]
    data = load()
    assert data["current_state"] == "IDLE"
    assert data["work_type"] == "FRONTEND"
    assert data["classification_confidence"] == 0.85
    assert data["focus"] == ["ui", "forms"]
    assert st("work-type").out == "FRONTEND\n"


def test_work_type_default_confidence_and_skills_for_current_state(st):
    st("init", "PLAN")
    r = st("work-type", "BACKEND")
    assert r.lines == ["Work type set to: BACKEND (confidence: 1.0)"]
    data = load()
    assert data["classification_confidence"] == 1.0
    assert data["mandatory_skills"] == mandatory_skills("PLAN", "BACKEND")
    assert data["focus"] == []  # an empty focus leaves focus alone


def test_work_type_unknown_type_is_accepted_as_data(st):
    st("init")
    hostile = 'BACKEND" | .current_state = "COMPLETE'
    r = st("work-type", hostile)
    assert r.code == 0
    data = load()
    assert data["work_type"] == hostile and data["current_state"] == "IDLE"


def test_work_type_empty_confidence_means_default(st):
    r = st("work-type", "BACKEND", "", "")  # `work-type "$T" "$F" "$C"` with $C unset, as bash's ${4:-1.0}
    assert r.lines[-1] == "Work type set to: BACKEND (confidence: 1.0)"
    assert load()["classification_confidence"] == 1.0


@pytest.mark.parametrize("confidence", ["high", "1.0; touch p", "nan", "inf", "0x10", "1,5", " "])
def test_work_type_bad_confidence_changes_nothing(st, confidence):
    st("init")
    before = raw()
    r = st("work-type", "BACKEND", "", confidence)
    assert r.code == 1 and r.out == ""
    assert "confidence must be" in r.err and len(r.err.splitlines()) == 1
    assert raw() == before


# ----------------------------------------------------------------------------- transition
def test_transition_missing_argument(st):
    r = st("transition")
    assert (r.code, r.out, r.err) == (1, "", "Usage: state-transition transition <new_state>\n")


def test_transition_invalid_state(st):
    st("init")
    before = raw()
    r = st("transition", "BRAINSTORM")
    assert r.code == 1 and r.out == ""
    assert r.err == f"ERROR: Invalid state 'BRAINSTORM'. Valid states: {' '.join(machine.STATES)}\n"
    assert raw() == before


def test_transition_on_missing_file_initialises_at_target_with_skills(st):
    r = st("transition", "PARALLELIZE")
    assert r.code == 0
    assert r.lines == ["State machine initialized at .claude/auto-state-machine.yaml",
                       "MANDATORY_SKILLS: task-decomposer,parallel-orchestrator"]
    data = load()
    assert data["current_state"] == "PARALLELIZE"
    assert data["mandatory_skills"] == ["task-decomposer", "parallel-orchestrator"]


def test_transition_normal(st):
    st("init")
    st("work-type", "FULLSTACK")
    r = st("transition", "DETECT")
    assert r.lines == ["Transitioned: IDLE -> DETECT", "MANDATORY_SKILLS: project-detector,work-type-classifier"]
    r = st("transition", "CLASSIFY")
    assert r.lines == ["Transitioned: DETECT -> CLASSIFY"]  # no skills line for an empty list
    data = load()
    assert data["previous_state"] == "DETECT" and data["current_state"] == "CLASSIFY"
    assert data["completed_phases"] == ["IDLE", "DETECT"]
    assert data["mandatory_skills"] == []
    assert data["last_transition"].endswith("Z")


def test_integrate_self_loop_and_no_duplicate_phases(st):
    st("transition", "PARALLELIZE")
    assert st("transition", "INTEGRATE").lines == ["Transitioned: PARALLELIZE -> INTEGRATE"]
    assert st("transition", "INTEGRATE").lines == ["Transitioned: INTEGRATE -> INTEGRATE"]
    assert load()["completed_phases"] == ["PARALLELIZE", "INTEGRATE"]


def test_illegal_transition_refused_file_byte_identical(st):
    st("init", "EXECUTE")
    before = raw()
    journal_before = open(".claude/auto-journal.jsonl", "rb").read()
    r = st("transition", "SMART_VERIFY")
    assert r.code == 1 and r.out == ""
    assert r.err.startswith("ERROR: Invalid transition EXECUTE -> SMART_VERIFY. Allowed: IDLE, PARALLELIZE")
    assert len(r.err.splitlines()) == 1
    assert raw() == before
    assert open(".claude/auto-journal.jsonl", "rb").read() == journal_before


def test_force_overrides_and_is_journaled(st):
    st("init", "EXECUTE")
    r = st("transition", "--force", "SMART_VERIFY")
    assert r.code == 0 and r.lines[0] == "Transitioned: EXECUTE -> SMART_VERIFY"
    hist = json.loads(st("history", "--json").out)
    assert hist[-1]["event"] == "transition" and hist[-1]["forced"] is True
    r = st("transition", "COMPLETE", "--force")  # legal anyway: not recorded as forced
    assert json.loads(st("history", "--json").out)[-1]["forced"] is False


def test_transition_from_hand_written_unknown_state_is_allowed(st):
    os.makedirs(".claude")
    with open(STATE, "w") as fh:
        fh.write("current_state: BRAINSTORM\n")
    r = st("transition", "PLAN")
    assert r.code == 0 and r.lines[0] == "Transitioned: BRAINSTORM -> PLAN"


# ----------------------------------------------------------------------------- checkpoint
def test_checkpoint_usage_and_uninitialised(st):
    r = st("checkpoint")
    assert (r.code, r.err) == (1, "Usage: state-transition checkpoint <file_path> [description]\n")
    r = st("checkpoint", "a.md")
    assert (r.code, r.out, r.err) == (1, "", "ERROR: State machine not initialized\n")
    assert not os.path.exists(".claude")


def test_checkpoint_appends_list_and_memory_file(st):
    st("init", "EXECUTE")
    assert st("checkpoint", "src/a.py", "first cut").lines == ["Checkpoint added: src/a.py"]
    assert st("checkpoint", "src/b.py").lines == ["Checkpoint added: src/b.py"]
    assert load()["checkpoint_files"] == ["src/a.py", "src/b.py"]
    text = open(".claude/auto-memory/execute-checkpoint.md").read()
    blocks = text.split("\n\n")
    assert blocks[0].splitlines()[0] == "## Checkpoint: src/a.py"
    assert blocks[0].splitlines()[1].startswith("- Time: 20")
    assert blocks[0].splitlines()[2] == "- Description: first cut"
    assert blocks[1].splitlines()[0] == "## Checkpoint: src/b.py" and len(blocks[1].splitlines()) == 2


def test_checkpoint_creates_missing_memory_dir(st):
    st("init")
    os.rmdir(".claude/auto-memory")
    assert st("checkpoint", "x").code == 0
    assert os.path.exists(".claude/auto-memory/idle-checkpoint.md")


def test_checkpoint_hostile_values_are_data(st):
    st("init")
    for value in ['a" | .current_state = "COMPLETE', "-rf", "$(touch p)", "ünïcödé ✓"]:
        assert st("checkpoint", value).code == 0
    assert load()["checkpoint_files"][-1] == "ünïcödé ✓"
    assert load()["current_state"] == "IDLE" and not os.path.exists("p")
    before = raw()
    r = st("checkpoint", "two\nlines")
    assert r.code == 1 and "control characters" in r.err and raw() == before


def test_checkpoint_with_unsafe_state_name_stays_in_memory_dir(st):
    os.makedirs(".claude/auto-memory")
    with open(STATE, "w") as fh:
        fh.write("current_state: ../../escape\n")
    assert st("checkpoint", "x").code == 0
    assert os.listdir(".claude/auto-memory") == ["______escape-checkpoint.md"]
    assert not os.path.exists("../escape-checkpoint.md")


# ----------------------------------------------------------------------------- tokens
def test_tokens_without_session_is_silent(st):
    r = st("tokens", "5000")
    assert (r.code, r.out, r.err) == (0, "", "")
    assert not os.path.exists(".claude")


def test_tokens_thresholds_and_exit_codes(st):
    st("init")
    assert (st("tokens", "1000").code, load()["token_usage"]["estimated"]) == (0, 1000)
    r = st("tokens", "169000")
    assert (r.code, r.lines) == (1, ["TOKEN_WARNING: Usage at 85% - start summarization"])
    r = st("tokens", "20000")
    assert (r.code, r.lines) == (2, ["TOKEN_CHECKPOINT: Usage at 95% - checkpoint required"])
    assert load()["token_usage"]["estimated"] == 190000


def test_tokens_compared_unrounded(st):
    st("init")
    r = st("tokens", "159000")  # 0.795: the original rounded this up to 0.80 and warned
    assert (r.code, r.out) == (0, "")


def test_tokens_negative_amount(st):
    st("init")
    st("tokens", "100")
    assert st("tokens", "-40").code == 0
    assert load()["token_usage"]["estimated"] == 60


@pytest.mark.parametrize("amount", ["abc", "1.5", "name[$(touch p)]", "1e3", "--", " "])
def test_tokens_bad_amount_changes_nothing(st, amount):
    st("init")
    before = raw()
    r = st("tokens", amount)
    assert r.code == 1 and r.out == ""
    assert len(r.err.strip().splitlines()) == 1
    assert raw() == before
    assert not os.path.exists("p")


def test_tokens_on_hand_written_file_without_token_usage(st):
    os.makedirs(".claude")
    with open(STATE, "w") as fh:
        fh.write("current_state: EXECUTE\n")
    r = st("tokens", "190000")
    assert r.code == 2
    assert load()["token_usage"] == {"estimated": 190000}


# ----------------------------------------------------------------------------- resume
def test_resume_without_session(st):
    r = st("resume")
    assert (r.code, r.out) == (1, "NO_SESSION\n")


def test_resume_lines(st):
    st("init")
    st("work-type", "BACKEND")
    st("transition", "PARALLELIZE")
    st("transition", "INTEGRATE")
    st("checkpoint", "x.md")
    sid = load()["session_id"]
    r = st("resume")
    assert r.code == 0
    assert r.lines == [f"SESSION_ID: {sid}", "CURRENT_STATE: INTEGRATE", "WORK_TYPE: BACKEND",
                       "COMPLETED_PHASES: IDLE,PARALLELIZE", "MEMORY_FILES:",
                       "  - .claude/auto-memory/integrate-checkpoint.md"]
    payload = json.loads(st("resume", "--json").out)
    assert payload["completed_phases"] == ["IDLE", "PARALLELIZE"]


def test_resume_on_hand_written_file_missing_keys(st):
    os.makedirs(".claude")
    with open(STATE, "w") as fh:
        fh.write("current_state: EXECUTE\ninitialized: true\n")
    r = st("resume")
    assert r.code == 0
    assert r.lines == ["SESSION_ID: ", "CURRENT_STATE: EXECUTE", "WORK_TYPE: ", "COMPLETED_PHASES: "]


def test_resume_empty_memory_dir_still_prints_header(st):
    st("init")
    assert st("resume").lines[-1] == "MEMORY_FILES:"


# ----------------------------------------------------------------------------- skills
@pytest.mark.parametrize("state", machine.CONTRACT_STATES)
@pytest.mark.parametrize("work_type", ["FRONTEND", "BACKEND", "FULLSTACK", "RESEARCH", "TESTING", "", "frontend"])
def test_skills_cli_matches_table(st, state, work_type):
    r = st("skills", state, work_type)
    assert r.code == 0 and r.out == ",".join(mandatory_skills(state, work_type)) + "\n"


def test_skills_table_cells():
    sp = "superpowers:"
    assert mandatory_skills("PLAN", "FULLSTACK") == [sp + "brainstorming", sp + "writing-plans", "frontend-design",
                                                     "architecture-patterns"]
    assert mandatory_skills("PLAN", "RESEARCH") == [sp + "brainstorming"]
    assert mandatory_skills("PLAN", "TESTING") == [sp + "brainstorming", sp + "writing-plans"]
    assert mandatory_skills("EXECUTE", "RESEARCH") == []
    assert mandatory_skills("EXECUTE", "FRONTEND") == [sp + "test-driven-development", "frontend-design"]
    assert mandatory_skills("REVIEW", "FULLSTACK") == [sp + "verification-before-completion",
                                                       sp + "requesting-code-review"]
    assert mandatory_skills("REVIEW", "FRONTEND")[-1] == "webapp-testing"
    assert mandatory_skills("SMART_ORCHESTRATED", "RESEARCH") == ["smart-mode", "task-decomposer",
                                                                  "verification-runner"]
    assert mandatory_skills("SMART_DIRECT", "FRONTEND") == ["smart-mode", "verification-runner", "frontend-design"]
    assert mandatory_skills("INTEGRATE", "FRONTEND") == []
    assert mandatory_skills("DETECT", "") == ["project-detector", "work-type-classifier"]


def test_skills_defaults_from_file_and_unknown_state(st):
    st("init", "PLAN")
    st("work-type", "BACKEND")
    assert st("skills").out == "superpowers:brainstorming,superpowers:writing-plans,architecture-patterns\n"
    assert st("skills", "NOPE").out == "\n"
    assert st("skills", "EXECUTE").out == "superpowers:test-driven-development\n"
    assert st("skills", "", "").out == st("skills").out  # empty arguments mean "current", as in bash


# ----------------------------------------------------------------------------- help
@pytest.mark.parametrize("args", [(), ("help",), ("halp", "x", "--weird"), ("--help",)])
def test_help_and_unknown_subcommands_exit_zero(st, args):
    r = st(*args)
    assert r.code == 0 and r.lines[0] == BANNER


# ----------------------------------------------------------------------------- new commands
def test_history_table_and_graph(st):
    st("init")
    st("transition", "DETECT")
    table = st("history").out
    assert "transition" in table and "IDLE" in table and "DETECT" in table
    graph = st("graph").out
    assert graph.startswith("stateDiagram-v2\n")
    assert "    IDLE --> DETECT" in graph and "class DETECT current" in graph
    assert "SMART_VERIFY --> COMPLETE" in graph


# ----------------------------------------------------------------------------- files
def test_unknown_keys_and_comments_survive(st):
    os.makedirs(".claude")
    with open(STATE, "w") as fh:
        fh.write("# hand written\n# by the initializer\ncurrent_state: EXECUTE\ninitialized: true\n"
                 "current_group: 2\nstarted_at: 2026-01-01T10:00:00Z\ncustom:\n  nested: [1, 2]\n")
    st("transition", "INTEGRATE")
    st("work-type", "BACKEND")
    st("tokens", "10")
    st("checkpoint", "f")
    text = open(STATE).read()
    assert text.startswith("# hand written\n# by the initializer\n")
    data = load()
    assert data["initialized"] is True and data["current_group"] == 2
    assert data["custom"] == {"nested": [1, 2]}
    assert data["started_at"] == "2026-01-01T10:00:00Z"  # still the same string, not a datetime


def test_corrupt_yaml_reported_and_never_overwritten(st):
    st("init")
    with open(STATE, "w") as fh:
        fh.write("current_state: EXECUTE\nfocus: [unclosed\nwork_type: X\n")
    before = raw()
    for args in (("transition", "INTEGRATE"), ("work-type", "BACKEND"), ("tokens", "5"), ("checkpoint", "x"),
                 ("state",), ("resume",)):
        r = st(*args)
        assert r.code == 1, args
        assert r.err.startswith(f"ERROR: cannot parse {os.path.abspath(STATE)}: line ")
        assert len(r.err.splitlines()) == 1
        assert raw() == before
    assert os.path.exists(STATE + ".last-good")
    assert yaml.safe_load(open(STATE + ".last-good"))["current_state"] == "IDLE"


def test_top_level_not_a_mapping(st):
    os.makedirs(".claude")
    with open(STATE, "w") as fh:
        fh.write("- just\n- a list\n")
    r = st("transition", "IDLE")
    assert r.code == 1 and "not a mapping" in r.err


def test_root_is_main_worktree_from_subdir_and_linked_worktree(st, repo):
    from tests.conftest import git

    os.makedirs("src/deep")
    os.chdir("src/deep")
    st("init", "EXECUTE")
    os.chdir(repo)
    assert os.path.exists(repo / STATE)
    git(repo, "worktree", "add", "-q", "-b", "auto/t1", str(repo.parent / "wt1"))
    os.chdir(repo.parent / "wt1")
    assert st("state").out == "EXECUTE\n"
    st("transition", "INTEGRATE")
    assert not os.path.exists(repo.parent / "wt1" / ".claude")
    assert yaml.safe_load(open(repo / STATE))["current_state"] == "INTEGRATE"


def test_root_env_override(st, tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHESTRATOR_ROOT", str(tmp_path / "elsewhere"))
    st("init")
    assert os.path.exists(tmp_path / "elsewhere" / STATE)
    assert not os.path.exists(".claude")


def test_read_only_state_directory_is_one_clear_line(st):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    st("init")
    os.chmod(".claude", 0o500)
    try:
        r = st("transition", "DETECT")
        assert r.code == 1 and r.err.startswith("ERROR: Permission denied") and len(r.err.splitlines()) == 1
    finally:
        os.chmod(".claude", 0o755)


def test_filesystem_errors_are_one_clear_line(st, monkeypatch):
    """Whatever the filesystem refuses (here: the state file's directory is a file)."""
    os.makedirs(".claude")
    open(".claude/auto-memory", "w").close()  # where init wants a directory
    r = st("init")
    assert r.code == 1 and r.err.startswith("ERROR: File exists") and len(r.err.splitlines()) == 1
