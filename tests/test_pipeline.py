"""The pipeline end to end on real repositories with the bundled fake agent."""

import json
import os

import pytest
import yaml

from engine import demo
from tests.conftest import branches, git, worktree_paths

TASKS = ["models", "utils", "config", "api", "cli", "tests", "docs"]


@pytest.fixture
def demo_repo(sealed_env, tmp_path, monkeypatch):
    repo = demo.make_repo(str(tmp_path / "d"))
    plan = str(tmp_path / "d" / "plan.yaml")
    demo.write_plan(plan)
    monkeypatch.chdir(repo)
    monkeypatch.setenv("DEMO_AGENT_SLEEP", "0")
    return repo, plan


def progress():
    with open(".claude/auto-progress.yaml") as fh:
        return yaml.safe_load(fh)


def test_demo_plan_end_to_end(orch, demo_repo, monkeypatch):
    repo, plan = demo_repo
    monkeypatch.setenv("DEMO_FLAKY", "cli")
    r = orch("run", plan)
    assert r.code == 0, r
    assert "session boundary after group 1" in r.out
    assert progress()["status"] == "stopped"
    for _ in range(2):
        r = orch("resume")
        assert r.code == 0, r
    data = progress()
    assert data["status"] == "complete"
    assert {t: v["status"] for t, v in data["tasks"].items()} == {t: "merged" for t in TASKS}
    assert data["tasks"]["cli"]["retry_count"] == 1 and data["tasks"]["cli"]["iterations"] == 2
    assert all(v["qa_verified"] for v in data["tasks"].values())
    assert data["parallel_groups"]["group_1"]["tasks"] == ["models", "utils", "config"]
    assert [g["status"] for g in data["parallel_groups"].values()] == ["done"] * 3
    for t in TASKS:  # every task's file merged into the base
        assert git(repo, "show", f"main:app/{t}.py").endswith(f'return "{t} ok"')
    assert branches(repo) == ["main"] and worktree_paths(repo) == [repo]  # nothing left over
    assert git(repo, "status", "--porcelain", "--untracked-files=no") == ""
    mem = ".claude/auto-memory"
    for n in (1, 2, 3):
        post = yaml.safe_load(open(f"{mem}/parallel-group-{n}-post.yaml"))
        assert post["completed_tasks"] == data["parallel_groups"][f"group_{n}"]["tasks"]
        assert post["tasks_in_group"] == data["parallel_groups"][f"group_{n}"]["tasks"]
    assert os.path.exists(f"{mem}/context-summary.md") and os.path.exists(f"{mem}/next-actions.md")
    state = yaml.safe_load(open(".claude/auto-state-machine.yaml"))
    assert state["current_state"] == "COMPLETE" and state["work_type"] == "BACKEND"
    assert "attempt 2, feedback: True" in open(".claude/auto-logs/cli.log").read()
    status = orch("status")
    assert status.code == 0 and "State: COMPLETE" in status.out and "cli" in status.out
    assert json.loads(orch("status", "--json").out)["tasks"]["docs"]["status"] == "merged"
    graph = orch("graph").out
    assert graph.startswith("graph TD") and "t_models --> t_api" in graph and "(merged)" in graph
    assert orch("resume").out.strip().endswith("Run already complete.")


def test_retries_exhausted_task_failed_others_merged(orch, demo_repo, monkeypatch):
    repo, plan = demo_repo
    monkeypatch.setenv("DEMO_BROKEN", "utils")
    r = orch("run", "--all-groups", plan)
    assert r.code == 1  # the run finished, with a failure to report
    data = progress()
    assert data["tasks"]["utils"]["status"] == "failed"
    assert "retries exhausted" in data["tasks"]["utils"]["failure"]
    assert data["tasks"]["utils"]["iterations"] == 3  # 1 + retry_on_failure (2, from the demo config)
    assert "Failed: utils" in r.out
    assert data["tasks"]["models"]["status"] == "merged" and data["tasks"]["config"]["status"] == "merged"
    assert "auto/utils" in branches(repo)  # its work is kept
    # api depends on utils: it still ran in its group, but on a base without utils
    assert os.path.exists(".claude/auto-memory/parallel-group-1-failed.yaml")


def test_conflicting_siblings_are_retried_on_the_new_base_and_all_merge(orch, demo_repo, monkeypatch):
    """Three siblings write the same file: the first approved merges, the others conflict,
    go back to their agent on the moved base with the conflict as feedback, and merge."""
    repo, plan = demo_repo
    monkeypatch.setenv("DEMO_CONFLICT_FILE", "shared.txt")
    r = orch("run", plan)
    assert r.code == 0, r  # the session boundary after group 1
    data = progress()
    group = ("models", "utils", "config")
    assert [data["tasks"][t]["status"] for t in group] == ["merged"] * 3
    conflicted = [t for t in group if data["tasks"][t].get("conflict_files")]
    assert len(conflicted) == 2 and all(data["tasks"][t]["conflict_files"] == ["shared.txt"] for t in conflicted)
    for t in conflicted:  # the feedback names the file and the task it collided with
        feedback = data["tasks"][t]["qa_feedback"]
        assert "shared.txt" in feedback and data["tasks"][t]["conflict_with"]
        assert all(other in feedback for other in data["tasks"][t]["conflict_with"])
        # (two re-runs from the same base may collide again: each collision costs a retry)
        assert 1 <= data["tasks"][t]["retry_count"] <= 2
        # the old work was kept while the task went on (journal), and goes with its merge
        journal = open(os.path.join(repo, ".claude", "auto-journal.jsonl")).read()
        assert f'"attempt-kept"' in journal and f"refs/orchestrator/attempts/{t}/" in journal
        assert data["tasks"][t]["kept_attempts"] and not git(repo, "for-each-ref", f"refs/orchestrator/attempts/{t}/")
    assert not os.path.exists(os.path.join(repo, ".git", "MERGE_HEAD"))
    assert [b for b in branches(repo) if b.startswith("auto/")] == []


def test_uncommitted_agent_work_is_committed(orch, demo_repo, monkeypatch):
    repo, plan = demo_repo
    monkeypatch.setenv("DEMO_UNCOMMITTED", "models")
    assert orch("run", plan).code == 0
    assert git(repo, "show", "main:app/models.py").endswith('return "models ok"')
    assert "uncommitted work left by the agent" in git(repo, "log", "--format=%s", "main")


def test_the_files_a_task_changes_include_the_leftovers_committed_for_it(orch, repo):
    """QA asks the branch's changed files alongside the checkout's status; when it then commits
    the agent's leftovers, that answer predates them and is not the task's record (it named
    only a.txt here, and the merge's record and the retry feedback read this list)."""
    plan = os.path.join(str(repo), "plan.yaml")
    with open(plan, "w") as fh:
        fh.write("base: main\nagent: 'echo a > a.txt && git add a.txt && git -c user.name=a -c user.email=a@b "
                 "commit -qm a && echo b > b.txt'\ntasks:\n  - {id: t, description: two files}\n")
    assert orch("run", plan).code == 0
    with open(os.path.join(str(repo), ".claude", "auto-progress.yaml")) as fh:
        task = yaml.safe_load(fh)["tasks"]["t"]
    assert task["status"] == "merged" and task["changed_files"] == ["a.txt", "b.txt"]


def test_user_edits_in_main_checkout_survive_a_run(orch, demo_repo):
    repo, plan = demo_repo
    with open("README.md", "a") as fh:
        fh.write("my local edit\n")
    with open("scratch.txt", "w") as fh:
        fh.write("untracked\n")
    assert orch("run", "--all-groups", plan).code == 0
    assert open("README.md").read().endswith("my local edit\n")
    assert open("scratch.txt").read() == "untracked\n"
    assert git(repo, "show", "main:app/docs.py").endswith('return "docs ok"')


def test_e2e_runs_on_the_merged_result_of_the_group(orch, demo_repo):
    repo, plan = demo_repo
    text = open(plan).read().replace("work_type: BACKEND", "work_type: FRONTEND\ne2e: test -f app/models.py "
                                     "&& test -f app/utils.py && echo e2e-ok")
    open(plan, "w").write(text)
    r = orch("run", plan)
    assert r.code == 0 and "E2E passed on main with 3 merged task(s)" in r.out, r
    assert progress()["parallel_groups"]["group_1"]["e2e"] == "passed"


def test_e2e_failure_is_reported_with_the_group_and_fails_the_run(orch, demo_repo):
    repo, plan = demo_repo
    text = open(plan).read().replace("work_type: BACKEND", "work_type: FRONTEND\ne2e: echo broken-e2e; exit 3")
    open(plan, "w").write(text)
    r = orch("run", plan)
    assert r.code == 0 and "E2E FAILED on main" in r.out  # reported; the session boundary as usual
    group = progress()["parallel_groups"]["group_1"]
    assert group["e2e"] == "failed" and "broken-e2e" in group["e2e_output"]
    assert sorted(group["e2e_tasks"]) == ["config", "models", "utils"]
    assert os.path.exists(".claude/auto-memory/parallel-group-1-failed.yaml")
    r = orch("resume", "--all-groups")
    assert r.code == 1  # every task merged, but the e2e check failed: not a success
    assert all(v["status"] == "merged" for v in progress()["tasks"].values())


def test_abort_then_resume(orch, demo_repo):
    repo, plan = demo_repo
    assert orch("run", plan).code == 0
    r = orch("abort")
    assert r.code == 0 and r.out.startswith("Aborted:")
    assert progress()["status"] == "aborted"
    assert orch("state", "state").out == "FAILED\n"
    r = orch("resume", "--all-groups")
    assert r.code == 0, r
    assert progress()["status"] == "complete"


def test_second_orchestrator_is_refused(orch, demo_repo):
    import fcntl

    repo, plan = demo_repo
    os.makedirs(".claude", exist_ok=True)
    fd = os.open(".claude/orchestrator.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        r = orch("run", plan)
        assert r.code == 1 and "another orchestrator is running" in r.err
    finally:
        os.close(fd)


def test_resume_without_a_run(orch, repo):
    r = orch("resume")
    assert r.code == 1 and "nothing to resume" in r.err
    assert orch("status").out == "NO_SESSION\n"


def test_mirrored_groups(orch, repo):
    assert orch("state", "transition", "PARALLELIZE").lines[0].startswith("State machine initialized")
    assert orch("pool", "init", "2").out == "Pool initialized: 2 slots available\n"
    assert orch("pool", "acquire", "t1").out.startswith("wt-1|")
    assert orch("checkpoint", "bogus").lines[0] == "Checkpoint Manager v3.0"


def test_mirrored_groups_are_listed_but_imported_only_when_asked_for(orch, repo):
    import subprocess
    import sys

    probe = ("import sys, engine.cli.orchestrator as o; "
             "print(sorted(m for m in sys.modules if m.startswith('engine.cli.') and m != 'engine.cli.common'))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "['engine.cli.orchestrator']"
    listing = orch("--help").out
    for name, what in (("state", "state-transition"), ("pool", "pool-manager"), ("worktree", "setup-worktree"),
                       ("merge", "merge-branches"), ("checkpoint", "checkpoint-manager")):
        assert f"  {name}" in listing and what in listing


def test_markdown_task_list_runs_with_agent_option(orch, demo_repo, tmp_path):
    import shlex
    import sys

    repo, _ = demo_repo
    md = tmp_path / "plan.md"
    md.write_text("# Plan\n\n### Task 1: Models\n- Files: app/task_1.py\n- Done when: `test -f app/task_1.py`\n"
                  "- Complexity: S\n\n### Task 2: API\n- Depends on: Task 1\n- Done when: `test -f app/task_1.py "
                  "&& test -f app/task_2.py`\n")
    agent = f"{shlex.quote(sys.executable)} {shlex.quote(demo.AGENT)}"
    r = orch("run", "--all-groups", "--agent", agent, str(md))
    assert r.code == 0, r
    assert git(repo, "show", "main:app/task_2.py").endswith('return "task-2 ok"')
    assert progress()["tasks"]["task-2"]["depends_on"] == ["task-1"]


def test_task_data_reaches_the_agent_only_as_environment(orch, demo_repo, tmp_path):
    repo, _ = demo_repo
    plan = tmp_path / "hostile.yaml"
    plan.write_text("agent: 'printf %s \"$TASK_DESCRIPTION\" > desc.txt && git add desc.txt && "
                    "git -c user.name=a -c user.email=a@a commit -qm desc'\n"
                    "tasks:\n  - {id: t1, description: '$(touch pwned); `touch pwned2`; \"quotes\"'}\n")
    r = orch("run", "--all-groups", str(plan))
    assert r.code == 0, r
    assert git(repo, "show", "main:desc.txt") == '$(touch pwned); `touch pwned2`; "quotes"'
    assert not any(os.path.exists(p) for p in ("pwned", "pwned2", os.path.join(repo, "pwned")))


def test_a_new_plan_while_a_run_is_stopped_is_refused_then_allowed_after_abort(orch, demo_repo, tmp_path):
    repo, plan = demo_repo
    assert orch("run", plan).code == 0  # stopped at the first session boundary
    other = tmp_path / "other.yaml"
    # every description changes, so every agent writes something new (unchanged work would
    # be a "no changes" failure)
    other.write_text(open(plan).read().replace("description: ", "description: v2 "))
    r = orch("run", str(other))
    assert r.code == 1 and "another run is in progress" in r.err
    assert orch("abort").code == 0
    r = orch("run", "--all-groups", str(other))
    assert r.code == 0, r
    data = progress()
    assert data["status"] == "complete" and data["plan_file"] == str(other)
    assert all(v["status"] == "merged" for v in data["tasks"].values())


def test_run_of_a_completed_plan_starts_nothing_unless_again(orch, demo_repo):
    repo, plan = demo_repo
    assert orch("run", "--all-groups", plan).code == 0
    first = progress()["run_id"]
    before = open(".claude/auto-progress.yaml").read()
    again = orch("run", "--all-groups", plan)  # agents repeat commands: nothing starts
    assert again.code == 0 and "already complete" in again.out and len(again.out.splitlines()) == 1
    assert open(".claude/auto-progress.yaml").read() == before
    # `--again`: a new run; its agents find their work already in main and commit nothing,
    # which is a "no changes" failure (allow_empty is not set).
    assert orch("run", "--again", "--all-groups", plan).code == 1
    data = progress()
    assert data["status"] == "complete" and data["run_id"] >= first
    assert "no changes" in data["tasks"]["models"]["failure"]
    assert "dependency" in data["tasks"]["api"]["failure"]
    assert git(repo, "log", "--merges", "--format=%s", "main").count("feat: Merge auto/models") == 1


def test_abort_stops_a_running_orchestrator_and_its_agents(orch, demo_repo):
    import subprocess
    import time

    from engine.procs import alive
    from tests.conftest import PYTHON, python_env

    repo, plan = demo_repo
    env = dict(python_env(), DEMO_AGENT_SLEEP="30")
    proc = subprocess.Popen([PYTHON, "-m", "engine.cli.orchestrator", "run", "--quiet", plan], cwd=repo, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        tasks = (progress() if os.path.exists(".claude/auto-progress.yaml") else {}).get("tasks") or {}
        if sum(1 for t in tasks.values() if t.get("status") == "running" and t.get("pid")) == 3:
            break
        time.sleep(0.1)
    agents = [(t["pid"], t.get("pid_start")) for t in progress()["tasks"].values() if t.get("pid")]
    assert len(agents) == 3
    r = orch("abort")
    assert r.code == 0, r
    proc.wait(timeout=20)  # the orchestrator itself is gone too
    assert not any(alive(pid, start) for pid, start in agents)
    data = progress()
    assert data["status"] == "aborted"
    assert all(t.get("iterations", 0) <= 1 for t in data["tasks"].values())  # no new attempt was started
    assert json.loads(orch("pool", "status", "--json").out)["busy"] == 0  # slots released
