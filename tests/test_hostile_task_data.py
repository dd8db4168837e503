"""Issue 9, task data: a NUL byte and a 140,000-character description, and a verify whose
output (fed back as QA_FEEDBACK) is a 200,000-character line with a NUL, through a real run:
the task still runs, gets cleaned and bounded values plus the whole texts in files, and is
merged along with its sibling; no exit 70, no `Argument list too long`."""

import os

import yaml

from engine import demo
from engine.agent_env import VALUE_LIMIT
from tests.conftest import git, invoke


def test_nul_and_huge_task_data_through_a_run(sealed_env, tmp_path, monkeypatch):
    from engine.cli.orchestrator import cli

    repo = demo.make_repo(str(tmp_path / "d"))
    monkeypatch.chdir(repo)
    seen = tmp_path / "seen"
    seen.mkdir()
    agent = (f'if [ -n "$QA_FEEDBACK" ]; then printf %s "$QA_FEEDBACK" | wc -c > {seen}/$TASK_ID.fb-env; '
             f'wc -c < "$QA_FEEDBACK_FILE" > {seen}/$TASK_ID.fb-file; touch fixed; fi; '
             f'printf %s "$TASK_DESCRIPTION" | wc -c > {seen}/$TASK_ID.desc-env; '
             f'wc -c < "$TASK_DESCRIPTION_FILE" > {seen}/$TASK_ID.desc-file; '
             'echo "x = 1" > app/$TASK_ID.py && git add -A && git commit -qm "$TASK_ID"')
    flood = "python3 -c \"import sys; sys.stdout.write('y' * 200000 + chr(0) + 'END')\""
    plan = {"work_type": "BACKEND", "base": "main", "agent": agent, "tasks": [
        {"id": "hostile", "description": "fix\0it " + "d" * 140000, "files": ["app/hostile.py"],
         "verify": f"test -f fixed || {{ {flood}; exit 1; }}"},
        {"id": "plain", "description": "a plain task", "files": ["app/plain.py"], "verify": "true"},
    ]}
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text(yaml.safe_dump(plan))
    r = invoke(cli, "orchestrator", "run", "--all-groups", str(plan_path))
    assert r.code == 0, r
    with open(".claude/auto-progress.yaml") as fh:
        tasks = yaml.safe_load(fh)["tasks"]
    assert {t: v["status"] for t, v in tasks.items()} == {"hostile": "merged", "plain": "merged"}
    assert tasks["hostile"]["iterations"] == 2  # rejected once with the flood as feedback

    def number(name):
        return int((seen / name).read_text())

    assert number("hostile.desc-env") <= VALUE_LIMIT and number("hostile.desc-file") > 140000
    assert number("hostile.fb-env") <= VALUE_LIMIT and number("hostile.fb-file") > 0
    assert git(repo, "show", "main:app/hostile.py") == "x = 1"
    assert os.path.exists(os.path.join(repo, ".claude", "auto-logs", "hostile.log"))
