"""Imperfect plans (issue 19): every attempt starts from the base as it is now and is told what
was merged since its last one; a rejected attempt's work is rebased onto the moved base (QA
looks again first) or kept aside; shared files order tasks without chaining failures; only
`depends_on` does. Real runs: real git, the orchestrator in-process, shell agents."""

import os

import yaml

from tests.conftest import git, invoke

AGENT = """
set -e
case "$TASK_ID" in
  x) sleep "${X_SLEEP:-0.2}"; echo x > x.txt; git add x.txt; git commit -qm x ;;
  y) echo "attempt $TASK_ATTEMPT base-changes: $TASK_BASE_CHANGES" >> "$ORCHESTRATOR_ROOT/y-env.log"
     sleep "${Y_SLEEP:-0}"
     if [ -n "$Y_NEEDS_X" ] && [ ! -f x.txt ]; then echo "x.txt missing" >&2; exit 1; fi
     [ -f y.txt ] || { echo y > y.txt; git add y.txt; git commit -qm y; } ;;
  p) exit 1 ;;
  q) echo q >> f.txt; git add f.txt; git commit -qm q ;;
esac
"""


def orch(*args):
    from engine.cli.orchestrator import cli

    return invoke(cli, "orchestrator", *args)


def run_plan(repo, tasks, retries=3):
    (repo / "agent.sh").write_text(AGENT)
    (repo / ".claude").mkdir(exist_ok=True)
    (repo / ".claude" / "auto-context.yaml").write_text(
        f"parallelization:\n  min_tasks: 1\n  retry_on_failure: {retries}\n")
    git(repo, "add", "agent.sh")
    git(repo, "commit", "-qm", "agent")
    (repo / "plan.yaml").write_text(yaml.safe_dump({"agent": f"sh {repo / 'agent.sh'}", "tasks": tasks},
                                                   sort_keys=False))
    return orch("run", "--all-groups", str(repo / "plan.yaml"))


def progress(repo):
    with open(repo / ".claude" / "auto-progress.yaml") as fh:
        return yaml.safe_load(fh)


def agent_attempts(entry):
    return [a for a in entry["attempts"] if a.get("kind", "agent") == "agent"]


def test_a_retry_after_an_agent_failure_starts_on_the_moved_base_and_is_told_what_changed(repo, monkeypatch):
    """y fails unless x.txt exists; nothing says so. Its first attempt fails on the old base; it
    waits for the base to move (no retry spent on the same code), then runs on the base that
    holds x, told that x was merged and what x changed."""
    monkeypatch.setenv("X_SLEEP", "1.5")
    monkeypatch.setenv("Y_NEEDS_X", "1")
    r = run_plan(repo, [{"id": "x"}, {"id": "y"}])
    assert r.code == 0, r
    data = progress(repo)
    y, x = data["tasks"]["y"], data["tasks"]["x"]
    assert (y["status"], x["status"]) == ("merged", "merged")
    tries = agent_attempts(y)
    assert len(tries) == 2, tries  # not a retry burnt on the base that could not have x
    first, second = tries
    assert first["base_commit"] != second["base_commit"] == x["merged_commit"]
    # the record is true: the commit y's work was made on is the base its attempt says
    assert git(repo, "rev-parse", f"{data['tasks']['y']['merged_commit']}^2^") == second["base_commit"]
    log = (repo / "y-env.log").read_text().splitlines()
    assert log[0] == "attempt 1 base-changes: " and log[1] == "attempt 2 base-changes: x: x.txt", log
    assert "waits for main to move" in r.out


def test_a_rejected_attempts_work_is_rebased_onto_the_moved_base_and_verified_again(repo, monkeypatch):
    """y commits y.txt; its check needs x.txt too. x merges while y's first attempt runs: QA
    rejects y on its old base; its branch is rebased onto the base that has x, QA looks again
    and approves -- the agent does not run again and its work is kept."""
    monkeypatch.setenv("Y_SLEEP", "1.5")
    r = run_plan(repo, [{"id": "x"}, {"id": "y", "verify": "test -f x.txt && test -f y.txt"}])
    assert r.code == 0, r
    y = progress(repo)["tasks"]["y"]
    assert y["status"] == "merged"
    assert len(agent_attempts(y)) == 1 and [a["kind"] for a in y["attempts"]] == ["agent", "rebase"]
    assert len((repo / "y-env.log").read_text().splitlines()) == 1  # the agent ran once
    assert (repo / "y.txt").read_text() == "y\n" and (repo / "x.txt").exists()


def test_a_failed_file_order_predecessor_does_not_stop_its_successor(repo):
    r = run_plan(repo, [{"id": "p", "files": ["f.txt"]}, {"id": "q", "files": ["f.txt"]}], retries=0)
    tasks = progress(repo)["tasks"]
    assert tasks["p"]["status"] == "failed" and tasks["q"]["status"] == "merged", tasks
    assert r.code == 1 and (repo / "f.txt").read_text() == "q\n"


def test_a_failed_depends_on_still_stops_its_dependent(repo):
    run_plan(repo, [{"id": "p", "files": ["f.txt"]}, {"id": "q", "files": ["f.txt"], "depends_on": ["p"]}],
             retries=0)
    tasks = progress(repo)["tasks"]
    assert tasks["q"]["status"] == "failed" and tasks["q"]["failure"] == "dependency p is failed; not started"


def test_validate_graph_and_the_progress_file_tell_the_two_kinds_of_edge_apart(repo):
    run_plan(repo, [{"id": "p", "files": ["f.txt"]}, {"id": "q", "files": ["f.txt"]},
                    {"id": "r", "depends_on": ["q"]}], retries=0)
    out = orch("validate", "--agent", "true", str(repo / "plan.yaml")).out
    assert "q runs after p (shared files: order only, their failure does not stop it)" in out
    graph = orch("graph", str(repo / "plan.yaml")).out
    assert "t_p -.->|shared file: order only| t_q" in graph and "t_q --> t_r" in graph
    tasks = progress(repo)["tasks"]
    assert tasks["q"]["file_order"] == ["p"] and "file_order" not in tasks["r"]
    from engine.dashboard.model import RunModel

    snapshot = RunModel(str(repo)).snapshot()
    edges = {t["id"]: (t["depends_on"], t["file_order"]) for t in snapshot["tasks"]}
    assert edges["q"] == (["p"], ["p"]) and edges["r"] == (["q"], [])


def test_a_rebase_onto_the_moved_base_is_onto_the_branch_even_with_a_tag_of_its_name(repo, monkeypatch):
    """The same rebase with a tag `main` at the first commit (a release tag named like the
    base): the branch is replayed onto the branch main, not the tag, so QA approves at once
    and the agent runs once (`git rebase main` took the tag, and y was rejected again)."""
    git(repo, "tag", "main", "main")
    monkeypatch.setenv("Y_SLEEP", "1.5")
    r = run_plan(repo, [{"id": "x"}, {"id": "y", "verify": "test -f x.txt && test -f y.txt"}])
    assert r.code == 0, r
    y = progress(repo)["tasks"]["y"]
    assert y["status"] == "merged" and [a["kind"] for a in y["attempts"]] == ["agent", "rebase"]
    assert len((repo / "y-env.log").read_text().splitlines()) == 1
