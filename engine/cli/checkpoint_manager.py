"""`checkpoint-manager`: drop-in for checkpoint-manager.sh (CONTRACT.md §2.5), plus the
create / list / restore / verify its documentation promised."""

import json

import click

from engine.cli.common import DATA_ARGS, echo_lines, exit_with, help_group, prog_name
from engine.errors import UsageError

PROG = "checkpoint-manager"

HELP = """Checkpoint Manager v3.0

Usage:
  checkpoint-manager.sh write <phase> <summary>           Write a phase summary
  checkpoint-manager.sh group <N> <pre|post|failed> [summary]  Parallel group checkpoint
  checkpoint-manager.sh task <task_id> <learning>         Record task learnings
  checkpoint-manager.sh context                           Write the context summary
  checkpoint-manager.sh read                              Print the resume context
  checkpoint-manager.sh handoff                           Prepare a session handoff
  checkpoint-manager.sh cleanup                           Archive memory files
  checkpoint-manager.sh create [--reason R]               Snapshot state, progress and pool files
  checkpoint-manager.sh list [--json]                     List snapshots
  checkpoint-manager.sh restore --latest | --id ID        Restore a snapshot (verified first)
  checkpoint-manager.sh verify --id ID | --latest         Check a snapshot's checksums and branches

Memory files live in .claude/auto-memory/, archives in .claude/auto-memory-archive/,
snapshots in .claude/checkpoints/."""


def _memory():
    from engine.memory import Memory

    return Memory()


def _usage(rest):
    return UsageError(f"Usage: {prog_name(PROG)} {rest}")


cli = help_group(HELP)


@cli.command("write", context_settings=DATA_ARGS)
@click.argument("phase", required=False, default="")
@click.argument("summary", required=False, default="")
def write_cmd(phase, summary):
    if not phase or not summary:
        raise _usage("write <phase> <summary>")
    echo_lines(_memory().write_phase(phase, summary))


@cli.command("group", context_settings=DATA_ARGS)
@click.argument("number", required=False, default="")
@click.argument("status", required=False, default="")
@click.argument("summary", required=False, default="")
def group_cmd(number, status, summary):
    if not number or not status:
        raise _usage("group <group_number> <pre|post|failed> [summary]")
    echo_lines(_memory().write_group(number, status, summary))


@cli.command("task", context_settings=DATA_ARGS)
@click.argument("task_id", required=False, default="")
@click.argument("learning", required=False, default="")
def task_cmd(task_id, learning):
    if not task_id or not learning:
        raise _usage("task <task_id> <learning>")
    echo_lines(_memory().write_task(task_id, learning))


@cli.command("context")
def context_cmd():
    click.echo(_memory().context())


@cli.command("read")
def read_cmd():
    lines = _memory().read()
    if lines is None:
        click.echo("NO_CHECKPOINTS")
        return 1
    echo_lines(lines)
    return 0


@cli.command("handoff")
def handoff_cmd():
    echo_lines(_memory().handoff())


@cli.command("cleanup")
def cleanup_cmd():
    echo_lines(_memory().cleanup())


def _snapshots():
    from engine.snapshot import Snapshots

    return Snapshots()


@cli.command("create", context_settings=DATA_ARGS)
@click.option("--reason", default="", help="Why this snapshot was taken.")
def create_cmd(reason):
    manifest = _snapshots().create(reason)
    click.echo(f"Checkpoint created: {manifest['id']}")


@cli.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_cmd(as_json):
    items = _snapshots().list()
    if as_json:
        click.echo(json.dumps(items, ensure_ascii=False))
        return 0
    if not items:
        click.echo("NO_CHECKPOINTS")
        return 1
    from tabulate import tabulate

    rows = [(m["id"], m.get("created_at"), ", ".join(sorted(m.get("files") or {})), len(m.get("branches") or {}),
             m.get("reason") or "") for m in items]
    click.echo(tabulate(rows, headers=["id", "created (UTC)", "files", "branches", "reason"]))
    return 0


def _pick(cp_id, latest):
    snaps = _snapshots()
    if bool(cp_id) == bool(latest):
        raise _usage("restore|verify --latest | --id <checkpoint_id>")
    return snaps, (snaps.latest() if latest else cp_id)


@cli.command("restore")
@click.option("--id", "cp_id", default="")
@click.option("--latest", is_flag=True)
def restore_cmd(cp_id, latest):
    snaps, cp_id = _pick(cp_id, latest)
    manifest = snaps.restore(cp_id)
    click.echo(f"Checkpoint restored: {cp_id} ({', '.join(sorted(manifest['files']))})")


@cli.command("verify")
@click.option("--id", "cp_id", default="")
@click.option("--latest", is_flag=True)
def verify_cmd(cp_id, latest):
    snaps, cp_id = _pick(cp_id, latest)
    problems = snaps.verify(cp_id)
    if problems:
        click.echo(f"Checkpoint {cp_id}: FAILED")
        echo_lines(f"  - {p}" for p in problems)
        return 1
    click.echo(f"Checkpoint {cp_id}: OK")
    return 0


def main():
    exit_with(cli, PROG)


if __name__ == "__main__":
    main()
