"""`state-transition`: drop-in for state-transition.sh (CONTRACT.md §2.1)."""

import json

import click

from engine import statefile
from engine.cli.common import DATA_ARGS, echo_lines, exit_with, help_group, prog_name
from engine.errors import UsageError

PROG = "state-transition"

HELP = """State Transition Engine v3.1

Usage:
  state-transition.sh init [initial_state]     Initialize state machine
  state-transition.sh state [--json]           Get current state
  state-transition.sh work-type [type] [focus] [confidence]  Set/get work type
  state-transition.sh transition <new_state> [--force]  Transition to new state
  state-transition.sh checkpoint <file> [desc] Add checkpoint file
  state-transition.sh tokens <amount>          Update token usage
  state-transition.sh resume [--json]          Get resume information
  state-transition.sh skills [state] [type]    Get mandatory skills
  state-transition.sh history [--json]         Show the transition journal
  state-transition.sh graph                    Draw the machine (Mermaid)

Valid States:
  IDLE, DETECT, CLASSIFY, PLAN, PARALLELIZE, EXECUTE, INTEGRATE, REVIEW, COMPLETE, RESEARCH
  SMART_ANALYZE, SMART_DIRECT, SMART_ORCHESTRATED, SMART_VERIFY (for /auto-smart)
  DECOMPOSE, QA, E2E, CHECKPOINT, FAILED (orchestrator pipeline)

Valid Work Types:
  FRONTEND, BACKEND, FULLSTACK, DOCUMENTATION, DOCUMENTS, INTEGRATION, TESTING, CREATIVE, RESEARCH

Files live in <project root>/.claude/ (the main worktree of the current git repository;
override with ORCHESTRATOR_ROOT)."""


def _usage(rest):
    return UsageError(f"Usage: {prog_name(PROG)} {rest}")


cli = help_group(HELP)


@cli.command("init", context_settings=DATA_ARGS)
@click.argument("state", required=False, default="IDLE")
def init_cmd(state):
    echo_lines(statefile.init(state or "IDLE"))


@cli.command("state")
@click.option("--json", "as_json", is_flag=True, help="The whole state file as JSON.")
def state_cmd(as_json):
    if as_json:
        data = statefile.read()
        payload = {"initialized": data is not None, "current_state": statefile.current_state_of(data)}
        payload["state"] = data or {}
        click.echo(json.dumps(payload, ensure_ascii=False, default=str))
    else:
        click.echo(statefile.get_state())


@cli.command("work-type", context_settings=DATA_ARGS)
@click.argument("work_type", required=False, default="")
@click.argument("focus", required=False, default="")
@click.argument("confidence", required=False, default="1.0")
def work_type_cmd(work_type, focus, confidence):
    if not work_type:
        click.echo(statefile.get_work_type())
        return
    # bash's ${4:-1.0}: an empty confidence (an unset $CONFIDENCE in the caller) means 1.0
    echo_lines(statefile.set_work_type(work_type, focus, confidence or "1.0"))


@cli.command("transition", context_settings=DATA_ARGS)
@click.option("--force", is_flag=True, help="Allow an edge the machine does not (journaled).")
@click.argument("new_state", required=False, default="")
def transition_cmd(force, new_state):
    if not new_state:
        raise _usage("transition <new_state>")
    echo_lines(statefile.transition(new_state, force=force))


@cli.command("checkpoint", context_settings=DATA_ARGS)
@click.argument("path", required=False, default="")
@click.argument("description", required=False, default="")
def checkpoint_cmd(path, description):
    if not path:
        raise _usage("checkpoint <file_path> [description]")
    echo_lines(statefile.add_checkpoint(path, description))


@cli.command("tokens", context_settings=DATA_ARGS)
@click.argument("amount", required=False, default="")
def tokens_cmd(amount):
    if not amount:
        raise _usage("tokens <amount>")
    lines, code = statefile.add_tokens(amount)
    echo_lines(lines)
    return code


@cli.command("resume")
@click.option("--json", "as_json", is_flag=True)
def resume_cmd(as_json):
    info = statefile.resume_info()
    if info is None:
        click.echo(json.dumps({"session": None}) if as_json else "NO_SESSION")
        return 1
    click.echo(json.dumps(info, ensure_ascii=False) if as_json else "\n".join(statefile.resume_lines(info)))
    return 0


@cli.command("skills", context_settings=DATA_ARGS)
@click.argument("state", required=False)
@click.argument("work_type", required=False)
def skills_cmd(state, work_type):
    # bash's ${2:-current}: an empty argument means the current value
    click.echo(",".join(statefile.skills(state or None, work_type or None)))


@cli.command("history")
@click.option("--json", "as_json", is_flag=True)
def history_cmd(as_json):
    records = statefile.history()
    if as_json:
        click.echo(json.dumps(records, ensure_ascii=False))
        return
    from tabulate import tabulate

    rows = [(r.get("seq"), r.get("ts"), r.get("event"), r.get("from", ""), r.get("to", ""),
             "yes" if r.get("forced") else "", r.get("pid")) for r in records]
    click.echo(tabulate(rows, headers=["seq", "time (UTC)", "event", "from", "to", "forced", "pid"]))


@cli.command("graph")
def graph_cmd():
    from engine import machine

    data = statefile.read()
    click.echo(machine.mermaid(statefile.current_state_of(data) if data is not None else None), nl=False)


def main():
    exit_with(cli, PROG)


if __name__ == "__main__":
    main()
