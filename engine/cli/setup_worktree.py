"""`setup-worktree [TASK] [BASE]`: drop-in for setup-worktree.sh (CONTRACT.md §2.3)."""

import click

from engine.cli.common import DATA_ARGS, exit_with

PROG = "setup-worktree"


@click.command(context_settings=DATA_ARGS)
@click.argument("task", required=False, default="")
@click.argument("base", required=False, default="")
def cli(task, base):
    from engine import worktree
    from engine.paths import project_root

    path, branch = worktree.create_task_worktree(project_root(), task or None, base or None)
    click.echo(f"{path}|{branch}")


def main():
    exit_with(cli, PROG)


if __name__ == "__main__":
    main()
