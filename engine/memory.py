"""The session-memory files of `checkpoint-manager` (CONTRACT.md §2.5) in `.claude/auto-memory/`.

Every file is rendered whole and written atomically through the store. Values are data:
summaries and learnings of any content land in Markdown as text and in YAML through the
dumper (never pasted into YAML source); phase names, task ids and group numbers are
validated before they become part of a file name. Archives go to
`.claude/auto-memory-archive/`, beside the memory directory, so later listings (ours and
`state-transition resume`) never show them.
"""

import os
import re
import time

from engine import git, statefile, store
from engine.errors import InvalidValue, OrchestratorError, StateFileError
from engine.paths import Layout
from engine.ui import warn

CONTEXT = "context-summary.md"
NEXT_ACTIONS = "next-actions.md"
GROUP_STATUSES = ("pre", "post", "failed")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def check_name(value, what):
    if not value or not _NAME.fullmatch(value) or ".." in value:
        raise InvalidValue(f"invalid {what} '{value}': use letters, digits, '_', '.' and '-'")
    return value


def check_group(value):
    if not str(value).isdigit() or not 0 < int(value) < 100000:
        raise InvalidValue(f"invalid group number '{value}': a positive whole number")
    return int(value)


class Memory:
    def __init__(self, layout=None, progress=None):
        """PROGRESS: the run's own reader of the progress file (engine.progress), whose parse
        is cached; without it (the checkpoint-manager CLI) the file is parsed here."""
        self.layout = layout or Layout()
        self.dir = self.layout.memory_dir
        self.progress_path = self.layout.progress
        self.archive_root = self.layout.memory_archive
        self._progress = progress

    def rel(self, name):
        return self.layout.rel(os.path.join(self.dir, name))

    def _write(self, name, text):
        store.atomic_write(os.path.join(self.dir, name), text, keep_last_good=False)
        return self.rel(name)

    # ------------------------------------------------------------------ inputs
    def state(self):
        """The state mapping ({} if absent); a corrupt file is reported and read as empty."""
        try:
            return statefile.read(self.layout) or {}
        except StateFileError as exc:
            warn(f"[WARN] {exc.message}")
            return {}

    def progress(self):
        """The progress mapping, read-only ({} if absent or corrupt, which is reported)."""
        try:
            if self._progress is not None:
                return self._progress.peek() or {}
            data, _ = store.load_yaml_mapping(self.progress_path)
        except StateFileError as exc:
            warn(f"[WARN] {exc.message}")
            return {}
        return data or {}

    def _progress_tail(self, lines=20):
        try:
            text = store.read_bytes(self.progress_path).decode("utf-8", "replace")
            return "".join(text.splitlines(True)[-lines:]).rstrip("\n")
        except OSError:
            return None

    def _latest_plan(self, lines=50):
        """The newest `.claude/plans/auto-*.md`, else the plan of the orchestrator's run."""
        plans = self.layout.plans_dir
        try:
            names = [os.path.join(plans, n) for n in os.listdir(plans) if n.startswith("auto-") and n.endswith(".md")]
        except OSError:
            names = []
        run_plan = self.progress().get("plan_file")
        path = max(names, key=os.path.getmtime) if names else run_plan if isinstance(run_plan, str) else None
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                return "".join(fh.readlines()[:lines]).rstrip("\n")
        except (OSError, TypeError):
            return None

    def listing(self, include_yaml=True):
        """Memory files for `read` and the context summary (archives are elsewhere)."""
        try:
            names = sorted(os.listdir(self.dir))
        except OSError:
            return []
        suffixes = (".md", ".yaml") if include_yaml else (".md",)
        return [n for n in names if n.endswith(suffixes) and n != CONTEXT and
                os.path.isfile(os.path.join(self.dir, n))]

    def _phase_files(self, state):
        """Files changed in the current phase: commits since the phase began (its last
        transition, else the session start) plus what is uncommitted now."""
        root = self.layout.root
        since = state.get("last_transition") or state.get("started_at")
        try:
            git.toplevel(root)
        except OrchestratorError:
            return []
        files = set()
        if since:
            log = git.run(root, "log", f"--since={since}", "--name-only", "--format=", "HEAD", check=False)
            files.update(line for line in log.stdout.splitlines() if line.strip())
        status = git.run(root, "status", "--porcelain", "--untracked-files=normal", check=False)
        for line in status.stdout.splitlines():
            path = line[3:].split(" -> ")[-1]
            if not path.startswith(".claude/"):
                files.add(path)
        return sorted(files)

    # ------------------------------------------------------------------ commands
    def context(self):
        state = self.state()
        focus = state.get("focus") or []
        phases = state.get("completed_phases") or []
        plan = self._latest_plan()
        tail = self._progress_tail()
        others = self.listing()
        text = "\n".join([
            "# Context Summary for Resume",
            f"Generated: {store.utc_now()}",
            f"Session: {_text(state.get('session_id'))}",
            "",
            "## Current State",
            f"- **Phase**: {_text(state.get('current_state'), 'IDLE')}",
            f"- **Work Type**: {_text(state.get('work_type'))}",
            f"- **Focus**: {', '.join(_text(f) for f in focus) if isinstance(focus, list) else _text(focus)}",
            f"- **Completed Phases**: "
            f"{', '.join(_text(p) for p in phases) if isinstance(phases, list) else _text(phases)}",
            "",
            "## Plan Summary",
            *(["```", plan, "```"] if plan is not None else ["No plan file found"]),
            "",
            "## Recent Progress",
            *(["```", tail, "```"] if tail is not None else ["No progress file"]),
            "",
            "## Memory Files Available",
            *([f"- {self.rel(n)}" for n in others] or ["None"]),
            "",
            "## Next Actions",
            "1. Read this summary and the memory files above",
            "2. Continue from the current phase",
            "3. Write a checkpoint before the context runs out",
            "",
            "---",
            "",
        ])
        self._write(CONTEXT, text)
        return f"Context summary created: {self.rel(CONTEXT)}"

    def write_phase(self, phase, summary):
        check_name(phase, "phase")
        state = self.state()
        files = self._phase_files(state)
        name = f"phase-{phase.lower()}-summary.md"
        text = "\n".join([
            f"# Phase {phase} Summary",
            f"Generated: {store.utc_now()}",
            "",
            "## Key Decisions",
            summary,
            "",
            "## Files Created/Modified",
            *([f"- {f}" for f in files] or ["- No git changes tracked"]),
            "",
            "---",
            "",
        ])
        rel = self._write(name, text)
        statefile.record_checkpoint(rel, layout=self.layout)
        return [f"Summary created: {rel}", self.context(), f"Checkpoint written for phase: {phase}"]

    def write_group(self, number, status, summary="", context=True):
        """Group N's checkpoint file; then the context summary is refreshed, unless CONTEXT is
        false."""
        return self.write_groups([(number, status, summary)], context=context)

    def write_groups(self, groups, context=True):
        """The checkpoint files of GROUPS, (number, status, summary) each, in order: the state
        and progress files read once and the state file recording the last group, as if each
        had been written in turn (a run whose scope spans many groups writes them all at its
        start and end: one state write instead of one per group); then the context summary."""
        checked = []
        for number, status, summary in groups:
            if status not in GROUP_STATUSES:
                raise InvalidValue(f"Unknown status: {status}. Use pre|post|failed", verbatim=True)
            checked.append((check_group(number), status, summary))
        if not checked:
            return []
        state, progress = self.state(), self.progress()
        files = [self._group_file(n, status, summary, state, progress) for n, status, summary in checked]
        store.atomic_write_many((os.path.join(self.dir, name), text) for name, text in files)
        lines = [f"Parallel group checkpoint created: {self.rel(name)}" for name, _ in files]
        n, status, _ = checked[-1]
        statefile.record_group(n, status, layout=self.layout)
        return lines + ([self.context()] if context else [])

    def _group_file(self, n, status, summary, state, progress):
        groups = progress.get("parallel_groups") if isinstance(progress.get("parallel_groups"), dict) else {}
        group = groups.get(f"group_{n}") if isinstance(groups.get(f"group_{n}"), dict) else {}
        in_group = [_text(t) for t in group.get("tasks") or [] if t is not None]
        tasks = progress.get("tasks") if isinstance(progress.get("tasks"), dict) else {}
        completed = [_text(tid) for tid, t in tasks.items()
                     if status == "post" and isinstance(t, dict) and t.get("status") in ("done", "merged")
                     and str(t.get("group")) == str(n)]
        prefix = {"pre": f"Starting execution of parallel group {n}. ",
                  "post": f"Completed parallel group {n}. All tasks verified. ",
                  "failed": f"Parallel group {n} failed. "}[status]
        data = {
            "group_number": n,
            "checkpoint_type": status,
            "timestamp": store.utc_now(),
            "summary": _Literal(prefix + summary),
            "tasks_in_group": in_group,
            "completed_tasks": completed,
            "session_info": {"session_id": _text(state.get("session_id")),
                             "current_state": _text(state.get("current_state"), "IDLE")},
            "next_actions": ["Verify all tasks in group completed", "Merge completed branches",
                             "Proceed to next group or integration"],
        }
        header = (f"# Parallel Group {n} Checkpoint ({status})\n# Generated by checkpoint-manager\n"
                  "# Read by /auto-continue to resume")
        return f"parallel-group-{n}-{status}.yaml", _dump_with_literals(data, header)

    def write_task(self, task_id, learning):
        check_name(task_id, "task id")
        tasks = self.progress().get("tasks")
        task = tasks.get(task_id) if isinstance(tasks, dict) and isinstance(tasks.get(task_id), dict) else {}
        text = "\n".join([
            f"# Task {task_id} Learnings",
            f"Generated: {store.utc_now()}",
            "",
            "## What Was Done",
            learning,
            "",
            "## Verification Results",
            f"- Tests: {_text(task.get('test_result'), 'unknown')}",
            f"- Iterations: {_text(task.get('iterations'), '0')}",
            "",
            "---",
            "",
        ])
        return [f"Learning created: {self._write(f'task-{task_id}-learnings.md', text)}"]

    def read(self):
        """The resume block, or None when there is no memory directory."""
        if not os.path.isdir(self.dir):
            return None
        lines = ["=== RESUME CONTEXT ===", ""]
        context = os.path.join(self.dir, CONTEXT)
        if os.path.isfile(context):
            text = store.read_bytes(context).decode("utf-8", "replace")
            lines += ["### Context Summary ###", text.rstrip("\n"), ""]
        lines += ["### Available Memory Files ###", *[f"- {self.rel(n)}" for n in self.listing()], "",
                  "=== END RESUME CONTEXT ==="]
        return lines

    def handoff(self):
        state = self.state()
        context_line = self.context()
        phase = _text(state.get("current_state"), "IDLE")
        text = "\n".join([
            "# Next Actions for Resume",
            f"Generated: {store.utc_now()}",
            "",
            "## Immediate Actions",
            "1. Run `/auto-continue`",
            f"2. Read `{self.rel(CONTEXT)}`",
            f"3. Continue from phase: {phase}",
            "",
            "## Do NOT",
            "- Restart completed phases",
            "- Discard branches of unfinished tasks",
            "- Skip verification of the current group",
            "",
            "## Files to Read",
            f"- {self.rel(CONTEXT)}",
            *[f"- {self.rel(n)}" for n in self.listing() if n != NEXT_ACTIONS],
            "",
        ])
        self._write(NEXT_ACTIONS, text)
        return ["Preparing session handoff...", context_line, "Handoff prepared. Run /auto-continue in new session."]

    def cleanup(self):
        """Archive every memory file (Markdown and group YAML) out of the memory directory."""
        names = self.listing() + ([CONTEXT] if os.path.isfile(os.path.join(self.dir, CONTEXT)) else [])
        if not os.path.isdir(self.dir):
            return []
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime())
        target = os.path.join(self.archive_root, f"archive-{stamp}")
        suffix = 1
        while os.path.exists(target):
            suffix += 1
            target = os.path.join(self.archive_root, f"archive-{stamp}-{suffix}")
        store.makedirs(target)
        for name in names:
            store.replace(os.path.join(self.dir, name), os.path.join(target, name))
        return [f"Memory files archived to: {self.layout.rel(target)}"]


_text = statefile.as_text  # how yq -r prints a scalar


class _Literal(str):
    """A string the YAML dumper writes as a literal block (`|`), whatever it contains."""


def _dump_with_literals(data, header):
    yaml = store._yaml_module()
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

    class Dumper(dumper):
        pass

    def literal(d, value):
        text = str(value)
        # A literal block cannot hold trailing spaces on a line or some control characters;
        # the dumper falls back to a quoted scalar for those, which is just as valid.
        return d.represent_scalar("tag:yaml.org,2002:str", text, style="|" if text.strip() else None)

    Dumper.add_representer(_Literal, literal)
    body = yaml.dump(data, Dumper=Dumper, default_flow_style=None, sort_keys=False, allow_unicode=True,
                     width=100000)
    return header + "\n\n" + body

