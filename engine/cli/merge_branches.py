"""`merge-branches [BASE] [BRANCH...]`: drop-in for merge-branches.sh (CONTRACT.md §2.4)."""

import json

import click

from engine.cli.common import DATA_ARGS, echo_lines, exit_with

PROG = "merge-branches"


@click.command(context_settings=dict(DATA_ARGS, help_option_names=["--help"]))
@click.option("--dry-run", is_flag=True, help="Predict conflicts (target and pairwise); change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
@click.option("--keep-branches", is_flag=True, help="Do not delete branches once merged.")
@click.argument("base", required=False, default="")
@click.argument("branches", nargs=-1)
def cli(dry_run, as_json, keep_branches, base, branches):
    """Merge task branches into BASE in dependency order, predicting conflicts first."""
    from engine import git, merge
    from engine.errors import OrchestratorError
    from engine.paths import project_root

    try:
        repo = git.toplevel(project_root())
    except OrchestratorError:
        raise OrchestratorError("Not in a git repository") from None
    names = " ".join(branches).split() or merge.detect_branches(repo)
    if not names:
        click.echo(json.dumps({"merged": [], "failed": []}) if as_json else "No branches to merge")
        return 0
    target = base or merge.default_target(repo)
    names = merge.order_by_dependencies(names, merge.progress_dependencies(project_root()))
    if dry_run:
        return _dry_run(repo, target, names, as_json)
    if not as_json:
        echo_lines(merge.header_lines(merge.MergeReport(target=target, branches=names)))
    report = merge.merge_branches(repo, target, names, delete_merged=not keep_branches)
    if as_json:
        click.echo(json.dumps(merge.report_dict(report), ensure_ascii=False))
    else:
        echo_lines(merge.branch_lines(report) + merge.summary_lines(report))
    return 1 if report.failed else 0


def _dry_run(repo, target, names, as_json):
    from engine import merge

    report = merge.merge_branches(repo, target, names, dry_run=True)
    matrix = merge.conflict_matrix(repo, target, names)
    if as_json:
        click.echo(json.dumps({**merge.report_dict(report), "matrix": matrix}, ensure_ascii=False))
    else:
        from tabulate import tabulate

        echo_lines(merge.header_lines(report) + merge.branch_lines(report))
        short = {b: f"#{i}" for i, b in enumerate(names, 1)}
        rows = []
        for b in names:
            cells = [_cell(matrix[b]["target"])] + [
                "·" if o == b else _cell(matrix[b]["branches"][o]) for o in names]
            rows.append([f"{short[b]} {b}"] + cells)
        click.echo("")
        click.echo(f"Conflict matrix (✓ merges cleanly, ✗N conflicts in N files) against {target}:")
        click.echo(tabulate(rows, headers=["branch", target] + [short[b] for b in names], tablefmt="simple"))
        echo_lines(merge.summary_lines(report))
    return 1 if report.failed else 0


def _cell(files):
    return "✓" if not files else f"✗{len(files)}"


def main():
    exit_with(cli, PROG)


if __name__ == "__main__":
    main()
