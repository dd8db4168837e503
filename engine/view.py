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
        done = sum(1 for s in statuses.values() if s in ("executed", "approved", "merged", "failed", "blocked"))
        elapsed = f"{time.time() - self.started:.1f}s"
        if not self.boxes:
            self._emit([f"[orchestrator] progress {done}/{len(statuses)} agents complete, {elapsed} elapsed"])
            return
        icon = {"executed": "✅", "approved": "✅", "merged": "✅", "failed": "❌", "blocked": "⛔",
                "running": "⏳", "rejected": "🔁"}
        icon_mode = "⚡" if mode == "PARALLEL" else "⏸️"
        lines = [f"{icon_mode} Execution Mode: {mode}",
                 f"   Progress: {bar(done, len(statuses))} agents complete, {elapsed}", ""]
        for t, s in statuses.items():
            lines.append(f"   {icon.get(s, '⏳')} {t} ({s})")
        self._emit(_box(lines))

    def final(self, run):
        data = run.progress.load()
        tasks = data.get("tasks") or {}
        merged = [t for t, v in tasks.items() if v.get("status") == "merged"]
        failed = [t for t, v in tasks.items() if v.get("status") != "merged"]
        self._emit(["", status_table(data), "", "=== RUN SUMMARY ===",
                    f"Merged: {' '.join(merged) or 'none'}", f"Failed: {' '.join(failed) or 'none'}",
                    f"Elapsed: {time.time() - self.started:.1f}s"])


def status_rows(data):
    rows = []
    for task_id, t in (data.get("tasks") or {}).items():
        elapsed = t.get("elapsed")
        rows.append((task_id, t.get("group", ""), t.get("status", ""), t.get("slot") or "-", t.get("branch") or "-",
                     t.get("retry_count", 0), "yes" if t.get("qa_verified") else ("-" if not t.get("qa_timestamp")
                                                                                   else "no"),
                     f"{elapsed:.1f}s" if isinstance(elapsed, (int, float)) else "-"))
    return rows


def status_table(data):
    from tabulate import tabulate

    return tabulate(status_rows(data), headers=["task", "group", "status", "slot", "branch", "retries", "QA",
                                                "elapsed"], tablefmt="rounded_outline")
