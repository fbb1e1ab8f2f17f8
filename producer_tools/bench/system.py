"""The system under test: ``python -m consumer run`` as users run it, in its own processes.

Throughput is predicted messages over the time from the first input consumed to the last output
acknowledged (both reported by the workers). Latency is measured at a steady publish rate: the
workers record, per input, output acknowledgement time minus the input's record timestamp.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from confluent_kafka import Producer
from tqdm import tqdm

from consumer.codec import pack_input
from consumer.errors import BrokerError, ConfigError
from producer_tools.bench.cpu import CpuMeter
from producer_tools.bench.workloads import Inputs, Workload
from producer_tools.clients import kafka_producer
from producer_tools.consumer_run import ConsumerProcess, consumer_command
from producer_tools.publish import Pacer, produce
from producer_tools.reader import read_topic

#: flags for ``python -m consumer run``
Flags = tuple[str, ...]
#: inputs sent (and their outputs awaited) before the steady phase; a negligible share of its latencies
PRIMERS = 8


def encode(workload: Workload, inputs: Inputs) -> list[bytes]:
    rows = len(next(iter(inputs.values())))
    return [pack_input(workload.wire_example(inputs, i), id=i) for i in range(rows)]


def input_producer(bootstrap: str) -> Producer:
    return kafka_producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "compression.type": "lz4",
            "enable.idempotence": True,
        }
    )


def publish(
    bootstrap: str,
    topic: str,
    values: list[bytes],
    count: int,
    rate: float | None = None,
    desc: str = "publish",
    producer: Producer | None = None,
) -> None:
    """``count`` messages cycling through ``values``; at ``rate`` per second if given."""
    producer = producer or input_producer(bootstrap)
    pacer = Pacer(rate)
    for i in tqdm(range(count), desc=desc, unit="msg", leave=False, mininterval=1.0):
        pacer.wait(producer)
        produce(producer, topic, values[i % len(values)], str(i).encode())
    if producer.flush(120):
        raise BrokerError(f"could not publish the benchmark inputs to {topic} within 120 s; is the broker up?")


def command(bootstrap: str, source: str, out: str, workload: Workload, flags: Flags, *extra: str) -> list[str]:
    """``python -m consumer run`` for the workload; ``flags``: ``--max-wait-ms`` and whatever else the user asked."""
    group = f"bench-{uuid.uuid4().hex[:8]}"
    return consumer_command(
        bootstrap, workload.model_path, source, out, group, "--max-batch-size", str(workload.batch_size),
        "--signature", workload.serving_signature, "--log-format", "json", *flags, *extra,
    )  # fmt: skip


def throughput(summary: dict[str, Any]) -> float:
    workers = [w for w in summary["workers"] if w.get("first_consumed_at") and w.get("last_acknowledged_at")]
    if not workers:
        return 0.0
    span = max(w["last_acknowledged_at"] for w in workers) - min(w["first_consumed_at"] for w in workers)
    return summary["predicted"] / span if span > 0 else 0.0


def drain(bootstrap: str, source: str, out: str, workload: Workload, flags: Flags) -> dict[str, Any]:
    """Process a preloaded backlog with ``--stop-at-end``; the workers' summary. Inputs the
    consumer could not predict fail the run: its figures would be of failures."""
    with ConsumerProcess(command(bootstrap, source, out, workload, flags, "--from-beginning", "--stop-at-end")) as run:
        summary = run.finish(timeout=600)
        failed = summary.get("dead_lettered", 0)
        if failed:
            first = run.events("input skipped (no dead-letter topic)")
            why = f"; the first: {first[0].get('reason')}" if first else ""
            raise ConfigError(
                f"the consumer could not predict {failed:,} of the {summary['consumed']:,} inputs the bench sent{why}: "
                "the figures would be of failures; bench inputs the model takes (--inputs FILE)"
            )
        return summary


def steady_latency(
    bootstrap: str,
    source: str,
    out: str,
    workload: Workload,
    values: list[bytes],
    rate: float,
    seconds: float,
    flags: Flags,
    partitions: int,
) -> dict[str, Any]:
    """Publish at ``rate`` for ``seconds`` into a running consumer, once every worker holds its
    partitions (not across the rebalances of the workers joining); the workers' summary."""
    with ConsumerProcess(command(bootstrap, source, out, workload, flags, "--from-beginning")) as run:
        run.wait_until_balanced(partitions)
        # a few inputs first, and their outputs awaited: the workers' first fetches and the publisher's
        # first sends (connections, producer id) take a few hundred ms that belong to start-up, not to
        # steady-state latency
        producer = input_producer(bootstrap)
        publish(bootstrap, source, values, PRIMERS, desc="primers", producer=producer)
        read_topic(bootstrap, out, timeout=60, min_count=PRIMERS)
        meter = CpuMeter(bootstrap, run.process.pid)
        publish(bootstrap, source, values, max(1, int(rate * seconds)), rate, f"steady {rate:,.0f}/s", producer)
        cpu = meter.read()
        time.sleep(3.0)  # let the last inputs through (exactly-once: their transaction commit) before the drain
        return {**run.stop(timeout=600), "steady_cpu": cpu}
