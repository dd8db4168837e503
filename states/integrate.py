"""INTEGRATE: make sure everything approved in the scope is in the base. The merge queue
normally did it the moment each task was approved; after a crash or abort a task may be
left `approved` or `merging`, and it is settled and merged here. A conflict found here is
a setback like any other: the task goes back through EXECUTE."""

from engine.tasks import TaskStatus as S


def handle(ctx):
    scope = ctx.scope_tasks()
    ctx.merges.settle(scope)
    approved = ctx.tasks_in((S.APPROVED,), scope)
    if approved:
        ctx.merges.merge(approved)
    return "CHECKPOINT"  # an unfinished scope (a conflict found here) goes on past CHECKPOINT
