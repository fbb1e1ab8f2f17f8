"""The supervisor with real worker processes: splitting partitions, restarts, scale-out, no loss."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import tensorflow as tf
from confluent_kafka import Producer

from consumer.affinity import describe, parse_cpu_list
from consumer.cli import build_parser, checked_run
from consumer.codec import pack_input
from consumer.idle import IDLE_EVENT, more_members_than_partitions
from tests import models
from tests.helpers import (
    ENV,
    Deployment,
    Topics,
    Trickle,
    consumer_command,
    publish,
    publish_to_partition,
    wait_for_outputs,
    worker_labels,
    worker_pid,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("strategy", ["range", "cooperative-sticky"])
def test_stop_at_end_with_two_workers_ends_when_both_are_done(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path, strategy: str
) -> None:
    inp, out = topics("in", "out", partitions=4)
    publish(bootstrap, inp, ((str(i).encode(), pack_input(np.ones(4, "float32"), id=i)) for i in range(600)))
    env = {**ENV, "TFSTREAM_KAFKA_CONSUMER_PARTITION_ASSIGNMENT_STRATEGY": strategy}
    deployment = Deployment(
        consumer_command(bootstrap, mlp_path, inp, out, group, "--workers", "2", "--stop-at-end"), env
    )
    summary = deployment.finish(timeout=180)
    seen = wait_for_outputs(bootstrap, out, set(range(600)), timeout=30)
    assert set(seen) == set(range(600)) and max(seen.values()) == 1
    assert [w["exit_code"] for w in summary["workers"]] == [0, 0] and summary["predicted"] == 600
    assert summary["supervisor_imported_tensorflow"] is False


def thread_cpus(pid: int) -> set[tuple[int, ...]]:
    """The CPU sets the threads of process ``pid`` may run on, each once."""
    return {tuple(sorted(os.sched_getaffinity(int(tid)))) for tid in os.listdir(f"/proc/{pid}/task")}


def test_cpu_workers_run_each_on_its_own_cores_with_every_thread(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path
) -> None:
    """``--cpu-affinity cores`` (the default): every thread of a worker, TensorFlow's and librdkafka's
    too, stays on that worker's share of the cores; the two shares do not overlap."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("pinning two workers needs two CPUs")
    inp, out = topics("in", "out", partitions=4)
    command = consumer_command(bootstrap, mlp_path, inp, out, group, "--workers", "2", "--devices", "cpu")
    with Deployment(command, ENV) as deployment:
        started = {event["pid"]: event["cpus"] for event in deployment.wait_for("worker started", 2, timeout=60)}
        ready = [event["pid"] for event in deployment.wait_for("worker ready", 2, timeout=180)]
        publish(bootstrap, inp, ((str(i).encode(), pack_input(np.ones(4, "float32"), id=i)) for i in range(200)))
        assert set(wait_for_outputs(bootstrap, out, set(range(200)))) == set(range(200))
        shares = {pid: thread_cpus(pid) for pid in ready}
        threads = {pid: len(os.listdir(f"/proc/{pid}/task")) for pid in ready}
        summary = deployment.stop()
    print(f"worker threads {threads}, their CPU sets {shares}, as logged {started}")
    assert all(len(sets) == 1 for sets in shares.values()), shares  # every thread of a worker alike
    (first,), (second,) = shares.values()
    assert not set(first) & set(second) and sorted(first + second) == allowed
    assert sorted(started.values()) == sorted(describe(cpus) for cpus in (first, second))
    assert sorted(worker["cpus"] for worker in summary["workers"]) == sorted(started.values())


def a_pci_device_near(cpus: list[int]) -> str | None:
    """The address of a PCI device on this host whose NUMA node holds ``cpus`` (as a GPU's would)."""
    for device in sorted(Path("/sys/bus/pci/devices").glob("*")):
        try:
            near = parse_cpu_list((device / "local_cpulist").read_text())
        except OSError:
            continue
        if set(cpus) <= set(near):
            return device.name
    return None


def test_gpu_workers_run_each_on_its_own_cores_near_their_gpu(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path, tmp_path: Path
) -> None:
    """Two workers sharing GPU 0, whose PCI device (a real one of this host, as an ``nvidia-smi``
    on the PATH reports it) sits on the node of the allowed CPUs: each worker, every thread, on its
    own half of them; the workers count GPUs in nvidia-smi's order. No GPU here, so they run on
    the CPU with ``--allow-cpu-fallback``: the planning and pinning are the GPU path's own."""
    allowed = sorted(os.sched_getaffinity(0))
    device = a_pci_device_near(allowed)
    if len(allowed) < 2 or device is None:
        pytest.skip("needs two CPUs and a PCI device whose local_cpulist holds them")
    smi = tmp_path / "nvidia-smi"
    listing, query = "GPU 0: Fake (UUID: GPU-f00)", f"0, GPU-f00, 0000{device}"  # nvidia-smi's 8-digit domain
    smi.write_text(f'#!/bin/sh\n[ "$1" = -L ] && echo "{listing}" || echo "{query}"\n')
    smi.chmod(0o755)
    env = {k: v for k, v in ENV.items() if k not in {"CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"}}
    env["PATH"] = f"{tmp_path}:{os.environ['PATH']}"
    inp, out = topics("in", "out", partitions=4)
    command = consumer_command(
        bootstrap, mlp_path, inp, out, group, "--devices", "auto", "--workers-per-device", "2", "--workers", "2"
    )
    with Deployment([*command, "--allow-cpu-fallback"], env) as deployment:
        started = {event["pid"]: event["cpus"] for event in deployment.wait_for("worker started", 2, timeout=60)}
        ready = [event["pid"] for event in deployment.wait_for("worker ready", 2, timeout=180)]
        publish(bootstrap, inp, ((str(i).encode(), pack_input(np.ones(4, "float32"), id=i)) for i in range(200)))
        assert set(wait_for_outputs(bootstrap, out, set(range(200)))) == set(range(200))
        shares = {pid: thread_cpus(pid) for pid in ready}
        deployment.stop()
    assert not deployment.events("GPU workers not pinned near their GPUs")
    assert [(e["device"], e["cuda_device_order"]) for e in deployment.events("model ready")] == [
        ("gpu:0", "PCI_BUS_ID")
    ] * 2
    assert all(len(sets) == 1 for sets in shares.values()), shares
    (first,), (second,) = shares.values()
    assert not set(first) & set(second) and sorted(first + second) == allowed
    assert sorted(started.values()) == sorted(describe(cpus) for cpus in (first, second))


@pytest.fixture
def one_cpu_cgroup(group: str) -> Iterator[Path]:
    """A cgroup whose processes may use one CPU's worth of time (v1 ``cpu`` or v2), removed after;
    skips where cgroups cannot be written (not root, no delegation) or only one CPU is visible."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("a quota below the CPUs allowed needs two CPUs")
    for folder, limits in (
        (Path("/sys/fs/cgroup/cpu") / group, {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "100000"}),
        (Path("/sys/fs/cgroup") / group, {"cpu.max": "100000 100000"}),
    ):
        try:
            folder.mkdir()
        except OSError:
            continue
        try:
            for name, value in limits.items():
                (folder / name).write_text(value)
        except OSError:
            folder.rmdir()
            continue
        try:
            yield folder
        finally:
            deadline = time.monotonic() + 30
            while (folder / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
                time.sleep(0.2)  # its last processes are exiting
            folder.rmdir()
        return
    pytest.skip("cannot create a cgroup with a CPU quota here")


def test_under_a_cpu_quota_the_workers_are_sized_to_it_and_not_pinned(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path, one_cpu_cgroup: Path
) -> None:
    """As in a container run with ``--cpus 1`` (or a pod with a CPU limit of 1) that still sees every
    CPU: one CPU worker, one thread, not pinned to a core that is not its own."""
    inp, out = topics("in", "out", partitions=2)
    publish(bootstrap, inp, ((str(i).encode(), pack_input(np.ones(4, "float32"), id=i)) for i in range(100)))
    run = shlex.join(consumer_command(bootstrap, mlp_path, inp, out, group, "--devices", "cpu", "--stop-at-end"))
    command = ["sh", "-c", f"echo $$ > {one_cpu_cgroup / 'cgroup.procs'} && exec {run}"]
    with Deployment(command, ENV) as deployment:
        (quota,) = deployment.wait_for("a CPU quota below the CPUs allowed: CPU workers sized to it, not pinned")
        summary = deployment.finish(timeout=180)
    assert quota["quota"] == 1.0 and quota["sized_to"] == 1
    assert [(w["device"], "cpus" in w) for w in summary["workers"]] == [("cpu", False)]
    assert set(wait_for_outputs(bootstrap, out, set(range(100)))) == set(range(100))


def test_cpu_affinity_off_leaves_the_workers_unpinned() -> None:
    flags = ["--bootstrap-servers", "localhost:9092", "--input-topic", "in", "--output-topic", "out", "--group", "g"]
    flags += ["--model", "m.keras", "--devices", "cpu", "--workers", "2"]
    _, pinned = checked_run(build_parser().parse_args(["run", *flags]))
    _, free = checked_run(build_parser().parse_args(["run", *flags, "--cpu-affinity", "off"]))
    assert [slot.cpus for slot in free] == [(), ()]
    if len(os.sched_getaffinity(0)) >= 2:
        assert all(slot.cpus for slot in pinned)


def test_a_bounded_run_s_progress_says_how_many_inputs_remain(
    bootstrap: str, topics: Topics, group: str, tmp_path: Path
) -> None:
    """A backfill's progress line says how many inputs are left to read, and about how long that takes."""
    inp, out = topics("in", "out", partitions=4)
    # 800: with 400, once in a run of the whole suite, no line knew the lag before the end (not understood)
    total = 800
    publish(bootstrap, inp, ((str(i).encode(), pack_input(np.ones(4, "float32"), id=i)) for i in range(total)))
    slow = models.slow_saved_model(tmp_path / "slow", iterations=1000)  # 46-81 s for these in suite runs, batches of 8
    command = consumer_command(
        bootstrap, slow, inp, out, group, "--workers", "2", "--max-batch-size", "8", "--stop-at-end"
    )
    # a line every half second, fresh lags in each: several lines mid-run even on a machine four times as fast
    often = {"TFSTREAM_PROGRESS_INTERVAL_S": "0.5", "TFSTREAM_KAFKA_CONSUMER_STATISTICS_INTERVAL_MS": "200"}
    with Deployment(command, {**ENV, **often}) as deployment:
        assert deployment.finish(timeout=180)["predicted"] == total
        lines = deployment.events("progress")
    print(f"lag and eta, line by line: {[(line['lag'], line['eta_s']) for line in lines]}")
    known = [line for line in lines if line["lag"] is not None]
    assert any(line["lag"] > 0 and line["eta_s"] is not None for line in known)
    # from the committed offsets: never less than what is not yet predicted, and only going down
    assert all(total - line["predicted"] <= line["lag"] <= total for line in known)
    assert [line["lag"] for line in known] == sorted((line["lag"] for line in known), reverse=True)


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_the_lag_is_known_with_more_workers_than_partitions_and_exactly_once(
    bootstrap: str, topics: Topics, group: str, tmp_path: Path, delivery: str
) -> None:
    """A worker the group gave no partition has nothing behind: its lag is 0, not unknown. It was
    unknown (only a worker that had lost all its partitions counted as idle), and so was the
    whole progress line's, for as long as that worker ran. Exactly once, the lag was unknown for
    the whole run (librdkafka counts from its consumer's own commits, and the transactions commit
    the offsets), and for a group that had committed before it would not have moved. (Under load,
    this test also failed when the second worker joined late: the first one's revoke pushed its
    whole read-ahead through the model, and the joining worker, its lag unknown, waited 17 s.)"""
    inp, out = topics("in", "out", partitions=1)
    total = 480
    publish(bootstrap, inp, ((str(i).encode(), pack_input(np.ones(4, "float32"), id=i)) for i in range(total)))
    slow = models.slow_saved_model(tmp_path / "slow")  # about 0.2 s per batch of 8
    flags = ("--workers", "2", "--max-batch-size", "8", "--stop-at-end", "--delivery", delivery)
    command = consumer_command(bootstrap, slow, inp, out, group, *flags)
    often = {"TFSTREAM_PROGRESS_INTERVAL_S": "0.5", "TFSTREAM_KAFKA_CONSUMER_STATISTICS_INTERVAL_MS": "200"}
    with Deployment(command, {**ENV, **often}) as deployment:
        summary = deployment.finish(timeout=180)
        lines = deployment.events("progress")
    assert summary["predicted"] == total
    assignments = [event["partitions"] for event in deployment.events("partitions assigned")]
    assert [] in assignments  # a worker was left without a partition
    # ... and said why, once: the worker the group left without a partition, not the other
    (idle,) = deployment.events(IDLE_EVENT)
    idle_workers = {event["worker"] for event in deployment.events("partitions assigned") if not event["partitions"]}
    assert idle["worker"] in idle_workers and idle["level"] == "warning"
    assert (idle["group"], idle["topic"], idle["partitions"]) == (group, inp, 1)
    assert "add partitions to" in idle["advice"] and "run fewer workers" in idle["advice"]
    print(f"lag, line by line: {[line['lag'] for line in lines]}")
    known = [line for line in lines if line["lag"] is not None]
    assert any(line["lag"] > 0 for line in known)
    assert all(total - line["predicted"] <= line["lag"] <= total for line in known)
    assert [line["lag"] for line in known] == sorted((line["lag"] for line in known), reverse=True)


@pytest.mark.parametrize(
    ("eager", "members", "partitions", "surplus"),
    [
        (True, 0, 4, True),  # the broker lists no members: an eager empty assignment tells alone
        (False, 0, 4, False),  # ... a cooperative one may be a rebalance's first round
        (False, 5, 4, True),  # the members listed decide, whatever the protocol
        (True, 4, 4, False),
        (False, 3, 4, False),
    ],
)
def test_an_empty_assignment_is_called_idle_only_with_more_members_than_partitions(
    eager: bool, members: int, partitions: int, surplus: bool
) -> None:
    """The cooperative cases: the embedded broker lists no group members (Kafka does), so they are
    checked here, apart from a group."""
    assert more_members_than_partitions(eager, members, partitions) is surplus


def test_stop_at_end_workers_leave_together_so_no_rebalance_stops_the_last_one(
    bootstrap: str, topics: Topics, group: str, tmp_path: Path
) -> None:
    """The worker that finished first used to leave at once: the group rebalanced under the other,
    still reading, which stopped for the rejoin (3.4 s on this broker; a bench drain took twice as
    long) and was given every partition again. Now the workers of one host wait at their end and
    leave together: no partition is assigned once a worker has begun to leave."""
    inp, out = topics("in", "out", partitions=2)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(122):  # one partition takes its worker about 3 s, the other about 0.2 s
        producer.produce(inp, pack_input(np.ones(4, "float32"), id=i), str(i).encode(), partition=int(i >= 120))
    producer.flush(30)
    model = models.slow_saved_model(tmp_path / "slow")  # about 0.2 s per batch of 8
    flags = ("--workers", "2", "--stop-at-end", "--max-batch-size", "8")
    deployment = Deployment(consumer_command(bootstrap, model, inp, out, group, *flags), ENV)
    summary = deployment.finish(timeout=180)
    assert [w["exit_code"] for w in summary["workers"]] == [0, 0] and summary["predicted"] == 122
    events = [json.loads(line).get("event") for line in deployment.lines if line.startswith("{")]
    assert events.count("reached the end of its partitions; waiting to leave with the other workers") >= 2
    assert "every worker reached the end of its partitions: stopping them together" in events
    first_leaving = events.index("draining")
    assert "partitions assigned" not in events[first_leaving:], "a worker was rebalanced at the end"
    seen = wait_for_outputs(bootstrap, out, set(range(122)), timeout=30)
    assert max(seen.values()) == 1


def test_gpu_pinning_runs_the_same_code_on_a_cpu_only_host(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path
) -> None:
    inp, out = topics("in", "out", partitions=1)
    publish(bootstrap, inp, ((None, pack_input(np.ones(4, "float32"), id=i)) for i in range(20)))
    env = {k: v for k, v in ENV.items() if k != "CUDA_VISIBLE_DEVICES"}
    command = consumer_command(bootstrap, mlp_path, inp, out, group, "--devices", "gpu:0", "--stop-at-end")
    deployment = Deployment([*command, "--allow-cpu-fallback"], env)
    summary = deployment.finish(timeout=120)
    (ready,) = deployment.events("model ready")
    assert ready["device"] == "gpu:0" and ready["cuda_visible_devices"] == "0"
    assert summary["workers"][0]["device"] == "gpu:0" and summary["predicted"] == 20
    (fallback,) = deployment.events("no GPU visible to TensorFlow: running on the CPU (--allow-cpu-fallback)")
    assert fallback["level"] == "warning" and fallback["cuda_visible_devices"] == "0"
    # no nvidia-smi here to tell where GPU 0 sits: said once, and the worker left unpinned
    (unpinned,) = deployment.events("GPU workers not pinned near their GPUs")
    assert unpinned["reads"].startswith("nvidia-smi --query-gpu")
    assert "cpus" not in deployment.events("worker started")[0]


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="a GPU is visible here")
def test_a_gpu_that_tensorflow_cannot_see_is_a_configuration_error_not_a_quiet_cpu_run(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path
) -> None:
    inp, out = topics("in", "out", partitions=1)
    env = {k: v for k, v in ENV.items() if k != "CUDA_VISIBLE_DEVICES"}
    run = subprocess.run(
        consumer_command(bootstrap, mlp_path, inp, out, group, "--devices", "gpu:0", "--stop-at-end"),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: worker 0 was given gpu:0, but TensorFlow sees no GPU (CUDA_VISIBLE_DEVICES=0; ")
    assert "--devices cpu" in last and "--allow-cpu-fallback" in last
    assert '"event": "model ready"' not in run.stderr


def test_two_workers_split_the_partitions_and_a_sigkilled_worker_loses_nothing(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path
) -> None:
    inp, out = topics("in", "out", partitions=4)
    total = 4000
    deployment = Deployment(consumer_command(bootstrap, mlp_path, inp, out, group, "--workers", "2"), ENV)
    deployment.wait_for("worker ready", 2)
    publisher = Trickle(bootstrap, inp, total, pause=0.1)
    deployment.wait_for("partitions assigned", 2)
    labels = _wait_for_labels(bootstrap, out, 2)
    victim = worker_pid(max(labels, key=lambda label: labels[label]))  # a worker that has made progress
    os.kill(victim, signal.SIGKILL)
    deployment.wait_for("worker ready", 3)
    publisher.join()
    seen = wait_for_outputs(bootstrap, out, set(range(total)))
    summary = deployment.stop()
    duplicates = sum(seen.values()) - len(seen)
    print(f"SIGKILL of worker pid {victim}: {len(seen)} of {total} inputs predicted, {duplicates} duplicates")
    assert set(seen) == set(range(total))
    assert summary["restarts"] == 1
    # Only the killed worker's uncommitted window is read again: at most a commit interval of traffic
    # (1 s at this publisher's ~1,000 inputs/s) plus what was in flight in its pipeline.
    assert duplicates <= 1500


@pytest.mark.parametrize(
    ("strategy", "delivery"),
    [("range", "at-least-once"), ("cooperative-sticky", "at-least-once"), ("cooperative-sticky", "exactly-once")],
)
def test_a_second_supervisor_joins_and_leaves_under_load_without_loss_or_duplicates(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path, strategy: str, delivery: str
) -> None:
    """Eager (Kafka's default, ``range``): every rebalance revokes every partition and assigns them
    again. Cooperative: only the partitions that move are revoked, then assigned
    (``incremental_assign``: each worker failed at its first assignment with ``assign``)."""
    inp, out = topics("in", "out", partitions=4)
    total = 5000
    env = {**ENV, "TFSTREAM_KAFKA_CONSUMER_PARTITION_ASSIGNMENT_STRATEGY": strategy, "TFSTREAM_DELIVERY": delivery}
    first = Deployment(consumer_command(bootstrap, mlp_path, inp, out, group), env)
    first.wait_for("worker ready")
    publisher = Trickle(bootstrap, inp, total, pause=0.1)
    wait_for_outputs(bootstrap, out, set(range(200)))
    second = Deployment(consumer_command(bootstrap, mlp_path, inp, out, group), env)
    (ready,) = second.wait_for("worker ready")
    _wait_for_labels(bootstrap, out, 2)
    assert any(worker_pid(label) == ready["pid"] for label in worker_labels(bootstrap, out))
    second.stop()
    publisher.join()
    seen = wait_for_outputs(bootstrap, out, set(range(total)))
    first.stop()
    # 2 members, 4 partitions: under cooperative rebalancing the joining worker's first assignment is
    # empty, and is no reason for the idle warning
    assert not first.events(IDLE_EVENT) and not second.events(IDLE_EVENT)
    duplicates = sum(seen.values()) - len(seen)
    print(f"worker added then removed under load: {len(seen)} of {total} predicted, {duplicates} duplicates")
    # both deployments' own accounts, should the stream stall (seen once: 1,700 of 5,000, no duplicates)
    accounts = ["first, last 60 lines:", *first.lines[-60:], "second, last 30 lines:", *second.lines[-30:]]
    assert set(seen) == set(range(total)) and duplicates == 0, "\n".join(accounts)


def test_a_rebalance_leaves_what_the_model_was_not_handed_to_the_partition_s_next_owner(
    bootstrap: str, topics: Topics, group: str, tmp_path: Path
) -> None:
    """A worker behind a backlog holds up to a thousand inputs read ahead. On a revoke it used to
    push them all through its model before letting the partitions go, holding the whole group's
    rebalance that long: a worker joining to share the load found the backlog done. Now what the
    model was not handed stays unread and uncommitted, and the next owner reads it: nothing lost,
    nothing twice."""
    inp, out = topics("in", "out", partitions=2)
    total = 800
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(total):  # ids 0-399 in partition 0, the rest in partition 1
        producer.produce(inp, pack_input(np.ones(4, "float32"), id=i), str(i).encode(), partition=int(i >= 400))
    producer.flush(30)
    # about 0.6 s a batch of 8 here: 60 s for the backlog alone, so the second worker joins well
    # before its end, however slowly it starts under load
    slow = models.slow_saved_model(tmp_path / "slow", iterations=1200)
    command = consumer_command(bootstrap, slow, inp, out, group, "--max-batch-size", "8")
    first = Deployment(command, {**ENV, "TFSTREAM_PROGRESS_INTERVAL_S": "1"})
    first.wait_for("progress", where=lambda line: line["predicted"] > 0)  # its backlog in hand
    second = Deployment(command, ENV)
    (ready,) = second.wait_for("worker ready", timeout=120)
    seen = wait_for_outputs(bootstrap, out, set(range(total)), timeout=180)
    labels = worker_labels(bootstrap, out)
    second.stop()
    first.stop()
    duplicates = sum(seen.values()) - len(seen)
    by_second = sum(n for label, n in labels.items() if worker_pid(label) == ready["pid"])
    print(f"{len(seen)} of {total} predicted, {duplicates} twice; the joining worker predicted {by_second}")
    assert set(seen) == set(range(total)) and duplicates == 0
    assert by_second > 0


def test_a_bounded_run_under_cooperative_rebalancing_finishes_a_partition_taken_from_it_short_of_its_end(
    bootstrap: str, topics: Topics, group: str, tmp_path: Path
) -> None:
    """Two single-worker runs of one group, the second joining mid-backlog. The cooperative
    assignor takes the partition holding the inputs from the first (its other one is empty, so at
    its end) and hands it on a round later, to the second, which had left by then: an empty first
    round is its end. The first, at the end of what it kept, used to leave too, and both exited 0
    with about 110 of the 400 inputs never read. Now it waits until what it gave up is taken up or
    comes back (here, once the broker expired the member that had left)."""
    inp, out = topics("in", "out", partitions=2)
    total = 400
    publish_to_partition(bootstrap, inp, 0, range(total))
    slow = models.slow_saved_model(tmp_path / "slow", iterations=1200)  # about 0.6 s a batch of 8
    env = {**ENV, "TFSTREAM_KAFKA_CONSUMER_PARTITION_ASSIGNMENT_STRATEGY": "cooperative-sticky"}
    command = consumer_command(bootstrap, slow, inp, out, group, "--max-batch-size", "8", "--stop-at-end")
    first = Deployment(command, {**env, "TFSTREAM_PROGRESS_INTERVAL_S": "1"})
    first.wait_for("progress", where=lambda line: line["predicted"] > 0)
    second = Deployment(command, env)
    summaries = [first.finish(timeout=240), second.finish(timeout=60)]
    seen = wait_for_outputs(bootstrap, out, set(range(total)), timeout=30)
    revoked = [e["partitions"] for e in first.events("partitions revoked")]
    print(f"revoked from the first: {revoked}; predicted {[s['predicted'] for s in summaries]}")
    assert revoked[0] == [[inp, 0]], f"the test needs the partition with the inputs moved alone, not {revoked}"
    assert set(seen) == set(range(total)) and sum(seen.values()) == total
    assert sum(s["predicted"] for s in summaries) == total


def test_a_bounded_run_stops_once_every_worker_has_said_for_a_moment_that_it_is_at_its_end() -> None:
    """A held worker a rebalance takes off its end says so at once; the supervisor stops the run
    only once all have been at their end for ``AT_END_SETTLE_S``, so that one worker's report from
    before a rebalance round and another's from after it do not make a finished run."""
    from types import SimpleNamespace

    from consumer.config import load_settings
    from consumer.devices import WorkerSlot
    from consumer.supervisor import AT_END_SETTLE_S, Supervisor

    required = {"bootstrap_servers": "k:9092", "input_topic": "in", "output_topic": "out", "group": "g"}
    settings = load_settings({**required, "model": "m.keras", "stop_at_end": True}, None, {})
    supervisor = Supervisor(settings, [WorkerSlot(0, "cpu"), WorkerSlot(1, "cpu")])
    a, b = supervisor.children
    for child in supervisor.children:
        child.process = SimpleNamespace(pid=0)  # type: ignore[assignment]  # alive; no signal is sent to pid 0

    def report(child: Any, at_end: bool, ago: float = 0.0) -> None:
        supervisor._on_report(child, "status", {"at_end": at_end})
        if child.at_end_since is not None:
            child.at_end_since -= ago

    report(a, True, ago=5)
    report(b, True)
    supervisor._stop_if_all_at_end()
    assert supervisor._stopping_since is None  # b just got there
    report(b, True, ago=AT_END_SETTLE_S)
    report(a, False)  # a rebalance callback took a off its end
    report(a, True)
    supervisor._stop_if_all_at_end()
    assert supervisor._stopping_since is None
    a.at_end_since -= AT_END_SETTLE_S  # type: ignore[operator]
    supervisor._stop_if_all_at_end()
    assert supervisor._stopping_since is not None


def _wait_for_labels(bootstrap: str, topic: str, count: int, timeout: float = 90) -> dict[bytes, int]:
    import time

    deadline = time.monotonic() + timeout
    while len(labels := worker_labels(bootstrap, topic)) < count:
        assert time.monotonic() < deadline, f"outputs came from {len(labels)} workers, not {count}"
        time.sleep(0.5)
    return dict(labels)


def test_static_membership_gives_each_worker_its_own_instance_id_kept_across_its_restart(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path
) -> None:
    """`group.instance.id` given once for the deployment is the stem of each worker's own id. Before,
    every worker joined with the very id given: on Kafka they fence each other in turn, and on the
    embedded broker each got every partition, so every input came out once per worker. (How fast a
    restarted static member gets its partitions back is the broker's affair, and the embedded one
    does not implement static membership: only the id it rejoins with is checked.)"""
    inp, out = topics("in", "out", partitions=4)
    env = {**ENV, "TFSTREAM_KAFKA_CONSUMER_GROUP_INSTANCE_ID": "fraud"}
    deployment = Deployment(consumer_command(bootstrap, mlp_path, inp, out, group, "--workers", "2"), env)
    (claimed,) = deployment.wait_for("worker ids claimed on this host")
    ids = {event["pid"]: event["group_instance_id"] for event in deployment.wait_for("worker ready", 2)}
    # this test is about the ids: inputs are sent once the group settled. A rebalance while they flow
    # may repeat some, at least once (32 came out twice in one full suite, where the two workers
    # joined apart); the embedded broker does not implement static membership, which is not
    # checked here
    deployment.wait_until_balanced(4)
    publisher = Trickle(bootstrap, inp, 2000, pause=0.05)
    publisher.join()
    seen = wait_for_outputs(bootstrap, out, set(range(2000)))
    duplicates = sum(seen.values()) - len(seen)
    print(f"static ids {sorted(ids.values())}: {len(seen)} of 2000 predicted, {duplicates} duplicates")
    assert set(seen) == set(range(2000)) and max(seen.values()) == 1
    host = socket.gethostname()
    assert claimed["numbers"] == [0, 1] and set(ids.values()) == {f"fraud-{host}-0", f"fraud-{host}-1"}
    labels = worker_labels(bootstrap, out)
    assert len(labels) == 2  # both workers predicted
    victim = worker_pid(max(labels, key=lambda label: labels[label]))
    os.kill(victim, signal.SIGKILL)
    restarted = deployment.wait_for("worker ready", 3)[-1]
    assert deployment.stop()["restarts"] == 1
    assert restarted["group_instance_id"] == ids[victim] and restarted["pid"] != victim


def test_a_supervisor_that_fails_stops_its_workers_and_exits(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path, tmp_path: Path
) -> None:
    """A bug in the supervisor's loop (injected here) ends the run with its traceback. Before, its
    workers were not told, and its exit waited for them for good (multiprocessing joins children)."""
    inp, out = topics("in", "out", partitions=2)
    script = tmp_path / "failing_supervisor.py"
    script.write_text(
        "import sys\n"
        "from consumer import supervisor\n"
        "from consumer.cli import main\n"
        "def fail_once_serving(self):\n"
        "    if any(child.ready_at is not None for child in self.children):\n"
        "        raise RuntimeError('a bug in the supervisor')\n"
        "if __name__ == '__main__':\n"
        "    supervisor.Supervisor._log_progress = fail_once_serving\n"
        "    sys.exit(main(sys.argv[1:]))\n"
    )
    run_flags = consumer_command(bootstrap, mlp_path, inp, out, group, "--workers", "2")[3:]  # from ``run`` on
    command = [sys.executable, str(script), *run_flags]
    process = subprocess.Popen(command, env=ENV, stderr=subprocess.PIPE, text=True)
    try:
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 1 and "RuntimeError: a bug in the supervisor" in err, err[-2000:]
    started = [json.loads(line)["pid"] for line in err.splitlines() if '"event": "worker started"' in line]
    assert len(started) == 2 and not any(psutil.pid_exists(pid) for pid in started), err[-2000:]


@pytest.mark.parametrize(
    ("silent_s", "stalled_s", "killed_for"),
    [
        (10.0, 0.0, "killed as stuck (no status for 5 s)"),  # a worker that holds the interpreter lock for good
        (0.0, 6.0, "killed as stuck (no batch through its pipeline for 5 s)"),
        (0.0, 4.0, ""),  # slow, not stuck
    ],
    ids=["no-status", "stalled", "neither"],
)
def test_a_ready_worker_silent_or_stalled_for_stuck_kill_s_is_killed_and_named_so(
    silent_s: float, stalled_s: float, killed_for: str
) -> None:
    """The supervisor's side of a hang (``stuck_kill_s``), on a real process standing in for the worker
    (end to end, in ``tests/test_faults.py``: a preprocess function that sleeps for ever, and one that
    holds the interpreter lock, so that the worker stops reporting)."""
    from consumer.config import load_settings
    from consumer.devices import WorkerSlot
    from consumer.supervisor import Supervisor

    required = {"bootstrap_servers": "k:9092", "input_topic": "in", "output_topic": "out", "group": "g"}
    settings = load_settings({**required, "model": "m.keras", "stuck_kill_s": 5}, None, {})
    supervisor = Supervisor(settings, [WorkerSlot(0, "cpu")])
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        child, now = supervisor.children[0], time.monotonic()
        child.process = worker  # type: ignore[assignment]  # what the check uses of it: its pid
        child.ready_at, child.status_at, child.status = now - 30, now - silent_s, {"stalled_s": stalled_s}
        supervisor._kill_if_stuck()
        assert child.killed_for == killed_for
        died = worker.wait(10) if killed_for else worker.poll()
        assert died == (-signal.SIGKILL if killed_for else None)
    finally:
        worker.kill()
        worker.wait()


@pytest.mark.parametrize("killed_by", ["outside", "supervisor"])
def test_a_worker_killed_while_stopping_fails_the_run_with_a_line_that_says_what_becomes_of_its_inputs(
    tmp_path: Path, killed_by: str
) -> None:
    """A worker SIGKILLed while the run stops (by the OOM killer or a ``kill -9``, as seen by hand when
    a bounded run's workers stopped together; or by its supervisor, its drain too long) sends no
    summary. Before, the run's line said only ``the worker was killed by SIGKILL``, and the summary's
    ``uncommitted`` left that worker's inputs out without a word."""
    import multiprocessing

    from consumer.config import load_settings
    from consumer.devices import WorkerSlot
    from consumer.supervisor import UNCOMMITTED_READ_AGAIN, Supervisor

    required = {"bootstrap_servers": "k:9092", "input_topic": "in", "output_topic": "out", "group": "g"}
    supervisor = Supervisor(load_settings({**required, "model": "m.keras"}, None, {}), [WorkerSlot(0, "cpu")])
    supervisor._scratch = str(tmp_path)
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    worker = context.Process(target=time.sleep, args=(60,))  # a real process standing in for the worker
    worker.start()
    send.close()
    child = supervisor.children[0]
    child.process, child.report, child.ready_at = worker, receive, time.monotonic()  # type: ignore[assignment]
    try:
        if killed_by == "outside":
            supervisor._stopping_since = time.monotonic()
            os.kill(worker.pid or 0, signal.SIGKILL)
            death = "the worker was killed by SIGKILL"
        else:
            supervisor._stopping_since = time.monotonic() - supervisor._stop_budget_s()
            supervisor._kill_if_drain_hangs()
            death = f"the worker was killed by the supervisor, its drain past {supervisor._stop_budget_s():g} s"
        worker.join(10)
        supervisor._on_exit(child)
        assert supervisor._result() == 1
        assert supervisor.error == f"{death} while stopping: {UNCOMMITTED_READ_AGAIN} [worker 0 (cpu)]"
    finally:
        worker.kill()
        worker.join()


def test_the_summary_counts_every_run_of_a_restarted_worker(tmp_path: Path) -> None:
    """A worker killed and restarted: its killed run sent no summary, and its counts (its tally) were
    left out of the run's summary, which said 141,342 consumed of 240,000 in a
    soak whose worker was killed five times (2026-12-04). They count now; ``uncommitted`` stays its
    last run's, since what an earlier run left uncommitted the next one read again."""
    import multiprocessing

    from consumer.config import load_settings
    from consumer.counts import COUNTED
    from consumer.devices import WorkerSlot
    from consumer.supervisor import Supervisor

    required = {"bootstrap_servers": "k:9092", "input_topic": "in", "output_topic": "out", "group": "g"}
    supervisor = Supervisor(load_settings({**required, "model": "m.keras"}, None, {}), [WorkerSlot(0, "cpu")])
    supervisor._scratch = str(tmp_path)
    child = supervisor.children[0]
    context = multiprocessing.get_context("spawn")

    def one_run(
        target: Any, args: tuple[Any, ...], reports: list[tuple[str, dict[str, Any]]], tally: dict[str, int]
    ) -> Any:
        """A real process standing in for one run of the worker, what it reported, and what it counted."""
        receive, send = context.Pipe(duplex=False)
        process = context.Process(target=target, args=args)
        process.start()
        send.close()
        child.process, child.report, child.ready_at, child.summary = process, receive, time.monotonic(), {}
        child.tally = [tally.get(name, 0) for name in COUNTED]
        for kind, payload in reports:
            supervisor._on_report(child, kind, payload)
        return process

    counts_then = {"consumed": 700, "predicted": 690, "dead_lettered": 10, "batches": 20}
    status = {"counts": counts_then, "traces_after_warmup": 1}
    killed = one_run(time.sleep, (60,), [("status", status)], counts_then)
    os.kill(killed.pid, signal.SIGKILL)
    killed.join()
    supervisor._on_exit(child)  # died: restarted
    last = {"consumed": 300, "predicted": 300, "batches": 9, "uncommitted": 4, "latency_ms": {"p99": 5.0}}
    ended = one_run(int, (), [("status", {"counts": {"consumed": 100}}), ("summary", last)], {"consumed": 100})
    ended.join()
    supervisor._on_exit(child)
    summary = supervisor.summary()
    counts = ("consumed", "predicted", "dead_lettered", "batches", "traces_after_warmup", "uncommitted")
    assert [summary[key] for key in counts] == [1000, 990, 10, 29, 1, 4]
    (worker,) = summary["workers"]
    assert [worker[key] for key in counts] == [1000, 990, 10, 29, 1, 4] and worker["latency_ms"] == {"p99": 5.0}


def test_a_killed_worker_s_counts_are_summed_to_its_last_one_not_to_its_last_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker keeps its counts in memory it shares with the supervisor, which reads them when the
    worker died without a summary. Before, its last status report's counts stood in, sent once a
    second: a worker SIGKILLed (the out-of-memory killer) lost up to a second of counts from the
    run's summary (here 3 consumed instead of 703)."""
    from consumer import supervisor as supervisor_module
    from consumer.config import load_settings
    from consumer.devices import WorkerSlot
    from tests.helpers import counted_then_killed

    monkeypatch.setattr(supervisor_module, "worker_main", counted_then_killed)  # a real spawned process
    required = {"bootstrap_servers": "k:9092", "input_topic": "in", "output_topic": "out", "group": "g"}
    supervisor = supervisor_module.Supervisor(
        load_settings({**required, "model": "m.keras"}, None, {}), [WorkerSlot(0, "cpu")]
    )
    supervisor._scratch = str(tmp_path)
    child = supervisor.children[0]
    supervisor._start(child)
    assert child.process is not None
    child.process.join(60)
    assert child.process.exitcode == -signal.SIGKILL
    supervisor._on_exit(child)
    counts = ("consumed", "predicted", "dead_lettered", "batches", "padded_rows")
    assert [supervisor.summary()[key] for key in counts] == [703, 693, 10, 21, 6]
