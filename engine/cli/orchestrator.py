"""`orchestrator`: run a plan end to end, resume it, watch it, steer it.

Also mirrors the five drop-in commands as groups (`orchestrator pool acquire t1`, ...)."""

import json
import math
import os
import signal
import time

import click

from engine.cli.common import exit_with

PROG = "orchestrator"


class _Commands(click.Group):
    """Our commands, and the five drop-ins mirrored as groups (`orchestrator pool acquire t1`),
    each imported only when it is the one asked for (or listed by --help): importing all five
    on every call cost ~15 ms of each `orchestrator` call."""

    MIRRORED = {"state": ("state_transition", "state-transition: the state machine file"),
                "pool": ("pool_manager", "pool-manager: the worktree pool"),
                "worktree": ("setup_worktree", "setup-worktree: one single-use worktree"),
                "merge": ("merge_branches", "merge-branches: merge task branches"),
                "checkpoint": ("checkpoint_manager", "checkpoint-manager: memory files, snapshots")}

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.MIRRORED))

    def get_command(self, ctx, name):
        if name in self.MIRRORED and name not in self.commands:
            import importlib

            module, what = self.MIRRORED[name]
            command = importlib.import_module(f"engine.cli.{module}").cli
            command.short_help = what
            self.add_command(command, name)
        return super().get_command(ctx, name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """Run coding agents in parallel git worktrees, QA each task, merge in dependency order."""


def _options(all_groups, agent=None, quiet=False, **more):
    from engine.runner import Options

    return Options(all_groups=all_groups, agent=agent, quiet=quiet, **more)


def _terminate_on_sigterm():
    """SIGTERM (e.g. from `orchestrator abort`) unwinds like Ctrl-C, so running agents are stopped."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


@cli.command("run")
@click.argument("plan", required=False, type=click.Path(dir_okay=False))
@click.option("--goal", help="No plan yet: the planner agent splits GOAL into one first (inside DECOMPOSE).")
@click.option("--planner", help="The planner for --goal: `claude` (default) or a shell command (see `plan`).")
@click.option("--all-groups", is_flag=True, help="Do not stop at session boundaries (after each group).")
@click.option("--agent", help="Default agent for tasks without one (overrides the plan's): a shell command, "
                              "or `claude` for the Claude Code preset.")
@click.option("--executor", type=click.Choice(["local", "ray"]), help="Where agents run (default: the plan's or "
                                                                      "the configuration's `executor`, else local).")
@click.option("--max-budget-usd", type=click.FloatRange(min=0, min_open=True), metavar="DOLLARS",
              help="The run's budget (wins over the plan's `max_budget_usd`); with --goal it covers planning too.")
@click.option("--again", is_flag=True, help="Run the plan afresh even if this plan's last run completed.")
@click.option("--detach", is_flag=True, help="Run in a process of its own that outlives this command, its "
                                             "terminal and its Claude Code session; print one line and return.")
@click.option("--quiet", is_flag=True, help="No progress output.")
def run_cmd(plan, goal, planner, all_groups, agent, executor, max_budget_usd, again, detach, quiet):
    """Run PLAN (YAML, JSON or the skill's markdown task list) from the start."""
    from engine import runner

    if bool(plan) == bool(goal):
        raise click.UsageError("give a PLAN file or --goal GOAL (one of them)")
    if max_budget_usd is not None and not math.isfinite(max_budget_usd):
        raise click.UsageError("--max-budget-usd must be a finite number of dollars")
    if detach:
        return _detached()
    _terminate_on_sigterm()
    options = _options(all_groups, agent, quiet, executor=executor, goal=goal, planner=planner,
                       max_budget_usd=max_budget_usd, again=again)
    if goal:
        return runner.start_goal(goal, options)
    return runner.start(plan, options)


@cli.command("resume")
@click.option("--all-groups", is_flag=True, help="Do not stop at session boundaries.")
@click.option("--adopt-plan", is_flag=True, help="The plan file changed since `run`: validate it and go on with "
                                                 "it (merged tasks stay merged).")
@click.option("--detach", is_flag=True, help="Go on in a process of its own (see `run --detach`).")
@click.option("--max-budget-usd", type=click.FloatRange(min=0, min_open=True), metavar="DOLLARS",
              help="A new budget for the run (wins over the plan's), e.g. to go on after it was spent.")
@click.option("--quiet", is_flag=True)
def resume_cmd(all_groups, adopt_plan, detach, max_budget_usd, quiet):
    """Continue the run exactly where it stopped (boundary, Ctrl-C, SIGKILL, reboot)."""
    from engine import runner

    if max_budget_usd is not None and not math.isfinite(max_budget_usd):
        raise click.UsageError("--max-budget-usd must be a finite number of dollars")
    if detach:
        return _detached()
    _terminate_on_sigterm()
    return runner.resume(_options(all_groups, quiet=quiet, adopt_plan=adopt_plan, max_budget_usd=max_budget_usd))


def _detached():
    """This very command, without --detach, in a process of its own (engine.detach): what it
    says before the run has started (a refusal, "already complete") is relayed as it is."""
    from engine import detach
    from engine.paths import Layout

    from engine.cli.common import INVOKED

    args = [a for a in INVOKED if a != "--detach"]
    layout = Layout()
    code, out, err, started = detach.spawn(args, layout.detached_log)
    if out:
        click.echo(out, nl=False)
    if err:
        click.echo(err, nl=False, err=True)
    if started:
        run_id, pid = started
        click.echo(f"Detached: run {run_id}, pid {pid}, log {layout.rel(layout.detached_log)} "
                   f"(`orchestrator wait --timeout 540` follows it)")
    return code


@cli.command("retry")
@click.argument("task")
def retry_cmd(task):
    """Give TASK another round after it failed or was blocked (e.g. once a denied tool is
    allowed); `orchestrator resume` then runs it. Its retry count starts over. The tasks that
    failed only because they waited on it are reopened with it."""
    from engine import store
    from engine.paths import Layout
    from engine.progress import Progress
    from engine.tasks import TaskBook

    layout = Layout()
    progress = Progress(layout)
    data = progress.load()
    if task not in (data.get("tasks") or {}):
        raise click.UsageError(f"no task {task} in this run")
    book = TaskBook(progress, store.Journal(layout.journal), 0)
    waited = book.reopen(task, retry_count=0, failure=None, qa_feedback=None)
    status = book.status(task)
    if data.get("status") == "complete":  # reopen the run, so `resume` carries it on
        from engine import statefile

        progress.update(lambda d: d.update(status="stopped"))
        if statefile.get_state(layout) == "COMPLETE":  # the run machine tells the truth too
            statefile.transition("CHECKPOINT", force=True, layout=layout)
    also = f", and so are {', '.join(waited)} (they waited on it)" if waited else ""
    click.echo(f"{task}: {status.value}{also} (run `orchestrator resume` to carry {'them' if waited else 'it'} on)")
    return 0


@cli.command("status")
@click.option("--json", "as_json", is_flag=True)
@click.option("--watch", is_flag=True, help="Refresh every second until Ctrl-C.")
@click.option("--brief", is_flag=True, help="One or two lines about an unfinished run (what the plugin's "
                                            "SessionStart hook says), nothing when there is none.")
def status_cmd(as_json, watch, brief):
    """Where every task stands, and whether the run's process is alive."""
    from engine import run_status, statefile
    from engine.paths import Layout
    from engine.progress import Progress
    from engine.view import needs_you, status_counts, status_header, status_table

    layout = Layout()
    while True:
        data = Progress(layout).load()
        state = statefile.get_state(layout)
        run = run_status.view(data, state)
        if brief:
            for line in run_status.session_lines(run, data):
                click.echo(line)
            return 0
        if as_json:
            click.echo(json.dumps({"state": state, "counts": status_counts(data), **data,
                                   "status": run.status if run else "none", "run": run.as_dict() if run else None},
                                  ensure_ascii=False, default=str))
            return 0 if run else 1
        if not data.get("tasks"):
            click.echo("NO_SESSION")
            return 1
        text = "\n".join([status_header(state, data), run.line(), *run.unproven_lines(), status_table(data),
                          *needs_you(data)])
        if not watch:
            click.echo(text)
            return 0
        click.clear()
        click.echo(text)
        time.sleep(1)


@cli.command("wait")
@click.option("--timeout", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Give up after this long (exit 2, the run goes on); default: no limit.")
@click.option("--until-stopped", is_flag=True, help="Do not return for a task that needs a person while the "
                                                    "run goes on; wait until the run itself stops.")
def wait_cmd(timeout, until_stopped):
    """Block until the run completes (exit 0), a task needs a person (3), it stops at a session
    boundary (4) or stops otherwise -- its process gone, aborted (5) -- or the timeout passes (2).
    Prints one line saying which. Poll it from a Claude Code session under its Bash tool's limits."""
    from engine import run_status
    from engine.paths import Layout

    if timeout is not None and not math.isfinite(timeout):
        raise click.UsageError("--timeout must be a finite number of seconds")
    layout = Layout()
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        run = run_status.current(layout)
        if run is None:
            click.echo("NO_SESSION")
            return 1
        outcome = run_status.wait_outcome(run, until_stopped)
        if outcome is None and deadline is not None and time.monotonic() >= deadline:
            outcome = "timeout"
        if outcome is not None:
            click.echo(f"{outcome}: {run.line()}")
            return run_status.WAIT_CODES[outcome]
        time.sleep(0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic())))


@cli.command("validate")
@click.argument("plan", type=click.Path(dir_okay=False))
@click.option("--agent", help="The --agent you will pass to `run` (for tasks without one).")
@click.option("--executor", type=click.Choice(["local", "ray"]), help="The --executor you will pass to `run`.")
@click.option("--json", "as_json", is_flag=True)
def validate_cmd(plan, agent, executor, as_json):
    """Check PLAN exactly as `run` will (plan, configuration, agents, base branch) and show
    its parallel groups; nothing is created."""
    from engine import plan as plans
    from engine.paths import Layout

    p, settings, base = plans.check_for_run(plan, Layout(), agent=agent, require_repo=False, executor=executor)
    if as_json:
        click.echo(json.dumps({"tasks": p.order, "groups": p.groups, "base": base,
                               "max_agents": settings.max_agents,
                               "implicit_dependencies": {t: p.tasks[t].implicit_deps for t in p.order
                                                         if p.tasks[t].implicit_deps}}))
        return 0
    click.echo(f"Plan OK: {len(p.order)} tasks, {len(p.groups)} groups (max_agents {settings.max_agents})"
               + (f", base {base}" if base else ", not in a git repository: base not checked"))
    for n, group in enumerate(p.groups, 1):
        click.echo(f"  Group {n}: {', '.join(group)}")
    for t in p.order:
        if p.tasks[t].implicit_deps:
            click.echo(f"  {t} runs after {', '.join(p.tasks[t].implicit_deps)} (shared files: order only, "
                       "their failure does not stop it)")
    return 0


@cli.command("plan")
@click.argument("goal")
@click.option("-o", "--output", default="plan.yaml", show_default=True, type=click.Path(dir_okay=False),
              help="Where to write the plan (YAML).")
@click.option("--planner", "planner_cmd", default="claude", show_default=True,
              help="`claude` (the preset) or a shell command that gets PLAN_GOAL/PLAN_PROMPT/PLAN_FEEDBACK in its "
                   "environment and writes the plan to $PLAN_OUTPUT or stdout.")
@click.option("--model", help="Model for the claude planner.")
@click.option("--retries", default=2, show_default=True, type=click.IntRange(0, 10),
              help="How many times a refused plan goes back to the planner with the errors.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option("--quiet", is_flag=True)
def plan_cmd(goal, output, planner_cmd, model, retries, force, quiet):
    """Ask a planner agent to split GOAL into a validated plan (the DECOMPOSE step by an LLM)."""
    from engine import config, planner
    from engine.paths import Layout

    planner.check_output_path(output, force)
    layout = Layout()
    agent = {"preset": "claude", "model": model} if model and planner_cmd == "claude" else planner_cmd
    if model and planner_cmd != "claude":
        raise click.UsageError("--model only applies to the claude planner")
    settings = config.load(layout.root)
    say = (lambda line: None) if quiet else (lambda line: click.echo(line, err=True))
    text = planner.Planner(layout.root, agent, retries, settings.max_agents, say).run(goal)
    planner.write(output, text, goal)
    click.echo(f"Plan written: {output}")
    return 0


@cli.command("graph")
@click.argument("plan", required=False, type=click.Path(dir_okay=False))
@click.option("--tasks", "task_machine", is_flag=True,
              help="Draw the task machine (each task's lifecycle), annotated with the run's tasks.")
def graph_cmd(plan, task_machine):
    """The task DAG and its groups as Mermaid (the current run's plan by default)."""
    from engine import config, plan as plans
    from engine.errors import OrchestratorError
    from engine.paths import Layout
    from engine.progress import Progress

    layout = Layout()
    data = Progress(layout).load()
    statuses = {t: v.get("status") for t, v in (data.get("tasks") or {}).items()} if not plan else {}
    if task_machine:
        from engine import tasks

        click.echo(tasks.mermaid(statuses), nl=False)
        return 0
    path = plan or data.get("plan_file")
    if not path:
        raise OrchestratorError("no plan given and no run in progress")
    p = plans.load(path, config.load(layout.root, data.get("work_type") or "").max_agents)
    click.echo(plans.mermaid(p, statuses), nl=False)
    return 0


@cli.command("abort")
def abort_cmd():
    """Stop the running orchestrator and its agents, release slots; branches and journal stay."""
    from engine import run_status, statefile, store
    from engine.cli.common import echo_lines
    from engine.paths import Layout
    from engine.pool import Pool
    from engine.procs import alive, stop_group
    from engine.progress import Progress
    from engine.tasks import TaskBook, status_of

    layout = Layout()
    progress = Progress(layout)
    data = progress.load()
    if not data.get("tasks"):
        click.echo("NO_SESSION")
        return 1
    pid, start = data.get("orchestrator_pid"), data.get("orchestrator_pid_start")
    unproven = [run_status.unproven_line(t, p) for t, p in run_status.unproven(data)]  # never signalled
    if not _anything_live(data):  # complete, aborted, at a boundary, or its process gone: nothing changes
        click.echo(f"Nothing to abort: {run_status.view(data, statefile.get_state(layout)).line()}")
        echo_lines(unproven)
        return 0
    # the pid is only signalled when it is still the same process (its start time matches)
    if isinstance(pid, int) and pid != os.getpid() and start and alive(pid, start):
        os.kill(pid, signal.SIGTERM)  # it unwinds like Ctrl-C: its attempts stop, uncounted
        for _ in range(200):
            if not alive(pid, start):
                break
            time.sleep(0.05)
    data = progress.load()
    stopped = [t for t, v in data["tasks"].items() if v.get("pid") and stop_group(v["pid"], v.get("pid_start"))]
    pool = Pool(layout)
    released = []
    if os.path.exists(pool.state_path):
        for slot in pool.status()["worktrees"]:
            if slot.get("status") == "busy" and slot.get("task_id") in data["tasks"]:
                pool.release(slot["id"], quiet=True)
                released.append(slot["id"])
    journal = store.Journal(layout.journal)
    book = TaskBook(progress, journal, 0)
    for task_id, entry in data["tasks"].items():
        status = status_of(progress.task(task_id))
        if status.value == "running":  # an attempt we stopped ourselves: not counted
            book.fire(task_id, "interrupt", iterations=max(0, int(entry.get("iterations") or 1) - 1), pid=None)
        elif status.value == "verifying":
            book.fire(task_id, "qa_interrupt")
        elif status.value == "merging":
            book.fire(task_id, "merge_interrupt")  # the next run settles it against the base
    progress.update(lambda d: [d.update(status="aborted")] + [
        t.update(slot=None) for t in (d.get("tasks") or {}).values() if t.get("slot") in released])
    journal.append("abort", stopped=stopped, released=released)
    statefile.transition("FAILED", layout=layout)
    click.echo(f"Aborted: {len(stopped)} agent(s) stopped, {len(released)} slot(s) released; "
               "branches and journal kept (`orchestrator resume` continues)")
    echo_lines(unproven)
    return 0


def _anything_live(data):
    """Whether the run's orchestrator or any task's recorded agent is still a live process."""
    from engine.procs import alive

    tasks = data.get("tasks") if isinstance(data.get("tasks"), dict) else {}
    pids = [(data.get("orchestrator_pid"), data.get("orchestrator_pid_start"))] + \
        [(t.get("pid"), t.get("pid_start")) for t in tasks.values() if isinstance(t, dict)]
    return any(isinstance(pid, int) and start is not None and alive(pid, start) for pid, start in pids)


@cli.command("dashboard")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default="a free port",
              help="Port to listen on.")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the default browser.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback needs --allow-remote.")
@click.option("--allow-remote", is_flag=True, help="Allow a non-loopback --host (anyone who reaches it sees "
              "the run, its logs and diffs).")
def dashboard_cmd(port, open_browser, host, allow_remote):
    """A live, read-only web page of the current run (DAG, timeline, logs, QA, diffs)."""
    from engine.dashboard.server import serve
    from engine.paths import Layout

    return serve(Layout().root, host=host, port=port, allow_remote=allow_remote, open_browser=open_browser,
                 echo=lambda line: click.echo(line))


def main():
    exit_with(cli, PROG)


if __name__ == "__main__":
    main()
