"""The progress file's change log (engine.deltalog): a task event of a large run appends only what
it changed; every reader (another process's Progress, the dashboard's) sees the current document;
the YAML file alone is current once compacted; a torn append, a compaction under a reader, a
snapshot replaced by hand or by a checkpoint restore never mix two documents."""

import os
import threading
import time

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from engine import deltalog
from engine.paths import Layout
from engine.progress import Progress

BOOKKEEPING = (deltalog.LOG_KEY, deltalog.SEQ_KEY)


def visible(data):
    return {k: v for k, v in data.items() if k not in BOOKKEEPING}


def on_disk(layout):
    with open(layout.progress) as fh:
        return visible(yaml.safe_load(fh) or {})


@pytest.fixture
def layout(tmp_path):
    (tmp_path / ".claude").mkdir()
    return Layout(str(tmp_path))


def deferred(layout, min_log=256 * 1024):
    progress = Progress(layout)
    progress.defer_snapshots = True
    progress.MIN_LOG_BYTES, progress.SNAPSHOT_LAG = min_log, 3600
    return progress


def big_plan(layout, n=2000):
    progress = Progress(layout)
    progress.update(lambda d: d.update(status="running", tasks={
        f"t{i:05d}": {"status": "pending", "branch": f"auto/t{i:05d}", "group": 1, "description": "x" * 300}
        for i in range(n)}))
    return progress


def test_an_event_of_a_large_run_appends_only_what_it_changed(layout):
    big_plan(layout)
    writer = deferred(layout)
    writer.set_task("t01999", status="running")  # the first event starts the log: one whole write
    snapshot = os.stat(layout.progress)
    log = layout.progress + deltalog.SUFFIX
    sizes = []
    for i in range(50):
        before = os.path.getsize(log) if os.path.exists(log) else 0
        writer.set_task(f"t{i:05d}", status="running", pid=1000 + i)
        sizes.append(os.path.getsize(log) - before)
    after = os.stat(layout.progress)
    assert (after.st_ino, after.st_mtime_ns) == (snapshot.st_ino, snapshot.st_mtime_ns)  # not rewritten
    assert snapshot.st_size > 700_000 and max(sizes) < 600, sizes  # the task's entry (~430 bytes), not the plan
    reader = Progress(layout)  # another process's view: rolled forward
    assert reader.task("t00049") == dict(reader.task("t00048"), pid=1049, branch="auto/t00049")
    assert reader.task("t00049")["status"] == "running" and on_disk(layout)["tasks"]["t00049"]["status"] == "pending"
    writer.compact()
    with open(layout.progress) as fh:
        at_rest = yaml.safe_load(fh)
    assert at_rest["tasks"]["t00049"]["status"] == "running"  # the YAML file alone, once compacted
    assert not set(BOOKKEEPING) & set(at_rest) and not os.path.exists(log)  # at rest: no log, no bookkeeping


def test_a_running_orchestrator_appends_whatever_the_plan_size_and_others_write_whole(layout):
    """A small plan's events cost one fsynced append too (not a whole write and its two fsyncs);
    a writer that does not defer (retry, abort, decompose) still writes the YAML file whole."""
    Progress(layout).update(lambda d: d.update(tasks={"a": {"status": "pending"}, "b": {"status": "pending"}}))
    progress = Progress(layout)
    progress.defer_snapshots = True
    progress.SNAPSHOT_LAG = 3600
    progress.set_task("a", status="running")  # the first event starts the log: one whole write
    snapshot = os.stat(layout.progress)
    progress.set_task("a", status="approved")
    after = os.stat(layout.progress)
    assert (after.st_ino, after.st_mtime_ns) == (snapshot.st_ino, snapshot.st_mtime_ns)  # appended, not rewritten
    assert on_disk(layout)["tasks"]["a"]["status"] == "running"  # the YAML file alone lags...
    assert Progress(layout).task("a")["status"] == "approved"  # ...every reader of ours rolls it forward
    Progress(layout).set_task("b", status="failed")  # a writer that does not defer: whole, and current
    assert on_disk(layout)["tasks"] == {"a": {"status": "approved"}, "b": {"status": "failed"}}


KEYS = st.sampled_from(["a", "b", "c", "d"])
VALUES = st.one_of(st.integers(-5, 5), st.text(max_size=5), st.none(), st.booleans(),
                   st.lists(st.integers(0, 3), max_size=3))
OPS = st.one_of(
    st.tuples(st.just("set_task"), KEYS, st.sampled_from(["x", "y"]), VALUES),  # (fields the engine reads
    st.tuples(st.just("set_task"), KEYS, st.just("status"), st.sampled_from(["pending", "running"])),  # have types)
    st.tuples(st.just("drop_task"), KEYS, st.none(), st.none()),
    st.tuples(st.just("set_top"), st.sampled_from(["extra", "more"]), st.none(), VALUES),
    st.tuples(st.just("unset_top"), st.sampled_from(["more", "extra"]), st.none(), st.none()),
    st.tuples(st.just("compact"), st.none(), st.none(), st.none()),
    st.tuples(st.just("other_writer"), KEYS, st.none(), VALUES),
    st.tuples(st.just("failing"), KEYS, st.none(), st.none()))


def run_op(progress, model, op, layout):
    kind, key, field, value = op
    if kind == "set_task":
        progress.set_task(key, **{field: value})
        model.setdefault("tasks", {}).setdefault(key, {})[field] = value
    elif kind == "drop_task":
        progress.update(lambda d: (d.get("tasks") or {}).pop(key, None))
        (model.get("tasks") or {}).pop(key, None)
    elif kind == "set_top":
        progress.update(lambda d: d.update({key: value}))
        model[key] = value
    elif kind == "unset_top":
        progress.update(lambda d: d.pop(key, None))
        model.pop(key, None)
    elif kind == "compact":
        progress.compact()
    elif kind == "other_writer":  # `retry` or `abort` from another process: writes the snapshot
        Progress(layout).set_task(key, note=value)
        model.setdefault("tasks", {}).setdefault(key, {})["note"] = value
        time.sleep(Progress.LOOK_EVERY)  # (seen by a reader this much later at most; a writer sees it at once)
    else:  # a change that raises changes nothing
        def change(d):
            d.setdefault("tasks", {}).setdefault(key, {})["status"] = "half"
            raise ValueError("no")
        with pytest.raises(ValueError):
            progress.update(change)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(OPS, max_size=25), min_log=st.sampled_from([0, 300, 10 ** 6]))
def test_every_reader_sees_the_document_the_changes_made(tmp_path_factory, ops, min_log):
    root = tmp_path_factory.mktemp("p")
    os.mkdir(root / ".claude")
    layout = Layout(str(root))
    writer = deferred(layout, min_log=min_log)
    model = {}
    writer.update(lambda d: d.update(status="running"))
    model["status"] = "running"
    for op in ops:
        run_op(writer, model, op, layout)
        assert visible(writer.peek()) == model
        assert visible(Progress(layout).peek()) == model  # a fresh reader rolls the log forward
        assert visible(deltalog.roll_forward(yaml.safe_load(open(layout.progress)), deltalog.DeltaLog(
            layout.progress))) == model  # the dashboard's stateless reader
    writer.compact()
    assert on_disk(layout) == model


def test_a_torn_append_is_ignored_then_cut_off(layout):
    big_plan(layout, 200)
    writer = deferred(layout)
    writer.set_task("t00001", status="running")
    with open(layout.progress + deltalog.SUFFIX, "ab") as fh:
        fh.write(b'{"n":99,"d":{"tasks":{"t00002":{"status":"mer')  # a writer killed mid-line
    assert Progress(layout).task("t00002")["status"] == "pending"
    assert Progress(layout).task("t00001")["status"] == "running"
    again = deferred(layout)  # the next orchestrator
    again.set_task("t00003", status="running")
    reader = Progress(layout)
    assert [reader.task(t)["status"] for t in ("t00001", "t00002", "t00003")] == ["running", "pending", "running"]
    with open(layout.progress + deltalog.SUFFIX, "rb") as fh:
        assert b"mer" not in fh.read()


def test_a_log_written_with_the_earlier_numeric_checksum_is_still_read(layout):
    """The change log's lines now carry the journal's checksum (engine.store.checksummed_line);
    up to stop 23 they carried the same CRC as a number. A run killed then and resumed by this
    version keeps its last events."""
    import json
    import zlib

    big_plan(layout, 200)
    writer = deferred(layout)
    writer.set_task("t00001", status="running")
    writer.set_task("t00002", status="running")
    path = layout.progress + deltalog.SUFFIX
    with open(path) as fh:
        lines = [json.loads(line) for line in fh]
    for record in lines:
        record.pop("sum")
        body = json.dumps(record, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        record["sum"] = zlib.crc32(body.encode("utf-8"))  # the earlier form
    with open(path, "w") as fh:
        fh.write("".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in lines))
    reader = Progress(layout)
    assert [reader.task(t)["status"] for t in ("t00001", "t00002", "t00003")] == ["running", "running", "pending"]


def test_a_snapshot_replaced_by_hand_is_not_rolled_forward_with_an_older_log(layout):
    big_plan(layout, 200)
    writer = deferred(layout)
    writer.set_task("t00001", status="running")
    with open(layout.progress, "w") as fh:  # a person (or another tool) writes a new file
        yaml.safe_dump({"status": "running", "tasks": {"z": {"status": "pending"}}}, fh)
    assert visible(Progress(layout).peek()) == {"status": "running", "tasks": {"z": {"status": "pending"}}}


def test_a_checkpoint_restore_drops_the_log(layout, tmp_path, monkeypatch):
    from engine.snapshot import Snapshots

    big_plan(layout, 200)
    writer = deferred(layout)
    writer.set_task("t00001", status="running")
    snaps = Snapshots(layout)
    manifest = snaps.create("before")
    assert on_disk(layout)["tasks"]["t00001"]["status"] == "running"  # the checkpoint holds the event
    writer.set_task("t00002", status="running")  # after the checkpoint, in the log
    snaps.restore(manifest["id"])
    assert Progress(layout).task("t00002")["status"] == "pending"
    assert Progress(layout).task("t00001")["status"] == "running"


def test_readers_never_see_a_document_go_back_while_the_writer_compacts(layout):
    """Reader threads with their own Progress (as other processes have) while the writer
    appends and compacts every few events: each reader's counter only grows, and it ends at
    the last value."""
    big_plan(layout, 300)
    writer = deferred(layout, min_log=2000)
    done = threading.Event()
    problems = []

    def reader():
        mine, last = Progress(layout), -1
        while not done.is_set():
            value = mine.peek().get("counter", -1)
            if value < last:
                problems.append((last, value))
            last = value
            time.sleep(0.0002)  # (a reader spinning without a pause would only starve the writer of the GIL)
        if Progress(layout).peek().get("counter") != 299:
            problems.append(("end", Progress(layout).peek().get("counter")))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(300):
        writer.update(lambda d, i=i: d.update(counter=i))
        writer.set_task(f"t{i:05d}", status="merged")
    done.set()
    for t in threads:
        t.join()
    assert problems == []
    assert all(v["status"] == "merged" for v in Progress(layout).peek()["tasks"].values())


# ------------------------------------------------ found by a red-team pass (each failed before its fix)
def small_run(layout, n=5):
    writer = deferred(layout)
    writer.update(lambda d: d.setdefault("tasks", {}).update({f"t{i}": {"status": "pending"} for i in range(n)}))
    writer.update(lambda d: d.update(status="running"))  # the second write starts the log
    return writer


def test_an_append_landing_while_a_reader_reads_the_log_is_not_lost_by_its_next_write(layout):
    """The reader used to record the log's version after reading it: an append in between
    looked read; its next whole write (a `retry`) dropped the orchestrator's event."""
    writer = small_run(layout)
    writer.set_task("t1", status="running")
    cli = Progress(layout)
    real = cli._log.read

    def read_then_the_orchestrator_appends():
        result = real()
        cli._log.read = real
        writer.set_task("t1", status="merged")
        return result
    cli._log.read = read_then_the_orchestrator_appends
    cli.peek()
    cli.set_task("t2", status="failed")
    assert Progress(layout).task("t1")["status"] == "merged"


def test_an_older_snapshot_of_the_same_log_put_back_stands_alone(layout):
    """Used to fail every read, write and compaction for good ("it keeps changing")."""
    writer = small_run(layout)
    writer.set_task("t1", status="running")
    writer._snapshot_due()
    with open(layout.progress, "rb") as fh:
        older = fh.read()
    writer.set_task("t1", status="merged")
    writer._snapshot_due()
    with open(layout.progress, "wb") as fh:  # a person copies a backup back
        fh.write(older)
    assert Progress(layout).task("t1")["status"] == "running"
    Progress(layout).set_task("t2", status="x")
    writer.compact()


def test_an_interrupt_between_the_append_and_the_view_loses_nothing(layout):
    """Ctrl-C after the fsynced append: the writer's own view used to miss the change, number
    the next one again and erase it at compaction."""
    writer = small_run(layout)
    real = writer._set

    def interrupted(*args, **kwargs):
        writer._set = real
        raise KeyboardInterrupt
    writer._set = interrupted
    with pytest.raises(KeyboardInterrupt):
        writer.set_task("t1", status="merged")
    writer.set_task("t2", status="running")
    assert writer.task("t1")["status"] == "merged"
    writer.compact()
    assert on_disk(layout)["tasks"]["t1"]["status"] == "merged"


def test_a_whole_write_between_a_readers_two_reads_is_not_read_as_the_past(layout):
    writer = small_run(layout)
    writer._snapshot_due()
    writer.set_task("t1", status="merged")
    reader = Progress(layout)
    real = reader._log.read

    def compaction_in_between():
        reader._log.read = real
        writer.compact()
        return real()
    reader._log.read = compaction_in_between
    assert reader.task("t1")["status"] == "merged"


def test_a_draft_never_lets_a_change_touch_the_shared_document(layout):
    writer = small_run(layout)
    shared = writer.peek()
    writer.update(lambda d: dict(d["tasks"])["t1"].update(status="leaked"))
    writer.update(lambda d: {**d}["tasks"]["t2"].update(status="leaked"))
    assert shared["tasks"]["t1"]["status"] == shared["tasks"]["t2"]["status"] == "pending"
    writer.update(lambda d: d["tasks"].get("t99"))  # looked for, never there: no change, no error
    writer.update(lambda d: d.__ior__({"extra": 1}))
    assert Progress(layout).peek()["extra"] == 1
    writer.update(lambda d: d.pop("tasks"))
    assert writer.ids_with(["pending"]) == set() and "tasks" not in Progress(layout).peek()


@pytest.mark.parametrize("value", [{1, 2}, {1: "x"}, "\udcff"])
def test_a_value_the_file_cannot_hold_fails_its_own_change_only(layout, value):
    writer = small_run(layout)
    items = [(lambda d: d["tasks"]["t1"].update(extra=value)), (lambda d: d["tasks"]["t2"].update(status="ok"))]
    import concurrent.futures as cf

    pool = cf.ThreadPoolExecutor(2)
    with writer.locked():  # both queued, then committed as one batch
        futures = [pool.submit(writer.update, change) for change in items]
        time.sleep(0.2)
    pool.shutdown(wait=True)
    with pytest.raises((TypeError, ValueError)):
        futures[0].result()
    futures[1].result()
    assert Progress(layout).task("t2")["status"] == "ok" and "extra" not in Progress(layout).task("t1")
