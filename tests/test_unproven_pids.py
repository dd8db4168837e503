"""A pid record without its start time (issue 20): the engine signals only a process it can
prove is its own (pid + start time), so such a record is never signalled, by `abort` nor by
`resume`; `status`, `status --json` and `abort` say so. Real runs, real processes: a `sleep`
in a process group of its own stands for whatever process now has the recorded pid."""

import json
import os
import subprocess

import pytest
import yaml

from tests.conftest import PYTHON, git, python_env

AGENT = "echo $TASK_ID > $TASK_ID.txt && git add -A && git commit -qm $TASK_ID"
PROGRESS = os.path.join(".claude", "auto-progress.yaml")


def orchestrator(repo, *args):
    return subprocess.run([PYTHON, "-m", "engine.cli.orchestrator", *args], cwd=repo, capture_output=True, text=True,
                          env=python_env(), timeout=120)


def progress(repo):
    with open(repo / PROGRESS) as fh:
        return yaml.safe_load(fh)


@pytest.fixture
def strangers():
    """Two live processes that are not the run's, each in a group of its own (as an agent is)."""
    procs = [subprocess.Popen(["sleep", "60"], start_new_session=True) for _ in range(2)]
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_a_pid_without_a_start_time_is_named_by_status_and_never_signalled(repo, strangers):
    tasks = [{"id": "a"}, {"id": "b", "depends_on": ["a"]}]
    (repo / "plan.yaml").write_text(yaml.safe_dump({"agent": AGENT, "tasks": tasks}))
    git(repo, "add", "plan.yaml")
    git(repo, "commit", "-qm", "plan")
    first = orchestrator(repo, "run", "plan.yaml")  # group 1 (a), then the session boundary
    assert first.returncode == 0, first
    agent, run = strangers
    data = progress(repo)
    # records that name a live pid but cannot prove it is theirs: the run "running" under a pid
    # with no start time, task b "running" under another
    data.update(status="running", orchestrator_pid=run.pid)
    data.pop("orchestrator_pid_start", None)
    data["tasks"]["b"].update(status="running", iterations=1, pid=agent.pid)
    data["tasks"]["b"].pop("pid_start", None)
    (repo / PROGRESS).write_text(yaml.safe_dump(data, sort_keys=False))
    expected = [f"the run's orchestrator: pid {run.pid} recorded without a start time; not signalled "
                "(cannot prove it is ours)",
                f"task b: pid {agent.pid} recorded without a start time; not signalled (cannot prove it is ours)"]

    status = orchestrator(repo, "status")
    assert status.returncode == 0 and status.stderr == "", status
    lines = status.stdout.splitlines()
    assert [line for line in lines if "recorded without a start time; not signalled" in line] == expected
    assert f"its process cannot be proven (pid {run.pid} recorded without a start time)" in lines[2]
    assert "is stopped" in lines[2]  # a pid it cannot prove is not the run's process being alive
    report = json.loads(orchestrator(repo, "status", "--json").stdout)["run"]
    assert report["unproven_pids"] == [{"task": None, "pid": run.pid, "message": expected[0]},
                                       {"task": "b", "pid": agent.pid, "message": expected[1]}]
    assert report["process"] == {"pid": run.pid, "alive": False} and report["status"] == "stopped"

    abort = orchestrator(repo, "abort")
    assert abort.returncode == 0 and abort.stderr == "", abort
    assert abort.stdout.splitlines()[0].startswith("Nothing to abort: ")
    assert abort.stdout.splitlines()[1:] == expected
    assert agent.poll() is None and run.poll() is None  # neither was signalled

    done = orchestrator(repo, "resume", "--all-groups", "--quiet")  # b's attempt is re-run; nothing signalled
    assert done.returncode == 0, done
    assert agent.poll() is None and run.poll() is None
    after = progress(repo)
    assert after["tasks"]["b"]["status"] == "merged" and after["orchestrator_pid_start"]
    assert json.loads(orchestrator(repo, "status", "--json").stdout)["run"]["unproven_pids"] == []
