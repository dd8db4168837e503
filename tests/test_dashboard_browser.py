"""The dashboard page in a real headless browser (Debian's Chromium, driven over the DevTools
pipe by engine.dashboard.headless) against real runs of the demo plan.

Slow (a browser per test): `make test-browser` runs these (it sets RUN_BROWSER_TESTS=1 and
installs chromium when missing); plain `make test` skips them."""

import json
import os

import pytest

from engine.dashboard.headless import Browser, find_chromium
from tests.test_dashboard import HOSTILE, hostile_task, orchestrator, plan_with, start_run
from tests.test_dashboard import dashboards, demo_repo  # noqa: F401 - fixtures, shared
from tests.conftest import python_env

pytestmark = pytest.mark.skipif(not os.environ.get("RUN_BROWSER_TESTS"),
                                reason="browser tests run with `make test-browser`")


@pytest.fixture(scope="module", autouse=True)
def chromium_present():
    assert find_chromium(), "chromium is not installed (`make test-browser` installs it)"


@pytest.fixture
def board(dashboards, demo_repo):
    return lambda: dashboards(demo_repo[0])


def js(value):
    return json.dumps(value)


def test_graph_people_first_and_hostile_text_stays_text(demo_repo, board):
    repo, plan = demo_repo
    plan_with(plan, hostile_task())
    orchestrator(repo, "run", "--all-groups", "--quiet", plan,
                 env=dict(python_env(), DEMO_AGENT_SLEEP="0", DEMO_BROKEN="config"), check=False)
    from engine.paths import Layout
    from engine.progress import Progress

    # and a `claude` agent that was denied tools (what the preset records on its task)
    Progress(Layout(repo)).set_task("models", status="blocked_permission", permission_denials=["Bash", "WebFetch"])
    dash = board()
    tasks = {t["id"]: t for t in dash.snapshot()["tasks"]}
    with Browser() as b:
        b.call("Runtime.evaluate", expression="window.__pwned = undefined")
        b.goto(dash.url + "#task=evil&tab=diff")
        # the DAG: one node per task, edges drawn, the critical path marked
        nodes = b.wait_for(f"document.querySelectorAll('#dag g.node').length === {len(tasks)} && "
                           "[...document.querySelectorAll('#dag g.node')].map(n => n.dataset.task)")
        assert sorted(nodes) == sorted(tasks)
        assert b.eval("document.querySelectorAll('#dag path.edge').length") == sum(
            len(t["depends_on"]) for t in tasks.values())
        assert b.eval("document.querySelectorAll('#dag g.node.critical').length") >= 1
        statuses = b.eval("Object.fromEntries([...document.querySelectorAll('#dag g.node')]"
                          ".map(n => [n.dataset.task, n.getAttribute('class')]))")
        assert "st-failed" in statuses["config"] and "st-merged" in statuses["api"]
        assert "st-blocked_permission" in statuses["models"]
        # the failed task is at the top, above the graph, with a reason and what to do
        need = b.wait_for("(() => { const n = document.querySelector('#attention .need[data-task=\"config\"]');"
                          " return n && {top: n.getBoundingClientRect().top, text: n.textContent,"
                          " dag: document.getElementById('dag').getBoundingClientRect().top}; })()")
        assert need["top"] < need["dag"] and "failed" in need["text"] and "→" in need["text"]
        blocked = b.eval("(() => { const n = document.querySelector('#attention .need[data-task=\"models\"]');"
                         " return n && {top: n.getBoundingClientRect().top, text: n.textContent}; })()")
        assert blocked["top"] < need["dag"] and "blocked permission" in blocked["text"]
        assert "Bash, WebFetch" in blocked["text"] and "orchestrator retry models" in blocked["text"]
        # the hostile description: text in the title, the graph's tooltip and the diff; never markup
        title = b.wait_for("document.getElementById('detail-title').textContent.includes('evil') && "
                           "document.getElementById('detail-title').textContent")
        assert HOSTILE in title
        diff = b.wait_for("document.getElementById('diff').textContent")
        assert '<img src=x onerror="window.__pwned=1">' in diff
        assert b.eval("document.querySelector('#dag g.node[data-task=\"evil\"] title').textContent").find(HOSTILE) > 0
        assert b.eval("document.querySelectorAll('img').length") == 0
        assert b.eval("document.scripts.length") == 1
        assert b.eval("typeof window.__pwned") == "undefined"
        if os.environ.get("DASHBOARD_SHOTS"):  # for a person to look at
            b.screenshot(os.path.join(os.environ["DASHBOARD_SHOTS"], "failed-run.png"))


def test_a_running_task_and_its_log_streamed_without_reload(demo_repo, board):
    repo, plan = demo_repo
    plan_with(plan)
    dash = board()
    with Browser() as b:
        b.goto(dash.url)
        b.eval("window.__same_page = 42")
        run = start_run(repo, plan, sleep=3)
        try:
            running = b.wait_for("(() => { const n = document.querySelector('#dag g.node.running');"
                                 " return n && n.dataset.task; })()", timeout=60)
            b.eval(f"document.querySelector('#dag g.node[data-task={js(running)}]')"
                   ".dispatchEvent(new MouseEvent('click', {bubbles: true}))")
            header = b.wait_for(f"(() => {{ const t = document.getElementById('log').textContent;"
                                f" return t.includes({js(running + ':')}) && t; }})()")
            assert f"agent {running}: attempt 1" not in header  # the agent has not written yet
            assert b.eval("document.getElementById('detail-title').textContent").find("running") >= 0
            assert b.eval("document.querySelector('#gantt g.bar.running') !== null")
            streamed = b.wait_for(f"(() => {{ const t = document.getElementById('log').textContent;"
                                  f" return t.includes({js('agent ' + running + ': attempt 1')}) && t; }})()",
                                  timeout=30)
            assert streamed.startswith(header)  # appended to what was shown, not a new page
            assert b.eval("window.__same_page") == 42
            assert b.eval("document.getElementById('conn').textContent") == "live"
        finally:
            orchestrator(repo, "abort", check=False)
            run.wait(timeout=30)
        b.wait_for("document.querySelector('#notices .notice.error') !== null")  # stopped: the last state stays
        assert b.eval("document.querySelectorAll('#dag g.node').length") == 7
        dash.close()  # the server gone too: the page says so and keeps the last state
        b.wait_for("document.getElementById('conn').textContent.startsWith('disconnected')", timeout=15)
        assert b.eval("document.querySelectorAll('#dag g.node').length") == 7
