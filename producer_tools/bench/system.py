"""The system under test: ``python -m consumer run`` as users run it, in its own processes.

Throughput is predicted messages over the time from the first input consumed to the last output
acknowledged (both reported by the workers). Latency is measured at a steady publish rate: the
workers record, per input, output acknowledgement time minus the input's record timestamp.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Producer
from tqdm import tqdm

from consumer.codec import pack_input
from producer_tools.bench.workloads import Inputs, Workload
from producer_tools.consumer_run import consumer_command, consumer_env


def encode(workload: Workload, inputs: Inputs) -> list[bytes]:
    rows = len(next(iter(inputs.values())))
    return [pack_input(workload.wire_example(inputs, i), id=i) for i in range(rows)]


def publish(
    bootstrap: str, topic: str, values: list[bytes], count: int, rate: float | None = None, desc: str = "publish"
) -> None:
    """``count`` messages cycling through ``values``; at ``rate`` per second if given."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "compression.type": "lz4", "enable.idempotence": True}
    )
    started = time.monotonic()
    for i in tqdm(range(count), desc=desc, unit="msg", leave=False):
        if rate:
            ahead = started + i / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        while True:
            try:
                producer.produce(topic, values[i % len(values)], str(i).encode())
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(120):
        raise RuntimeError(f"could not publish the benchmark inputs to {topic}")


@dataclass
class Run:
    """A ``python -m consumer run`` process; its JSON log lines are collected as they come."""

    command: list[str]
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.process = subprocess.Popen(self.command, env=consumer_env(), stderr=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def wait_for(self, event: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not any(f'"event": "{event}"' in line for line in list(self.lines)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the consumer never logged {event!r}:\n" + "".join(self.lines[-20:]))
            time.sleep(0.1)

    def finish(self, terminate: bool = False, timeout: float = 600) -> dict[str, Any]:
        if terminate:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout)
        self.reader.join(10)
        summaries = [json.loads(line) for line in self.lines if line.startswith('{"event": "summary"')]
        if self.process.returncode != 0 or not summaries:
            raise RuntimeError(f"the consumer failed ({self.process.returncode}):\n" + "".join(self.lines[-20:]))
        return summaries[-1]


def command(bootstrap: str, source: str, out: str, workload: Workload, max_wait_ms: float, *extra: str) -> list[str]:
    group = f"bench-{uuid.uuid4().hex[:8]}"
    return consumer_command(
        bootstrap, workload.model_path, source, out, group, "--max-batch-size", str(workload.batch_size),
        "--max-wait-ms", str(max_wait_ms), "--log-format", "json", *extra,
    )  # fmt: skip


def throughput(summary: dict[str, Any]) -> float:
    workers = [w for w in summary["workers"] if w.get("first_consumed_at") and w.get("last_acknowledged_at")]
    if not workers:
        return 0.0
    span = max(w["last_acknowledged_at"] for w in workers) - min(w["first_consumed_at"] for w in workers)
    return summary["predicted"] / span if span > 0 else 0.0


def drain(bootstrap: str, source: str, out: str, workload: Workload, max_wait_ms: float) -> dict[str, Any]:
    """Process a preloaded backlog with ``--stop-at-end``; the workers' summary."""
    return Run(command(bootstrap, source, out, workload, max_wait_ms, "--from-beginning", "--stop-at-end")).finish()


def steady_latency(
    bootstrap: str,
    source: str,
    out: str,
    workload: Workload,
    values: list[bytes],
    rate: float,
    seconds: float,
    max_wait_ms: float,
) -> dict[str, Any]:
    """Publish at ``rate`` for ``seconds`` into a running consumer; the workers' summary."""
    run = Run(command(bootstrap, source, out, workload, max_wait_ms, "--from-beginning"))
    run.wait_for("partitions assigned")
    publish(bootstrap, source, values, max(1, int(rate * seconds)), rate, desc=f"steady {rate:,.0f}/s")
    time.sleep(max(1.0, 3 * max_wait_ms / 1000))  # let the last inputs through before the drain
    return run.finish(terminate=True)
