"""``python -m consumer run`` as users run it: a real process, real signals, real exit codes."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pytest

from consumer.codec import pack_input
from producer_tools.embedded_broker import free_port
from producer_tools.reader import read_topic
from tests import models
from tests.helpers import (
    ENV,
    Deployment,
    Trickle,
    committed,
    consumer_command,
    gone,
    outputs,
    publish,
    wait_for_outputs,
)

pytestmark = pytest.mark.integration


def _run(command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """The consumer run to its end, its output captured."""
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_mid_stream_loses_nothing_and_duplicates_nothing(
    bootstrap: str, topics: Callable[..., list[str]], group: str, mlp_path: Path, signum: signal.Signals
) -> None:
    """SIGHUP (a closed terminal or ssh session) drains as SIGTERM does; it used to end the supervisor
    at once, without its summary (its workers, seeing it gone, drained by themselves)."""
    inp, out = topics("in", "out")
    total = 3000
    process = subprocess.Popen(
        consumer_command(bootstrap, mlp_path, inp, out, group), env=ENV, stderr=subprocess.PIPE, text=True
    )
    publisher = Trickle(bootstrap, inp, total)
    first = len(read_topic(bootstrap, out, timeout=60, min_count=300))
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    publisher.join()
    assert process.returncode == 0, err[-2000:]
    assert first >= 300 and '"event": "summary"' in err
    finished = _run(consumer_command(bootstrap, mlp_path, inp, out, group, "--stop-at-end"), timeout=120)
    assert finished.returncode == 0, finished.stderr[-2000:]
    ids = Counter(record["id"] for _, record in outputs(bootstrap, out, total))
    print(
        f"{signum.name} run: {first}+ outputs before the signal; {len(ids)} distinct ids, "
        f"{sum(ids.values()) - len(ids)} duplicates"
    )
    assert set(ids) == set(range(total)) and max(ids.values()) == 1


def test_a_second_sigterm_stops_at_once_without_orphans_and_loses_nothing(
    bootstrap: str, topics: Callable[..., list[str]], group: str, tmp_path: Path
) -> None:
    """The README's "a second SIGTERM/SIGINT stops at once": the supervisor kills its draining
    workers (none is left behind) and exits 1; what they had not committed is read again by the next run."""
    inp, out = topics("in", "out")
    total = 400
    publish(bootstrap, inp, ((str(i).encode(), pack_input(np.ones(4, "float32"), id=i)) for i in range(total)))
    # 0.4-2 s per batch of 8 as the machine goes: a worker stopping with batches read ahead drains for
    # seconds (with a model four times faster, it had drained before the second signal came)
    slow = models.slow_saved_model(tmp_path / "slow", iterations=3000)
    command = consumer_command(bootstrap, slow, inp, out, group, "--workers", "2", "--max-batch-size", "8")
    with Deployment(command, ENV) as deployment:  # stopped if the test fails before it ends
        workers = [psutil.Process(event["pid"]) for event in deployment.wait_for("worker started", 2, timeout=120)]
        read_topic(bootstrap, out, timeout=120, min_count=8)  # serving: each worker holds batches read ahead
        deployment.process.send_signal(signal.SIGTERM)
        deployment.wait_for("draining", 1, timeout=30)
        deployment.process.send_signal(signal.SIGTERM)
        deployment.process.wait(30)
        assert deployment.process.returncode == 1, deployment.tail()  # a drained stop exits 0
    assert all(gone(worker) for worker in workers), f"workers {[w.pid for w in workers]} outlived their supervisor"
    fast = models.shaped_saved_model(tmp_path / "fast", [None, 4])  # the same inputs, and outputs (x * 2)
    rest = consumer_command(bootstrap, fast, inp, out, group, "--workers", "2", "--stop-at-end")
    with Deployment(rest, ENV) as finishing:
        summary = finishing.finish(timeout=120)
    seen = wait_for_outputs(bootstrap, out, set(range(total)), timeout=30)
    print(f"second SIGTERM: exit 1; the next run predicted {summary['predicted']}; {len(seen)} of {total} came out, "
          f"{sum(seen.values()) - len(seen)} twice")  # fmt: skip


def test_a_consumer_whose_log_reader_went_away_keeps_serving_and_drains_on_sigterm(
    bootstrap: str, topics: Callable[..., list[str]], group: str, mlp_path: Path
) -> None:
    """Logs piped to a shipper that died (or ``2>&1 | head``): the lines are lost, the run is not.
    Before, the supervisor's next line raised ``BrokenPipeError`` and ended it without stopping its
    worker, and its exit then waited for that worker for good (SIGTERM here: no drain, no exit)."""
    inp, out = topics("in", "out", partitions=2)
    publish(bootstrap, inp, ((str(i).encode(), pack_input(np.ones(4, "float32"), id=i)) for i in range(100)))
    command = consumer_command(bootstrap, mlp_path, inp, out, group, "--from-beginning", "--workers", "2")
    process = subprocess.Popen(command, env=ENV, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        wait_for_outputs(bootstrap, out, set(range(100)), timeout=120)
        process.stderr.close()  # the reader goes away
        publish(bootstrap, inp, ((str(i).encode(), pack_input(np.ones(4, "float32"), id=i)) for i in range(100, 300)))
        seen = wait_for_outputs(bootstrap, out, set(range(300)), timeout=60)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        process.kill()
    assert set(seen) == set(range(300)) and max(seen.values()) == 1
    assert sum(committed(bootstrap, group, inp, 2).values()) == 300  # drained: everything committed


def test_a_run_started_with_stderr_closed_serves_and_exits_as_usual(
    bootstrap: str, topics: Callable[..., list[str]], group: str, mlp_path: Path, tmp_path: Path
) -> None:
    """``2>&-``: Python starts with no ``sys.stderr``. It was exit 120 (Python failing to flush it)
    and no error line; now the lines go to /dev/null and the exit codes are the usual ones."""
    inp, out = topics("in", "out", partitions=2)
    publish(bootstrap, inp, ((str(i).encode(), pack_input(np.ones(4, "float32"), id=i)) for i in range(50)))
    closed = ["bash", "-c", 'exec "$@" 2>&-', "stderr-closed"]
    bounded = consumer_command(bootstrap, mlp_path, inp, out, group, "--stop-at-end")
    assert subprocess.run([*closed, *bounded], env=ENV, timeout=180).returncode == 0
    assert set(wait_for_outputs(bootstrap, out, set(range(50)), timeout=30)) == set(range(50))
    missing_model = consumer_command(bootstrap, tmp_path / "nope.keras", inp, out, group)
    assert subprocess.run([*closed, *missing_model], env=ENV, timeout=60).returncode == 1


def test_a_missing_model_exits_1_with_one_line(
    bootstrap: str, topics: Callable[..., list[str]], group: str, tmp_path: Path
) -> None:
    inp, out = topics("in", "out")
    run = _run(consumer_command(bootstrap, tmp_path / "nope.keras", inp, out, group), timeout=60)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].startswith("error: model path") and "does not exist" in run.stderr


def test_an_output_no_retry_can_deliver_ends_the_run_with_exit_1(
    bootstrap: str, topics: Callable[..., list[str]], group: str, tmp_path: Path
) -> None:
    """The README promised exit 1; the supervisor restarted the worker instead, which met the same
    output again, forever (1, 2, 4 … 30 s apart). Here the model's outputs are too large for the
    producer whatever the input (an input that makes its own output too large is a dead letter)."""
    path = models.widening_saved_model(tmp_path / "widening")
    inp, out = topics("in", "out", partitions=1)
    wide = np.array([1000, 1, 1, 1], "float32")  # outputs 1,000 times as wide: 16,000 bytes a row
    publish(bootstrap, inp, ((None, pack_input(wide, id=i)) for i in range(5)))
    config = tmp_path / "small.toml"
    config.write_text('[kafka.producer]\n"message.max.bytes" = 2000\n')
    command = consumer_command(bootstrap, path, inp, out, group, "--stop-at-end", "--config", str(config))
    run = _run(command, timeout=120)
    assert run.returncode == 1, run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: could not deliver a record to topic '{out}'") and "not committed" in last
    assert "the model's outputs for one input are larger than the producer's message.max.bytes" in last
    assert "worker died; restarting" not in run.stderr


def test_signature_picks_what_a_savedmodel_serves(
    bootstrap: str, topics: Callable[..., list[str]], group: str, tmp_path: Path
) -> None:
    inp, out = topics("in", "out", partitions=1)
    x = np.arange(40, dtype="float32").reshape(10, 4)
    publish(bootstrap, inp, ((None, pack_input(row, id=i)) for i, row in enumerate(x)))
    model = models.two_signatures(tmp_path / "two")
    refused = _run(consumer_command(bootstrap, model, inp, out, group, "--stop-at-end"), timeout=120)
    assert refused.returncode == 1
    last = refused.stderr.strip().splitlines()[-1]
    assert last.endswith(
        "has no signature 'serving_default' (it has: 'double', 'triple'); pass the one to serve with --signature NAME"
    )
    command = consumer_command(bootstrap, model, inp, out, group, "--stop-at-end", "--signature", "triple")
    served = _run(command, timeout=180)
    assert served.returncode == 0, served.stderr[-2000:]
    got = {r["id"]: r["outputs"] for _, r in outputs(bootstrap, out, 10)}
    for i, row in enumerate(x):
        np.testing.assert_array_equal(got[i], row * 3)


def test_a_missing_input_topic_exits_2_naming_it(
    bootstrap: str, topics: Callable[..., list[str]], group: str, mlp_path: Path
) -> None:
    (out,) = topics("out")
    run = _run(consumer_command(bootstrap, mlp_path, "no-such-topic", out, group), timeout=60)
    assert run.returncode == 2
    assert "topic 'no-such-topic' does not exist" in run.stderr.strip().splitlines()[-1]


TAKES = "the model takes features: float32[4]: make it return that"


@pytest.mark.parametrize(
    ("function", "says"),
    [
        ("passes_the_bytes_on", f"for one input it returns features: string[], and {TAKES}"),
        ("widens_to_float64", f"for one input it returns features: float64[4], and {TAKES}"),
        ("reads_the_value_eagerly", "it cannot run on one input as a TensorFlow graph (AttributeError: "),
        ("declares_no_rank", "its input_signature gives 'features' no rank: declare its dimensions"),
    ],
)
def test_a_preprocess_function_that_cannot_make_the_model_s_inputs_exits_2_before_any_input(
    bootstrap: str, topics: Callable[..., list[str]], group: str, mlp_path: Path, function: str, says: str
) -> None:
    """A wrong shape failed each worker at its first batch, in tf.data, and the supervisor restarted
    them for good; a wrong dtype made TensorFlow log an error and every batch fail, for good too."""
    inp, out = topics("in", "out", partitions=1)
    publish(bootstrap, inp, ((None, pack_input(np.ones(4, "float32"), id=i)) for i in range(3)))
    spec = f"tests.preprocessors:{function}"
    run = _run(consumer_command(bootstrap, mlp_path, inp, out, group, "--preprocess", spec), timeout=120)
    assert run.returncode == 2, run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: invalid setting preprocess={spec!r}: {says}"), last
    assert "worker died; restarting" not in run.stderr
    assert committed(bootstrap, group, inp, 1) == {0: -1001}  # nothing was read: no offset committed


def test_an_unreachable_broker_fails_after_the_connect_timeout_and_the_start_attempts(mlp_path: Path) -> None:
    started = time.monotonic()
    run = subprocess.run(
        consumer_command(f"127.0.0.1:{free_port()}", mlp_path, "in", "out", "g"),
        env={**ENV, "TFSTREAM_CONNECT_TIMEOUT_S": "3", "TFSTREAM_START_ATTEMPTS": "2"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot reach Kafka") and "could not start (2 attempts)" in last
    assert run.stderr.count('"event": "worker started"') == 2
    assert time.monotonic() - started < 100
