"""Reapers started ahead of need (engine.procs.keep_reapers_warm): a command really runs in
one (no interpreter start between the order and the command), one that died meanwhile is
replaced by a cold start, idle ones go when they are let go or when their orchestrator is
SIGKILLed, and a run keeps them only while it runs. Every behaviour of run_command itself is
checked both ways by tests/test_procs.py."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from engine import procs
from tests.test_procs import wait_gone as gone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ready(count, timeout=20):
    deadline = time.time() + timeout
    while len(procs._warm._idle) < count:
        assert time.time() < deadline, "warm reapers never became ready"
        time.sleep(0.01)
    return [proc.pid for proc, _ in procs._warm._idle]


@pytest.fixture(autouse=True)
def let_go():
    yield
    procs.keep_reapers_warm(0)


def test_the_command_runs_in_a_reaper_started_before_it_with_its_cwd_env_and_output(tmp_path):
    procs.keep_reapers_warm(2)
    before = ready(2)
    work = tmp_path / "checkout"
    work.mkdir()
    out = tmp_path / "out.log"
    seen = []
    result = procs.run_command('pwd; echo "$GREETING"; echo oops >&2; exit 3', str(work), output_path=str(out),
                               env=dict(os.environ, GREETING="hello there"), header="== header",
                               exit_path=str(tmp_path / "exit"), on_start=lambda pid, start: seen.append(pid))
    assert seen == [result.pid] and result.pid in before  # one of the reapers already started
    assert result.code == 3
    assert out.read_text() == f"== header\n{work}\nhello there\noops\n"
    assert (tmp_path / "exit").read_text() == "3"
    assert gone(result.pid)


def test_a_warm_reaper_stops_the_commands_leftovers_and_its_timeout_the_tree(tmp_path):
    procs.keep_reapers_warm(1)
    ready(1)
    pidfile = tmp_path / "child.pid"
    result = procs.run_command(f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 60' & sleep 0.3", str(tmp_path),
                               output_path=str(tmp_path / "out"))
    assert result.code == 0
    assert gone(int(pidfile.read_text()))
    ready(1)
    start = time.time()
    result = procs.run_command("sleep 60 & sleep 60", str(tmp_path), output_path=str(tmp_path / "out"),
                               timeout=0.5)
    assert result.timed_out and time.time() - start < 10


def test_a_warm_reaper_that_died_before_its_order_is_replaced_by_a_cold_start(tmp_path):
    procs.keep_reapers_warm(1)
    (pid,) = ready(1)
    proc = procs._warm._idle[0][0]
    os.kill(pid, signal.SIGKILL)
    proc.wait()
    # it is still listed as idle: `take` skips a dead one; a write to a dead one falls back
    result = procs.run_command("echo cold", str(tmp_path), output_path=str(tmp_path / "out"))
    assert result.code == 0 and result.pid != pid
    assert (tmp_path / "out").read_text() == "cold\n"


def test_a_launch_that_could_fail_runs_cold_and_fails_the_usual_way(tmp_path):
    procs.keep_reapers_warm(1)
    (pid,) = ready(1)
    with pytest.raises(procs.CommandLaunchError, match="does not exist"):
        procs.run_command("true", str(tmp_path / "missing"), output_path=str(tmp_path / "out"))
    with pytest.raises(procs.CommandLaunchError, match="argument list too long"):
        procs.run_command("true", str(tmp_path), output_path=str(tmp_path / "out"),
                          env=dict(os.environ, BIG="x" * 3_000_000))
    assert [p.pid for p, _ in procs._warm._idle] == [pid]  # not spent on either


def test_idle_reapers_go_when_let_go(tmp_path):
    procs.keep_reapers_warm(3)
    pids = ready(3)
    procs.keep_reapers_warm(0)
    assert all(gone(pid) for pid in pids)


def test_idle_reapers_go_when_their_orchestrator_is_sigkilled(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {ROOT!r})
        from engine import procs
        procs.keep_reapers_warm(2)
        while len(procs._warm._idle) < 2:
            time.sleep(0.01)
        print(" ".join(str(p.pid) for p, _ in procs._warm._idle), flush=True)
        time.sleep(60)
    """)
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in owner.stdout.readline().split()]
    assert len(pids) == 2
    owner.kill()
    owner.wait()
    assert all(gone(pid) for pid in pids)


def test_a_run_keeps_reapers_warm_only_while_it_runs(tmp_path):
    """The scheduler asks for them once its first tasks start and lets them go at its end:
    agents after the first ones run in reapers started ahead of them (each agent records its
    reaper's command line), and no reaper of ours is left waiting after `run` returns."""
    from engine import demo

    repo = demo.make_repo(str(tmp_path / "r"))
    with open(os.path.join(repo, ".claude", "auto-context.yaml"), "w") as fh:
        fh.write("parallelization:\n  max_agents: 2\n  min_tasks: 2\n")
    plan = tmp_path / "plan.yaml"
    plan.write_text("base: main\nagent: >-\n  tr '\\0' ' ' < /proc/$PPID/cmdline > \"$ORCHESTRATOR_ROOT/../reaper-$TASK_ID\" &&\n"
                    "  sleep 0.3 && echo x > \"f-$TASK_ID\" && git add -A &&\n"
                    "  git -c user.name=a -c user.email=a@b commit -qm x\n"
                    "tasks:\n" + "".join(f"  - {{id: t{i}, description: x}}\n" for i in range(6)))
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "engine.cli.orchestrator", "run", "--all-groups", "--quiet",
                           str(plan)], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [(tmp_path / "r" / f"reaper-t{i}").read_text() for i in range(6)]
    assert all(procs.REAPER in line for line in lines)  # every agent under a reaper
    warm = [line for line in lines if f"{procs.REAPER} - - {procs.MARKER_PREFIX}" in line]
    assert warm, lines  # the later ones in reapers started ahead of them
    leftover = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if procs.reaper_marker(pid)]
    assert leftover == []  # (no reaper of ours at all: the agents' ended with them, the waiting ones let go)


def test_what_the_kernel_refuses_a_warm_reaper_reports_as_popen_would(tmp_path, monkeypatch):
    """The checks before a warm launch are cheap, not complete: what still fails (the
    directory gone since it was looked at, an environment the kernel refuses) the waiting
    reaper reports before its command would run, and run_command raises the launch error a
    cold start gives, with nothing run."""
    procs.keep_reapers_warm(2)
    before = set(ready(2))
    monkeypatch.setattr(procs, "_plain_launch", lambda *a: True)  # (as if the directory were there a moment ago)
    out = tmp_path / "out"
    with pytest.raises(procs.CommandLaunchError, match="does not exist"):
        procs.run_command(f"touch {tmp_path}/ran", str(tmp_path / "gone"), output_path=str(out))
    with pytest.raises(procs.CommandLaunchError, match="argument list too long"):
        procs.run_command(f"touch {tmp_path}/ran", str(tmp_path), output_path=str(out),
                          env=dict(os.environ, BIG="x" * 3_000_000))
    assert not (tmp_path / "ran").exists()
    assert not before & {p.pid for p, _ in procs._warm._idle}  # both were used (and told why they could not)
    assert all(gone(pid) for pid in before)


def test_no_directory_means_ours_in_a_warm_reaper_too(tmp_path, monkeypatch):
    """cwd None is the caller's own directory (Popen's rule; a backend with no checkout runs
    its agent so): a warm reaper runs it there (found by the full suite: a TypeError)."""
    monkeypatch.chdir(tmp_path)
    procs.keep_reapers_warm(1)
    pids = ready(1)
    result = procs.run_command("pwd", None, output_path=str(tmp_path / "out"))
    assert result.code == 0 and result.pid == pids[0]
    assert (tmp_path / "out").read_text() == f"{tmp_path}\n"
