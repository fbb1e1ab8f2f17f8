"""Faults, on one machine against the embedded broker (or KAFKA_BOOTSTRAP_SERVERS): workers killed
again and again in both delivery modes, exactly-once bookkeeping, a frozen broker, an output topic
Each test prints what it counted."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from math import isqrt
from pathlib import Path

import numpy as np
import pytest
import structlog.testing
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from consumer.codec import pack_input, unpack_output
from consumer.crashes import ALONE_MAX
from consumer.errors import BrokerError, ConfigError, FencedError
from consumer.transactions import Transactions, start_error
from producer_tools.reader import read_topic
from producer_tools.topics import create_topics
from tests.conftest import FAST_GROUP
from tests.helpers import (
    ENV,
    Background,
    Deployment,
    Topics,
    Trickle,
    committed,
    consumer_command,
    make_fatal,
    publish,
    publish_to_partition,
    run_command,
    run_worker,
    settings,
    wait_for_outputs,
    worker_labels,
    worker_pid,
)
from tests.preprocessors import POISON
from tests.relay import Relay

pytestmark = pytest.mark.integration
REAL_KAFKA = bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))


def _end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    return dict(Counter(m.partition() for m in read_topic(bootstrap, topic, timeout=10)))


def _records_written(bootstrap: str, topic: str, count: int, timeout: float = 60) -> int:
    """How many records ``topic`` holds, committed or not, once it holds ``count`` (or time runs out)."""
    reader = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"uncommitted-{time.monotonic_ns()}",
         "auto.offset.reset": "earliest", "isolation.level": "read_uncommitted", **FAST_GROUP}
    )  # fmt: skip
    reader.subscribe([topic])
    seen, deadline = 0, time.monotonic() + timeout
    while seen < count and time.monotonic() < deadline:
        seen += sum(1 for m in reader.consume(500, 0.5) if m.error() is None)
    reader.close()
    return seen


def _kill_workers_with_progress(bootstrap: str, out: str, deployment: Deployment, kills: int) -> list[int]:
    """SIGKILL ``kills`` times a worker that produced outputs since it (re)started, waiting for its
    replacement each time."""
    killed: list[int] = []
    for round_ in range(kills):
        deadline = time.monotonic() + 90
        while True:
            candidates = [w for w in worker_labels(bootstrap, out) if worker_pid(w) not in killed]
            if candidates or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert candidates, "no worker made progress"
        victim = worker_pid(candidates[-1])
        os.kill(victim, signal.SIGKILL)
        killed.append(victim)
        deployment.wait_for("worker ready", 3 + round_)
    return killed


def test_a_new_group_s_worker_killed_before_its_first_commit_loses_nothing(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path
) -> None:
    """A new group starts at the latest offsets (no --from-beginning here, as a user starts one).
    Its worker fetched and predicted 100 inputs of partition 0, found partition 1 empty, and was
    SIGKILLed before its first commit (commits every 600 s); 200 more arrived while it was dead.
    Before, nothing was committed, so its successor started at the latest offsets again: on Kafka
    those 200 are skipped; here 298 of 300 came out (the embedded broker's latest offset counts
    batches, not records, so the successor started a little early) and the test failed. Now where
    each partition starts (its first fetched offset, or its end when found empty) is committed at
    once, and the successor resumes there: all 300 predicted, the first 100 twice."""
    inp, out = topics("in", "out", partitions=2)
    env = {**ENV, "TFSTREAM_COMMIT_INTERVAL_MS": "600000"}
    deployment = Deployment(run_command(bootstrap, mlp_path, inp, out, group, "--max-batch-size", "32"), env)
    (ready,) = deployment.wait_for("worker ready")
    deployment.wait_for("partitions assigned")
    publish_to_partition(bootstrap, inp, 0, range(100))
    assert set(wait_for_outputs(bootstrap, out, set(range(100)))) == set(range(100))
    starts = committed(bootstrap, group, inp, 2)
    os.kill(ready["pid"], signal.SIGKILL)
    publish_to_partition(bootstrap, inp, 1, range(100, 200))
    publish_to_partition(bootstrap, inp, 0, range(200, 300))
    deployment.wait_for("worker ready", 2)
    seen = wait_for_outputs(bootstrap, out, set(range(300)), timeout=90)
    deployment.stop()
    print(f"committed at the kill {starts}; {len(seen)} of 300 predicted, {sum(seen.values()) - len(seen)} twice")
    assert starts == {0: 0, 1: 0}  # before, -1001 (nothing) on both
    assert set(seen) == set(range(300))


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_workers_killed_repeatedly_mid_stream_lose_nothing(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path, delivery: str
) -> None:
    inp, out = topics("in", "out", partitions=4)
    total = 3000
    command = consumer_command(bootstrap, mlp_path, inp, out, group, "--workers", "2", "--delivery", delivery)
    deployment = Deployment(command, ENV)
    deployment.wait_for("worker ready", 2)
    deployment.wait_for("partitions assigned", 2)
    publisher = Trickle(bootstrap, inp, total, pause=0.15)
    killed = _kill_workers_with_progress(bootstrap, out, deployment, kills=2)
    publisher.join()
    seen = wait_for_outputs(bootstrap, out, set(range(total)))
    summary = deployment.stop()
    duplicates = sum(seen.values()) - len(seen)
    print(f"{delivery}: killed {killed}; {len(seen)} of {total} predicted, {duplicates} duplicates visible")
    assert set(seen) == set(range(total))
    assert summary["restarts"] == 2
    assert sum(committed(bootstrap, group, inp, 4).values()) == total  # every input's offset committed
    if delivery == "at-least-once":
        assert duplicates <= 2 * 1500  # each kill re-reads at most its uncommitted window
    elif REAL_KAFKA:  # the embedded broker shows aborted writes to read_committed readers
        assert duplicates == 0


def test_exactly_once_commits_outputs_dead_letters_and_offsets_together(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path
) -> None:
    inp, out, dlq = topics("in", "out", "dlq", partitions=3)
    good = [(str(i).encode(), pack_input(np.full(4, i, "float32"), id=i)) for i in range(500)]
    bad = [(b"bad", b"\xc1 not msgpack") for _ in range(5)]
    publish(bootstrap, inp, good[:250] + bad + good[250:])
    command = consumer_command(
        bootstrap, mlp_path, inp, out, group, "--delivery", "exactly-once", "--dlq-topic", dlq, "--stop-at-end"
    )
    summary = Deployment(command, ENV).finish(timeout=180)
    ids = Counter(unpack_output(m.value())["id"] for m in read_topic(bootstrap, out, timeout=10, min_count=500))
    dead = read_topic(bootstrap, dlq, timeout=10, min_count=5)
    offsets = committed(bootstrap, group, inp, 3)
    print(f"exactly-once bounded run: {len(ids)} ids, {len(dead)} dead letters, committed {offsets}")
    assert ids == Counter(range(500)) and len(dead) == 5
    assert summary["predicted"] == 500 and summary["dead_lettered"] == 5
    assert offsets == _end_offsets(bootstrap, inp)
    # delivery reports come for failures only: each input counts as acknowledged when its
    # transaction commits, outputs and dead letters alike, once
    (worker,) = summary["workers"]
    assert worker["latency_ms"]["count"] == 505 and worker["last_acknowledged_at"] is not None
    # consumed before committed, input by input: every percentile of the one below the other's
    consumed, end_to_end = worker["consume_latency_ms"], worker["latency_ms"]
    assert consumed["count"] == 505 and all(consumed[p] <= end_to_end[p] for p in ("p50", "p99", "max"))


#: how the poison ends its worker: the preprocess function, and the death the supervisor names
ABORTS = ("abort_on_poison", "killed by SIGABRT")
HANGS = ("hang_on_poison", "killed as stuck (no batch through its pipeline for 5 s)")
HOLDS_THE_LOCK = ("hold_the_lock_on_poison", "killed as stuck (no status for 5 s)")


@pytest.mark.parametrize(
    ("delivery", "workers", "inputs", "max_batch", "poisoned"),
    [
        ("at-least-once", 1, 6000, 1024, ABORTS),
        ("exactly-once", 2, 300, 32, ABORTS),
        ("at-least-once", 1, 300, 32, HANGS),
        ("at-least-once", 1, 300, 32, HOLDS_THE_LOCK),
    ],
    ids=["at-least-once-1-backlog", "exactly-once-2", "hangs-at-least-once-1", "holds-the-lock-at-least-once-1"],
)
def test_an_input_that_kills_or_hangs_its_worker_is_set_aside_and_the_stream_goes_on(
    bootstrap: str,
    topics: Topics,
    group: str,
    mlp_path: Path,
    delivery: str,
    workers: int,
    inputs: int,
    max_batch: int,
    poisoned: tuple[str, str],
) -> None:
    """The preprocess function aborts the process (SIGABRT) on one input, as a failed check in a
    TensorFlow kernel does, or never returns (sleeping, or holding the interpreter lock, so that the
    worker stops reporting its status too). Before, every restart read it again and died: the
    partition never moved on (6 deaths in 2 minutes, measured); a hang held the partition for good.
    A worker whose pipeline does not move, or that reports nothing, for ``stuck_kill_s`` (5 s here)
    is killed by its supervisor, a death like the others. With two workers, a later death may be the
    other worker's, given the partition after the first. With 300 inputs, two deaths: the inputs in
    flight at the first run one at a time (unless each takes over ALONE_SECONDS / their number: then
    as with a backlog). With 6,000 and batches of 1,024, the first death leaves more than ALONE_MAX
    suspects in the poison's partition (3,000 or so, fetched well past it): they run in groups, the
    poison's group dies, and its inputs run one at a time: three deaths."""
    preprocess, death = poisoned
    inp, out, dlq = topics("in", "out", "dlq", partitions=2)
    poison = inputs * 13 // 30
    values = [pack_input(np.full(4, POISON if i == poison else i % 600, "float32"), id=i) for i in range(inputs)]
    publish(bootstrap, inp, [(str(i).encode(), value) for i, value in enumerate(values)])
    command = consumer_command(
        bootstrap, mlp_path, inp, out, group, "--dlq-topic", dlq, "--delivery", delivery, "--workers", str(workers),
        "--preprocess", f"tests.preprocessors:{preprocess}", "--max-batch-size", str(max_batch), "--stop-at-end",
    )  # fmt: skip
    deployment = Deployment(command, {**ENV, "TFSTREAM_STUCK_KILL_S": "5"})
    summary = deployment.finish(timeout=300)
    ids = Counter(unpack_output(m.value())["id"] for m in read_topic(bootstrap, out, timeout=10, min_count=inputs - 1))
    letters = read_topic(bootstrap, dlq, timeout=10, min_count=1)
    suspected = deployment.events("a worker died with inputs in flight: the workers run them apart from now on")
    grouped = deployment.events(
        "a worker died with a group of suspects alone in its pipeline: the workers run them one at a time from now on"
    )
    quarantined = deployment.events("an input killed a worker alone: it goes to the dead letters without running again")
    through = deployment.events("every input a worker died with has run")
    print(
        f"{delivery}, {workers} workers, {inputs} inputs: {summary['restarts']} restarts; suspects "
        f"{[e['inputs'] for e in suspected]}, then of a group {[e['inputs'] for e in grouped]}; quarantined "
        f"{[e['input'] for e in quarantined]}; {len(ids)} ids predicted; {len(letters)} dead letters; then run "
        f"{[(e['ran_alone'], e['groups'], e['in_groups'], e['seconds']) for e in through]} (alone, groups, in them, s)"
    )
    assert set(ids) == set(range(inputs)) - {poison}
    # one dead letter; exactly once, the embedded broker also shows any copy whose transaction aborted
    assert len(letters) == 1 or (delivery == "exactly-once" and not REAL_KAFKA)
    dead = letters[0]
    assert {(m.key(), m.value()) for m in letters} == {(str(poison).encode(), values[poison])}
    why = {name: value.decode() for name, value in dead.headers() or [] if value is not None}
    assert why["tfstream.errors.exception.class.name"] == "WorkerCrashError"
    assert why["tfstream.errors.stage"] == "predict"
    assert f"{death} twice" in why["tfstream.errors.exception.message"]
    # the first death made the inputs in flight suspects; with a backlog of them, the next was a group's
    # (which the poison's partition alone makes more than ALONE_MAX: its batches in flight and 1,024
    # claimed past them, within what was fetched; with 3,000 inputs, fetched barely past them, it was
    # once 1,001 to 1,024 of them); the last, with the poison alone, set it aside
    assert len(suspected) == 1 and len(quarantined) == 1
    if inputs > ALONE_MAX:
        assert summary["restarts"] == 3 and len(grouped) == 1
        assert suspected[0]["inputs"] > ALONE_MAX and 1 < grouped[0]["inputs"] <= isqrt(suspected[0]["inputs"]) + 1
    else:  # alone, unless this machine ran the first ones so slowly that the rest would take over ALONE_SECONDS
        assert summary["restarts"] == 2 + len(grouped) and len(grouped) <= 1
        assert through and sum(e["ran_alone"] for e in through) > 0
    assert suspected[0]["death"] == quarantined[0]["death"] == death
    assert quarantined[0]["input"] == f"{inp}[{why['tfstream.errors.partition']}]@{why['tfstream.errors.offset']}"
    assert committed(bootstrap, group, inp, 2) == _end_offsets(bootstrap, inp)


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_a_missing_output_topic_pauses_the_stream_until_it_exists(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path, delivery: str
) -> None:
    from producer_tools.topics import create_topics

    (inp,) = topics("in", partitions=2)
    out = f"late-out-{group}"
    publish(bootstrap, inp, [(str(i).encode(), pack_input(np.ones(4, "float32"), id=i)) for i in range(300)])
    env = {**ENV, "TFSTREAM_KAFKA_PRODUCER_TOPIC_METADATA_PROPAGATION_MAX_MS": "1500"}
    deployment = Deployment(consumer_command(bootstrap, mlp_path, inp, out, group, "--delivery", delivery), env)
    deployment.wait_for("cannot deliver outputs", 2, timeout=120)  # it failed, waited, tried again
    held = committed(bootstrap, group, inp, 2)
    create_topics(bootstrap, [out], partitions=2)
    seen = wait_for_outputs(bootstrap, out, set(range(300)))
    summary = deployment.stop()
    duplicates = sum(seen.values()) - len(seen)
    print(
        f"{delivery}, output topic missing: committed while missing {held}; then {len(seen)} of 300, {duplicates} dup"
    )
    # nothing committed while outputs could not go out, but where the partitions start (offset 0)
    assert all(offset <= 0 for offset in held.values())
    assert set(seen) == set(range(300)) and duplicates == 0
    assert summary["restarts"] == 0


@pytest.mark.parametrize("step", ["_retrying", "_commit_transaction"])  # adding the offsets; committing
def test_exactly_once_rides_out_a_transaction_commit_that_times_out(
    bootstrap: str,
    broker_pid: int,
    topics: Topics,
    group: str,
    mlp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
) -> None:
    """The broker freezes as the first commit begins (as it adds the offsets, or as it commits),
    mid-stream, until that step's first attempt has timed out (2.5 s, half the transaction timeout),
    and no longer than 3.5 s: the transaction, begun up to a commit interval (1 s) before, stays
    within its timeout (5 s). Adding the offsets fails only as the broker comes back, committing
    fails at 2.5 s. Once a commit has begun, librdkafka refuses new records until it ends: the
    worker used to go on producing, was refused with ``_STATE``, logged ``cannot deliver outputs``,
    aborted the transaction and redid its inputs after a back-off. (A fixed 3 s freeze left
    librdkafka's timer 0.5 s: on a loaded machine the attempt to commit once outlasted the freeze
    and succeeded.)"""
    inp, out = topics("in", "out", partitions=2)
    total = 20_000  # still flowing when the first commit begins, a commit interval (1 s) in
    publish(bootstrap, inp, ((None, pack_input(np.ones(4, "float32"), id=i)) for i in range(total)))
    frozen: list[float] = []  # when the broker was stopped, then when it was let go on
    thaw_lock = threading.Lock()

    def thaw() -> None:  # once, and only after the freeze (a call can fail before it)
        with thaw_lock:
            if len(frozen) == 1:
                os.kill(broker_pid, signal.SIGCONT)
                frozen.append(time.monotonic())

    original_step, original_call = getattr(Transactions, step), Transactions._call

    def freeze_first(self: Transactions, *args: object) -> None:
        with thaw_lock:
            first = not frozen
            if first:
                os.kill(broker_pid, signal.SIGSTOP)
                frozen.append(time.monotonic())
        if first:
            threading.Timer(3.5, thaw).start()
        original_step(self, *args)

    def thaw_once_failed(self: Transactions, what: str, call: Callable[[], None]) -> None:
        try:
            original_call(self, what, call)
        except KafkaException:
            thaw()
            raise

    monkeypatch.setattr(Transactions, step, freeze_first)
    monkeypatch.setattr(Transactions, "_call", thaw_once_failed)
    s = settings(bootstrap, mlp_path, inp, out, group, delivery="exactly-once", transaction_timeout_ms=5000)
    with structlog.testing.capture_logs() as logs:
        summary = run_worker(s)
    events = Counter(entry["event"] for entry in logs)
    ids = Counter(unpack_output(m.value())["id"] for m in read_topic(bootstrap, out, timeout=10, min_count=total))
    offsets = committed(bootstrap, group, inp, 2)
    retried = [entry["error"] for entry in logs if entry["event"] == "transaction commit failed; retrying"]
    print(f"{step} through a {frozen[1] - frozen[0]:.1f}s freeze: retried after {retried}; {dict(events)}")
    print(f"{len(ids)} ids, committed {offsets}")
    assert events["transaction commit failed; retrying"] >= 1  # the frozen step timed out and was retried
    assert "cannot deliver outputs" not in events
    assert "transaction aborted; its inputs will be processed again" not in events
    assert summary["predicted"] == total and set(ids) == set(range(total))
    assert offsets == _end_offsets(bootstrap, inp)
    if REAL_KAFKA:
        assert max(ids.values()) == 1


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_a_broker_frozen_past_the_session_timeout_is_ridden_out(
    bootstrap: str, broker_pid: int, topics: Topics, group: str, mlp_path: Path, delivery: str
) -> None:
    """The worker's session expires during the freeze: its partitions are lost (exactly once, its
    open transaction is aborted and it reads again from the last commit), then given back, and the
    stream goes on. Not shown here: that exactly once's abort matters. The freeze stops the publisher
    too, so nothing is in flight when the loss comes, and this broker shows aborted writes anyway."""
    inp, out = topics("in", "out", partitions=2)
    total = 2000
    deployment = Deployment(consumer_command(bootstrap, mlp_path, inp, out, group, "--delivery", delivery), ENV)
    deployment.wait_for("partitions assigned", 1)
    publisher = Trickle(bootstrap, inp, total, pause=0.1)
    wait_for_outputs(bootstrap, out, set(range(100)))
    frozen = 10.0  # the tests' session.timeout.ms is 6 s
    os.kill(broker_pid, signal.SIGSTOP)
    try:
        time.sleep(frozen)
    finally:
        os.kill(broker_pid, signal.SIGCONT)
    publisher.join()
    seen = wait_for_outputs(bootstrap, out, set(range(total)), timeout=180)
    summary = deployment.stop()
    duplicates = sum(seen.values()) - len(seen)
    lost = deployment.events("partitions lost: nothing of them is committed")
    print(f"{delivery}, broker frozen {frozen:.0f}s: {len(seen)} of {total} predicted, {duplicates} duplicates, "
          f"{summary['restarts']} restarts, partitions lost {len(lost)} time(s)")  # fmt: skip
    assert set(seen) == set(range(total))
    assert lost, "the freeze did not outlast the session: nothing was lost"


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_a_broker_out_of_reach_mid_stream_is_ridden_out(
    relay: Relay, group: str, mlp_path: Path, delivery: str
) -> None:
    """Every connection to the broker closed and new ones refused for 8 s, mid-stream (a broker
    restarting, the network down). Exactly once, the worker hung for good: adding the offsets to
    the transaction failed once, and its retry never returned, whatever its timeout (librdkafka
    issue 5456); the worker did not even drain at SIGTERM. Now it restarts once a call overruns
    its bound. The refused connections, about twenty lines a second, are written once per 30 s."""
    bootstrap = relay.bootstrap_servers
    inp, out = f"in-{group}", f"out-{group}"
    create_topics(bootstrap, [inp, out], partitions=2)
    command = consumer_command(bootstrap, mlp_path, inp, out, group, "--delivery", delivery)
    deployment = Deployment(command, {**ENV, "TFSTREAM_TRANSACTION_TIMEOUT_MS": "10000"})
    deployment.wait_for("partitions assigned", 1)
    total = 3000
    publisher = Trickle(bootstrap, inp, total, pause=0.1)
    wait_for_outputs(bootstrap, out, set(range(100)))
    relay.cut()
    time.sleep(8.0)
    relay.open()
    publisher.join()
    seen = wait_for_outputs(bootstrap, out, set(range(total)), timeout=120)
    deployment.stop()
    refused = [line for line in deployment.lines if "Connection refused" in line]
    restarts = [event["reason"] for event in deployment.events("worker died; restarting")]
    print(f"{delivery}, out of reach 8 s: {len(seen)} of {total} predicted, {sum(seen.values()) - len(seen)} "
          f"duplicates; {len(refused)} lines of refused connections; restarts: {restarts}")  # fmt: skip
    assert set(seen) == set(range(total))
    assert len(refused) <= 20


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_a_stop_while_the_broker_is_out_of_reach_ends_the_run_without_a_kill(
    relay: Relay, group: str, mlp_path: Path, delivery: str
) -> None:
    """SIGTERM 2 s into an outage, with 200 inputs done but not committed (commits only at the
    stop). The run ends by itself, neither killed at the end of its drain nor hung: at least once
    with exit 0, its summary and a warning line saying that those 200 inputs are read again at
    the next start (before, only a `commit failed; retrying at the next commit` warning, with no
    next commit to come); exactly once with exit 1 and one line (the commit timed out after
    `transaction_timeout_ms`; had the call hung, as librdkafka issue 5456 lets it, its bound ends it)."""
    bootstrap = relay.bootstrap_servers
    inp, out = f"in-{group}", f"out-{group}"
    create_topics(bootstrap, [inp, out], partitions=2)
    command = consumer_command(bootstrap, mlp_path, inp, out, group, "--delivery", delivery)
    env = {**ENV, "TFSTREAM_TRANSACTION_TIMEOUT_MS": "10000", "TFSTREAM_COMMIT_INTERVAL_MS": "600000"}
    deployment = Deployment(command, env)
    deployment.wait_for("partitions assigned", 1)
    publish(bootstrap, inp, ((None, pack_input(np.ones(4, "float32"), id=i)) for i in range(200)))
    assert _records_written(bootstrap, out, 200) == 200  # exactly once: not committed, so not yet visible
    relay.cut()
    time.sleep(2.0)
    started = time.monotonic()
    deployment.process.send_signal(signal.SIGTERM)
    code = deployment.process.wait(180)
    errors = [line for line in deployment.lines if line.startswith("error: ")]
    print(f"{delivery}: exit {code} {time.monotonic() - started:.1f} s after SIGTERM; {errors}")
    assert not [line for line in deployment.lines if "SIGKILL" in line or "did not drain in time" in line]
    if delivery == "at-least-once":
        (summary,) = deployment.events("summary")
        warnings = [line for line in deployment.lines if line.startswith("warning: 200 inputs were read but not")]
        assert code == 0 and summary["uncommitted"] == 200 and len(warnings) == 1
        assert (
            sum(
                e["uncommitted"]
                for e in deployment.events("inputs not committed at the stop: the next start reads them again")
            )
            == 200
        )
    else:
        assert code == 1 and len(errors) == 1


def test_exactly_once_supervisors_sharing_a_host_take_their_own_ids_and_a_fenced_one_stops(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path
) -> None:
    """Two supervisors of one group on one host: their workers' transactional ids differ (before, both
    used PREFIX-GROUP-HOST-0 and fenced each other's worker, restart after restart). A worker that
    is fenced anyway, by a producer elsewhere with its id, stops its run in one line, for good."""
    inp, out = topics("in", "out", partitions=4)
    total = 3000
    exactly_once = consumer_command(bootstrap, mlp_path, inp, out, group, "--delivery", "exactly-once")
    first = Deployment(exactly_once, ENV)
    (claimed,) = first.wait_for("worker ids claimed on this host")
    first.wait_for("worker ready")
    second = Deployment(exactly_once, ENV)
    assert second.wait_for("worker ids claimed on this host")[0]["numbers"] == [1]
    assert claimed["numbers"] == [0]
    publisher = Trickle(bootstrap, inp, total, pause=0.1)
    publisher.join()
    seen = wait_for_outputs(bootstrap, out, set(range(total)))
    assert set(seen) == set(range(total))
    assert not first.events("worker died; restarting") and not second.events("worker died; restarting")
    # a producer with the first one's id, as if a copy of it ran under the same host name elsewhere
    thief = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"tfstream-{group}-{socket.gethostname()}-0"})
    thief.init_transactions(30)
    more = Trickle(bootstrap, inp, 400, pause=0.1, first=total)
    more.join()
    first.process.wait(120)
    assert first.process.returncode == 1 and not first.events("worker died; restarting")
    assert not first.events("cannot deliver outputs")  # not told to create a topic first, then stopped
    assert not [line for line in first.lines if "Traceback" in line]  # its delivery-report thread died with one
    (error,) = [line for line in first.lines if line.startswith("error: ")]
    assert "another producer took this worker's transactional id" in error and "transactional_id_prefix" in error
    assert set(wait_for_outputs(bootstrap, out, set(range(total + 400)))) >= set(range(total + 400))
    assert second.stop()["restarts"] == 0


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_an_output_producer_that_hits_a_fatal_error_restarts_its_worker_and_loses_nothing(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path, delivery: str
) -> None:
    """librdkafka gives up on an idempotent producer it cannot keep in order (here: a broken sequence
    number, injected with its own test hook): its queued records come back purged, every produce
    after that is refused. Before, at least once, the worker took that for an output topic that could
    come back: it logged `cannot deliver outputs`, waited and retried the dead producer for ever (and
    its delivery-report thread died with a traceback). Now the worker ends with one line, so its
    supervisor restarts it with a new producer, and the replacement predicts every input."""
    inp, out = topics("in", "out", partitions=3)
    one = np.ones(4, "float32")
    s = settings(bootstrap, mlp_path, inp, out, group, delivery=delivery)
    publish(bootstrap, inp, ((str(i).encode(), pack_input(one, id=i)) for i in range(300)))
    with structlog.testing.capture_logs() as logs:
        first = Background(settings(bootstrap, mlp_path, inp, out, group, delivery=delivery, stop_at_end=False))
        assert set(wait_for_outputs(bootstrap, out, set(range(300)))) >= set(range(300))
        more = Trickle(bootstrap, inp, 1000, first=300, pause=0.02)
        time.sleep(0.3)  # mid-stream: records queued and in flight
        make_fatal(first.worker.producer, KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER)
        made_fatal = time.monotonic()
        first.thread.join(90)
        ended = time.monotonic() - made_fatal
        more.join()
    events = Counter(entry["event"] for entry in logs)
    print(f"{delivery}: the worker ended {ended:.2f} s after the fatal error with {first.error!r}; {dict(events)}")
    assert not first.thread.is_alive(), "the worker kept retrying a dead producer"
    assert isinstance(first.error, BrokerError) and not isinstance(first.error, FencedError)
    assert "fatal error" in str(first.error) and "OUT_OF_ORDER_SEQUENCE_NUMBER" in str(first.error)
    assert events["cannot deliver outputs"] == 0
    run_worker(s)  # the supervisor's restart
    seen = wait_for_outputs(bootstrap, out, set(range(1300)))
    assert set(seen) >= set(range(1300))
    if delivery == "exactly-once":  # read committed: the dead producer's open transaction was aborted
        assert max(seen.values()) == 1


@pytest.mark.parametrize(
    ("code", "ending", "delivery"),
    [
        (KafkaError.FENCED_INSTANCE_ID, FencedError, "at-least-once"),
        (KafkaError.FENCED_INSTANCE_ID, FencedError, "exactly-once"),
        (KafkaError.INCONSISTENT_GROUP_PROTOCOL, BrokerError, "at-least-once"),
    ],
)
def test_a_consumer_that_hits_a_fatal_error_ends_its_worker(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path, code: int, ending: type[BrokerError], delivery: str
) -> None:
    """librdkafka gives up on a consumer (injected with its own test hook): it reports the error once,
    as `_FATAL`, and fetches nothing more. Before, the worker logged a `consumer error` warning and
    went on polling the dead consumer for ever. Now a static member fenced by another with its
    group.instance.id ends the run (restarted, it would fence the other in turn); another fatal error
    ends the worker, which its supervisor restarts."""
    inp, out = topics("in", "out", partitions=2)
    publish(bootstrap, inp, ((None, pack_input(np.ones(4, "float32"), id=i)) for i in range(50)))
    static = {"group.instance.id": "fraud"}
    s = settings(bootstrap, mlp_path, inp, out, group, stop_at_end=False, kafka_consumer=static, delivery=delivery)
    worker = Background(s)
    assert len(wait_for_outputs(bootstrap, out, set(range(50)))) == 50
    make_fatal(worker.worker.consumer, code)
    worker.thread.join(30)
    print(f"{KafkaError(code).name()}: the worker ended with {worker.error!r}")
    assert not worker.thread.is_alive(), "the worker kept polling a dead consumer"
    assert type(worker.error) is ending
    if ending is FencedError:
        assert f"group.instance.id 'fraud-{socket.gethostname()}-0'" in str(worker.error)
    else:
        assert "the consumer hit a fatal error" in str(worker.error) and "injected by a test" in str(worker.error)


@pytest.mark.parametrize(
    ("code", "kind", "says"),
    [
        (KafkaError.INVALID_TRANSACTION_TIMEOUT, ConfigError, "invalid setting transaction_timeout_ms=3600000: "),
        (KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, BrokerError, "may not use transactional.id 'tf-g-h-0'"),
        (KafkaError._TIMED_OUT, BrokerError, "exactly-once needs brokers with transactions enabled"),
    ],
)
def test_a_transaction_that_cannot_start_says_what_to_change(code: int, kind: type, says: str) -> None:
    """Refusals of ``init_transactions`` the embedded broker never makes (it enforces neither
    ``transaction.max.timeout.ms`` nor ACLs: it took a 3,600,000 ms timeout), as librdkafka reports
    them. A timeout above the brokers' maximum is a setting to change (exit 2), not brokers without
    transactions, as every refusal said before 2026-12-03's fifth session."""
    error = start_error(KafkaError(code), "tf-g-h-0", 3_600_000)
    assert type(error) is kind and says in str(error), str(error)
