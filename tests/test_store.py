"""The store: atomic writes, the journal's torn-line tolerance, parse errors with lines."""

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import store
from engine.errors import StateFileError


def test_journal_sequence_checksum_and_torn_tail(tmp_path):
    j = store.Journal(str(tmp_path / "j.jsonl"))
    assert j.last() is None and j.records() == []
    for i in range(3):
        assert j.append("transition", to=f"S{i}")["seq"] == i + 1
    with open(j.path, "ab") as fh:
        fh.write(b'{"seq":4,"ts":"x","ev')  # a writer killed mid-append
    assert j.last()["seq"] == 3
    assert [r["seq"] for r in j.records()] == [1, 2, 3]
    assert j.append("transition", to="S3")["seq"] == 4
    lines = open(j.path, "rb").read().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 5  # the torn piece is gone, 4 whole lines
    assert all(json.loads(line)["sum"] for line in lines[:-1])


def test_journal_skips_tampered_lines_but_keeps_them(tmp_path):
    j = store.Journal(str(tmp_path / "j.jsonl"))
    j.append("a")
    j.append("b")
    text = open(j.path).read().replace('"event":"b"', '"event":"c"')
    open(j.path, "w").write(text)
    assert [r["event"] for r in j.records()] == ["a"]
    assert j.append("d")["seq"] == 2  # after the last *good* record
    assert '"event":"c"' in open(j.path).read()


def test_journal_tail_window_larger_than_file_boundary(tmp_path, monkeypatch):
    monkeypatch.setattr(store.Journal, "TAIL_BYTES", 64)
    j = store.Journal(str(tmp_path / "j.jsonl"))
    for _ in range(20):
        j.append("e", payload="x" * 50)
    assert j.last()["seq"] == 20


def test_atomic_write_keeps_mode_and_last_good(tmp_path):
    path = str(tmp_path / "f.yaml")
    store.atomic_write(path, "a: 1\n")
    os.chmod(path, 0o600)
    store.atomic_write(path, "a: 2\n")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert open(path + store.LAST_GOOD_SUFFIX).read() == "a: 2\n"
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []


def test_atomic_write_many_flushes_every_file_and_each_directory_once(tmp_path, monkeypatch):
    """N files in one directory: N + 1 fsyncs (each file's data, then the directory once for
    every rename), not 2N; each file whole; a link in the way refused as atomic_write does."""
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.path.realpath(f"/proc/self/fd/{fd}")),
                                                 real_fsync(fd)))
    (tmp_path / "b").mkdir()
    items = [(str(tmp_path / f"g{i}.yaml"), f"n: {i}\n") for i in range(5)] + [(str(tmp_path / "b" / "x"), "x")]
    store.atomic_write_many(items)
    assert [open(p).read() for p, _ in items] == [d for _, d in items]
    assert synced.count(str(tmp_path)) == 1 and synced.count(str(tmp_path / "b")) == 1 and len(synced) == 8
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []
    os.symlink(tmp_path / "elsewhere", tmp_path / "g9.yaml")
    with pytest.raises(store.UnsafePath):
        store.atomic_write_many([(str(tmp_path / "g9.yaml"), "no")])
    assert not (tmp_path / "elsewhere").exists()


def test_yaml_parse_error_names_path_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("a: 1\nb: [x\nc: 2\n")
    with pytest.raises(StateFileError) as info:
        store.load_yaml_mapping(str(path))
    assert str(path) in info.value.message and "line " in info.value.message


def test_json_parse_error_names_path_and_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "a": 1,\n  oops\n}')
    with pytest.raises(StateFileError) as info:
        store.load_json(str(path))
    assert info.value.message.startswith(f"cannot parse {path}: line 3")


def test_binary_garbage_is_a_parse_error(tmp_path):
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(StateFileError):
        store.load_yaml_mapping(str(path))


scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    st.text(max_size=30))
keys = st.text(min_size=1, max_size=15)
documents = st.dictionaries(keys, st.recursive(scalars, lambda c: st.lists(c, max_size=4) |
                                               st.dictionaries(keys, c, max_size=4), max_leaves=10), max_size=8)


@settings(max_examples=200, deadline=None)
@given(documents)
def test_yaml_round_trip(doc):
    """Whatever we load we write back identically: unknown keys, types and order survive."""
    text = store.dump_yaml(doc, "# header")
    back = store.parse_yaml(text, "<mem>")
    assert back == doc
    assert list(back) == list(doc)
    assert store.dump_yaml(back, "# header") == text


def test_timestamps_stay_strings():
    assert store.parse_yaml("t: 2026-01-01T10:00:00Z\nd: 2026-01-01\n", "x") == \
        {"t": "2026-01-01T10:00:00Z", "d": "2026-01-01"}


def test_roll_forward_across_interleaved_runner_events(tmp_path):
    """The runner journals its own events between transitions; a kill right after a
    transition record must still be rolled forward by the next call."""
    import yaml

    from engine import statefile
    from engine.paths import Layout

    layout = Layout(str(tmp_path))
    statefile.init("PARALLELIZE", layout=layout)
    journal = store.Journal(layout.journal)
    journal.append("agent-start", task="t1")
    journal.append("agent-exit", task="t1", code=0)
    before = open(layout.state_file, "rb").read()
    # simulate a kill between the journal append and the file replace of `transition EXECUTE`
    data = yaml.safe_load(before)
    journal.append("transition", **{"from": "PARALLELIZE", "to": "EXECUTE", "forced": False,
                                   "prev_seq": data["journal_seq"]})
    assert statefile.get_state(layout) == "EXECUTE"  # `state` tells the journaled truth before the file catches up
    lines = statefile.transition("QA", layout=layout)  # the next call rolls forward first
    assert lines[0] == "Transitioned: EXECUTE -> QA"


# --------------------------------------------------------------------------- YamlFragments
_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                     st.text(max_size=30))
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                       max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(before=st.dictionaries(st.text(max_size=12), st.dictionaries(st.text(max_size=10), _values, max_size=5),
                              min_size=1, max_size=5),
       changes=st.lists(st.tuples(st.booleans(), st.text(max_size=12),
                                  st.dictionaries(st.text(max_size=10), _values, max_size=5)), max_size=4),
       extra=st.dictionaries(st.text(max_size=10), _values, max_size=3))
def test_fragment_dumps_are_the_whole_dump_whatever_the_data(before, changes, extra):
    """The progress file's cached per-entry rendering writes exactly what dumping the whole
    document writes, after any sequence of changes to its tasks or its other top-level
    entries (so a reader never sees the difference)."""
    renderer = store.YamlFragments()
    data = dict(extra, tasks=before)
    for in_tasks, key, entry in [(None, None, None)] + changes:
        if in_tasks:
            data["tasks"][key] = entry
        elif in_tasks is not None and key != "tasks":
            data[key] = entry
        text = renderer.dump(data, "# header")
        assert text == store.dump_yaml(data, "# header")
        assert store.parse_yaml(text, "x") == data


def test_a_value_shared_by_two_tasks_is_written_out_not_aliased():
    """One list object recorded in two places (an attempt's field and the task's) must not
    become a YAML anchor: two tasks dumped apart would both define `&id001`, which no parser
    accepts (the bug the fragment cache first had), and an alias is opaque to a shell reader."""
    shared = ["Bash"]
    data = {"tasks": {"a": {"denied": shared, "attempts": [{"denied": shared}]},
                      "b": {"denied": shared}}}
    text = store.YamlFragments().dump(data, "# h")
    assert "&" not in text and "*" not in text
    assert text == store.dump_yaml(data, "# h")
    assert store.parse_yaml(text, "x") == data


@pytest.mark.parametrize("text", ["\u2028", "a\u2028b\nc", "\u2029 x\n\n y", "\x85", "x\n\u2028\n"])
def test_fragment_dumps_indent_after_every_line_break_yaml_knows(text):
    """PyYAML breaks a quoted scalar at U+2028/U+2029 too and indents after them (found by the
    red-team fuzzing): the fragment renderer indents there as well, so the text is the same."""
    data = {"tasks": {"t": {"x": text, "l": [text, {"k": text}]}, "u": {"y": text}}, "z": text}
    rendered = store.YamlFragments().dump(data, "# h")
    assert rendered == store.dump_yaml(data, "# h")
    assert store.parse_yaml(rendered, "x") == data


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(st.sampled_from(["a", "b", "c"]), max_size=30), window=st.integers(16, 300),
       torn=st.booleans(), seq=st.integers(0, 32))
def test_reading_back_in_windows_agrees_with_reading_everything(tmp_path_factory, events, window, torn, seq):
    """`since` reads back from the end in growing windows (the first line of each may be cut):
    whatever the window, it finds what a whole read finds; a torn tail is no record."""
    j = store.Journal(str(tmp_path_factory.mktemp("j") / "j.jsonl"))
    for event in events:
        j.append(event, payload="x" * (len(event) * 7))
    if torn:
        with open(j.path, "ab") as fh:
            fh.write(b'{"seq":99,"event":"a"')
    j.TAIL_BYTES = window
    everything = j.records()
    assert j.since(seq) == [r for r in reversed(everything) if r["seq"] > seq]
    assert j.since(seq, "b") == [r for r in reversed(everything) if r["seq"] > seq and r["event"] == "b"]
