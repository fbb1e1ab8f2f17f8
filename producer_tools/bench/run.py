"""One benchmark run: every measurement side by side on the same preloaded messages."""

from __future__ import annotations

import statistics
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from consumer.affinity import allowed_cpus, running_on
from consumer.errors import ConfigError
from consumer.signature import DEFAULT_SIGNATURE
from consumer.timing import STAGES, worst_of
from producer_tools.bench import baselines, relay_latency, report, system, workloads
from producer_tools.consumer_run import consumer_settings
from producer_tools.embedded_broker import bootstrap_or_embedded
from producer_tools.topics import create_topics

PHASES = 6


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
    #: how many times the I/O limit, the system and the latency are measured (interleaved); the median counts
    rounds: int = 1
    #: the SavedModel signature to serve (the consumer's ``--signature``)
    signature: str = DEFAULT_SIGNATURE
    #: a file of examples to send (``--inputs``); None: random inputs from the signature
    inputs: Path | None = None
    #: CPUs the embedded broker runs on alone (``--broker-cpus``); the bench and what it runs get the rest
    broker_cpus: tuple[int, ...] = ()

    @property
    def flags(self) -> tuple[str, ...]:
        return ("--max-wait-ms", str(self.max_wait_ms), *self.consumer_args)


def step(number: int, what: str) -> None:
    print(f"[{number}/{PHASES}] {what}", file=sys.stderr, flush=True)


def run(options: BenchOptions) -> dict[str, Any]:
    options.workdir.mkdir(parents=True, exist_ok=True)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    broker_log = options.workdir / "broker.log"
    with (
        bootstrap_or_embedded(options.bootstrap, broker_log, options.broker_cpus) as bootstrap,
        running_on(rest_of(options.broker_cpus)),  # the publisher, the relays, the consumer, the baselines
    ):
        return {"started_at": started_at, **_measure(options, bootstrap)}


def rest_of(broker_cpus: tuple[int, ...]) -> list[int]:
    """The CPUs this process may run on but the broker's ([] when the broker has none of its own)."""
    return [cpu for cpu in allowed_cpus() if cpu not in broker_cpus] if broker_cpus else []


def _check_batch_size(workload: workloads.Workload, asked: int | None) -> None:
    fixed = workload.fixed_batch
    if asked is not None and fixed is not None and asked != fixed:
        raise ConfigError(
            f"invalid setting --batch-size {asked}: model {workload.name!r} takes batches of exactly {fixed} "
            f"(its inputs fix the batch dimension); run with --batch-size {fixed}, or leave it out"
        )


def _workload(options: BenchOptions) -> workloads.Workload:
    """The workload, with the consumer's own code for the model as it runs (its flags, its
    environment), which the bench's own loads and inputs need as well: ``--custom-objects``,
    ``--trust-model-code`` and ``--preprocess``."""
    settings = consumer_settings(options.consumer_args)
    code = tuple(settings.custom_objects), settings.trust_model_code
    return workloads.build(
        options.workload, options.workdir, options.signature, code, settings.preprocess, options.inputs
    )


def _measure(options: BenchOptions, bootstrap: str) -> dict[str, Any]:
    step(1, f"building the {options.workload} workload and publishing its inputs")
    workload = _workload(options)
    _check_batch_size(workload, options.batch_size)
    workload = replace(
        workload, batch_size=options.batch_size or workload.batch_size, messages=options.messages or workload.messages
    )
    inputs = workload.inputs(min(workload.messages, 4096))
    values = system.encode(workload, inputs)
    topics = _topics(bootstrap, options.partitions)
    system.publish(bootstrap, topics["in"], values, workload.messages)
    step(2, "compute limit: the bare precompiled predict function, inputs in memory")
    typed = workload.model_inputs(inputs)  # once: the preprocess function, if any, runs per example
    compute_limit, full_batch_s = baselines.compute_limit(workload, typed)
    step(3, "I/O limit (a bare consume → decode → produce relay) and the system (python -m consumer run "
         f"--stop-at-end draining the topic){_times(options.rounds)}")  # fmt: skip
    rounds = _limits_and_system(bootstrap, topics, workload, options)
    drained = rounds.median_drain()
    rates: dict[str, float | None] = {
        "io_limit": statistics.median_high(rounds.io_limit),
        "compute_limit": compute_limit,
        "system": system.throughput(drained),
    }
    latency_rate = options.latency_rate or max(1.0, (rates["system"] or 0.0) / 2)
    at = "half that throughput" if options.latency_rate is None else f"{latency_rate:,.0f} msg/s"
    step(4, f"latency at {at} for {options.latency_seconds:.0f}s, the system's and the bare relay's (no model) "
         f"in turn{_times(options.rounds)}")  # fmt: skip
    _latency_rounds(rounds, bootstrap, options, workload, values, latency_rate)
    steady, relayed = rounds.median_steady(), rounds.median_relay_steady()
    step(5, f"the usual approaches ({options.baseline_seconds:.0f}s each for the per-message loops)")
    rates |= _usual(bootstrap, topics, workload, typed, options.baseline_seconds)
    step(6, "memory under a backlog" if options.backlog else "memory (add --backlog N for a larger backlog)")
    memory_runs = [_backlog(bootstrap, options, workload, values)] if options.backlog else rounds.drains
    worker = max((w for run in memory_runs for w in run["workers"]), key=_growth)
    result: dict[str, Any] = {
        "workload": options.workload,
        "settings": {
            "messages": workload.messages, "batch_size": workload.batch_size, "max_wait_ms": options.max_wait_ms,
            "consumer_args": list(options.consumer_args),
            "partitions": options.partitions, "latency_seconds": options.latency_seconds,
            "latency_rate": options.latency_rate,  # None: half the system's throughput
            "backlog": options.backlog or workload.messages,
            "rounds": options.rounds,
            "signature": options.signature,
            "inputs": None if options.inputs is None else str(options.inputs),
            "broker": "embedded" if options.bootstrap is None else bootstrap,
            "broker_cpus": list(options.broker_cpus) or None,  # None: the broker shares every CPU
        },
        "environment": report.environment(),
        "rates": rates,
        "ratios": report.ratios(rates),
        "runs": rounds.figures(),
        "full_batch_ms": full_batch_s * 1000,
        "latency_rate": latency_rate,
        "latency_ms": _worst_latency(steady["workers"]),
        "consume_latency_ms": _worst_latency(steady["workers"], "consume_latency_ms"),
        "io_limit_latency_ms": relayed["latency_ms"],
        "io_limit_consume_latency_ms": relayed["consume_latency_ms"],
        "io_limit_latency_processes": relayed["processes"],
        "stages_ms": {name: worst_of(w.get("stages_ms", {}).get(name, {}) for w in steady["workers"])
                      for name in STAGES},
        "steady_cpu": steady.get("steady_cpu"),
        "traces_after_warmup": sum(run["traces_after_warmup"] for run in rounds.drains + rounds.steady),
        "rss_after_warmup_mb": worker.get("rss_after_warmup_mb"),
        "peak_rss_mb": worker.get("peak_rss_mb"),
        "memory_growth_mb": round(_growth(worker), 1),
        "system_summary": drained,
    }  # fmt: skip
    result["targets"] = report.targets(options.workload, rates, result)
    result["warnings"] = (
        report.warnings(workload.messages, baselines.RELAY_QUEUE, result["ratios"].get("system / compute_limit"))
        + report.latency_floor(result)
        + report.shared_broker(result)
    )
    return result


@dataclass
class Rounds:
    """What each round measured. The figures reported are the median round's, so a table's figures
    come from one run, not a mix; for an even count, of the two rounds in the middle, the one less
    flattering to the system (its lower throughput, the higher I/O limit, the higher p99)."""

    io_limit: list[float] = field(default_factory=list)
    #: each round's relay, each way of fetching (``baselines.RELAY_FETCH``); its I/O limit is the faster
    io_by_fetch: list[dict[str, float]] = field(default_factory=list)
    drains: list[dict[str, Any]] = field(default_factory=list)
    steady: list[dict[str, Any]] = field(default_factory=list)
    #: each round's bare relay at the steady phase's rate (``relay_latency``)
    relay_steady: list[dict[str, Any]] = field(default_factory=list)

    def median_drain(self) -> dict[str, Any]:
        return _median_by(self.drains, system.throughput, statistics.median_low)

    def median_steady(self) -> dict[str, Any]:
        return _median_by(self.steady, _p99, statistics.median_high)

    def median_relay_steady(self) -> dict[str, Any]:
        return _median_by(self.relay_steady, _relay_p99, statistics.median_low)

    def figures(self) -> dict[str, list[float]]:
        """Every round's figure, in the order measured, for the spread."""
        system_rates = [system.throughput(d) for d in self.drains]
        pairs = zip(system_rates, self.io_limit, strict=True)
        return {
            "io_limit": [round(r, 1) for r in self.io_limit],
            **{
                f"io_limit, {way} fetch": [round(relays[way], 1) for relays in self.io_by_fetch]
                for way in baselines.RELAY_FETCH
            },
            "system": [round(r, 1) for r in system_rates],
            "system / io_limit": [round(s / i, 3) if i else 0.0 for s, i in pairs],
            "latency_p99_ms": [_p99(run) for run in self.steady],
            "io_limit_latency_p99_ms": [_relay_p99(run) for run in self.relay_steady],
        }


def _limits_and_system(
    bootstrap: str, topics: dict[str, str], workload: workloads.Workload, options: BenchOptions
) -> Rounds:
    """The relay and the system in turn, on the same preloaded messages: drift on a shared machine
    moves both, not one of them."""
    rounds = Rounds()
    for number in range(1, options.rounds + 1):
        relays = {
            way: baselines.io_limit(bootstrap, topics["in"], topics["relay"], workload.messages, fetch)
            for way, fetch in baselines.RELAY_FETCH.items()
        }
        rounds.io_by_fetch.append(relays)
        rounds.io_limit.append(max(relays.values()))
        rounds.drains.append(system.drain(bootstrap, topics["in"], topics["out"], workload, options.flags))
        ways = ", ".join(f"{way} fetch {rate:,.0f}" for way, rate in relays.items())
        system_rate = system.throughput(rounds.drains[-1])
        print(f"  round {number}/{options.rounds}: I/O limit {rounds.io_limit[-1]:,.0f} msg/s ({ways}), "
              f"system {system_rate:,.0f} msg/s", file=sys.stderr, flush=True)  # fmt: skip
    return rounds


def _latency_rounds(
    rounds: Rounds,
    bootstrap: str,
    options: BenchOptions,
    workload: workloads.Workload,
    values: list[bytes],
    rate: float,
) -> None:
    for number in range(1, options.rounds + 1):
        rounds.steady.append(_steady(bootstrap, options, workload, values, rate))
        processes = max(1, len(rounds.steady[-1]["workers"]))  # as many relays as the system had workers
        rounds.relay_steady.append(
            relay_latency.measure(bootstrap, values, rate, options.latency_seconds, options.partitions, processes)
        )
        p99, relay_p99 = _p99(rounds.steady[-1]), _relay_p99(rounds.relay_steady[-1])
        print(f"  round {number}/{options.rounds}: p99 {p99:,.1f} ms, the bare relay's {relay_p99:,.1f} ms",
              file=sys.stderr, flush=True)  # fmt: skip


def _steady(
    bootstrap: str, options: BenchOptions, workload: workloads.Workload, values: list[bytes], rate: float
) -> dict[str, Any]:
    """One steady-rate run, on topics of its own (the consumer reads its input from the beginning)."""
    source = f"bench-steady-{uuid.uuid4().hex[:6]}"
    create_topics(bootstrap, [source, source + "-out"], partitions=options.partitions)
    return system.steady_latency(
        bootstrap, source, source + "-out", workload, values, rate, options.latency_seconds, options.flags,
        options.partitions,
    )  # fmt: skip


def _median_by(
    runs: list[dict[str, Any]], key: Callable[[dict[str, Any]], float], median: Callable[[list[float]], float]
) -> dict[str, Any]:
    middle = median([key(run) for run in runs])
    return next(run for run in runs if key(run) == middle)


def _p99(run: dict[str, Any]) -> float:
    return _worst_latency(run["workers"]).get("p99", 0.0)


def _relay_p99(run: dict[str, Any]) -> float:
    return float(run["latency_ms"].get("p99", 0.0))


def _growth(worker: dict[str, Any]) -> float:
    return float(worker.get("peak_rss_mb", 0) - worker.get("rss_after_warmup_mb", 0))


def _times(rounds: int) -> str:
    return f", {rounds} rounds" if rounds > 1 else ""


def _topics(bootstrap: str, partitions: int) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:6]
    names = {k: f"bench-{k}-{suffix}" for k in ("in", "relay", "out", "usual_out")}
    create_topics(bootstrap, names.values(), partitions=partitions)
    return names


def _usual(
    bootstrap: str, topics: dict[str, str], workload: workloads.Workload, typed: workloads.ModelInputs, seconds: float
) -> dict[str, float | None]:
    """The per-message loops on the published messages; the process pool on ``typed``, the model's inputs."""
    return {
        "model.predict per message": baselines.per_message_loop(
            bootstrap, topics["in"], topics["usual_out"], workload, "predict", seconds
        ),
        "tf.function per message": baselines.per_message_loop(
            bootstrap, topics["in"], topics["usual_out"], workload, "tf.function", seconds
        ),
        "process pool": baselines.process_pool(workload, typed),
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
    return worst_of(w.get(key, {}) for w in workers)
