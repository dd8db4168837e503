"""`make demo`: the whole pipeline on a throwaway repository with a bundled fake agent.

Seven tasks in three dependency layers; `cli` is slow and fails QA once (it passes on
retry). The first `orchestrator run` stops at the session boundary after group 1, as the
skill's sessions do; `orchestrator resume --all-groups` then streams the rest: `docs`,
which needs only `api`, starts the moment `api` is merged while `cli` is still running.
Then the drop-in scripts are shown briefly.
"""

import os
import shlex
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
AGENT = os.path.join(ROOT, "engine", "demo_agent.py")

PLAN = """\
# A small app in three dependency layers. Swap `agent` for a real one: the Claude Code preset,
#   agent: claude                      (or {{preset: claude, model: sonnet, max_budget_usd: 2}})
# or any shell command that reads its task from the environment ($TASK_DESCRIPTION, ...).
work_type: BACKEND
base: main
agent: {agent}
tasks:
  - {{id: models, description: Data models, files: [app/models.py], verify: "{check} models", expected_output: models ok}}
  - {{id: utils, description: Helpers, files: [app/utils.py], verify: "{check} utils", expected_output: utils ok}}
  - {{id: config, description: Configuration, files: [app/config.py], verify: "{check} config", expected_output: config ok}}
  - {{id: api, description: HTTP API, depends_on: [models, utils], verify: "{check} api", expected_output: api ok}}
  - {{id: cli, description: Command line, depends_on: [config], verify: "{check} cli", expected_output: cli ok}}
  - {{id: tests, description: Test suite, depends_on: [api, cli], verify: "{check} tests", expected_output: tests ok}}
  - {{id: docs, description: Documentation, depends_on: [api], verify: "{check} docs", expected_output: docs ok}}
"""


def check_command():
    return (f"{shlex.quote(sys.executable)} -c 'import sys, importlib; "
            f"m = importlib.import_module(\\\"app.\\\" + sys.argv[1]); print(getattr(m, sys.argv[1])())'")


def write_plan(path, agent=None):
    with open(path, "w") as fh:
        fh.write(PLAN.format(agent=agent or f"{shlex.quote(sys.executable)} {shlex.quote(AGENT)}",
                             check=check_command()))


def make_repo(base):
    repo = os.path.join(base, "demo-app")
    os.makedirs(os.path.join(repo, "app"))
    os.makedirs(os.path.join(repo, ".claude"))
    with open(os.path.join(repo, "app", "__init__.py"), "w") as fh:
        fh.write('"""The demo app."""\n')
    with open(os.path.join(repo, "README.md"), "w") as fh:
        fh.write("# demo app\n")
    with open(os.path.join(repo, ".claude", "auto-context.yaml"), "w") as fh:
        fh.write("parallelization:\n  enabled: true\n  min_tasks: 3\n  max_agents: 3\n  retry_on_failure: 2\n")
    env = dict(os.environ, GIT_AUTHOR_NAME="demo", GIT_AUTHOR_EMAIL="demo@example.com",
               GIT_COMMITTER_NAME="demo", GIT_COMMITTER_EMAIL="demo@example.com")
    for args in (["init", "-q", "-b", "main"], ["add", "app", "README.md"], ["commit", "-q", "-m", "initial app"]):
        subprocess.run(["git", *args], cwd=repo, check=True, env=env)
    return repo


def orchestrator(repo, *args, env=None):
    print(f"\n$ orchestrator {' '.join(args)}", flush=True)
    return subprocess.run([sys.executable, "-m", "engine.cli.orchestrator", *args], cwd=repo, env=env).returncode


def main():
    base = os.environ.get("DEMO_DIR") or tempfile.mkdtemp(prefix="orchestrator-demo-")
    os.makedirs(base, exist_ok=True)
    repo = make_repo(base)
    plan = os.path.join(base, "plan.yaml")
    write_plan(plan)
    env = dict(os.environ, PYTHONPATH=ROOT, DEMO_FLAKY="cli", DEMO_AGENT_SLEEP="0.3", DEMO_SLOW="cli=2")
    orchestrator(repo, "validate", plan, env=env)
    code = orchestrator(repo, "run", plan, env=env)
    print("\n# the session boundary after group 1; the rest streams: no barrier between groups")
    for _ in range(10):
        status = subprocess.run([sys.executable, "-m", "engine.cli.orchestrator", "status", "--json"], cwd=repo,
                                env=env, capture_output=True, text=True)
        if '"status": "complete"' in status.stdout:
            break
        code = orchestrator(repo, "resume", "--all-groups", env=env)
    orchestrator(repo, "status", env=env)
    print("\n$ orchestrator graph --tasks   # the task machine, with where each task ended")
    subprocess.run([sys.executable, "-m", "engine.cli.orchestrator", "graph", "--tasks"], cwd=repo, env=env)
    print("\n$ git log --oneline --graph main")
    subprocess.run(["git", "log", "--oneline", "--graph", "main"], cwd=repo)
    print("\n$ scripts/state-transition.sh resume")
    subprocess.run([os.path.join(SCRIPTS, "state-transition.sh"), "resume"], cwd=repo)
    print("\n$ scripts/checkpoint-manager.sh read")
    subprocess.run([os.path.join(SCRIPTS, "checkpoint-manager.sh"), "read"], cwd=repo)
    print(f"\nDemo repository: {repo}\nPlan: {plan}")
    command = os.path.join(os.path.dirname(sys.executable), "orchestrator")
    print(f"Watch a run in the browser: cd {shlex.quote(repo)} && {shlex.quote(command)} dashboard --open")
    return code


if __name__ == "__main__":
    sys.exit(main())
