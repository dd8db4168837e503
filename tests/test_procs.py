"""run_command with real processes: leftovers of every kind are stopped, timeouts and
cancellation stop the whole tree, output goes to a file and what is fed back is bounded."""

import os
import signal
import threading
import time

import pytest

from engine import procs
from engine.procs import (INTERRUPTED, TIMED_OUT, CommandLaunchError, alive, feedback, process_start_time,
                          run_command, stop_group, tail_text)

LONG = 60  # how long leftover children would live if nobody stopped them


@pytest.fixture(autouse=True, params=["cold", "warm"])
def reapers(request):
    """Every test twice: with reapers started per command, and with reapers started ahead of
    need (engine.procs.keep_reapers_warm, as a run does), which must behave the same."""
    if request.param == "warm":
        procs.keep_reapers_warm(4)
        deadline = time.time() + 20
        while len(procs._warm._idle) < 4:
            assert time.time() < deadline, "warm reapers never became ready"
            time.sleep(0.01)
    yield request.param
    procs.keep_reapers_warm(0)


@pytest.fixture(autouse=True)
def no_leftovers_after_a_failure(tmp_path):
    """If a test fails, do not leave its children running for a minute."""
    yield
    for path in tmp_path.glob("*.pid"):
        try:
            pid = read_pid(path)
            if os.readlink(f"/proc/{pid}/cwd") == str(tmp_path):  # still that child, not a reused pid
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass


def gone(pid):
    """The process no longer exists (a zombie counts as alive: someone must still reap it)."""
    return not os.path.exists(f"/proc/{pid}")


def wait_gone(pid, timeout=10):
    """Let a process killed from elsewhere be reaped by its parent (init, for an orphan)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except OSError:
            return True
        time.sleep(0.02)
    return False


def read_pid(path):
    with open(path) as fh:
        return int(fh.read().split()[0])


def wait_for_file(path, timeout=10):
    deadline = time.time() + timeout
    while not (os.path.exists(path) and os.path.getsize(path)):
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.01)


# a shell snippet that waits until the pid file a background child writes is there
WAIT_PID = "while [ ! -s child.pid ]; do sleep 0.01; done"


def test_setsid_child_holding_output_does_not_hold_the_command(tmp_path):
    out = tmp_path / "verify.log"
    cmd = (f"setsid sh -c 'echo $$ > child.pid; echo child-speaks; exec sleep {LONG}' & {WAIT_PID}; "
           "echo parent-done; exit 0")
    result = run_command(cmd, str(tmp_path), output_path=str(out))
    assert result.code == 0 and not result.timed_out and not result.interrupted
    assert result.duration < LONG / 2  # not blocked by the child that still had the output open
    child = read_pid(tmp_path / "child.pid")
    assert gone(child)  # stopped and reaped
    text = out.read_text()
    assert "child-speaks" in text and "parent-done" in text


def test_exit_status_is_the_commands_own_even_with_leftovers(tmp_path):
    cmd = f"setsid sleep {LONG} & echo $! > child.pid; exit 7"
    result = run_command(cmd, str(tmp_path), output_path=str(tmp_path / "out.log"))
    assert result.code == 7
    assert gone(read_pid(tmp_path / "child.pid"))


def test_double_forked_child_is_stopped(tmp_path):
    cmd = f"sh -c '(sleep {LONG} & echo $! > child.pid) &'; {WAIT_PID}; exit 5"
    result = run_command(cmd, str(tmp_path), output_path=str(tmp_path / "out.log"))
    assert result.code == 5
    assert gone(read_pid(tmp_path / "child.pid"))


def test_child_with_scrubbed_environment_and_new_session_is_stopped(tmp_path):
    """No marker variable and no shared session: only the subreaper can find it."""
    cmd = f"env -i /bin/sh -c 'setsid sh -c \"echo \\$\\$ > child.pid; exec sleep {LONG}\" &'; {WAIT_PID}; exit 0"
    result = run_command(cmd, str(tmp_path), output_path=str(tmp_path / "out.log"))
    assert result.code == 0
    assert gone(read_pid(tmp_path / "child.pid"))


def test_timeout_stops_the_whole_tree(tmp_path):
    cmd = (f"setsid sh -c 'echo $$ > child.pid; exec sleep {LONG}' & "
           f"sh -c '(sleep {LONG} & echo $! > grandchild.pid) &'; sleep {LONG}")
    result = run_command(cmd, str(tmp_path), output_path=str(tmp_path / "out.log"), timeout=1)
    assert result.timed_out and result.code == TIMED_OUT and not result.interrupted
    assert result.duration < LONG / 2
    assert gone(read_pid(tmp_path / "child.pid"))
    assert gone(read_pid(tmp_path / "grandchild.pid"))
    assert "timed out after 1s" in feedback(result, "the check")


def test_silent_failure_feedback_names_the_command_and_code(tmp_path):
    result = run_command("exit 3", str(tmp_path), output_path=str(tmp_path / "qa.log"), header="=== qa attempt 1")
    assert result.code == 3
    text = feedback(result, "exit 3")
    assert text == "`exit 3` exited with code 3 and printed nothing"
    assert (tmp_path / "qa.log").read_text() == "=== qa attempt 1\n"  # the header is not output


def test_feedback_only_shows_this_commands_output(tmp_path):
    log = str(tmp_path / "agent.log")
    first = run_command("echo first-run-output", str(tmp_path), output_path=log)
    result = run_command("echo second; exit 1", str(tmp_path), output_path=log, header="=== 2")
    text = feedback(result, "echo second; exit 1")
    assert "second" in text and "first-run-output" not in text and "=== 2" not in text
    earlier = feedback(first, "echo first-run-output")  # asked for after the file grew
    assert "first-run-output" in earlier and "second" not in earlier
    assert "first-run-output" in open(log).read()  # appended, not replaced


def test_huge_output_line_is_stored_and_fed_back_capped(tmp_path):
    cmd = "python3 -c \"import sys; sys.stdout.write('x' * 200000 + 'END\\n')\"; exit 1"
    result = run_command(cmd, str(tmp_path), output_path=str(tmp_path / "out.log"))
    assert result.code == 1
    assert os.path.getsize(tmp_path / "out.log") >= 200000  # the log keeps everything
    text = feedback(result, cmd)
    assert len(text.encode()) < 9000 and text.rstrip().endswith("END")
    assert "earlier output cut" in text
    tail = tail_text(str(tmp_path / "out.log"), max_lines=5, max_bytes=1000)
    assert len(tail) < 1100


def test_tail_text_caps_lines_and_escapes_nul(tmp_path):
    path = tmp_path / "out.log"
    path.write_bytes(b"".join(b"line %d\n" % i for i in range(100)) + b"nul\0here\n")
    text = tail_text(str(path), max_lines=3)
    assert text.splitlines()[1:] == ["line 98", "line 99", "nul\\0here"]
    assert tail_text(str(tmp_path / "missing.log")) == ""


def test_feedback_for_a_signal_death(tmp_path):
    result = run_command("kill -9 $$", str(tmp_path), output_path=str(tmp_path / "out.log"))
    assert result.code == -signal.SIGKILL
    assert feedback(result, "kill -9 $$") == "`kill -9 $$` was killed by SIGKILL and printed nothing"


def test_cancel_event_stops_the_tree_and_reports_interrupted(tmp_path):
    cancel = threading.Event()
    cmd = f"setsid sh -c 'echo $$ > child.pid; exec sleep {LONG}' & sleep {LONG}"
    threading.Thread(target=lambda: (wait_for_file(tmp_path / "child.pid"), cancel.set()), daemon=True).start()
    result = run_command(cmd, str(tmp_path), output_path=str(tmp_path / "out.log"), cancel=cancel)
    assert result.interrupted and not result.timed_out and result.code == INTERRUPTED
    assert gone(read_pid(tmp_path / "child.pid"))
    assert gone(result.pid)


def test_keyboard_interrupt_stops_the_tree_and_reraises(tmp_path):
    """Ctrl-C arrives as a signal in the main thread while run_command waits."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        cmd = f"sh -c '(sleep {LONG} & echo $! > child.pid) &'; sleep {LONG}"
        threading.Thread(target=lambda: (wait_for_file(tmp_path / "child.pid"), os.kill(os.getpid(), signal.SIGUSR1)),
                         daemon=True).start()
        with pytest.raises(KeyboardInterrupt) as caught:
            run_command(cmd, str(tmp_path), output_path=str(tmp_path / "out.log"), exit_path=str(tmp_path / "exit"))
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert caught.value.command_result.interrupted
    assert gone(read_pid(tmp_path / "child.pid"))
    assert gone(caught.value.command_result.pid)
    assert not (tmp_path / "exit").exists()  # an attempt we stopped records no result


def test_on_start_pid_lets_another_process_stop_the_tree(tmp_path):
    """What `abort` and a resumed orchestrator do: stop_group on the recorded pid and start."""
    started = {}

    def stop_it():
        wait_for_file(tmp_path / "child.pid")
        stop_group(started["pid"], started["start"], grace=2.0)

    cmd = f"setsid sh -c 'echo $$ > child.pid; exec sleep {LONG}' & sleep {LONG}"
    threading.Thread(target=stop_it, daemon=True).start()
    result = run_command(cmd, str(tmp_path), output_path=str(tmp_path / "out.log"),
                         on_start=lambda pid, start: started.update(pid=pid, start=start))
    assert started["start"] is not None
    assert result.code == -signal.SIGTERM
    assert gone(read_pid(tmp_path / "child.pid"))


def test_reaper_killed_hard_marker_sweep_stops_the_rest(tmp_path):
    """If even the reaper is SIGKILLed, every process carrying the command's marker is stopped."""
    started = {}

    def kill_reaper():
        wait_for_file(tmp_path / "child.pid")
        os.kill(started["pid"], signal.SIGKILL)

    cmd = f"setsid sh -c 'echo $$ > child.pid; exec sleep {LONG}' & sleep {LONG}"
    threading.Thread(target=kill_reaper, daemon=True).start()
    result = run_command(cmd, str(tmp_path), output_path=str(tmp_path / "out.log"),
                         on_start=lambda pid, start: started.update(pid=pid))
    assert result.code == -signal.SIGKILL
    child = read_pid(tmp_path / "child.pid")
    assert not alive(child) or wait_gone(child)


def test_a_reaper_started_with_stop_signals_ignored_still_stops_on_them(tmp_path):
    """Started from `nohup` or a background job of a shell without job control, the reaper
    inherits SIGINT and SIGHUP as ignored (what made a test that sends itself SIGINT fail in
    such a run). The reaper still stops on them, since Linux queues a blocked signal even when
    ignored, and the command inherits them ignored, as it would without us."""
    import subprocess
    import sys

    reaper = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "engine", "reaper.py")
    command = f"grep SigIgn /proc/self/status > ignored.txt; exec sleep {LONG}"

    def ignore_stops():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    for sig in (signal.SIGINT, signal.SIGHUP):
        (tmp_path / "ignored.txt").unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, "-I", "-S", reaper, "1.0", "", "ORCH_TEST", "0", command],
                                cwd=tmp_path, preexec_fn=ignore_stops, start_new_session=True)
        try:
            wait_for_file(tmp_path / "ignored.txt")
            os.kill(proc.pid, sig)
            assert proc.wait(timeout=10) == -sig
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        mask = int((tmp_path / "ignored.txt").read_text().split()[1], 16)
        assert mask & (1 << (signal.SIGINT - 1)) and mask & (1 << (signal.SIGHUP - 1))


def test_exit_path_is_written_after_the_leftovers_are_gone(tmp_path):
    cmd = f"setsid sleep {LONG} & echo $! > child.pid; exit 4"
    exit_path = tmp_path / "task.attempt-1.exit"
    result = run_command(cmd, str(tmp_path), output_path=str(tmp_path / "out.log"), exit_path=str(exit_path))
    assert result.code == 4 and exit_path.read_text() == "4"
    assert gone(read_pid(tmp_path / "child.pid"))


def test_exit_path_survives_a_command_that_calls_exit(tmp_path):
    """The old shell trailer never ran after an `exit` in the command; the reaper records it."""
    exit_path = tmp_path / "x.exit"
    run_command("exit 0", str(tmp_path), output_path=str(tmp_path / "out.log"), exit_path=str(exit_path))
    assert exit_path.read_text() == "0"


def test_stdin_is_dev_null_and_own_session(tmp_path):
    cmd = "cat; ps -o sid= -p $$ > sid.txt; readlink /proc/$$/fd/0 > stdin.txt"
    result = run_command(cmd, str(tmp_path), output_path=str(tmp_path / "out.log"))
    assert result.code == 0
    assert (tmp_path / "stdin.txt").read_text().strip() == "/dev/null"
    assert int((tmp_path / "sid.txt").read_text()) == result.pid  # the reaper leads the session


def test_launch_failures_raise_a_clear_error(tmp_path):
    with pytest.raises(CommandLaunchError, match="does not exist"):
        run_command("true", str(tmp_path / "missing"), output_path=str(tmp_path / "out.log"))
    with pytest.raises(CommandLaunchError, match="argument list too long"):
        run_command("echo " + "y" * 200000, str(tmp_path), output_path=str(tmp_path / "out.log"))
    with pytest.raises(CommandLaunchError, match="environment"):
        run_command("true", str(tmp_path), env={"A": "nul\0byte"}, output_path=str(tmp_path / "out.log"))


def test_output_file_symlink_is_refused(tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    (tmp_path / "logs").mkdir()
    os.symlink(target, tmp_path / "logs" / "task.log")
    with pytest.raises(CommandLaunchError, match="symbolic link"):
        run_command("echo overwritten", str(tmp_path), output_path=str(tmp_path / "logs" / "task.log"))
    assert target.read_text() == "keep me\n"


def test_output_under_a_linked_directory_is_refused(tmp_path):
    from engine import store

    store.trust(str(tmp_path))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, tmp_path / "logs")
    with pytest.raises(CommandLaunchError, match="symbolic link"):
        run_command("echo leaked", str(tmp_path), output_path=str(tmp_path / "logs" / "task.log"))
    assert os.listdir(elsewhere) == []


def test_start_time_is_reported(tmp_path):
    seen = []
    run_command("true", str(tmp_path), output_path=str(tmp_path / "out.log"),
                on_start=lambda pid, start: seen.append((pid, start, process_start_time(pid))))
    (pid, start, again), = seen
    assert start is not None and start == again


def test_stop_group_on_an_orphaned_reaper_stops_what_escaped_its_session(tmp_path):
    """The orchestrator that started a command is SIGKILLed; a later one (resume, abort) only
    has the recorded pid and start time. stop_group on it also stops the command's child that
    left the session and ignores SIGTERM."""
    import subprocess
    import sys

    from tests.conftest import python_env

    child = (f"setsid sh -c 'trap \"\" TERM; echo $$ > child.pid; while :; do sleep 0.05; done' & "
             f"sleep {LONG}")
    script = ("import sys; from engine.procs import run_command\n"
              "run_command(sys.argv[1], '.', output_path='out.log',\n"
              "            on_start=lambda pid, start: print(pid, start, flush=True))\n")
    orchestrator = subprocess.Popen([sys.executable, "-c", script, child], cwd=tmp_path, env=python_env(),
                                    stdout=subprocess.PIPE, text=True)
    pid, start = orchestrator.stdout.readline().split()
    wait_for_file(tmp_path / "child.pid")
    orchestrator.kill()
    orchestrator.wait()
    orchestrator.stdout.close()
    escaped = read_pid(tmp_path / "child.pid")
    assert alive(int(pid), start) and alive(escaped)
    assert stop_group(int(pid), start, grace=0.3)
    assert wait_gone(escaped) and wait_gone(int(pid))


def test_output_flood_is_stopped_at_the_limit(tmp_path):
    """A runaway printer cannot fill the disk: stopped like a timeout, with its tree."""
    cmd = f"setsid sleep {LONG} & echo $! > child.pid; while :; do echo flood flood flood; done"
    result = run_command(cmd, str(tmp_path), output_path=str(tmp_path / "out.log"), max_output=2_000_000,
                         exit_path=str(tmp_path / "exit"))
    assert result.output_limited and result.code == -signal.SIGXFSZ
    assert 2_000_000 < os.path.getsize(tmp_path / "out.log") < 20_000_000  # the limit, plus one poll
    assert gone(read_pid(tmp_path / "child.pid"))
    assert "its output passed the limit" in feedback(result, "yes")
    assert (tmp_path / "exit").read_text() == str(-signal.SIGXFSZ)  # a result, not an interruption


@pytest.mark.parametrize("timeout", [float("inf"), 1e20, float("nan")])
def test_unbounded_timeouts_mean_no_timeout(tmp_path, timeout):
    result = run_command("exit 0", str(tmp_path), output_path=str(tmp_path / "out.log"), timeout=timeout)
    assert result.code == 0 and not result.timed_out


def test_concurrent_commands_stop_only_their_own_leftovers(tmp_path):
    """Eight commands at once from threads (as the executor runs agents): each returns its own
    status, each one's leftover is stopped, and a long-running sibling is not touched."""
    results = {}

    def one(i):
        d = tmp_path / f"c{i}"
        d.mkdir()
        cmd = f"setsid sleep {LONG} & echo $! > child.pid; sleep 0.{i}; exit {i}"
        results[i] = run_command(cmd, str(d), output_path=str(d / "out.log"))

    sibling = {}
    slow = threading.Thread(target=lambda: sibling.update(r=run_command(
        "sleep 3; exit 42", str(tmp_path), output_path=str(tmp_path / "slow.log"))))
    slow.start()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    slow.join()
    assert {i: r.code for i, r in results.items()} == {i: i for i in range(8)}
    assert all(gone(read_pid(tmp_path / f"c{i}" / "child.pid")) for i in range(8))
    assert sibling["r"].code == 42


def test_stopped_by_abort_while_cancelled_is_interrupted_not_failed(tmp_path):
    """Abort sets the cancel event and signals the recorded pid at once; whichever wins, the
    attempt is reported as interrupted."""
    cancel, started = threading.Event(), {}

    def abort():
        wait_for_file(tmp_path / "child.pid")
        cancel.set()
        stop_group(started["pid"], started["start"], grace=1.0)

    threading.Thread(target=abort, daemon=True).start()
    result = run_command(f"echo $$ > child.pid; sleep {LONG}", str(tmp_path), output_path=str(tmp_path / "o.log"),
                         cancel=cancel, on_start=lambda pid, start: started.update(pid=pid, start=start))
    assert result.interrupted and result.code == INTERRUPTED


def test_output_contains_looks_at_this_commands_output_only(tmp_path):
    """The header echoes the command, so `echo ALL-OK >/dev/null` must not count as ALL-OK."""
    log = str(tmp_path / "qa.log")
    run_command("echo ALL-OK", str(tmp_path), output_path=log)  # an earlier run in the same file
    quiet = run_command("echo ALL-OK > /dev/null", str(tmp_path), output_path=log, header="=== echo ALL-OK")
    loud = run_command("echo ALL-OK", str(tmp_path), output_path=log, header="=== echo ALL-OK")
    from engine.procs import output_contains

    assert not output_contains(quiet, "ALL-OK") and output_contains(loud, "ALL-OK")


def test_a_recorded_pid_out_of_range_is_not_alive_and_never_signalled():
    """Pids come from files a person or an agent may edit: one beyond what the kernel can
    hand out (found by the dashboard's hypothesis test: 2**31 raised OverflowError) or a
    boolean is simply not a live process."""
    from engine.procs import alive, stop_group, wait_for

    for pid in (2 ** 31, 2 ** 63, 2 ** 22 + 1, True, -1, 0):
        assert alive(pid) is False
        assert stop_group(pid) is False
        assert wait_for(pid, timeout=0.1) is True
