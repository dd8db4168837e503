"""What a person watching a run sees: the skill's boxes on a terminal, plain lines otherwise
(so logs and CI output stay greppable), and the status table."""

import sys
import threading
import time

WIDTH = 63


def _box(lines):
    out = ["┌" + "─" * WIDTH + "┐"]
    for line in lines:
        text = line if len(line) <= WIDTH - 2 else line[:WIDTH - 3] + "…"
        out.append("│ " + text + " " * max(0, WIDTH - 1 - _width(text)) + "│")
    out.append("└" + "─" * WIDTH + "┘")
    return out


def _width(text):
    # emoji used in the boxes take two columns; a variation selector takes none
    return sum(0 if c == "\ufe0f" else 2 if ord(c) > 0x2000 and c not in "─│┌┐└┘├└█░…→•" else 1 for c in text)


def bar(done, total, width=16):
    filled = int(width * done / total) if total else width
    return "[" + "█" * filled + "░" * (width - filled) + f"] {done}/{total}"


class Reporter:
    def __init__(self, stream=None, quiet=False, boxes=None):
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.boxes = self.stream.isatty() if boxes is None else boxes
        self.lock = threading.Lock()
        self.started = time.time()

    def _emit(self, lines):
        if self.quiet:
            return
        with self.lock:
            for line in lines:
                print(line, file=self.stream, flush=True)

    def line(self, text):
        self._emit([text] if self.boxes else [f"[orchestrator] {text}"])

    def mode(self, group, total_groups, mode, tasks, concurrency, reason, slots=None):
        if not self.boxes:
            self._emit([f"[orchestrator] group {group}/{total_groups}: {mode} ({reason}); "
                        f"tasks: {', '.join(tasks)}; agents: {concurrency}"])
            return
        if mode == "PARALLEL":
            lines = ["⚡ Execution Mode: PARALLEL", f"   Tasks: {len(tasks)} independent tasks in group {group}",
                     f"   Agents: {concurrency} ({reason})", "", f"   Parallel Group {group} of {total_groups}:"]
            for i, t in enumerate(tasks, 1):
                lines.append(f"     {'└──' if i == len(tasks) else '├──'} Agent {i}: {t}")
            lines += ["", f"   Progress: {bar(0, len(tasks))} agents complete"]
        else:
            lines = ["⏸️ Execution Mode: SEQUENTIAL", f"   Reason: {reason}", f"   Order: {' → '.join(tasks)}"]
        self._emit(_box(lines))

    def task(self, task_id, event):
        self._emit([f"  • {task_id}: {event}"] if self.boxes else [f"[orchestrator] {task_id}: {event}"])

    def group_progress(self, mode, statuses):
        if self.quiet:
            return
        done = sum(1 for s in statuses.values() if s in ("approved", "merging", "merged", "failed", "blocked",
                                                          "blocked_permission"))
        elapsed = f"{time.time() - self.started:.1f}s"
        if not self.boxes:
            self._emit([f"[orchestrator] progress {done}/{len(statuses)} agents complete, {elapsed} elapsed"])
            return
        icon = {"approved": "✅", "merging": "✅", "merged": "✅", "failed": "❌", "blocked": "⛔",
                "blocked_permission": "⛔", "running": "⏳", "executed": "🔎", "verifying": "🔎", "rejected": "🔁",
                "conflicted": "🔁"}
        icon_mode = "⚡" if mode == "PARALLEL" else "⏸️"
        lines = [f"{icon_mode} Execution Mode: {mode}",
                 f"   Progress: {bar(done, len(statuses))} agents complete, {elapsed}", ""]
        for t, s in statuses.items():
            lines.append(f"   {icon.get(s, '⏳')} {t} ({s})")
        self._emit(_box(lines))

    def final(self, run):
        if self.quiet:
            return  # (the table costs a tabulate import and a pass over every task)
        data = run.progress.load()
        tasks = data.get("tasks") or {}
        merged = [t for t, v in tasks.items() if v.get("status") == "merged"]
        failed = [t for t, v in tasks.items() if v.get("status") != "merged"]
        self._emit(["", status_table(data), "", "=== RUN SUMMARY ===",
                    f"Merged: {' '.join(merged) or 'none'}", f"Failed: {' '.join(failed) or 'none'}",
                    f"Elapsed: {time.time() - self.started:.1f}s"])


def status_counts(data):
    """{status: number of tasks}, in the task machine's order."""
    from engine.tasks import TaskStatus

    counts = {}
    for t in (data.get("tasks") or {}).values():
        status = (t or {}).get("status") or "pending"
        counts[status] = counts.get(status, 0) + 1
    return {s.value: counts[s.value] for s in TaskStatus if s.value in counts}


def status_header(state, data):
    """The run in two lines: where the run machine is, then the task machine's tally."""
    scope = data.get("scope_groups") or []
    group = f"{scope[0]}-{scope[-1]}" if len(scope) > 1 else str(data.get("current_group"))
    cost = data.get("cost_usd")
    line = (f"State: {state} | Run: {data.get('status')} | Group: {group}/{data.get('total_groups')} | "
            f"Mode: {data.get('mode', '-')} | Base: {data.get('base')}"
            + (f" | Cost: ${cost:.2f}" if isinstance(cost, (int, float)) else ""))
    tally = ", ".join(f"{n} {status}" for status, n in status_counts(data).items())
    return f"{line}\nTasks: {tally}"


def _money(value):
    return f"${value:.2f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _count(value):
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "-"


def _columns(data):
    """Optional columns, shown only when some task has data for them."""
    tasks = [t or {} for t in (data.get("tasks") or {}).values()]
    return {"node": any(t.get("node") for t in tasks),
            "usage": any(k in t for t in tasks for k in ("cost_usd", "tokens_in", "tokens_out", "turns"))}


def status_rows(data):
    shown = _columns(data)
    rows = []
    for task_id, t in (data.get("tasks") or {}).items():
        elapsed = t.get("elapsed")
        row = [task_id, t.get("group", ""), t.get("status", ""), t.get("slot") or "-"]
        if shown["node"]:
            row.append(t.get("node") or "-")
        row += [t.get("iterations") or "-", t.get("retry_count", 0),
                "yes" if t.get("qa_verified") else ("-" if not t.get("qa_timestamp") else "no")]
        if shown["usage"]:
            tokens = (t.get("tokens_in") or 0) + (t.get("tokens_out") or 0) \
                if ("tokens_in" in t or "tokens_out" in t) else None
            row += [_money(t.get("cost_usd")), _count(tokens), _count(t.get("turns"))]
        row += [f"{elapsed:.1f}s" if isinstance(elapsed, (int, float)) else "-", _why(t)]
        rows.append(tuple(row))
    return rows


def _why(t):
    """One short reason for a task that needs a person, else its branch."""
    denied = t.get("permission_denials") if t.get("status") == "blocked_permission" else None
    text = ("denied " + ", ".join(map(str, denied))) if isinstance(denied, list) and denied else \
        (t.get("failure") or "")
    if text:
        return text if len(text) <= 60 else text[:59] + "…"
    return t.get("branch") or "-"


NEEDS_YOU = ("failed", "blocked", "blocked_permission")


def needs_you(data, width=400):
    """One line per task that needs a person: why, in full (bounded), and what to do."""
    lines = []
    for task_id, t in (data.get("tasks") or {}).items():
        if not isinstance(t, dict) or t.get("status") not in NEEDS_YOU:
            continue
        line = f"{task_id} ({t['status']}): {t.get('failure') or t.get('qa_feedback') or 'no reason recorded'}"
        line = " ".join(line.split())
        lines.append(line if len(line) <= width else line[:width - 1] + "…")
    return (["", "Needs you:"] + [f"  {line}" for line in lines]) if lines else []


def status_table(data):
    from tabulate import tabulate

    shown = _columns(data)
    headers = ["task", "group", "status", "slot"] + (["node"] if shown["node"] else []) + \
        ["attempt", "retries", "QA"] + (["cost", "tokens", "turns"] if shown["usage"] else []) + \
        ["elapsed", "branch / why"]
    return tabulate(status_rows(data), headers=headers, tablefmt="rounded_outline")
