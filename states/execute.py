"""EXECUTE: the streaming task flow of this session's scope (engine.scheduler): agents,
per-task QA and the merge queue, until every task of the scope has reached a terminal
status. Per-task progress is in each task's own machine (`orchestrator status`).

When the run's `max_budget_usd` is spent, no new attempt starts: the attempts in flight
finish, and the session ends here at a boundary, with a handoff and the reason."""

from engine.scheduler import run_scope


def handle(ctx):
    budget_spent = run_scope(ctx)
    if budget_spent:
        ctx.memory.handoff()
        ctx.reporter.line(f"session boundary: {budget_spent}")
        ctx.stop_requested = True
    return "QA"
