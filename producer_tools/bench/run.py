"""One benchmark run: every measurement side by side on the same preloaded messages."""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from producer_tools.bench import baselines, report, system, workloads
from producer_tools.embedded_broker import bootstrap_or_embedded
from producer_tools.topics import create_topics

PHASES = 7


@dataclass(frozen=True)
class BenchOptions:
    workload: str = "mlp"
    messages: int | None = None
    batch_size: int | None = None
    max_wait_ms: float = 10.0
    latency_seconds: float = 10.0
    #: the steady phase's publish rate; None: half the system's throughput (what the target is for)
    latency_rate: float | None = None
    baseline_seconds: float = 10.0
    backlog: int | None = None
    partitions: int = 4
    json_path: Path | None = None
    workdir: Path = Path("bench-output")
    bootstrap: str | None = None
    consumer_args: tuple[str, ...] = ()  # more flags for python -m consumer run, e.g. --workers 2

    @property
    def flags(self) -> tuple[str, ...]:
        return ("--max-wait-ms", str(self.max_wait_ms), *self.consumer_args)


def step(number: int, what: str) -> None:
    print(f"[{number}/{PHASES}] {what}", file=sys.stderr, flush=True)


def run(options: BenchOptions) -> dict[str, Any]:
    options.workdir.mkdir(parents=True, exist_ok=True)
    with bootstrap_or_embedded(options.bootstrap, options.workdir / "broker.log") as bootstrap:
        return _measure(options, bootstrap)


def _measure(options: BenchOptions, bootstrap: str) -> dict[str, Any]:
    step(1, f"building the {options.workload} workload and publishing its inputs")
    workload = workloads.build(options.workload, options.workdir)
    workload = replace(
        workload, batch_size=options.batch_size or workload.batch_size, messages=options.messages or workload.messages
    )
    inputs = workload.inputs(min(workload.messages, 4096))
    values = system.encode(workload, inputs)
    topics = _topics(bootstrap, options.partitions)
    system.publish(bootstrap, topics["in"], values, workload.messages)
    rates: dict[str, float | None] = {}
    step(2, "I/O limit: a bare consume → decode → produce relay")
    rates["io_limit"] = baselines.io_limit(bootstrap, topics["in"], topics["relay"], workload.messages)
    step(3, "compute limit: the bare precompiled predict function, inputs in memory")
    rates["compute_limit"], full_batch_s = baselines.compute_limit(workload, inputs)
    step(4, "the system: python -m consumer run --stop-at-end draining the topic")
    drained = system.drain(bootstrap, topics["in"], topics["out"], workload, options.flags)
    system_rate = rates["system"] = system.throughput(drained)
    latency_rate = options.latency_rate or max(1.0, system_rate / 2)
    at = "half that throughput" if options.latency_rate is None else f"{latency_rate:,.0f} msg/s"
    step(5, f"latency at {at} for {options.latency_seconds:.0f}s")
    steady = system.steady_latency(
        bootstrap, topics["steady"], topics["steady_out"], workload, values, latency_rate,
        options.latency_seconds, options.flags, options.partitions,
    )  # fmt: skip
    step(6, f"the usual approaches ({options.baseline_seconds:.0f}s each for the per-message loops)")
    rates |= _usual(bootstrap, topics, workload, inputs, options.baseline_seconds)
    step(7, "memory under a backlog" if options.backlog else "memory (add --backlog N for a larger backlog)")
    memory_run = _backlog(bootstrap, options, workload, values) if options.backlog else drained
    worker = max(memory_run["workers"], key=lambda w: w.get("peak_rss_mb", 0) - w.get("rss_after_warmup_mb", 0))
    result: dict[str, Any] = {
        "workload": options.workload,
        "settings": {
            "messages": workload.messages, "batch_size": workload.batch_size, "max_wait_ms": options.max_wait_ms,
            "consumer_args": list(options.consumer_args),
            "partitions": options.partitions, "latency_seconds": options.latency_seconds,
            "latency_rate": options.latency_rate,  # None: half the system's throughput
            "backlog": options.backlog or workload.messages,
            "broker": "embedded" if options.bootstrap is None else bootstrap,
        },
        "environment": report.environment(),
        "rates": rates,
        "ratios": report.ratios(rates),
        "full_batch_ms": full_batch_s * 1000,
        "latency_rate": latency_rate,
        "latency_ms": _worst_latency(steady["workers"]),
        "consume_latency_ms": _worst_latency(steady["workers"], "consume_latency_ms"),
        "traces_after_warmup": drained["traces_after_warmup"] + steady["traces_after_warmup"],
        "rss_after_warmup_mb": worker.get("rss_after_warmup_mb"),
        "peak_rss_mb": worker.get("peak_rss_mb"),
        "memory_growth_mb": round(worker.get("peak_rss_mb", 0) - worker.get("rss_after_warmup_mb", 0), 1),
        "system_summary": drained,
    }  # fmt: skip
    result["targets"] = report.targets(options.workload, rates, result)
    result["warnings"] = report.warnings(workload.messages, baselines.RELAY_QUEUE)
    return result


def _topics(bootstrap: str, partitions: int) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:6]
    names = {k: f"bench-{k}-{suffix}" for k in ("in", "relay", "out", "steady", "steady_out", "usual_out", "backlog")}
    create_topics(bootstrap, names.values(), partitions=partitions)
    return names


def _usual(
    bootstrap: str, topics: dict[str, str], workload: workloads.Workload, inputs: workloads.Inputs, seconds: float
) -> dict[str, float | None]:
    if workload.signature.named_inputs:
        return {"model.predict per message": None, "tf.function per message": None, "process pool": None}
    return {
        "model.predict per message": baselines.per_message_loop(
            bootstrap, topics["in"], topics["usual_out"], workload, "predict", seconds
        ),
        "tf.function per message": baselines.per_message_loop(
            bootstrap, topics["in"], topics["usual_out"], workload, "tf.function", seconds
        ),
        "process pool": baselines.process_pool(workload, inputs),
    }


def _backlog(
    bootstrap: str, options: BenchOptions, workload: workloads.Workload, values: list[bytes]
) -> dict[str, Any]:
    topic = f"bench-big-{uuid.uuid4().hex[:6]}"
    create_topics(bootstrap, [topic, topic + "-out"], partitions=options.partitions)
    assert options.backlog is not None
    system.publish(bootstrap, topic, values, options.backlog, desc="backlog")
    return system.drain(bootstrap, topic, topic + "-out", workload, options.flags)


def _worst_latency(workers: list[dict[str, Any]], key: str = "latency_ms") -> dict[str, float]:
    """Each percentile's worst value over the workers (one worker: its own figures)."""
    measured = [w[key] for w in workers if w.get(key, {}).get("count")]
    if not measured:
        return {}
    return {k: max(m[k] for m in measured) for k in ("p50", "p95", "p99", "max")} | {
        "count": sum(m["count"] for m in measured)
    }
