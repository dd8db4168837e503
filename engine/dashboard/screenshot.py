"""`make screenshot`: the README's picture of the dashboard, taken from a live run of the
demo plan (the bundled fake agent, `cli` rejected once by QA), so the picture stays current
with the page. Usage: python -m engine.dashboard.screenshot OUT.png
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

from engine import demo
from engine.dashboard.headless import Browser

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _snapshot(url):
    with urllib.request.urlopen(url + "api/snapshot", timeout=10) as res:
        return json.load(res)


def _moment(snap):
    """The last layer under way: most tasks merged (cli after a QA rejection), an agent running."""
    running = [t for t in snap["tasks"] if t["running"]]
    return snap["totals"]["merged"] >= 4 and running and any(t["layer"] == 2 and 1.0 <= (t["elapsed"] or 0) <= 2.5
                                                                 for t in running)


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    out = os.path.abspath(args[0] if args else "docs/dashboard.png")
    base = tempfile.mkdtemp(prefix="orchestrator-screenshot-")
    env = dict(os.environ, PYTHONPATH=ROOT, DEMO_FLAKY="cli", DEMO_AGENT_SLEEP="4",
               GIT_AUTHOR_NAME="demo", GIT_AUTHOR_EMAIL="demo@example.com",
               GIT_COMMITTER_NAME="demo", GIT_COMMITTER_EMAIL="demo@example.com")
    run = board = None
    try:
        repo = demo.make_repo(base)
        plan = os.path.join(base, "plan.yaml")
        demo.write_plan(plan)
        cli = [sys.executable, "-m", "engine.cli.orchestrator"]
        board = subprocess.Popen(cli + ["dashboard"], cwd=repo, env=env, stdout=subprocess.PIPE, text=True)
        url = board.stdout.readline().split("Dashboard: ", 1)[-1].strip()
        run = subprocess.Popen(cli + ["run", "--all-groups", "--quiet", plan], cwd=repo, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        snap = _snapshot(url)
        while not _moment(snap):
            if time.time() > deadline or run.poll() is not None:
                raise SystemExit(f"the demo run never reached the moment to photograph: {json.dumps(snap)[:500]}")
            time.sleep(0.1)
            snap = _snapshot(url)
        with Browser(width=1400, height=800) as browser:
            browser.goto(f"{url}#task=cli")  # the task QA sent back once: both attempts in its log
            browser.wait_for("document.querySelectorAll('#dag g.node').length === 7 && "
                             "document.getElementById('log').textContent.length > 0 && "
                             "document.querySelectorAll('#gantt g.bar').length > 0")
            time.sleep(0.3)
            browser.screenshot(out, full_page=True)
        print(f"wrote {os.path.relpath(out)}")
        return 0
    finally:
        if run is not None and run.poll() is None:
            subprocess.run([sys.executable, "-m", "engine.cli.orchestrator", "abort"], cwd=repo, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            run.wait(timeout=30)
        if board is not None:
            board.terminate()
            board.wait(timeout=10)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
