"""Red-team findings on the agent-kinds / budgets / pool-move / real-CLI change (e98b96c..e59437a).

Each test shows one confirmed defect with real repositories and real processes; each fails on the
code as reviewed. The tests marked `needs_cli` drive the real pinned Claude Code CLI against the
scripted stand-in of the Messages API (tests/standin_api.py), as tests/test_real_claude.py does.
"""

import json
import os
import signal
import subprocess
import time

import pytest
import yaml

from engine.paths import ENGINE_POOL_REL
from tests.conftest import PYTHON, git, invoke, python_env, wait_until
from tests.standin_api import Turn, text, tool
from tests.test_claude import fake  # noqa: F401  (fixture: the fake `claude` first on PATH)
from tests.test_claude_cli import CLI
from tests.test_real_claude import WORKDIR, api, commit, in_worktree, workdir_of, write_plan  # noqa: F401  (api: fixture)

CONTRACT_DIR = os.path.join(".claude", "worktree-pool")
needs_cli = pytest.mark.skipif(CLI is None, reason="the real Claude Code CLI is not installed "
                               "(`make plugin-check` installs it into .tools/)")
SHELL_AGENT = "sh -c 'echo $TASK_ID > $TASK_ID.txt && git add . && git commit -qm work'"


def orch(*args):
    from engine.cli.orchestrator import cli

    return invoke(cli, "orchestrator", *args)


def pm(*args):
    from engine.cli.pool_manager import cli

    return invoke(cli, "pool-manager", *args)


def progress():
    with open(os.path.join(".claude", "auto-progress.yaml")) as fh:
        return yaml.safe_load(fh)


def pool_state(repo):
    with open(os.path.join(repo, ".claude", "pool-state.json")) as fh:
        return json.load(fh)


def shell_plan(repo, tasks=("t1",)):
    plan = repo / "plan.yaml"
    plan.write_text(yaml.safe_dump({"base": "main", "agent": SHELL_AGENT,
                                    "tasks": [{"id": t, "description": t} for t in tasks]}, sort_keys=False))
    git(repo, "add", "plan.yaml")
    git(repo, "commit", "-qm", "plan")
    return str(plan)


def leased_contract_pool(repo):
    """A pool the contract's way (`pool-manager init`, under .claude/), wt-1 leased to `keep` by a
    shell that is gone, holding uncommitted work: what the move promises to carry."""
    assert pm("init", "3").code == 0
    assert pm("acquire", "keep").code == 0
    (repo / CONTRACT_DIR / "wt-1" / "draft.txt").write_text("uncommitted work\n")


def draft_survives(repo):
    """The uncommitted draft is still somewhere: on disk in a checkout of auto/keep, or committed to it."""
    committed = git(repo, "log", "--format=%H", "auto/keep", "--", "draft.txt", check=False)
    on_disk = [d for d in (repo / ENGINE_POOL_REL, repo / CONTRACT_DIR) if d.is_dir()
               for wt in d.iterdir() if (wt / "draft.txt").exists()]
    return bool(committed) or bool(on_disk)


def one_commit_repo(path, name):
    """A git repository at PATH with one commit holding the file NAME."""
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / name).write_text("x\n")
    git(path, "add", ".")
    git(path, "commit", "-qm", "init")
    return path


def first_tool_result(messages):
    """The text of the tool_result the conversation ends with, or None when it ends with a prompt."""
    last = messages[-1] if messages else {}
    content = last.get("content") if isinstance(last.get("content"), list) else []
    results = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
    if not results:
        return None
    body = results[0].get("content")
    return body if isinstance(body, str) else json.dumps(body)


# ----------------------------------------------------------------------------- the pool move
def test_a_kill_in_the_middle_of_the_pool_move_then_resume_keeps_the_leased_slots_work(repo):
    """ORCH_CRASHPOINT=slot-moved kills the run after wt-1 is moved: its record says
    .orchestrator/..., but `pool_dir` still says .claude/worktree-pool, and every command joins
    pool_dir + slot id (Pool.slot_path), ignoring the slot's own path. `resume` runs
    `pool_health.health(repair=True)` (runner.reconcile) BEFORE Slots.ensure finishes the move:
    health finds busy wt-1 "without worktree" at the old path and marks it idle; the move then
    records wt-1 (idle) at the new place, the run leases it for t1 (`checkout -f` + `clean`), and
    the `keep` lease's uncommitted draft is gone. Without the kill the same run commits it
    ("WIP: uncommitted work left in wt-1")."""
    leased_contract_pool(repo)
    plan = shell_plan(repo)
    killed = subprocess.run([PYTHON, "-m", "engine.cli.orchestrator", "run", plan], cwd=repo, capture_output=True,
                            text=True, env=dict(python_env(), ORCH_CRASHPOINT="slot-moved"))
    assert killed.returncode == -signal.SIGKILL, killed
    state = pool_state(repo)
    # (fixed: the intent is recorded before the first slot moves; the pool's place changes only with the last)
    assert state["pool_dir"] == CONTRACT_DIR and state["moving"] == {"from": CONTRACT_DIR, "to": ENGINE_POOL_REL}
    assert (repo / ENGINE_POOL_REL / "wt-1" / "draft.txt").exists()  # wt-1 moved before the kill
    for command in (["status"], ["health", "--repair"]):  # whichever command looks next finishes the move
        assert pm(*command).code == 0
    state = pool_state(repo)
    assert state["pool_dir"] == ENGINE_POOL_REL and "moving" not in state
    r = orch("resume")
    assert r.code == 0, r
    assert draft_survives(repo), "the leased slot's uncommitted work was lost by resume after a kill mid-move"


def test_the_move_does_not_abandon_a_leased_worktree_when_the_destination_exists(repo):
    """Pool.relocate: `if realpath(src) in listed and not lexists(dest)` ... else it just records
    `slot["path"] = dest`. A directory already at .orchestrator/worktree-pool/wt-1 (left by a kill
    mid-move and a later acquire/repair, or by hand) makes it re-point the leased slot at that
    directory and leave the real worktree, its branch and its uncommitted work, under .claude/,
    which no pool command looks at any more."""
    leased_contract_pool(repo)
    (repo / ENGINE_POOL_REL / "wt-1").mkdir(parents=True)
    from engine.context import RunContext
    from engine.paths import Layout

    RunContext(Layout(str(repo))).slots.ensure(3)
    state = pool_state(repo)
    slot = state["worktrees"][0]
    stayed = state["pool_dir"] == CONTRACT_DIR
    moved_whole = (repo / slot["path"] / "draft.txt").exists()
    assert stayed or moved_whole, f"slot wt-1 of `keep` now points at {slot['path']} (empty); its worktree " \
                                  f"stays registered at {git(repo, 'worktree', 'list')}"


def test_a_slot_git_cannot_move_does_not_wedge_every_run(repo, tmp_path):
    """`git worktree move` refuses a worktree with an initialized submodule (or a locked one).
    Pool.relocate calls it with check=True and Slots._move_home does not catch it: every `run`
    and `resume` of such a project ends in `internal error (GitError ...)` before any task, where
    the README says the pool stays where it is (with a warning) when it cannot move."""
    sub = one_commit_repo(tmp_path / "sub", "lib.txt")
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(sub), "sub")
    git(repo, "commit", "-qm", "submodule")
    assert pm("init", "2").code == 0
    assert pm("acquire", "keep").code == 0
    git(repo / CONTRACT_DIR / "wt-1", "-c", "protocol.file.allow=always", "submodule", "update", "--init", "-q")
    assert pm("release", "wt-1").code == 0
    r = orch("run", shell_plan(repo))
    assert "internal error" not in r.err and r.code == 0, r


# ----------------------------------------------------------------------------- budgets
def test_a_run_budget_given_with_run_max_budget_usd_can_be_raised_as_the_message_says(sealed_env, tmp_path,
                                                                                     monkeypatch, fake):
    """`run --max-budget-usd 0.5` is recorded in the progress file and ctx.run_budget() lets it
    win over the plan's for good; `resume` has no --max-budget-usd. The held task's message says
    "raise `max_budget_usd` in the plan and `orchestrator resume --adopt-plan`": done to the
    letter, nothing moves, and nothing else can raise it (the task stays `rejected` forever)."""
    from engine import demo

    repo = demo.make_repo(str(tmp_path / "d"))
    monkeypatch.chdir(repo)
    monkeypatch.setenv("FAKE_CLAUDE_COST", "0.6")
    monkeypatch.setenv("FAKE_CLAUDE_FLAKY", "cli")  # its first answer is rejected by QA
    demo.write_plan(str(tmp_path / "plan.yaml"), agent="{preset: claude, stagger_seconds: 0}")
    data = yaml.safe_load(open(tmp_path / "plan.yaml"))
    data["tasks"] = [dict(t, depends_on=[]) for t in data["tasks"] if t["id"] == "cli"]
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    r = orch("run", "--all-groups", "--max-budget-usd", "0.5", str(tmp_path / "plan.yaml"))
    # (decided: the budget given on the command line wins over the plan's, and is raised the same way)
    assert "`orchestrator resume --max-budget-usd DOLLARS` goes on with a higher one" in r.out
    assert "--adopt-plan" not in r.out.split("run budget of")[1].splitlines()[0]
    r = orch("resume", "--all-groups", "--max-budget-usd", "10")
    assert progress()["tasks"]["cli"]["status"] == "merged", r
    assert progress()["max_budget_usd"] == 10


@needs_cli
def test_an_interrupted_attempts_usage_stays_counted(api, repo, tmp_path):
    """The run is stopped (SIGTERM, as Ctrl-C or `abort`) while the agent works: the CLI dies
    without a result event, so the attempt records its tokens (live) but no cost, and is marked
    interrupted with iterations n-1. `resume` runs attempt n again and record_attempt() updates
    that same attempt-n record: the interrupted attempt's recorded usage is overwritten, and the
    money it spent (100k input tokens, $0.40 here) never reaches the task's or the run's
    cost_usd, so no budget sees it. Every abort/resume cycle spends uncounted money."""
    first = []

    def work(body):
        if not first:  # the first call works slowly (the run is stopped meanwhile)
            first.append(1)
            return [tool("Bash", {"command": "git status && sleep 4"})]
        return in_worktree("r.txt", "r\n")(body)
    api.script("task is `r`", [Turn(work, {"input_tokens": 100_000, "output_tokens": 10}),
                               Turn(commit("r: add r.txt")), Turn([text("done")])])
    plan = write_plan(tmp_path / "plan.yaml", [
        {"id": "r", "description": "Add r.txt", "verify": "test -f r.txt",
         "agent": {"preset": "claude", "stagger_seconds": 0,
                   "allowed_tools": ["Read", "Edit", "Write", "Bash(git *)", "Bash(git status && sleep 4)"]}}])
    proc = subprocess.Popen([PYTHON, "-m", "engine.cli.orchestrator", "run", "--all-groups", plan],
                            env=python_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: any(q["marker"] == "task is `r`" for q in api.requests), 60, "the agent's first call")
    time.sleep(1.5)
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    interrupted = progress()["tasks"]["r"]["attempts"][0]
    assert interrupted["outcome"] == "interrupted" and interrupted["tokens_in"] == 100_000
    r = orch("resume", "--all-groups")
    entry = progress()["tasks"]["r"]
    assert entry["status"] == "merged", r
    # the stand-in was paid for 100k input tokens twice (the stopped attempt and its re-run)
    assert entry["tokens_in"] >= 200_000, [(a["n"], a.get("outcome"), a.get("tokens_in"), a.get("cost_usd"))
                                           for a in entry["attempts"]]


# ----------------------------------------------------------------------------- the claude agent
@needs_cli
def test_the_worktree_confinement_holds_in_a_project_whose_path_has_parentheses(api, sealed_env, tmp_path,
                                                                                monkeypatch):
    """engine.claude.allowed_tools scopes Edit/Write to `Edit(//WORKTREE/**)` only when the path
    has none of `()\\n*?[]`; otherwise the bare `Edit` and `Write` go to the CLI, which then lets
    the agent write anywhere (the hole the change closes). A checkout named `proj (copy)` is
    enough: the agent's Write into the main checkout succeeds."""
    project = one_commit_repo(tmp_path / "proj (copy)", "README.md")
    monkeypatch.chdir(project)
    api.script("task is `w`", [Turn(lambda body: [tool("Write", {"file_path": str(project / "escape.txt"),
                                                                 "content": "x"})]), Turn([text("done")])])
    plan = write_plan(tmp_path / "plan.yaml", [{"id": "w", "description": "Escape", "verify": "true",
                                                "allow_empty": True}])
    orch("run", "--all-groups", plan)
    argv = json.load(open(os.path.join(project, ".claude", "auto-logs", "w.attempt-1.argv.json")))["argv"]
    assert not (project / "escape.txt").exists(), [a for a in argv if a.startswith(("Edit", "Write"))]


@needs_cli
def test_the_denial_hint_for_a_long_command_is_a_rule_that_allows_it(api, repo, tmp_path):
    """allow_rule() builds the rule from _shorten(value): the command cut to 160 characters
    with an ellipsis (and runs of whitespace collapsed). The hint says to add exactly that rule;
    done to the letter, the same command is denied again and the task stays blocked."""
    command = "touch " + "d" * 170 + ".txt"

    def once(body):  # the command at a prompt; after its result, finish
        return [text("Done.")] if first_tool_result(body["messages"]) is not None else \
            [tool("Bash", {"command": command})]
    api.script("task is `d`", [Turn(once), Turn([text("Done.")])])
    tasks = [{"id": "d", "description": "Clean", "verify": "true", "allow_empty": True}]
    plan = write_plan(tmp_path / "plan.yaml", tasks)
    orch("run", "--all-groups", plan)
    d = progress()["tasks"]["d"]
    assert d["status"] == "blocked_permission"
    rule = d["hint"].split('add "', 1)[1].split('" to the agent', 1)[0]
    tasks[0]["agent"] = {"preset": "claude", "allowed_tools": [rule]}
    write_plan(tmp_path / "plan.yaml", tasks)
    assert orch("retry", "d").code == 0
    orch("resume", "--adopt-plan", "--all-groups")
    d = progress()["tasks"]["d"]
    assert d["status"] == "merged", (rule, d["status"], d.get("permission_denials"))


@needs_cli
def test_a_retry_in_another_slot_is_told_the_worktree_it_runs_in(api, repo, tmp_path, monkeypatch):
    """A retry resumes the previous session with `--resume S --fork-session` and a new
    `--append-system-prompt` naming the CURRENT slot; the pinned CLI (measured with 2.1.332)
    ignores --append-system-prompt on a resumed session and sends the ORIGINAL one. When the
    retry runs in another slot (after `orchestrator retry`, a session boundary, a conflict
    re-run, a budget hold), the agent is told to "work only inside" the first attempt's slot,
    which may now be another task's checkout, while its Edit rule allows only the new one: an
    agent that follows its instructions is denied (or, through `Bash(git *)`, works in the
    other task's checkout)."""
    (repo / ".claude").mkdir(exist_ok=True)
    (repo / ".claude" / "auto-context.yaml").write_text("parallelization:\n  retry_on_failure: 0\n")

    def agent(body):  # follows its system prompt: writes where it is told to work, commits, ends
        result = first_tool_result(body["messages"])
        if result is None:
            name = "fixed.txt" if "wrong.txt" in json.dumps(body["messages"]) else "wrong.txt"
            return [tool("Write", {"file_path": os.path.join(workdir_of(body), name), "content": "x\n"})]
        if "denied" not in result and "commit" not in json.dumps(body["messages"][-2:]):
            return commit("r: work")
        return [text("done")]
    api.script("task is `r`", [Turn(agent)] * 6)
    plan = write_plan(tmp_path / "plan.yaml", [{"id": "r", "description": "Add fixed.txt",
                                                "verify": "test -f fixed.txt"}])
    orch("run", "--all-groups", plan)
    first = progress()["tasks"]["r"]
    assert first["status"] == "failed" and first["attempts"][0]["slot"] == "wt-1"  # QA: no fixed.txt
    sleeper = subprocess.Popen(["sleep", "60"])  # another lease holds wt-1 now
    try:
        monkeypatch.setenv("POOL_OWNER_PID", str(sleeper.pid))
        assert pm("acquire", "other").lines[-1].startswith("wt-1|")
        monkeypatch.delenv("POOL_OWNER_PID")
        assert orch("retry", "r").code == 0
        orch("resume", "--all-groups")
    finally:
        sleeper.kill()
        sleeper.wait()
    entry = progress()["tasks"]["r"]
    assert entry["attempts"][1]["slot"] == "wt-2"
    assert entry["status"] == "merged", (entry["status"], entry.get("permission_denials"))


@needs_cli
def test_the_default_allow_list_does_not_let_an_agent_commit_in_the_main_checkout(api, repo, tmp_path):
    """The README: "an agent's edits stay in its worktree and one outside it is a denial". The
    preset's default `Bash(git *)` allows `git -C <main checkout> ...`: an agent commits onto
    main in the main checkout (or checks out, resets, stashes there) without a denial."""
    api.script("task is `g`", [Turn([tool("Bash", {"command": f"git -C {repo} commit -q --allow-empty -m hijacked"})]),
                               Turn([text("done")])])
    plan = write_plan(tmp_path / "plan.yaml", [{"id": "g", "description": "G", "verify": "true",
                                                "allow_empty": True}])
    orch("run", "--all-groups", plan)
    assert "hijacked" not in git(repo, "log", "--format=%s", "main")
