"""What a state handler gets: a narrow context of named operations.

Handlers (states/) never import the runner and never build git argument lists, pool
calls or subprocesses themselves; they act through these:

- `tasks`    the task machine (engine.tasks.TaskBook): statuses change only by events;
- `slots`    pool slots as the task flow uses them (one per task while it needs a checkout);
- `merges`   the merge queue: approved branches into the base, one merge at a time;
- `backend`  the executor backend that runs one agent attempt (local by default);
- `checks`   verify and e2e commands (output to files, whole process trees stopped);
- `memory`, `progress`, `journal`, `reporter`, `plan`, `settings`, `base`, `repo`.

Everything is built lazily, so a handler that needs no pool never touches git.
"""

import threading

from engine import store
from engine.errors import OrchestratorError
from engine.paths import Layout
from engine.progress import Progress
from engine.tasks import TERMINAL, TaskBook, status_of


class Options:
    def __init__(self, all_groups=False, agent=None, quiet=False, executor=None, goal=None, adopt_plan=False,
                 planner=None, max_budget_usd=None, again=False):
        self.all_groups = all_groups
        self.agent = agent
        self.quiet = quiet
        self.executor = executor  # local | ray | None (the plan's or the configuration's choice)
        self.goal = goal  # `run --goal`: DECOMPOSE plans it first
        self.adopt_plan = adopt_plan  # `resume --adopt-plan`: take a changed plan file
        self.planner = planner  # the planner agent for a goal (default: the `claude` preset)
        self.max_budget_usd = max_budget_usd  # `run --max-budget-usd`: wins over the plan's
        self.again = again  # `run --again`: a plan whose last run completed runs afresh


class RunContext:
    """Everything a handler needs, built once per process."""

    def __init__(self, layout=None, options=None, reporter=None):
        self.layout = layout or Layout()
        self.options = options or Options()
        self.progress = Progress(self.layout)
        self.journal = store.Journal(self.layout.journal)
        if reporter is None:
            from engine.view import Reporter

            reporter = Reporter(quiet=self.options.quiet)
        self.reporter = reporter
        self.stop_requested = False  # set by CHECKPOINT at a session boundary
        self.cancel = threading.Event()  # Ctrl-C/SIGTERM: no new attempts, running ones stopped
        self._parts = {}
        self._parts_lock = threading.RLock()

    def _part(self, name, build):
        with self._parts_lock:
            if name not in self._parts:
                self._parts[name] = build()
            return self._parts[name]

    def forget(self, *names):
        """Drop cached parts (after DECOMPOSE recorded a plan that was not there before)."""
        with self._parts_lock:
            for name in names:
                self._parts.pop(name, None)

    # ------------------------------------------------------------------ data
    @property
    def repo(self):
        from engine import git

        return self._part("repo", lambda: git.toplevel(self.layout.root))

    @property
    def plan(self):
        def build():
            from engine.plan import load as load_plan

            path = self.progress.load().get("plan_file")
            if not path:
                raise OrchestratorError("no run in progress (no plan recorded); use `orchestrator run PLAN`")
            return load_plan(path, self.settings.max_agents)
        return self._part("plan", build)

    @property
    def settings(self):
        def build():
            from engine.config import load as load_settings

            return load_settings(self.layout.root, self.progress.load().get("work_type") or "")
        return self._part("settings", build)

    @property
    def base(self):
        return self.progress.peek()["base"]

    @property
    def current_group(self):
        return self.progress.get("current_group")

    def group_tasks(self, n=None):
        n = n or self.current_group
        return list(self.plan.groups[n - 1]) if n else []

    def scope_groups(self):
        """The groups this session works on: the current one, or every remaining one."""
        data = self.progress.peek()
        scope = data.get("scope_groups")
        if isinstance(scope, list) and scope:
            return [int(n) for n in scope]
        return [data["current_group"]] if data.get("current_group") else []

    def scope_tasks(self):
        return [t for n in self.scope_groups() for t in self.group_tasks(n)]

    def group_finished(self, n):
        statuses = self.tasks.statuses(self.group_tasks(n))
        return all(s in TERMINAL for s in statuses.values())

    def tasks_in(self, statuses, task_ids=None):
        tasks = self.progress.peek().get("tasks") or {}
        ids = self.scope_tasks() if task_ids is None else task_ids
        return [t for t in ids if status_of(tasks.get(t)) in statuses]

    def log_path(self, task_id):
        """.claude/auto-logs/TASK.log: every attempt's agent output, appended."""
        return self.layout.task_log(task_id)

    # ------------------------------------------------------------------ operations
    @property
    def tasks(self):
        return self._part("tasks", lambda: TaskBook(self.progress, self.journal, self.settings.retry_on_failure))

    @property
    def slots(self):
        from engine.slots import Slots

        return self._part("slots", lambda: Slots(self))

    @property
    def merges(self):
        from engine.merge_queue import MergeQueue

        return self._part("merges", lambda: MergeQueue(self))

    @property
    def backend(self):
        """The executor backend recorded for this run (`executor:` in the progress file)."""
        def build():
            if self.progress.load().get("executor") == "ray":
                from engine import plan as plans, ray_executor

                data = plans.read(self.progress.load()["plan_file"])
                return ray_executor.backend_from(self.layout.root, self.repo, plan_data=data, executor="ray")
            from engine.executor import LocalBackend

            return LocalBackend()
        return self._part("backend", build)

    @property
    def agent_stagger(self):
        """One start-up spacing shared by the run's agents (a kind that needs it, like `claude`,
        whose concurrent first starts race on its config file, waits on it)."""
        from engine.agent_kinds import Stagger

        return self._part("agent_stagger", Stagger)

    def run_budget(self):
        """The run's `max_budget_usd`: `run --max-budget-usd`, else the plan's; None: no budget."""
        given = self.progress.get("max_budget_usd")
        if isinstance(given, (int, float)) and not isinstance(given, bool):
            return float(given)
        return self.plan.max_budget_usd

    @property
    def checks(self):
        from engine.checks import Checks

        return self._part("checks", lambda: Checks(self))

    @property
    def memory(self):
        from engine.memory import Memory

        return self._part("memory", lambda: Memory(self.layout, progress=self.progress))
