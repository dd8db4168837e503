"""`pool-manager`: drop-in for pool-manager.sh (CONTRACT.md §2.2)."""

import json

import click

from engine.cli.common import DATA_ARGS, ContractGroup, exit_with, prog_name

PROG = "pool-manager"


def _pool():
    from engine.pool import Pool

    return Pool()


def usage_text():
    p = prog_name(PROG)
    return f"""Usage: {p} {{init|acquire|release|status|cleanup|reset|merge|health}}

Commands:
  init [size] [--force]     Initialize pool with N slots (default: $POOL_SIZE or 8)
  acquire <task-id> [base]  Lease a worktree: prints wt-N|/abs/path|auto/<task-id>
  release <wt-id> [--force] Return a worktree; unmerged branches are kept unless --force
  status [--json]           Show pool status (default command)
  cleanup [--force]         Release and remove all pool worktrees (pool branches only)
  reset [size] [--force]    Cleanup and reinitialize
  (init, cleanup and reset refuse while a live process holds a slot, unless --force)
  merge [target]            Merge all busy slots' branches into target
  health [--repair]         Check (and fix) drift between the pool state and git"""


@click.group(cls=ContractGroup, fallback="usage", invoke_without_command=True,
             context_settings={"help_option_names": []})
@click.pass_context
def cli(ctx):
    if ctx.invoked_subcommand is None:
        return ctx.invoke(status_cmd)


@cli.command("usage", context_settings=dict(DATA_ARGS, allow_extra_args=True))
def usage_cmd():
    click.echo(usage_text())
    return 1


@cli.command("init", context_settings=DATA_ARGS)
@click.option("--force", is_flag=True, help="Re-initialise even with busy slots (their work is kept).")
@click.argument("size", required=False)
def init_cmd(force, size):
    n = _pool().init(size, force=force)
    click.echo(f"Pool initialized: {n} slots available")


@cli.command("acquire", context_settings=DATA_ARGS)
@click.argument("task", required=False, default="")
@click.argument("base", required=False)
def acquire_cmd(task, base):
    from engine.errors import UsageError
    from engine.pool import PoolExhausted

    if not task:
        raise UsageError("Task ID required")
    try:
        slot_id, path, branch = _pool().acquire(task, base)
    except PoolExhausted:
        click.echo("POOL_EXHAUSTED")
        raise
    click.echo(f"{slot_id}|{path}|{branch}")


@cli.command("release", context_settings=DATA_ARGS)
@click.option("--force", is_flag=True, help="Also delete a branch with commits not in its base.")
@click.argument("slot_id", required=False, default="")
def release_cmd(force, slot_id):
    from engine.pool import check_slot_id

    check_slot_id(slot_id)
    _pool().release(slot_id, force=force)
    click.echo(f"RELEASED:{slot_id}")


@cli.command("status")
@click.option("--json", "as_json", is_flag=True)
def status_cmd(as_json=False):
    info = _pool().status()
    if as_json:
        click.echo(json.dumps(info, ensure_ascii=False))
        return 0
    from tabulate import tabulate

    click.echo(f"Pool Size: {info['pool_size']} | Busy: {info['busy']} | Idle: {info['idle']} | "
               f"Error: {info['error']}")
    rows = []
    for slot in info["worktrees"]:
        owner = slot.get("owner") or {}
        state = slot.get("status", "?").upper() if slot.get("status") != "idle" else "idle"
        if slot.get("preparing"):
            state += " (preparing)"
        elif slot.get("releasing"):
            state += " (releasing)"
        rows.append((slot["id"], state, slot.get("task_id") or "-", slot.get("branch") or "-",
                     slot.get("acquired_at") or "-", owner.get("pid") or "-"))
    click.echo(tabulate(rows, headers=["slot", "status", "task", "branch", "acquired", "owner"],
                        tablefmt="rounded_outline"))
    return 0


@cli.command("cleanup")
@click.option("--force", is_flag=True, help="Even while a live process holds a slot; also delete pool branches "
                                            "with unmerged commits.")
def cleanup_cmd(force):
    released, removed, kept = _pool().cleanup(force=force, ignore_live=force)
    click.echo(f"Pool cleaned: {released} released, {removed} worktrees removed, {kept} branches kept")


@cli.command("reset", context_settings=DATA_ARGS)
@click.option("--force", is_flag=True, help="Even while a live process holds a slot (unmerged branches are kept).")
@click.argument("size", required=False)
def reset_cmd(force, size):
    n = _pool().reset(size, force=force)
    click.echo(f"Pool initialized: {n} slots available")


@cli.command("merge", context_settings=DATA_ARGS)
@click.argument("target", required=False)
def merge_cmd(target):
    from engine import merge

    pool = _pool()
    busy = [s for s in pool.status()["worktrees"] if s.get("status") == "busy" and s.get("branch")]
    report = merge.merge_branches(pool.repo, target, [s["branch"] for s in busy],
                                  message="Merge {branch} (Agent Pool)", delete_merged=False)
    for line in merge.branch_lines(report) + merge.summary_lines(report):
        click.echo(line)
    failed = {b for b, _, _ in report.failed}
    if not failed:
        click.echo("Status: ✅ ALL MERGED SUCCESSFULLY")
        return 0
    click.echo("Status: ⚠️  SOME MERGES FAILED")
    for slot in busy:
        if slot["branch"] in failed:
            click.echo(f"  - {slot['id']}:{slot['branch']}")
    return 1


@cli.command("health")
@click.option("--repair", is_flag=True, help="Fix what can be fixed, then check again.")
def health_cmd(repair):
    from engine import pool_health
    from engine.ui import warn

    pool = _pool()
    found, remaining, repaired = pool_health.health(pool, repair=repair)
    for issue in found:
        warn(f"[WARN] {issue.detail}")
    for line in repaired:
        click.echo(f"Repaired: {line}")
    if remaining:
        click.echo(f"⚠️  Pool health: {len(remaining)} issues found")
        if repair:
            for issue in remaining:
                click.echo(f"   unresolved: {issue.detail}")
        return 1
    click.echo("✅ Pool health: OK")
    click.echo(f"   Git worktrees in pool: {pool_health.pool_worktree_count(pool)}")
    return 0


def main():
    exit_with(cli, PROG)


if __name__ == "__main__":
    main()
