"""``python -m producer_tools`` against the real broker: every input format, collect, replay, offsets, lag."""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import threading
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path

import msgpack
import numpy as np
import pytest
from confluent_kafka import Consumer, Message

from consumer.cli import main as consumer_main
from consumer.codec import Limits, pack_input, unpack_input
from producer_tools import dead_letters
from producer_tools.cli import main
from producer_tools.clients import Clients
from producer_tools.collect import Collected, JsonLines
from producer_tools.consumer_run import ConsumerProcess, ConsumerRunError
from producer_tools.dead_letters import Tally
from producer_tools.reader import read_topic
from tests import models
from tests.conftest import FAST_GROUP
from tests.helpers import Topics, committed, limited_topics, publish, run_worker, settings

pytestmark = pytest.mark.integration


def tool(bootstrap: str, *argv: str) -> int:
    command, *rest = argv
    return main([command, "--bootstrap-servers", bootstrap, *rest])


def published(bootstrap: str, topic: str, count: int) -> list[tuple[bytes | None, dict]]:
    decoded = []
    for msg in read_topic(bootstrap, topic, min_count=count):
        envelope = unpack_input(msg.value(), Limits())
        decoded.append((msg.key(), {"id": envelope.id, "inputs": envelope.inputs}))
    return decoded


def test_publish_predict_collect_round_trip_joins_each_input_with_its_prediction(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path, tmp_path: Path
) -> None:
    inp, out = topics("in", "out")
    x = np.random.default_rng(5).normal(size=(120, 4)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    assert tool(bootstrap, "publish", str(tmp_path / "x.npy"), "--topic", inp) == 0
    run_worker(settings(bootstrap, mlp_path, inp, out, group))
    result = tmp_path / "pairs.npz"
    assert tool(bootstrap, "collect", "--topic", out, "--out", str(result), "--join", str(tmp_path / "x.npy")) == 0
    with np.load(result) as pairs:
        order = np.argsort(pairs["ids"])
        assert sorted(pairs["ids"].tolist()) == list(range(120))
        np.testing.assert_array_equal(pairs["inputs"][order], x)
        np.testing.assert_allclose(pairs["outputs"][order], models.offline_predict(mlp_path, x), atol=1e-5)
        assert set(pairs["keys"].tolist()) == {str(i).encode() for i in range(120)}


def test_every_input_format_publishes_the_examples_it_holds(bootstrap: str, topics: Topics, tmp_path: Path) -> None:
    a, b = np.arange(6, dtype="float32").reshape(3, 2), np.array([[1], [2], [3]], "int32")
    np.savez(tmp_path / "m.npz", a=a, b=b, user=np.array(["u1", "u2", "u3"]))
    bom = "\ufeff"  # as spreadsheets and Windows editors save UTF-8 text
    (tmp_path / "j.jsonl").write_text(
        bom + '{"inputs": [1, 2], "id": "r0", "key": "k0"}\n\n{"inputs": [3, 4], "id": "r1", "key": "k1"}\n'
    )
    (tmp_path / "c.csv").write_text(bom + "user,f1,f2\nalice,1.5,2\nbob,3,4.25\n")
    (tmp_path / "texts.csv").write_text('id,title,body\n7,Hi,"there, you"\n8,Ça va,\n')
    np.save(tmp_path / "rows.npy", a)
    np.save(tmp_path / "texts.npy", np.array(["hi", "Ça va"]))  # NumPy's U: text
    np.savez(tmp_path / "mixed.npz", title=np.array([b"t0", b"t1"]), x=a[:2])  # S: bytes, beside numbers
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"\xff\xd8cat")
    (folder / "dog.jpg").write_bytes(b"\xff\xd8dog")
    (folder / "birds").mkdir()  # a subfolder a class, as keras.utils.image_dataset_from_directory reads
    (folder / "birds" / "owl.png").write_bytes(b"\x89PNGowl")  # was left out
    for hidden in (folder / ".DS_Store", folder / ".thumbnails" / "cat.jpg"):
        hidden.parent.mkdir(exist_ok=True)
        hidden.write_bytes(b"not an image")
    cases = {
        "npz": ([str(tmp_path / "m.npz"), "--key-field", "user"], 3),
        "jsonl": ([str(tmp_path / "j.jsonl"), "--tensor-form", "list"], 2),
        "csv": ([str(tmp_path / "c.csv"), "--key-field", "user", "--dtype", "float32"], 2),
        "folder": ([str(folder), "--input-name", "image"], 3),
        "csv-texts": ([str(tmp_path / "texts.csv"), "--id-field", "id", "--dtype", "string"], 2),
        "csv-text": ([str(tmp_path / "texts.csv"), "--columns", "body", "--dtype", "string", "--input-name", "t"], 2),
        "named-csv": ([str(tmp_path / "c.csv"), "--key-field", "user", "--input-name", "features"], 2),
        "named-npy": ([str(tmp_path / "rows.npy"), "--input-name", "x"], 3),
        "npy-texts": ([str(tmp_path / "texts.npy"), "--input-name", "t"], 2),
        "npz-texts": ([str(tmp_path / "mixed.npz")], 2),
    }
    got = {}
    for name, (argv, count) in cases.items():
        (topic,) = topics(name, partitions=1)
        assert tool(bootstrap, "publish", "--topic", topic, *argv) == 0
        got[name] = published(bootstrap, topic, count)
    assert [k for k, _ in got["npz"]] == [b"u1", b"u2", b"u3"]
    np.testing.assert_array_equal(got["npz"][2][1]["inputs"]["a"], a[2])
    np.testing.assert_array_equal(got["npz"][2][1]["inputs"]["b"], b[2])
    assert [(k, e["id"], e["inputs"][""]) for k, e in got["jsonl"]] == [(b"k0", "r0", [1, 2]), (b"k1", "r1", [3, 4])]
    assert [k for k, _ in got["csv"]] == [b"alice", b"bob"]
    np.testing.assert_array_equal(got["csv"][1][1]["inputs"][""], np.array([3, 4.25], "float32"))
    # texts go as their UTF-8 bytes: several columns an input each, by name; one, the input itself (or named)
    assert [(e["id"], e["inputs"]) for _, e in got["csv-texts"]] == [
        ("7", {"title": b"Hi", "body": b"there, you"}),
        ("8", {"title": "Ça va".encode(), "body": b""}),
    ]
    assert [e["inputs"] for _, e in got["csv-text"]] == [{"t": b"there, you"}, {"t": b""}]
    np.testing.assert_array_equal(got["named-csv"][0][1]["inputs"]["features"], np.array([1.5, 2], "float32"))
    np.testing.assert_array_equal(got["named-npy"][2][1]["inputs"]["x"], a[2])
    assert [e["inputs"] for _, e in got["npy-texts"]] == [{"t": b"hi"}, {"t": "Ça va".encode()}]
    assert [e["inputs"]["title"] for _, e in got["npz-texts"]] == [b"t0", b"t1"]
    np.testing.assert_array_equal(got["npz-texts"][1][1]["inputs"]["x"], a[1])
    assert [(k, e["id"], e["inputs"]["image"]) for k, e in got["folder"]] == [
        (b"birds/owl.png", "birds/owl.png", b"\x89PNGowl"),
        (b"cat.jpg", "cat.jpg", b"\xff\xd8cat"),
        (b"dog.jpg", "dog.jpg", b"\xff\xd8dog"),
    ]


def test_publish_says_when_it_sends_float64_and_how_to_send_float32(
    bootstrap: str, topics: Topics, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """NumPy's and JSON's numbers are float64: twice the bytes of a float32 model's inputs, sent
    without a word before."""
    np.save(tmp_path / "wide.npy", np.random.default_rng(0).random((3, 4)))
    (tmp_path / "j.jsonl").write_text('{"inputs": {"a": [1.5, 2], "b": [1]}}\n')
    (topic,) = topics("in", partitions=1)
    said = {}
    for name, argv in {
        "npy": ["wide.npy"],
        "npy-float32": ["wide.npy", "--dtype", "float32"],
        "npy-lists": ["wide.npy", "--tensor-form", "list"],  # lists have no dtype: numbers are numbers
        "jsonl": ["j.jsonl"],
    }.items():
        capsys.readouterr()
        assert tool(bootstrap, "publish", "--topic", topic, str(tmp_path / argv[0]), *argv[1:]) == 0
        said[name] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    note = (
        "sent as float64 (NumPy's and JSON's default), twice the bytes of the float32 a model usually takes and "
        "casts them to; for such a model, publish with --dtype float32"
    )
    assert said == {"npy": [f"note: inputs {note}"], "npy-float32": [], "npy-lists": [], "jsonl": [f"note: a {note}"]}


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _compressed_npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "content", "extra", "needle"),
    [
        ("ragged.jsonl", '{"inputs": [1, 2]}\n{"inputs": [1, 2, 3]}\n', [], "ragged.jsonl:2: shape [3] differs"),
        ("broken.npy", "this is not numpy", [], "is not a .npy file (no NumPy header): save it"),
        ("truncated.npy", _npy_bytes(np.zeros((4, 8), "float32"))[:20], [], "cannot read input file"),
        ("objects.npy", _npy_bytes(np.array([{"a": 1}, None], dtype=object)), [], "holds Python objects"),
        ("objects.npz", _npz_bytes(x=np.array(["a", None], dtype=object)), [], "holds Python objects"),
        ("c.csv", "a,b\n1,2\n", ["--key-field", "user"], "no column(s) ['user']"),
        ("empty.csv", "", [], "empty.csv' has no header row: a .csv starts with a row naming its columns"),
        ("text.csv", "a,b\n1,x\n", [], "column 'b' holds 'x', not a number (a column of text: --dtype string)"),
        ("short.csv", "a,b\n1\n", ["--dtype", "string"], "short.csv:2: the row has 1 fields and the header 2: give"),
        ("long.csv", "a,b\n1,2\n\n3,4,5\n", [], "long.csv:4: the row has 3 fields and the header 2"),
        ("short_numbers.csv", "a,b\n1\n", [], "short_numbers.csv:2: the row has 1 fields"),  # was: holds None
        ("latin1.csv", "t\ncaf\u00e9\n".encode("latin-1"), [], "it is not UTF-8 text (invalid continuation byte"),
        ("two.csv", "a,b\nx,y\n", ["--dtype", "string", "--input-name", "t"], "--input-name takes one column of"),
        ("t.jsonl", '{"inputs": "hi"}\n', ["--dtype", "string"], "--dtype string applies to .csv files, whose"),
        ("n.npz", _npz_bytes(a=np.zeros((2, 3))), ["--input-name", "x"], "a .npz file names its inputs by its arrays"),
        ("bad.jsonl", '{"inputs": [1]}\nnot json\n', [], "bad.jsonl:2: not JSON"),
        ("ok.jsonl", '{"inputs": [1]}\n', ["--dtype", "floaty"], "invalid setting --dtype='floaty'"),
        ("missing.npy", None, [], "does not exist"),
        ("empty.npz", b"", [], "cannot read input file"),  # was a traceback (EOFError)
        ("huge.jsonl", '{"inputs": [1], "id": 18446744073709551616}\n', [], "huge.jsonl:1: id 18446744073709551616"),
        ("x.txt", "1,2\n", [], "use .npy, .npz, .jsonl, .csv or a folder of files"),
        ("blank.jsonl", "\n\n", [], "holds no examples"),
        ("words.npy", _npy_bytes(np.array([["a", "b"]])), [], "words.npy: holds strings of shape [2] an example; a"),
        ("texts.npy", _npy_bytes(np.array(["a", "b"])), ["--dtype", "int8"], "texts.npy: holds strings, sent as"),
        ("mixed.jsonl", '{"inputs": [1, "a"]}\n', [], "mixed.jsonl:1: values must be numbers, found text"),
        ("null.jsonl", '{"inputs": null}\n', [], "values must be numbers, found null, an object, or an integer too"),
        ("scalar.npy", _npy_bytes(np.float32(3)), [], "holds a scalar; expected one example per row"),
        ("rows.npy", _npy_bytes(np.zeros((2, 3))), ["--key-field", "k"], "a .npy file's rows have no fields"),
        ("cols.npy", _npy_bytes(np.zeros((2, 3))), ["--columns", "a"], "--columns does not apply to '"),
        ("v.csv", "a,b\n1,2\n", ["--varying-shapes"], "a .csv file takes --key-field, --id-field, --columns"),
        ("c.jsonl", '{"inputs": [1]}\n', ["--columns", "a"], "--columns does not apply to"),
        ("keys.npz", _npz_bytes(user=np.array(["a"])), ["--key-field", "user"], "has no input arrays"),
        ("uneven.npz", _npz_bytes(a=np.zeros((2, 3)), b=np.zeros(3)), [], "arrays must have the same number of rows"),
        ("k.npz", _npz_bytes(a=np.zeros((2, 3))), ["--key-field", "nope"], "has no array 'nope'; it has ['a']"),
        ("fields.jsonl", '{"x": [1]}\n', [], 'fields.jsonl:1: expected an object with "inputs"'),
        ("nested.jsonl", '{"inputs": [[1, 2], [3]]}\n', [], "nested.jsonl:1: not a regular nested list of numbers"),
        ("keyonly.csv", "user\nalice\n", ["--key-field", "user"], "has no feature columns"),
        # the first row of a file without a header was taken as one, and lost
        ("noheader.csv", "1,2\n3,4\n", [], "starts with a row of numbers, ['1', '2'], where its header goes: add"),
        ("semicolons.csv", "a;b\n1;2\n", [], "has one column, 'a;b': its fields look separated by ';', and a .csv"),
        ("index.csv", ",0,1\n0,5,6\n", [], "column without a name (column 1; pandas writes its index so): save it"),
        ("gap.csv", "a,b\n1,\n", [], "gap.csv:2: column 'b' is empty: write a number (nan for a missing value)"),
        # each was published, and each such row was a dead letter
        (
            "lost.jsonl",
            '{"inputs": {"a": [1], "b": [2]}}\n{"inputs": {"a": [1]}}\n',
            [],
            "lost.jsonl:2: inputs 'a', wh",
        ),
        ("named.jsonl", '{"inputs": [1]}\n{"inputs": {"a": [1]}}\n', [], "the first row has one unnamed input (every"),
        ("kind.jsonl", '{"inputs": {"a": "x"}}\n{"inputs": {"a": [1]}}\n', [], "input 'a' is numbers, where the first"),
        # --dtype wrapped a value round (300 went as 44 in int8), cut it to a whole number or made it inf;
        # a .csv's default float32 made 1e39 inf; a cast no NumPy call refuses ended a .csv in a traceback
        ("wrap.jsonl", '{"inputs": [300, 2]}\n', ["--dtype", "int8"], "wrap.jsonl:1: holds 300, which int8 cannot"),
        ("wrap.csv", "a,b\n1,2\n300,2\n", ["--dtype", "int8"], "wrap.csv:3: holds 300.0, which int8 cannot hold"),
        ("inf.csv", "a,b\n1e39,2\n", [], "inf.csv:2: holds 1e+39, which float32 cannot hold as it is (finite"),
        ("cut.npy", _npy_bytes(np.array([[1.0, 2.0], [1.5, 2.0]])), ["--dtype", "int32"], "cut.npy row 1: holds 1.5"),
        ("sign.npz", _npz_bytes(a=np.array([[1], [-1]])), ["--dtype", "uint8"], "sign.npz[a] row 1: holds -1, which"),
        ("bools.npy", _npy_bytes(np.array([[0, 1, 2]])), ["--dtype", "bool"], "holds 2, which bool cannot hold as it"),
        ("nan.npy", _npy_bytes(np.array([[np.nan]])), ["--dtype", "int64"], "nan.npy row 0: holds nan, which int64"),
        # the bad row past the first block read: nothing of the file before it goes either
        (
            "late.npz",
            _compressed_npz_bytes(a=np.arange(100_000).reshape(50_000, 2)),
            ["--dtype", "int16"],
            "late.npz[a] row 16384: holds 32768, which int16 cannot hold as it is (whole numbers from -32768 to",
        ),
    ],
)
def test_bad_input_files_fail_in_one_line_with_exit_2_and_publish_nothing(
    bootstrap: str,
    topics: Topics,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    content: str | bytes | None,
    extra: list[str],
    needle: str,
) -> None:
    (topic,) = topics("in", partitions=1)
    if isinstance(content, bytes):
        (tmp_path / name).write_bytes(content)
    elif content is not None:
        (tmp_path / name).write_text(content)
    assert tool(bootstrap, "publish", str(tmp_path / name), "--topic", topic, *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0]
    assert read_topic(bootstrap, topic, timeout=5) == []


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["create-topics", "t1:0"], "argument TOPIC: 't1:0' is not a Kafka topic name"),
        (["create-topics", "--partitions", "0", "t"], "argument --partitions: must be positive, got 0"),
        (["publish", "in.npy", "--topic", "a b"], "argument --topic: 'a b' is not a Kafka topic name"),
        (["collect", "--topic", "..", "--out", "x.npz"], "argument --topic: '..' is not a Kafka topic name"),
        (["replay", "--from-topic", "a", "--to-topic", "b/c"], "argument --to-topic: 'b/c' is not"),
        (["lag", "--group", "g", "--topic", ""], "argument --topic: '' is not a Kafka topic name"),
        (["demo", "--count", "-3"], "argument --count: must be positive, got -3"),
        (["bench", "--max-wait-ms", "-1"], "argument --max-wait-ms: must be 0 or more, got -1"),
        # found by hand: nan crashed the bench with a traceback, and ran fetch-latency unpaced; inf ran
        # forever; a rate or a wait past the clock's range crashed with OverflowError once reached
        (["bench", "--latency-rate", "nan"], "argument --latency-rate: must be a finite number, got nan"),
        (["bench", "--baseline-seconds", "inf"], "argument --baseline-seconds: must be a finite number, got inf"),
        (["fetch-latency", "--rate", "nan"], "argument --rate: must be a finite number, got nan"),
        (["publish", "in.npy", "--topic", "t", "--rate", "1e-300"], "argument --rate: must be at least 0.0001"),
        (["lag", "--group", "g", "--topic", "t", "--watch", "1e300"], "--watch: must be at most 86,400 seconds"),
        (["collect", "--topic", "t", "--out", "x.npz", "--idle=-inf"], "--idle: must be a finite number"),
        # found by hand: NewTopic's ValueError ended create-topics in a traceback
        (["create-topics", "--partitions", "100001", "t"], "--partitions: must be at most 100000 (the Kafka client's"),
    ],
)
def test_a_bad_topic_name_or_number_is_refused_before_any_connection(
    capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    """Names a real cluster refuses (the embedded broker created 't1:0'), and numbers that made no
    sense (a demo of -3 digits published 357), end in one line with exit 2."""
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2 and says in capsys.readouterr().err.splitlines()[-1]


def test_publish_count_cycles_the_file_and_rate_paces_it(bootstrap: str, topics: Topics, tmp_path: Path) -> None:
    (topic,) = topics("in", partitions=1)
    np.save(tmp_path / "x.npy", np.ones((3, 2), "float32"))
    import time

    started = time.monotonic()
    assert tool(bootstrap, "publish", str(tmp_path / "x.npy"), "--topic", topic, "--count", "10", "--rate", "50") == 0
    assert time.monotonic() - started >= 9 / 50  # paced: never faster than the rate (a lower bound only)
    assert [e["id"] for _, e in published(bootstrap, topic, 10)] == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]


def test_publish_counts_refused_messages_and_exits_1(
    bootstrap: str, topics: Topics, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (topic,) = topics("in", partitions=1)
    np.save(tmp_path / "x.npy", np.stack([np.ones(4, "float32"), np.ones(4, "float32")]))
    np.save(tmp_path / "big.npy", np.ones((1, 4000), "float32"))
    monkeypatch.setenv("TFSTREAM_KAFKA_PRODUCER_MESSAGE_MAX_BYTES", "2000")
    assert tool(bootstrap, "publish", str(tmp_path / "x.npy"), "--topic", topic) == 0
    assert tool(bootstrap, "publish", str(tmp_path / "big.npy"), "--topic", topic) == 1
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("published 0 of 1 messages") and "1 failed (first error:" in summary


def test_collect_writes_json_lines_and_stops_at_a_count(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inp, out = topics("in", "out", partitions=1)
    (tmp_path / "x.jsonl").write_text("".join(json.dumps({"inputs": [i, 0, 0, 1], "id": i}) + "\n" for i in range(10)))
    assert tool(bootstrap, "publish", str(tmp_path / "x.jsonl"), "--topic", inp) == 0
    run_worker(settings(bootstrap, mlp_path, inp, out, group))
    capsys.readouterr()
    assert tool(bootstrap, "collect", "--topic", out, "--out", str(tmp_path / "o.jsonl"), "--count", "4") == 0
    assert "4/4" in capsys.readouterr().err.strip().split("\r")[-1]  # the progress bar's total: the count
    lines = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(len(line["outputs"]) == 3 and line["source"]["topic"] == inp for line in lines)
    # to the end: the total from the first fetch (the high watermark of the only partition)
    assert tool(bootstrap, "collect", "--topic", out, "--out", str(tmp_path / "end.jsonl")) == 0
    final = capsys.readouterr().err.strip().split("\r")[-1]
    assert "100%" in final and "10/10" in final, final
    assert tool(bootstrap, "collect", "--topic", out, "--out", str(tmp_path / "all.jsonl"), "--idle", "2") == 0
    assert len((tmp_path / "all.jsonl").read_text().splitlines()) == 10
    # written as read, not kept (a topic larger than memory collects), and never left half-written
    cut = tmp_path / "cut.jsonl"
    with pytest.raises(KeyboardInterrupt), JsonLines(cut, None) as jsonl:
        found = Collected(sink=jsonl.write)
        for msg in read_topic(bootstrap, out, min_count=10):
            found.add(msg)
        assert (found.decoded, found.records, jsonl.written) == (10, [], 10)
        assert jsonl.part.exists() and not cut.exists()  # written beside, renamed only once complete
        raise KeyboardInterrupt  # Ctrl-C before the end
    assert sorted(p.name for p in tmp_path.glob("cut*")) == []
    # the wrong topic: one line saying so, whatever its records hold, and exit 2, no file written
    publish(bootstrap, inp, [(None, value) for value in (b"{}", b'{"outputs": [1]}', msgpack.packb({"outputs": 5}))])
    publish(bootstrap, inp, [(b"deleted", None), (b"deleted", None)])  # tombstones: counted apart
    for wrong in ("in.npz", "in.jsonl"):
        capsys.readouterr()
        assert tool(bootstrap, "collect", "--topic", inp, "--out", str(tmp_path / wrong), "--idle", "2") == 2
        (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
        read = "15 read, 2 of them without a value"
        assert line.startswith(f"error: no record in {inp!r} is a prediction ({read}; first: {inp}[0]@0: not a v1")
        assert line.endswith("--topic must be the consumer's --output-topic")
    assert sorted(p.name for p in tmp_path.glob("in.*")) == []


def test_collect_joins_on_the_key_into_json_lines(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path, tmp_path: Path
) -> None:
    """``--join-on key``: inputs sent without ids are matched to their predictions by message key."""
    inp, out = topics("in", "out")
    rows = {f"user-{i}": [float(i), 1.0, -1.0, 0.5] for i in range(12)}
    (tmp_path / "x.jsonl").write_text("".join(json.dumps({"inputs": v, "key": k}) + "\n" for k, v in rows.items()))
    assert tool(bootstrap, "publish", str(tmp_path / "x.jsonl"), "--topic", inp, "--dtype", "float32") == 0
    run_worker(settings(bootstrap, mlp_path, inp, out, group))
    # the join file lists the inputs in another order: their row numbers (the default ids) differ
    (tmp_path / "j.jsonl").write_text("".join(json.dumps({"inputs": rows[k], "key": k}) + "\n" for k in reversed(rows)))
    result = tmp_path / "joined.jsonl"
    join = ["--join", str(tmp_path / "j.jsonl"), "--join-on", "key", "--idle", "2"]
    assert tool(bootstrap, "collect", "--topic", out, "--out", str(result), *join) == 0
    lines = [json.loads(line) for line in result.read_text().splitlines()]
    assert sorted(line["key"] for line in lines) == sorted(rows)
    for line in lines:
        assert line["inputs"] == rows[line["key"]]
        expected = models.offline_predict(mlp_path, np.array([rows[line["key"]]], "float32"))[0]
        np.testing.assert_allclose(line["outputs"], expected, atol=1e-5)


def test_dead_letters_are_counted_by_why_they_failed_written_with_their_inputs_and_replayed_by_kind(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inp, out, dlq, empty, again = topics("in", "out", "dlq", "empty", "again", partitions=2)
    good = pack_input(np.ones(4, "float32"))
    wide = [pack_input(np.full(5 + i % 2, i, "float32"), id=i) for i in range(7)]  # two shapes: two reasons
    records = [(b"g", good)] * 3 + [(f"w{i}".encode(), v) for i, v in enumerate(wide)] + [(b"j", b'{"x": 1}')] * 2
    publish(bootstrap, inp, records)
    run_worker(settings(bootstrap, mlp_path, inp, out, group, dlq_topic=dlq))
    capsys.readouterr()
    result = tmp_path / "dead.jsonl"
    assert tool(bootstrap, "dead-letters", "--topic", dlq, "--out", str(result)) == 0
    said = capsys.readouterr()
    table = said.out.splitlines()
    assert table[-1] == f"read 9 dead letters from {dlq}; written to {result}"
    kinds = [line.split()[:3] for line in table[1:] if line[:9].strip().replace(",", "").isdigit()]
    assert kinds == [["7", "validate", "WrongShapeError"], ["2", "decode", "NotMsgpackError"]]
    assert "4 x input 'features' has shape [5]; the model takes [4]" in said.out
    assert "3 x input 'features' has shape [6]; the model takes [4]" in said.out
    assert "100%" in said.err.strip().split("\r")[-1]  # the progress bar reached the topic's end
    lines = [json.loads(line) for line in result.read_text().splitlines()]
    by_key = {line["key"]: line for line in lines}
    assert sorted(by_key) == ["j"] + [f"w{i}" for i in range(7)] and len(lines) == 9
    for i, value in enumerate(wide):
        line = by_key[f"w{i}"]
        assert base64.b64decode(line["value"]) == value  # the input itself, to fix and replay
        assert (line["stage"], line["error"], line["input"]["topic"]) == ("validate", "WrongShapeError", inp)
        assert line["headers"]["group"] == group and line["headers"]["model.name"] == "mlp"
        where = line["input"]
        assert isinstance(where["partition"], int) and isinstance(where["offset"], int) and where["timestamp"] > 0
    assert by_key["j"]["value"] == '{"x": 1}' and by_key["j"]["reason"]
    # an empty topic: nothing to say but that; the wrong topic: one line, exit 2; the wrong file: before reading
    assert tool(bootstrap, "dead-letters", "--topic", empty, "--idle", "1") == 0
    assert capsys.readouterr().out == f"read 0 dead letters from {empty}\n"
    assert tool(bootstrap, "dead-letters", "--topic", inp) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: no record in {inp!r} is a dead letter (12 read; first: {inp}[")
    assert line.endswith("--topic must be the consumer's --dlq-topic")
    assert tool(bootstrap, "dead-letters", "--topic", dlq, "--out", str(tmp_path / "dead.csv")) == 2
    assert "write .jsonl" in capsys.readouterr().err
    # replay only the dead letters of one kind (the model fixed to take them), by error class, then by stage
    assert tool(bootstrap, "replay", "--from-topic", dlq, "--to-topic", again, "--error", "WrongShapeError") == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith(f"replayed 7 of 7 records in the window from {dlq} to {again} (9 read, 0 outside")
    assert "2 not dead letters of WrongShapeError)" in summary
    copied = read_topic(bootstrap, again, min_count=7)
    assert sorted(m.value() for m in copied) == sorted(wide)
    assert tool(bootstrap, "replay", "--from-topic", dlq, "--to-topic", again, "--stage", "decode") == 0
    assert "(9 read, 0 outside the window, 7 not dead letters of any error at stage decode)" in capsys.readouterr().out
    assert sorted(m.key() for m in read_topic(bootstrap, again, min_count=9))[:2] == [b"j", b"j"]
    # a class no dead letter carries, and a topic of no dead letters: one line each, exit 2
    assert tool(bootstrap, "replay", "--from-topic", dlq, "--to-topic", again, "--error", "WrongShapError") == 2
    assert "did you mean WrongShapeError?" in capsys.readouterr().err
    assert tool(bootstrap, "replay", "--from-topic", inp, "--to-topic", again, "--stage", "validate") == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: no record in the window of {inp!r} is a dead letter (12 read)")
    assert len(read_topic(bootstrap, again, min_count=9)) == 9  # nothing more copied


def test_dead_letters_summary_shows_the_commonest_reasons_of_each_kind_and_counts_the_rest() -> None:
    def letter(offset: int, error: str, reason: str) -> Message:
        headers = [
            ("tfstream.errors.stage", b"validate"),
            ("tfstream.errors.exception.class.name", error.encode()),
            ("tfstream.errors.exception.message", reason.encode()),
            ("tfstream.errors.topic", b"in"),
            ("tfstream.errors.partition", b"0"),
            ("tfstream.errors.offset", str(offset).encode()),
        ]
        return Message(topic="dlq", partition=0, offset=offset, value=b"v", headers=headers)

    tally = Tally()
    reasons = ["a"] * 5 + ["b"] * 4 + ["c" * 500] * 3 + ["d"] * 2 + ["e"]  # five reasons, one long
    for offset, text in enumerate(reasons):
        tally.add(msg := letter(offset, "WrongShapeError", text), dead_letters.read(msg))
    tally.add(msg := letter(99, "NonFiniteError", "nan"), dead_letters.read(msg))
    tally.add(msg := Message(topic="dlq", partition=0, offset=100, value=b"v"), dead_letters.read(msg))
    lines = tally.lines()
    assert lines[1].split() == ["15", "validate", "WrongShapeError", "in[0]@0"]
    assert [line.split(" x ")[0].strip() for line in lines[2:6]] == ["5", "4", "3", "3"]
    assert lines[4].endswith("c" * (dead_letters.REASON_CHARS - 1) + "…")  # cut in the summary
    assert lines[5].endswith("3 x 2 other reasons")
    assert lines[6].split() == ["1", "validate", "NonFiniteError", "in[0]@99"]
    assert (tally.total, tally.others, tally.first_other) == (16, 1, "dlq[0]@100")


def test_token_lists_of_any_length_go_round_publish_predict_and_collect_joined(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The user's path for a model of token lists: a .jsonl of lists of several lengths, published
    with --varying-shapes, cut or padded by the preprocess function, joined back by collect."""
    from tests.preprocessors import pad_or_cut

    inp, out = topics("in", "out")
    tokens = [list(range(1, n + 1)) for n in (3, 7, 1, 4, 0, 12)]
    source = tmp_path / "tokens.jsonl"
    source.write_text("".join(json.dumps({"inputs": t, "id": i}) + "\n" for i, t in enumerate(tokens)))
    assert tool(bootstrap, "publish", str(source), "--topic", inp, "--dtype", "int32", "--varying-shapes") == 0
    run_worker(settings(bootstrap, mlp_path, inp, out, group, preprocess="tests.preprocessors:first_four_tokens"))
    join = ["--join", str(source), "--varying-shapes", "--idle", "2"]
    npz = tmp_path / "joined.npz"
    assert tool(bootstrap, "collect", "--topic", out, "--out", str(npz), *join) == 2
    assert capsys.readouterr().err.strip().endswith("inputs of several shapes do not stack in .npz; write .jsonl")
    result = tmp_path / "joined.jsonl"
    assert tool(bootstrap, "collect", "--topic", out, "--out", str(result), *join) == 0
    lines = {line["id"]: line for line in map(json.loads, result.read_text().splitlines())}
    assert sorted(lines) == list(range(6))
    expected = models.offline_predict(mlp_path, np.stack([pad_or_cut(np.array(t, "int32")) for t in tokens]))
    for i, line in lines.items():
        assert line["inputs"] == tokens[i]
        np.testing.assert_allclose(line["outputs"], expected[i], atol=1e-5)


def test_collect_refuses_an_output_it_could_not_write_before_reading_anything(
    bootstrap: str, topics: Topics, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (out,) = topics("out", partitions=1)
    missing = tmp_path / "no-such-folder" / "p.npz"
    assert tool(bootstrap, "collect", "--topic", out, "--out", str(missing), "--idle", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    folder = str(missing.parent)
    assert err == [f"error: invalid setting --out={str(missing)!r}: {folder!r} is not a writable directory"]


def test_a_tool_s_producer_keeps_its_batches_to_what_its_topic_takes(bootstrap: str, topics: Topics) -> None:
    """The brokers check a topic's ``max.message.bytes`` against a whole record batch, and librdkafka
    builds batches up to 1,000,000 bytes: Kafka refuses such a batch whole, however small its
    records (the embedded broker does not). ``publish`` and ``replay`` make their producer for the
    topic they write to, whose batches are kept to its limit: measured by librdkafka's statistics."""
    (limited,) = limited_topics(bootstrap, limited=5000)
    (unlimited,) = topics("unlimited", partitions=1)
    clients = Clients(argparse.Namespace(bootstrap_servers=bootstrap, config=None))
    largest = {}
    for topic in (limited, unlimited):
        stats: list[str] = []
        watch = {"statistics.interval.ms": 100, "stats_cb": stats.append, "linger.ms": 100}
        producer = clients.producer(to_topic=topic, **watch)
        for i in range(3000):
            producer.produce(topic, os.urandom(150), str(i).encode())
        assert producer.flush(30) == 0
        producer.poll(0.5)  # the last statistics
        seen = [json.loads(line)["topics"].get(topic) for line in stats]
        largest[topic] = max(t["batchsize"]["max"] for t in seen if t and t["batchsize"]["cnt"])
    assert 4000 < largest[limited] <= 5000 < 100_000 < largest[unlimited]


def test_replay_says_why_a_record_failed(
    bootstrap: str, topics: Topics, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record the producer refuses (here larger than its ``message.max.bytes``) is counted as
    failed, exit 1, and the summary line gives the first error (before 2026-12-03, a bare count)."""
    source, target = topics("src", "dst", partitions=1)
    publish(bootstrap, source, ((b"small", b"x" * 10), (b"large", b"x" * 5000), (b"small2", b"x" * 10)))
    config = tmp_path / "c.toml"
    config.write_text('[kafka.producer]\n"message.max.bytes" = 2000\n')
    assert tool(bootstrap, "replay", "--from-topic", source, "--to-topic", target, "--config", str(config)) == 1
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("replayed 2 of 3 records") and "; 1 failed (first error: " in summary, summary
    assert "too large" in summary.lower(), summary
    assert sorted(m.key() for m in read_topic(bootstrap, target, min_count=2)) == [b"small", b"small2"]


def test_replay_copies_exactly_the_time_range_keeping_keys_headers_and_timestamps(
    bootstrap: str, topics: Topics, capsys: pytest.CaptureFixture[str]
) -> None:
    source, target, again = topics("src", "dst", "dst2", partitions=2)
    base = 1_700_000_000_000
    publish(
        bootstrap,
        source,
        ((str(i).encode(), f"v{i}".encode()) for i in range(40)),
        headers=[("trace", b"t")],
        timestamps=[base + i * 1000 for i in range(40)],
    )
    assert (
        tool(
            bootstrap,
            "replay",
            "--from-topic",
            source,
            "--to-topic",
            target,
            "--from-timestamp",
            "2023-11-14T22:13:30Z",
            "--until-timestamp",
            "2023-11-14T22:13:45Z",
        )
        == 0
    )
    copied = read_topic(bootstrap, target, min_count=15)
    assert sorted(int(m.key()) for m in copied) == list(range(10, 25))
    for msg in copied:
        i = int(msg.key())
        headers = dict(msg.headers())
        assert msg.value() == f"v{i}".encode() and msg.timestamp()[1] == base + i * 1000
        assert headers["trace"] == b"t" and headers["tfstream.replay.timestamp"] == str(base + i * 1000).encode()
    # a copy of the copy: each header once, naming the original record; its progress bar knew
    # from the first fetch how many records there were to read (before, a bare count)
    capsys.readouterr()
    assert tool(bootstrap, "replay", "--from-topic", target, "--to-topic", again) == 0
    final = capsys.readouterr().err.strip().split("\r")[-1]
    assert "100%" in final and "15/15" in final, final
    origins = {m.key(): dict(m.headers())["tfstream.replay.source"] for m in copied}
    for msg in read_topic(bootstrap, again, min_count=15):
        names = [name for name, _ in msg.headers()]
        assert sorted(names) == ["tfstream.replay.source", "tfstream.replay.timestamp", "trace"]
        assert dict(msg.headers())["tfstream.replay.source"] == origins[msg.key()]
        assert origins[msg.key()].startswith(source.encode() + b"/")


def test_reset_offsets_moves_a_stopped_group_and_refuses_a_running_one(
    bootstrap: str, topics: Topics, group: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (topic,) = topics("in", partitions=2)
    base = 1_700_000_000_000
    publish(bootstrap, topic, ((None, b"x") for _ in range(20)), timestamps=[base + i * 1000 for i in range(20)])
    ends = {p: sum(1 for m in read_topic(bootstrap, topic) if m.partition() == p) for p in (0, 1)}
    assert tool(bootstrap, "reset-offsets", "--group", group, "--topic", topic, "--to-latest") == 0
    assert committed(bootstrap, group, topic, 2) == ends
    assert tool(bootstrap, "reset-offsets", "--group", group, "--topic", topic, "--to-earliest", "--dry-run") == 0
    assert committed(bootstrap, group, topic, 2) == ends and "(dry run)" in capsys.readouterr().out
    assert (
        tool(bootstrap, "reset-offsets", "--group", group, "--topic", topic, "--to-timestamp", "2023-11-14T22:13:30Z")
        == 0
    )
    expected = {
        p: sum(1 for m in read_topic(bootstrap, topic) if m.partition() == p and m.timestamp()[1] < base + 10_000)
        for p in (0, 1)
    }
    assert committed(bootstrap, group, topic, 2) == expected
    member = Consumer({"bootstrap.servers": bootstrap, "group.id": group, **FAST_GROUP})
    member.subscribe([topic])
    stop = threading.Event()
    polling = threading.Thread(target=lambda: [member.poll(0.1) for _ in iter(stop.is_set, True)], daemon=True)
    _wait_for_assignment(member)
    polling.start()  # keeps the member in the group while the tool runs
    try:
        assert tool(bootstrap, "reset-offsets", "--group", group, "--topic", topic, "--to-earliest") == 2
        assert "has active members" in capsys.readouterr().err
    finally:
        stop.set()
        polling.join()
        member.close()


def test_lag_reports_committed_end_and_lag_per_partition(
    bootstrap: str, topics: Topics, group: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (topic,) = topics("in", partitions=2)
    publish(bootstrap, topic, ((None, b"x") for _ in range(30)))
    ends = {p: sum(1 for m in read_topic(bootstrap, topic) if m.partition() == p) for p in (0, 1)}
    assert tool(bootstrap, "lag", "--group", group, "--topic", topic) == 0  # nothing committed yet: said so
    out = capsys.readouterr().out
    assert [line.split()[1] for line in out.splitlines()[1:3]] == ["-", "-"]
    assert out.splitlines()[-1].startswith("-: the group never committed there, and its lag counts from the")
    assert tool(bootstrap, "reset-offsets", "--group", group, "--topic", topic, "--to-earliest") == 0
    capsys.readouterr()
    assert tool(bootstrap, "lag", "--group", group, "--topic", topic) == 0
    out = capsys.readouterr().out
    assert f"total lag {sum(ends.values())} over 2 partitions" in out and "never committed" not in out
    rows = [line.split() for line in out.splitlines()[1:3]]
    assert rows == [[str(p), "0", str(ends[p]), str(ends[p])] for p in (0, 1)]


@pytest.mark.usefixtures("broker_pid")  # the embedded broker: one replica by default, and any factor taken
def test_create_topics_says_what_it_created_and_what_it_left_as_it_was(
    bootstrap: str, topics: Topics, capsys: pytest.CaptureFixture[str]
) -> None:
    """It printed "topics ready: a (3 partitions when created here)" for a topic that had 2, and always
    created with one replica, whatever the cluster's default."""
    from confluent_kafka.admin import AdminClient

    from producer_tools.topics import shapes

    (old,) = topics("old", partitions=2)
    new, replicated = (f"{name}-{uuid.uuid4().hex[:8]}" for name in ("new", "replicated"))
    assert tool(bootstrap, "create-topics", old, new, new, "--partitions", "3") == 0
    assert capsys.readouterr().out.splitlines() == [
        f"exists {old}: 2 partitions, replication factor 1 (not the 3 partitions asked for: left as it is)",
        f"created {new}: 3 partitions, replication factor 1",  # the embedded broker's default
    ]
    assert tool(bootstrap, "create-topics", replicated, "--replication-factor", "2") == 0
    assert capsys.readouterr().out.splitlines() == [f"created {replicated}: 4 partitions, replication factor 2"]
    found = shapes(AdminClient({"bootstrap.servers": bootstrap}), [old, new, replicated])
    assert [(s.partitions, s.replication_factor) for s in found.values()] == [(2, 1), (3, 1), (4, 2)]


def test_a_replication_factor_above_the_brokers_says_how_to_fix_it() -> None:
    """Real Kafka refuses it; the embedded broker has no replicas to refuse with."""
    from confluent_kafka import KafkaError

    from producer_tools.topics import _reason

    refused = KafkaError(
        KafkaError.INVALID_REPLICATION_FACTOR, "Replication factor: 3 larger than available brokers: 1."
    )
    assert _reason(refused).endswith("; pass --replication-factor N, at most the number of brokers")


def _wait_for_assignment(member: Consumer, timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not member.assignment():
        assert time.monotonic() < deadline, "the member never got partitions"
        member.poll(0.1)


def test_creating_topics_on_a_broker_that_does_not_answer_is_one_broker_error(
    capfd: pytest.CaptureFixture[str],
) -> None:
    from consumer.errors import BrokerError
    from producer_tools.embedded_broker import free_port
    from producer_tools.topics import create_topics

    with pytest.raises(BrokerError, match=r"no answer from Kafka within 2s while creating topic 'x'; check"):
        create_topics(f"127.0.0.1:{free_port()}", ["x"], timeout=2)
    assert "%3|" not in capfd.readouterr().err  # librdkafka's raw lines, one per reconnect, stay out


def test_describing_a_group_on_a_broker_that_does_not_answer_is_one_broker_error(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """``reset-offsets`` first checks that the group is idle: on an unreachable broker that check
    ended in a ``TimeoutError`` traceback."""
    from consumer.errors import BrokerError
    from producer_tools.clients import admin_client
    from producer_tools.embedded_broker import free_port
    from producer_tools.groups import refuse_if_active

    admin = admin_client({"bootstrap.servers": f"127.0.0.1:{free_port()}"})
    with pytest.raises(BrokerError, match=r"no answer from Kafka within 2s while describing group 'g'; check"):
        refuse_if_active(admin, "g", timeout=2)
    assert "%3|" not in capfd.readouterr().err


def test_the_broker_command_refuses_a_port_in_use_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["broker", "--port", str(port)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: port {port} is already in use on 127.0.0.1: pick another with --port"
    assert list(tmp_path.iterdir()) == []  # no empty log folder left behind


def _serves_kafka(bootstrap: str) -> bool:
    from producer_tools.topics import create_topics

    create_topics(bootstrap, ["x"], timeout=10)
    return True


def test_an_embedded_broker_whose_picked_port_is_taken_before_it_starts_picks_another() -> None:
    """Two test processes (or tools) picking the same free port at once: the later one moves on."""
    import socket

    from producer_tools.embedded_broker import EmbeddedBroker

    broker = EmbeddedBroker()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", broker.port))
        taken.listen()
        with broker:
            assert broker.port != taken.getsockname()[1] and broker.advertised_port == broker.port
            assert _serves_kafka(broker.bootstrap_servers)


def test_an_embedded_broker_that_loses_the_bind_to_another_listener_is_not_taken_for_ready(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The port was free when checked and taken before the broker bound it: the broker exits at once,
    and the listener that answered was the other's. It must not pass for this broker's."""
    import socket

    from producer_tools import embedded_broker

    monkeypatch.setattr(embedded_broker, "port_in_use", lambda _port: False)  # the check passed; then:
    broker = embedded_broker.EmbeddedBroker()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", broker.port))
        taken.listen()
        with broker:
            assert broker.port != taken.getsockname()[1] and broker.ended_by_itself() is None
            assert _serves_kafka(broker.bootstrap_servers)


def test_the_broker_command_ends_with_one_line_when_its_broker_dies(tmp_path: Path) -> None:
    """The broker process killed under the command (out of memory, a stray ``pkill``): the command
    kept running, still looking ready, while clients only timed out. It now ends with exit 1 and one
    line, and keeps the broker's log, which says why."""
    import os
    import signal
    import subprocess
    import sys

    from producer_tools.embedded_broker import free_port

    env = {**os.environ, "TMPDIR": str(tmp_path)}
    command = [sys.executable, "-m", "producer_tools", "broker", "--port", str(free_port())]
    tool = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert tool.stdout is not None and "embedded broker ready" in tool.stdout.readline()
        children = Path(f"/proc/{tool.pid}/task/{tool.pid}/children").read_text().split()
        assert len(children) == 1
        os.kill(int(children[0]), signal.SIGKILL)
        _, err = tool.communicate(timeout=30)
    finally:
        tool.kill()
    log = next(tmp_path.glob("tfstream-broker-*/broker.log"))
    assert tool.returncode == 1
    assert err.strip() == f"error: the embedded broker stopped by itself (killed by SIGKILL); its log, kept: {log}"


def test_the_tools_show_each_librdkafka_message_once_numbers_aside() -> None:
    import logging

    from producer_tools.clients import _OncePerMessage

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("librdkafka", logging.ERROR, __file__, 0, message, None, None)

    once = _OncePerMessage()
    assert once.filter(record("127.0.0.1:1/bootstrap: Connect failed (after 0ms in state CONNECT)"))
    assert not once.filter(record("127.0.0.1:1/bootstrap: Connect failed (after 51ms in state CONNECT)"))
    assert once.filter(record("127.0.0.1:1/bootstrap: Disconnected"))


def test_a_consumer_close_that_hangs_is_left_behind_in_one_line_and_a_real_one_closes(
    bootstrap: str, topics: Topics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """librdkafka's destroy can wait for good on a broker thread (1 in ~30 ``fetch-latency`` runs
    stopped a second after their assignment): the tools and the worker bound the close. The hang
    itself cannot be caused at will, so a close that never returns stands in for it."""
    import logging

    from consumer import kafka_io
    from producer_tools.clients import close_consumer, kafka_consumer, librdkafka_logger

    (topic,) = topics("in")
    real = kafka_consumer({"bootstrap.servers": bootstrap, "group.id": f"close-{uuid.uuid4().hex[:8]}", **FAST_GROUP})
    real.subscribe([topic])
    while not real.assignment():
        real.poll(0.1)
    assert kafka_io.close_consumer(real)
    with pytest.raises(RuntimeError):
        real.assignment()  # closed

    never = threading.Event()

    class HangingClose:
        def close(self) -> None:
            never.wait()

    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
    librdkafka_logger().addHandler(handler)
    monkeypatch.setattr(kafka_io, "CONSUMER_CLOSE_SECONDS", 0.3)
    try:
        assert not kafka_io.close_consumer(HangingClose())  # type: ignore[arg-type]
        close_consumer(HangingClose())  # type: ignore[arg-type]
    finally:
        librdkafka_logger().removeHandler(handler)
        never.set()
    assert said == ["the consumer did not close within 0.3s (a librdkafka hang): left behind"]


@pytest.mark.parametrize("port", ["65536", "99999", "-1", "x"])
def test_the_broker_command_refuses_a_port_that_is_no_port_in_one_line(
    port: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by hand: ``--port 99999`` ended in an OverflowError traceback."""
    with pytest.raises(SystemExit) as exit:
        main(["broker", "--port", port])
    assert exit.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .endswith(f"argument --port: must be a TCP port, 0 to 65535, got {port}")
    )


@pytest.mark.parametrize(
    "command",
    [
        ["create-topics", "t"],
        ["lag", "--group", "g", "--topic", "t"],
        ["collect", "--topic", "t", "--out", "{d}/p.npz"],
    ],
)
def test_a_kafka_setting_librdkafka_refuses_is_one_line_with_exit_2(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was librdkafka's ``KafkaError{code=_INVALID_ARG,…}`` printed raw, with exit 1."""
    config = tmp_path / "c.toml"
    config.write_text('[kafka.consumer]\n"fetch.wait.max.ms" = "soon"\n[kafka]\n"no.such.setting" = 1\n')
    argv = [part.format(d=tmp_path) for part in command]
    assert main([*argv, "--bootstrap-servers", "127.0.0.1:1", "--config", str(config)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith('error: invalid Kafka client setting: No such configuration property: "no.such.setting"')


def test_a_broker_out_of_reach_is_one_line_with_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    """It was exit 2, the code for a usage error, although the README says a command that cannot
    reach Kafka exits 1 (``lag``, ``collect`` and ``replay`` look their topics up the same way; one
    is checked, as each waits out the 30 s lookup)."""
    from producer_tools.embedded_broker import free_port

    argv = ["lag", "--group", "g", "--topic", "t", "--bootstrap-servers", f"127.0.0.1:{free_port()}"]
    assert main(argv) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: cannot reach Kafka to look up topic 't': ") and "--bootstrap-servers" in last


def test_a_npy_file_is_published_row_by_row_from_a_memory_map(tmp_path: Path) -> None:
    """It was read whole into a list of examples: 1,000,000 rows of 64 floats held 630 MB (a file
    larger than memory could not be published); now each row is made when it is sent."""
    from producer_tools.sources import NpyRows, ReadOptions, read_inputs

    x = np.arange(12, dtype=">f4").reshape(4, 3)  # big-endian, as some writers save
    np.save(tmp_path / "x.npy", x)
    rows = read_inputs(tmp_path / "x.npy", ReadOptions(dtype="float64"))
    assert isinstance(rows, NpyRows) and isinstance(rows.array.base, np.memmap)
    assert [(e.key, e.id) for e in rows] == [(str(i).encode(), i) for i in range(4)]
    assert (rows[-1].key, rows[-1].id) == (b"3", 3) and [e.id for e in rows[1:3]] == [1, 2]
    assert rows[2].inputs.dtype == np.float64
    decoded = unpack_input(pack_input(rows[2].inputs, id=rows[2].id), Limits())
    np.testing.assert_array_equal(decoded.inputs[""], x[2])


def test_json_lines_of_any_length_are_published_with_varying_shapes_and_only_then(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Token lists of several lengths (for a --preprocess that takes any length) were refused, with
    no way round; a row of another rank is a mistake either way."""
    from producer_tools.sources import ReadOptions, read_inputs

    path = tmp_path / "t.jsonl"
    path.write_text('{"inputs": [1, 2, 3]}\n{"inputs": [4]}\n{"inputs": []}\n')
    rows = read_inputs(path, ReadOptions(varying_shapes=True))
    assert [np.asarray(e.inputs).tolist() for e in rows] == [[1, 2, 3], [4], []]
    assert main(["publish", str(path), "--topic", "t", "--bootstrap-servers", "127.0.0.1:1"]) == 2
    says = capsys.readouterr().err.strip().splitlines()[-1]
    hint = "(inputs of any length, for a --preprocess that takes them: --varying-shapes)"
    assert says == f"error: {path}:2: shape [1] differs from the first row's [3] {hint}"
    path.write_text('{"inputs": [1, 2]}\n{"inputs": [[1, 2]]}\n')
    argv = ["publish", str(path), "--topic", "t", "--varying-shapes", "--bootstrap-servers", "127.0.0.1:1"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().endswith(f"error: {path}:2: 2 dimensions [1, 2]; the first row has 1 [2]")


def test_a_folder_s_files_are_read_as_they_are_sent_not_all_first(tmp_path: Path) -> None:
    """A folder of images larger than memory publishes: each file is read when its example is."""
    from consumer.errors import ConfigError
    from producer_tools.sources import read_inputs

    (tmp_path / "a.jpg").write_bytes(b"first")
    (tmp_path / "b.jpg").write_bytes(b"second")
    examples = read_inputs(tmp_path)
    (tmp_path / "b.jpg").write_bytes(b"changed")  # read when sent, so the change is what goes
    assert [(e.key, e.inputs) for e in examples] == [(b"a.jpg", b"first"), (b"b.jpg", b"changed")]
    (tmp_path / "a.jpg").unlink()
    with pytest.raises(ConfigError, match=r"cannot read input file '.*a\.jpg': No such file or directory"):
        examples[0]


def test_large_json_lines_are_checked_whole_then_each_read_again_as_it_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``HELD_UP_TO_BYTES`` the check keeps where each line starts, not its example: a large
    file publishes in the producer's memory. A line changed since is read as it is then, or refused
    if it no longer parses. A smaller file is held, parsed once."""
    from consumer.errors import ConfigError
    from producer_tools import sources

    path = tmp_path / "t.jsonl"
    path.write_text('\ufeff{"inputs": [1, 2]}\n\n{"inputs": [3, 4], "id": "b"}\n')
    assert isinstance(sources.read_inputs(path), list)
    monkeypatch.setattr(sources.common, "HELD_UP_TO_BYTES", 10)
    examples = sources.read_inputs(path)
    path.write_text('\ufeff{"inputs": [1, 2]}\n\n{"inputs": [5, 6], "id": "c"}\n')  # the same length
    assert [(e.key, e.id, e.inputs.tolist()) for e in examples] == [(b"0", 0, [1, 2]), (b"1", "c", [5, 6])]  # type: ignore[union-attr]
    path.write_text('\ufeff{"inputs": [1, 2]}\n\n{"inputs": [5, 6, "x"]}\n')
    with pytest.raises(ConfigError, match=r"t\.jsonl:3: the file changed since it was checked; publish it again"):
        examples[1]


def test_a_large_csv_is_checked_whole_then_each_row_read_again_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``HELD_UP_TO_BYTES`` the check keeps how many rows there are, not their examples (a
    .csv of 200,000 rows of 64 numbers: 142 MB held, 27 MB read again). Rows come as the check read
    them: a blank line skipped, a quoted text over two lines, ids from a column; an earlier row
    reads the file again from the start; a row changed since that no longer reads is refused."""
    from consumer.errors import ConfigError
    from producer_tools import sources

    path = tmp_path / "t.csv"
    path.write_text('\ufeffid,text\na,"one"\n\nb,"two\nlines"\nc,three\n')
    options = sources.ReadOptions(id_field="id", dtype=sources.TEXT)
    held = sources.read_inputs(path, options)
    assert isinstance(held, list)
    monkeypatch.setattr(sources.common, "HELD_UP_TO_BYTES", 10)
    examples = sources.read_inputs(path, options)
    assert not isinstance(examples, list) and len(examples) == 3
    rows = [(e.key, e.id, e.inputs) for e in examples]
    assert (
        rows
        == [(e.key, e.id, e.inputs) for e in held]
        == [(b"0", "a", b"one"), (b"1", "b", b"two\nlines"), (b"2", "c", b"three")]
    )
    assert (examples[2].id, examples[0].id, examples[1].id) == ("c", "a", "b")  # back to the start for row 0
    path.write_text('\ufeffid,text\na,"one"\n\nb,"two\nlines",x\nc,three\n')
    with pytest.raises(ConfigError, match=r"t\.csv: the file changed since it was checked; publish it again"):
        examples[1]


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_a_npz_is_read_as_it_is_sent_its_uncompressed_arrays_mapped_in_the_file(
    tmp_path: Path, save: Callable[..., None]
) -> None:
    """Before 2026-12-05 every example of a .npz was made and held first (1,000,000 rows of 64
    float32: see the README). Now each is made when it is sent; an array stored uncompressed is read
    where it lies in the file, a compressed one a block at a time (the next test). Keys, ids,
    --dtype and texts as before."""
    from producer_tools import sources

    x = np.arange(24, dtype="float64").reshape(4, 3, 2)
    path, texts = tmp_path / "in.npz", tmp_path / "texts.npz"
    ids = {"user": np.array([7, 8, 9, 10]), "ident": np.array([70, 80, 90, 100])}
    save(path, x=x, y=np.array([True, False, True, False]), **ids)
    save(texts, title=np.array(["a", "bé", "", "d"]))
    examples = sources.read_inputs(path, sources.ReadOptions(key_field="user", id_field="ident", dtype="float32"))
    assert isinstance(examples, sources.NpzRows) and len(examples) == 4
    assert isinstance(getattr(examples.arrays["x"], "base", None), np.memmap) is (save is np.savez)
    assert isinstance(examples.arrays["x"], sources.PackedColumn) is (save is np.savez_compressed)
    for row, example in enumerate(examples):
        assert (example.key, example.id) == (str(7 + row).encode(), 70 + 10 * row)
        assert example.inputs["x"].dtype == np.float32 and example.inputs["x"].tolist() == x[row].tolist()
        assert example.inputs["y"] == np.float32(row % 2 == 0)
    assert examples[-1].id == 100
    assert [e.inputs["title"] for e in sources.read_inputs(texts)] == [b"a", "bé".encode(), b"", b"d"]


@pytest.mark.parametrize(
    ("values", "dtype"),
    [
        ([0, 127, -128], "int8"),
        ([0.0, 255.0, 3.0], "uint8"),
        ([2**63 - 1, -(2**63)], "int64"),
        ([1, 0], "bool"),
        ([0.1, np.nan, -np.inf, 65504.0], "float16"),
        ([2**53 + 1, 0.1], "float32"),
    ],
)
def test_a_dtype_cast_that_changes_nothing_but_a_float_s_rounding_is_made(values: list[float], dtype: str) -> None:
    """``--dtype`` refuses only values the cast would change beyond rounding; the rest cast as NumPy casts them."""
    from producer_tools.sources.common import checked_cast

    array = np.array(values)
    cast = checked_cast(array, dtype, "f")
    assert cast.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(cast, array.astype(dtype))


def test_a_compressed_npz_is_checked_whole_then_read_a_block_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a ``savez_compressed`` array was read whole (256 MB for 1,000,000 rows of 64 float32).
    Now its rows are decompressed a block at a time as they are sent: in order, an earlier row read
    from the member's start again, every row as NumPy reads it (big-endian, 3-D, texts; a
    Fortran-ordered array read whole). A damaged file is refused before anything is sent; one
    changed after the check, when its row is read."""
    from consumer.errors import ConfigError
    from producer_tools import npz_members, sources

    monkeypatch.setattr(npz_members, "BLOCK_BYTES", 40)  # 3-row blocks of x, 1-row of the wider ones
    rng, n = np.random.default_rng(5), 400  # big: 25 KB compressed, past what reading a header decompresses
    arrays = {
        "x": rng.random((n, 3), dtype="float32"),
        "big": rng.integers(-(2**40), 2**40, (n, 2, 4)).astype(">i8"),
        "fortran": np.asfortranarray(rng.random((n, 4))),
        "title": np.array([f"t{i}é" for i in range(n)]),
    }
    path = tmp_path / "c.npz"
    np.savez_compressed(path, **arrays)
    examples = sources.read_inputs(path)
    assert isinstance(examples, sources.NpzRows)
    packed = {name for name, column in examples.arrays.items() if isinstance(column, sources.PackedColumn)}
    assert packed == {"x", "big", "title"}
    assert examples.arrays["x"].block_rows == 3  # type: ignore[union-attr]
    for order in (range(n), [n - 1, 0, 4, 3, n - 2, 1]):
        for row in order:
            inputs = examples[row].inputs
            assert isinstance(inputs, dict) and inputs["title"] == f"t{row}é".encode()
            for name in ("x", "big", "fortran"):
                assert inputs[name].dtype == arrays[name].dtype and inputs[name].tolist() == arrays[name][row].tolist()

    damaged = bytearray(path.read_bytes())
    big = zipfile.ZipFile(path).getinfo("big.npy")  # a byte of its data (past its 30-byte local header)
    damaged[big.header_offset + 30 + len(big.filename) + big.compress_size // 2] ^= 0xFF
    (tmp_path / "damaged.npz").write_bytes(bytes(damaged))
    with pytest.raises(ConfigError, match=r"cannot read input file '.*damaged\.npz': "):
        sources.read_inputs(tmp_path / "damaged.npz")

    examples = sources.read_inputs(path)
    np.savez_compressed(path, **{**arrays, "x": arrays["x"][:5]})  # fewer rows since the check
    with pytest.raises(ConfigError, match=r"c\.npz: the file changed since it was checked; publish it again"):
        examples[0]


def test_a_csv_field_longer_than_python_s_csv_default_is_read(tmp_path: Path) -> None:
    """A 200,000-character text (a document) crashed ``publish`` with ``_csv.Error: field larger
    than field limit (131072)`` and a traceback."""
    from producer_tools.sources import TEXT, ReadOptions, read_inputs

    (tmp_path / "doc.csv").write_text("text\n" + "y" * 200_000 + "\n")
    (example,) = read_inputs(tmp_path / "doc.csv", ReadOptions(dtype=TEXT))
    assert example.inputs == b"y" * 200_000


def test_json_lines_keys_that_are_not_text_are_sent_as_json_writes_them(tmp_path: Path) -> None:
    """Before, as Python wrote them: ``True``, ``{'u': 1}``."""
    from producer_tools.sources import read_inputs

    lines = [json.dumps({"inputs": [1], "key": key}) + "\n" for key in (True, {"u": 1}, 7, "s", 1.5)]
    (tmp_path / "k.jsonl").write_text("".join(lines))
    assert [e.key for e in read_inputs(tmp_path / "k.jsonl")] == [b"true", b'{"u":1}', b"7", b"s", b"1.5"]


def test_a_csv_headed_by_pandas_default_column_names_is_read_whole(tmp_path: Path) -> None:
    """``pd.DataFrame(array).to_csv(path, index=False)`` names the columns 0, 1, …: a header of
    numbers, but a header (a first row of other numbers is refused: the file had none)."""
    from producer_tools.sources import read_inputs

    (tmp_path / "p.csv").write_text("0,1,2\n5,6,7\n8,9,10\n")
    assert [e.inputs.tolist() for e in read_inputs(tmp_path / "p.csv")] == [[5, 6, 7], [8, 9, 10]]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("main_of", "argv", "says"),
    [
        (
            main,
            ["publish", "--topic", "t", "--file", "x.npy"],
            "python -m producer_tools publish: error: unrecognized arguments: --file (file is positional: give it "
            "without --file)",
        ),
        (
            main,
            ["collect", "--topic", "t", "--out", "o.jsonl", "--jion", "in"],
            "python -m producer_tools collect: error: unrecognized arguments: --jion in (did you mean --join?)",
        ),
        (
            consumer_main,
            ["run", "--max-batchsize", "5"],
            "python -m consumer run: error: unrecognized arguments: --max-batchsize 5 (did you mean --max-batch-size?)",
        ),
        (
            main,
            ["lag", "--group", "g", "--topic", "t", "extra"],
            "python -m producer_tools lag: error: unrecognized arguments: extra",
        ),
    ],
)
def test_a_flag_no_command_knows_is_refused_by_that_command_with_the_flag_meant(
    main_of: Callable[[list[str]], int], argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by hand: argparse said so from the top-level parser, whose usage lists the commands,
    not the flags of the one that was run, and gave no hint."""
    with pytest.raises(SystemExit) as exit:
        main_of([*argv, "--bootstrap-servers", "127.0.0.1:1"])
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("usage: " + says.split(": error:")[0] + " ")
    assert err[-1] == says


def test_publish_refuses_count_and_repeat_together(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Found by hand: with both, ``--count`` won and ``--repeat`` was quietly ignored."""
    np.save(tmp_path / "x.npy", np.zeros((3, 4), dtype=np.float32))
    argv = ["publish", str(tmp_path / "x.npy"), "--topic", "t", "--count", "5", "--repeat", "2"]
    with pytest.raises(SystemExit) as exit:
        main([*argv, "--bootstrap-servers", "127.0.0.1:1"])
    assert exit.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith("argument --repeat: not allowed with argument --count")


@pytest.mark.parametrize(
    ("command", "says"),
    [
        (
            ["replay", "--from-topic", "a", "--to-topic", "a"],
            "invalid settings: --to-topic must differ from --from-topic",
        ),
        (
            ["replay", "--from-topic", "a", "--to-topic", "b", "--from-timestamp", "2024-06-02", "--until-timestamp",
             "2024-06-01T23:00:00+00:00"],
            "invalid settings: --until-timestamp must be later than --from-timestamp",
        ),
        (
            ["replay", "--from-topic", "a", "--to-topic", "b", "--until-timestamp", "June 1st"],
            "invalid setting --until-timestamp='June 1st': use ISO 8601, e.g. 2024-06-01T00:00:00Z",
        ),
        # found by hand: librdkafka gave up on a negative timestamp ("Broker handle destroyed"), exit 1
        (
            ["reset-offsets", "--group", "g", "--topic", "t", "--to-timestamp", "0001-01-01T00:00:00"],
            "invalid setting --to-timestamp='0001-01-01T00:00:00': Kafka timestamps start at 1970-01-01T00:00:00Z: "
            "give that or a later time",
        ),
        (
            ["replay", "--from-topic", "a", "--to-topic", "b", "--from-timestamp", "1969-12-31T23:59:59Z"],
            "invalid setting --from-timestamp='1969-12-31T23:59:59Z': Kafka timestamps start at 1970-01-01T00:00:00Z: "
            "give that or a later time",
        ),
        (["collect", "--topic", "t", "--out", "{d}/p.csv"], "invalid setting --out='{d}/p.csv': write .npz or .jsonl"),
        (
            ["collect", "--topic", "t", "--out", "{d}/p.jsonl", "--id-field", "id"],
            "--id-field reads the --join file, and none is given: pass --join FILE, or drop --id-field",
        ),
    ],
)  # fmt: skip
def test_a_tool_given_contradicting_or_unusable_flags_says_which_in_one_line_before_connecting(
    command: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing listens at port 1: each line comes before any connection is tried."""
    argv = [part.format(d=tmp_path) for part in command]
    assert main([*argv, "--bootstrap-servers", "127.0.0.1:1"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == "error: " + says.format(d=tmp_path)


def test_a_consumer_run_that_fails_or_hangs_is_one_error_with_its_last_lines(tmp_path: Path) -> None:
    """The demo and the bench print it and exit 1; a ``RuntimeError`` (or, past the wait, a
    ``TimeoutExpired`` without the consumer's log) used to end them in a traceback."""
    failing = ConsumerProcess([sys.executable, "-m", "consumer", "run", "--input-topic", "in"])
    with failing, pytest.raises(ConsumerRunError, match=r"(?s)exited with 2:\n.*error: missing setting"):
        failing.finish(timeout=60)
    script = "import sys, time; print('still working', file=sys.stderr, flush=True); time.sleep(60)"
    hanging = ConsumerProcess([sys.executable, "-c", script])
    with hanging, pytest.raises(ConsumerRunError, match=r"did not exit within 3s:\nstill working"):
        hanging.finish(timeout=3)
    assert hanging.process.returncode is not None  # leaving the block stopped it
