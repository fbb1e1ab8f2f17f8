"""``python -m consumer check``: settings, model and sample inputs, checked without Kafka, through the
workers' own decoder, pipeline and compiled functions (real models; the broker only for `--sample-topic`)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest

from consumer.check import run_through
from consumer.codec import Limits, pack_input
from consumer.errors import ConfigError
from consumer.model import LoadedModel, load_model
from consumer.outputs import OutputEncoder
from consumer.pipeline import Pipeline
from consumer.predictor import Predictor
from tests.helpers import ENV, Topics, publish, run_worker, settings
from tests.models import complex_saved_model, mlp, multi_input

ROOT = Path(__file__).resolve().parent.parent


def check(*flags: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """``python -m consumer check`` as a user types it: no Kafka setting anywhere."""
    env = {k: v for k, v in ENV.items() if not k.startswith("TFSTREAM_")}
    command = [sys.executable, "-m", "consumer", "check", *flags]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def write_jsonl(path: Path, rows: list[list[float]]) -> Path:
    path.write_text("".join(json.dumps({"inputs": row, "id": i}) + "\n" for i, row in enumerate(rows)))
    return path


def test_every_input_of_a_file_is_predicted_as_the_model_predicts_it(tmp_path: Path, mlp_path: Path) -> None:
    """In process: ``run_through`` packs nothing itself; the values are what ``publish`` sends, in
    batches of 8 (so padded, and several of them)."""
    rows = np.random.default_rng(3).normal(size=(21, 4)).astype("float32")
    model = keras.models.load_model(mlp_path)
    predictor = Predictor(_loaded(mlp_path), [1, 2, 4, 8])
    predictor.warm_up()
    values = [pack_input(row, id=i) for i, row in enumerate(rows)]
    encoder = OutputEncoder({"name": "mlp", "version": "1"}, "msgpack")
    batches: list[dict[str, np.ndarray]] = []
    checked = run_through(Pipeline(predictor, Limits(), depth=2), values, 8, encoder, sink=batches.append)
    assert (checked.predicted, checked.dead, checked.named) == (21, 0, [])
    predicted = np.concatenate([outputs["output_0"] for outputs in batches])
    np.testing.assert_allclose(predicted, model.predict(rows, verbose=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(checked.first["output_0"], predicted[0])  # the report's row, kept alone
    # each prediction encoded by the workers' own encoder (its size: ids 0-9 and 10-20 differ by a byte)
    assert len(checked.value_bytes) == 21 and len(set(checked.value_bytes)) <= 2


def test_a_file_that_fails_while_it_is_read_ends_the_check_with_its_error_not_a_hang(mlp_path: Path) -> None:
    """A large .jsonl or a folder is read as it is fed; a line changed since the file was checked
    raises there, in the feeder's thread: the pipeline must still end, and the error come out."""
    predictor = Predictor(_loaded(mlp_path), [1, 2, 4, 8])
    predictor.warm_up()

    def values() -> Iterator[bytes]:
        for i in range(20):
            if i == 13:
                raise ConfigError("input file 'x.jsonl' line 14: the file changed since it was checked")
            yield pack_input(np.ones(4, "float32"), id=i)

    encoder = OutputEncoder({"name": "mlp", "version": "1"}, "msgpack")
    with pytest.raises(ConfigError, match="changed since it was checked"):
        run_through(Pipeline(predictor, Limits(), depth=2), values(), 8, encoder)


def _loaded(path: Path) -> LoadedModel:
    return load_model(path)


def test_check_says_what_messages_carry_and_predicts_a_file(tmp_path: Path, mlp_path: Path) -> None:
    rows = [[float(i), 1.0, 2.0, 3.0] for i in range(12)]
    done = check("--model", str(mlp_path), "--inputs", str(write_jsonl(tmp_path / "in.jsonl", rows)))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "each message carries: features: float32[4]" in done.stdout
    assert "inputs: 12 of 12 predicted, 0 would go to the dead-letter topic" in done.stdout
    assert "output records (msgpack): values of " in done.stdout
    assert "bytes, the producer's message.max.bytes 1,000,000" in done.stdout
    first = re.search(r"the first predicted: \[([^\]]*)\]", done.stdout)
    assert first is not None
    expected = keras.models.load_model(mlp_path).predict(np.array(rows[:1], "float32"), verbose=0)[0]
    np.testing.assert_allclose([float(x) for x in first.group(1).split()], expected, atol=1e-3)


def test_inputs_that_do_not_fit_the_model_are_named_with_their_reasons_and_exit_1(
    tmp_path: Path, mlp_path: Path
) -> None:
    """Inputs 0, 3, ..., 21 have 5 features: in batches of 4, the first five are named in input
    order across batches, the other three counted."""
    rows = [[float(i)] * (5 if i % 3 == 0 else 4) for i in range(24)]
    inputs = str(write_jsonl(tmp_path / "in.jsonl", rows))
    done = check("--model", str(mlp_path), "--inputs", inputs, "--varying-shapes", "--max-batch-size", "4")
    assert done.returncode == 1, done.stderr[-2000:]
    assert "inputs: 16 of 24 predicted, 8 would go to the dead-letter topic" in done.stdout
    named = re.findall(r"  input (\d+): input 'features' has shape \[5\]; the model takes \[4\]", done.stdout)
    assert named == ["0", "3", "6", "9", "12"]
    assert "  ... and 3 more" in done.stdout


def test_a_preprocess_function_runs_as_in_the_workers_and_its_failures_are_dead_letters(
    tmp_path: Path, mlp_path: Path
) -> None:
    """A folder of raw files through ``--preprocess`` (decode four float32s): a file of another length
    fails the function, in its batch, which is then redone input by input as a worker does."""
    folder = tmp_path / "files"
    folder.mkdir()
    for i in range(6):
        values = np.full(3 if i == 4 else 4, i, "float32")
        (folder / f"{i}.bin").write_bytes(values.tobytes())
    done = check("--model", str(mlp_path), "--preprocess", "tests.preprocessors:decode_floats", "--inputs", str(folder))
    assert done.returncode == 1, done.stderr[-2000:]
    assert "each message carries: features: string[]" in done.stdout
    assert "the preprocess function gives the model: features: float32[4], example by example" in done.stdout
    assert "inputs: 5 of 6 predicted, 1 would go to the dead-letter topic" in done.stdout
    assert "  input 4: preprocess raised" in done.stdout

    np.save(tmp_path / "pixels.npy", np.array([[1, 2, 3, 4], [5, 6, 250, 8], [9, 10, 11, 12]], "uint8"))
    preprocess = "tests.preprocessors:scale_pixels_below_200"  # TensorFlow vectorizes it
    done = check("--model", str(mlp_path), "--preprocess", preprocess, "--inputs", str(tmp_path / "pixels.npy"))
    assert done.returncode == 1, done.stderr[-2000:]
    assert "the preprocess function gives the model: features: float32[4], over a whole batch at once" in done.stdout
    assert "inputs: 2 of 3 predicted, 1 would go to the dead-letter topic" in done.stdout
    assert "  input 1: preprocess raised" in done.stdout


@pytest.mark.parametrize(
    ("flags", "code", "said"),
    [
        (("--model", "{tmp}/none.keras"), 1, "error: model path"),
        (("--model", "{mlp}", "--inputs", "{tmp}/none.jsonl"), 2, "error: input file"),
        (("--model", "{mlp}", "--preprocess", "no_such_module:f"), 2, "error: invalid setting preprocess="),
        (("--model", "{mlp}", "--max-batch-size", "0"), 2, "error: invalid setting max_batch_size=0"),
        ((), 2, "error: missing setting model"),
        (("--model", "{mlp}", "--columns", "a,b"), 2, "error: --columns reads the --inputs file, and none is given"),
        (("--model", "{mlp}", "--sample-count", "5"), 2, "error: --sample-count reads --sample-topic, and none"),
        (("--model", "{mlp}", "--sample-latest"), 2, "error: --sample-latest reads --sample-topic, and none"),
        (("--model", "{mlp}", "--sample-topic", "t"), 2, "error: missing setting bootstrap_servers"),
    ],
)
def test_what_check_refuses_it_says_in_one_line(
    tmp_path: Path, mlp_path: Path, flags: tuple[str, ...], code: int, said: str
) -> None:
    done = check(*(flag.format(tmp=tmp_path, mlp=mlp_path) for flag in flags))
    assert done.returncode == code, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith(said)
    assert "Traceback" not in done.stderr


def test_a_model_of_other_features_is_checked_against_its_own_signature(tmp_path: Path) -> None:
    path = mlp(tmp_path / "wide.keras", features=6)
    done = check("--model", str(path), "--inputs", str(write_jsonl(tmp_path / "in.jsonl", [[1.0] * 4] * 3)))
    assert done.returncode == 1
    assert "each message carries: features: float32[6]" in done.stdout
    assert "inputs: 0 of 3 predicted, 3 would go to the dead-letter topic" in done.stdout


def test_outputs_larger_than_the_producer_takes_are_said_and_exit_1(tmp_path: Path) -> None:
    """300 float32s an output (1,344 bytes a value) against a message.max.bytes of 1,000: a worker's
    run would end at its first output, saying to raise the limit."""
    path = mlp(tmp_path / "wide.keras", classes=300)
    inputs = str(write_jsonl(tmp_path / "in.jsonl", [[1.0] * 4] * 3))
    flags = ("--model", str(path), "--inputs", inputs, "--max-batch-size", "4")
    fits = check(*flags)
    assert fits.returncode == 0, fits.stderr[-2000:]
    config = tmp_path / "small.toml"
    config.write_text('[kafka.producer]\n"message.max.bytes" = 1000\n')
    done = check(*flags, "--config", str(config))
    assert done.returncode == 1, done.stderr[-2000:]
    assert "inputs: 3 of 3 predicted" in done.stdout
    assert "output records (msgpack): values of 1,344 to 1,344 bytes, the producer's message.max.bytes 1,000" in (
        done.stdout
    )
    assert "too large: 3 output values are over the producer's message.max.bytes" in done.stdout


def test_outputs_that_cannot_be_encoded_are_dead_letters_as_in_a_worker(tmp_path: Path) -> None:
    """Complex outputs: msgpack carries them, JSON has no numbers for them (the whole batch fails to
    encode, then each row alone, as the workers' emitter does)."""
    path = complex_saved_model(tmp_path / "complex")
    inputs = str(write_jsonl(tmp_path / "in.jsonl", [[1.0, 2.0, 3.0, 4.0]] * 3))
    flags = ("--model", str(path), "--inputs", inputs, "--max-batch-size", "4")
    assert check(*flags).returncode == 0
    done = check(*flags, "--output-format", "json")
    assert done.returncode == 1, done.stderr[-2000:]
    assert "inputs: 0 of 3 predicted, 3 would go to the dead-letter topic" in done.stdout
    assert "  input 0: its output cannot be encoded: TypeError: " in done.stdout


def test_an_input_the_model_fails_alone_is_named_and_the_others_of_its_batch_predicted(tmp_path: Path) -> None:
    """Named inputs of two dtypes and two outputs; input 10 and 11 hold an index past the model's
    embedding table: the batch fails, then each input is run alone, as a worker does."""
    path = multi_input(tmp_path / "multi.keras")
    rows = [{"inputs": {"a": [1.0, 2.0, 3.0, 4.0], "b": [i, i]}} for i in range(12)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    done = check("--model", str(path), "--inputs", str(tmp_path / "in.jsonl"))
    assert done.returncode == 1, done.stderr[-2000:]
    assert "each message carries: a: float32[4], b: int32[2]" in done.stdout
    assert "outputs: embed, score" in done.stdout
    assert "inputs: 10 of 12 predicted, 2 would go to the dead-letter topic" in done.stdout
    for number in (10, 11):
        assert f"  input {number}: the model raised InvalidArgumentError: " in done.stdout
    # its dict of outputs is flattened in plain Python: AutoGraph warned it could not convert it
    assert "AutoGraph could not transform" not in done.stderr


def test_a_csv_is_read_with_publish_s_flags(tmp_path: Path, mlp_path: Path) -> None:
    """An id column and a label beside the four features: read whole, the rows have six numbers, not
    the model's four; with --columns and --id-field, as publish is given them, every row fits."""
    lines = ["id,a,b,c,d,label", *(f"{100 + i},{i},1,2,3,{i % 3}" for i in range(7))]
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    whole = check("--model", str(mlp_path), "--inputs", str(tmp_path / "in.csv"))
    assert whole.returncode == 1, whole.stderr[-2000:]
    assert "  input 0: input 'features' has shape [6]; the model takes [4]" in whole.stdout
    flags = ("--columns", "a,b,c,d", "--id-field", "id", "--dtype", "float32")
    chosen = check("--model", str(mlp_path), "--inputs", str(tmp_path / "in.csv"), *flags)
    assert chosen.returncode == 0, chosen.stderr[-2000:]
    assert "inputs: 7 of 7 predicted, 0 would go to the dead-letter topic" in chosen.stdout


@pytest.mark.integration
def test_a_sample_topic_s_records_are_checked_as_they_are_named_by_partition_and_offset(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path, tmp_path: Path
) -> None:
    """``--sample-topic``: the records as producers sent them, not a file packed as publish packs it;
    then the dead letters of a run, checked against the model version that should take them."""
    inp, out, dlq = topics("in", "out", "dlq", partitions=1)
    base = 1_700_000_000_000
    good = [(str(i).encode(), pack_input(np.full(4, i, "float32"), id=i)) for i in range(20)]
    wide = [(f"w{i}".encode(), pack_input(np.full(5, i, "float32"), id=i)) for i in range(3)]
    records = [*good[:10], wide[0], (b"raw", b"\xc1"), *good[10:], *wide[1:], (b"deleted", None)]
    publish(bootstrap, inp, records, timestamps=[base + i * 1000 for i in range(len(records))])
    sample = ["--model", str(mlp_path), "--bootstrap-servers", bootstrap, "--sample-topic", inp]
    done = check(*sample)
    assert done.returncode == 1, done.stderr[-2000:]
    said = done.stdout
    assert f"inputs from {inp!r} (up to 1,000 records): 20 of 25 predicted, 5 would go to the dead-letter topic" in said
    named = [line.split(":")[0].strip() for line in said.splitlines() if line.startswith("  input ")]
    assert named == [f"input {inp}[0]@{offset}" for offset in (10, 11, 22, 23, 24)]
    assert f"input {inp}[0]@24: the message has no value (a tombstone)" in said
    # as a worker takes them: --tombstones skip, the record without a value is no dead letter
    done = check(*sample, "--tombstones", "skip")
    assert "20 of 24 predicted, 4 would go" in done.stdout
    assert "1 without a value left to --tombstones skip" in done.stdout
    # the first records only, and from a time on: the records before it left out, by their own timestamps
    done = check(*sample, "--sample-count", "10")
    assert done.returncode == 0 and "10 of 10 predicted, 0 would go" in done.stdout
    since = ["--sample-from-timestamp", "2023-11-14T22:13:32Z"]  # base + 12 s: the good ones after the bad
    done = check(*sample, *since, "--sample-count", "5")
    assert done.returncode == 0
    assert "(up to 5 records, 12 before --sample-from-timestamp left out): 5 of 5 predicted" in done.stdout
    # the run's dead letters, against a version that takes 5 features: the wide ones predicted, not the
    # one that is not msgpack, nor the tombstone's
    run_worker(settings(bootstrap, mlp_path, inp, out, group, dlq_topic=dlq))
    wider = mlp(tmp_path / "wider.keras", features=5)
    done = check("--model", str(wider), "--bootstrap-servers", bootstrap, "--sample-topic", dlq)
    assert done.returncode == 1
    said = done.stdout
    assert "3 of 5 predicted, 2 would go to the dead-letter topic" in said
    raw, deleted = [line for line in said.splitlines() if line.startswith("  input ")]
    assert raw.startswith(f"  input {dlq}[0]@1: ") and "msgpack" in raw, raw
    # a tombstone's dead letter holds an empty value (README: Wire format), which is no msgpack
    assert deleted.startswith(f"  input {dlq}[0]@4: not a single complete msgpack object"), deleted


@pytest.mark.parametrize(
    ("bounds", "count", "starts"),
    [
        ({0: (0, 14), 1: (0, 4)}, 8, {0: 10, 1: 0}),  # shared evenly: 4 and 4
        ({0: (0, 14), 1: (0, 2)}, 8, {0: 8, 1: 0}),  # what partition 1 lacks, partition 0 gives
        ({0: (5, 14), 1: (3, 4), 2: (7, 7)}, 100, {0: 5, 1: 3, 2: 7}),  # fewer than asked: all of them
        ({0: (0, 10), 1: (0, 10), 2: (0, 10)}, 10, {0: 6, 1: 7, 2: 7}),  # 4, 3 and 3: never more than asked
    ],
)
def test_the_latest_records_are_shared_over_the_partitions_and_never_more_than_asked(
    bounds: dict[int, tuple[int, int]], count: int, starts: dict[int, int]
) -> None:
    from producer_tools.samples import latest_starts

    got = latest_starts(bounds, count)
    assert got == starts
    taken = sum(end - got[p] for p, (_, end) in bounds.items())
    assert taken == min(count, sum(end - low for low, end in bounds.values()))


def test_the_latest_records_of_a_sample_topic_are_checked_from_each_partition_s_end(
    bootstrap: str, topics: Topics, mlp_path: Path
) -> None:
    """``--sample-latest``: what the producers send now, not the topic's oldest records. Partition 0
    holds 14 records, the one at offset 10 of a wrong shape; partition 1 holds 4, its last not msgpack.
    Each partition's end comes from a fetch response (the embedded broker's ListOffsets counts
    batches: these were sent in one)."""
    from confluent_kafka import Producer

    (inp,) = topics("in", partitions=2)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 50})
    for offset in range(14):
        features = 5 if offset == 10 else 4
        producer.produce(inp, pack_input(np.full(features, offset, "float32"), id=offset), partition=0)
    for offset in range(4):
        value = b"\xc1" if offset == 3 else pack_input(np.ones(4, "float32"), id=100 + offset)
        producer.produce(inp, value, partition=1)
    assert producer.flush(30) == 0
    sample = ["--model", str(mlp_path), "--bootstrap-servers", bootstrap, "--sample-topic", inp]
    done = check(*sample, "--sample-latest", "--sample-count", "8")  # 4 a partition: 0@10-13, 1@0-3
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"inputs from {inp!r} (the latest, up to 8 records): 6 of 8 predicted, 2 would go" in done.stdout
    named = sorted(line.split(":")[0].strip() for line in done.stdout.splitlines() if line.startswith("  input "))
    assert named == [f"input {inp}[0]@10", f"input {inp}[1]@3"]
    done = check(*sample, "--sample-latest", "--sample-count", "3")  # 1@2-3 and 0@13 (rounded up: the first)
    assert "(the latest, up to 3 records): 2 of 3 predicted, 1 would go" in done.stdout
    assert f"input {inp}[1]@3: " in done.stdout
    done = check(*sample, "--sample-latest", "--sample-count", "2")  # 0@13 and 1@3
    assert "1 of 2 predicted" in done.stdout
    done = check(*sample, "--sample-latest")  # the default 1,000: every record there is
    assert "(the latest, up to 1,000 records): 16 of 18 predicted, 2 would go" in done.stdout
    # the two ways of choosing where the sample starts do not go together
    done = check(*sample, "--sample-latest", "--sample-from-timestamp", "2023-11-14T22:13:32Z")
    assert done.returncode == 2 and "--sample-from-timestamp: not allowed with argument --sample-latest" in done.stderr
