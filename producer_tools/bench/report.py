"""The benchmark's table, ratios, target checks and JSON record."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from consumer.affinity import allowed_cpus, describe
from producer_tools.bench import cpu


def environment() -> dict[str, Any]:
    import confluent_kafka
    import numpy
    import tensorflow as tf

    from consumer.affinity import cpu_limit
    from consumer.devices import usable_cores

    return {
        "cpus": os.cpu_count(),
        "cpus_usable": usable_cores(),  # in this process's affinity, or its cgroup's CPU quota if lower
        "cpu_quota": cpu_limit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "tensorflow": tf.__version__,
        "confluent_kafka": confluent_kafka.__version__,
        "librdkafka": confluent_kafka.libversion()[0],
        "numpy": numpy.__version__,
    }


def ratios(rates: dict[str, float | None]) -> dict[str, float | None]:
    system = rates.get("system") or 0.0
    out: dict[str, float | None] = {}
    for name, rate in rates.items():
        if name != "system":
            out[f"system / {name}"] = round(system / rate, 2) if rate else None
    return out


def targets(workload: str, rates: dict[str, float | None], result: dict[str, Any]) -> dict[str, bool | None]:
    """The issue's targets, checked (informational: the bench never fails on them)."""
    r = result["ratios"]
    latency = result.get("latency_ms", {})
    budget = latency_budget_ms(result)
    checks: dict[str, bool | None] = {
        "zero traces after warm-up": result["traces_after_warmup"] == 0,
        f"latency p99 <= {budget:.0f} ms at half load": (
            latency["p99"] <= budget if "p99" in latency and at_half_load(result["settings"]) else None
        ),
        "memory: peak - post-warm-up <= 300 MB": result["memory_growth_mb"] <= 300,
    }
    if workload == "mlp":
        checks["system >= 0.6 x I/O limit"] = _at_least(r.get("system / io_limit"), 0.6)
        checks["system >= 100 x per-message model.predict"] = _at_least(
            r.get("system / model.predict per message"), 100
        )
    if workload == "mobilenet":
        checks["system >= 0.9 x compute limit"] = _at_least(r.get("system / compute_limit"), 0.9)
    return checks


def latency_budget_ms(result: dict[str, Any]) -> float:
    """The latency target: ``max_wait_ms`` + 3 x the predict time of a full batch + 50 ms."""
    return float(result["settings"]["max_wait_ms"] + 3 * result["full_batch_ms"] + 50)


def latency_floor(result: dict[str, Any]) -> list[str]:
    """A word when the bare relay, with no model, missed the latency target at the same rate: the
    target is then below what the broker and this machine leave any consumer fetching that way."""
    relay_p99 = result.get("io_limit_latency_ms", {}).get("p99")
    budget = latency_budget_ms(result)
    if relay_p99 is None or relay_p99 <= budget or not at_half_load(result["settings"]):
        return []
    return [
        f"the bare relay (no model) had a p99 of {relay_p99:,.0f} ms at the same rate, above the latency "
        f"target ({budget:.0f} ms): on this broker and machine, at that rate, the target is below the I/O floor"
    ]


def shared_broker(result: dict[str, Any]) -> list[str]:
    """A word when the system missed its latency target at half load while the embedded broker ran
    on the consumer's cores: most of such a tail is the broker's share of them (2026-12-05), which
    a deployment, its broker on other machines, does not pay; ``--broker-cpus`` measures that way
    (where there is a CPU to spare for it)."""
    settings, cpu = result["settings"], result.get("steady_cpu") or {}
    p99 = result.get("latency_ms", {}).get("p99")
    missed = p99 is not None and p99 > latency_budget_ms(result) and at_half_load(settings)
    shared = settings.get("broker") == "embedded" and not settings.get("broker_cpus") and cpu.get("broker") is not None
    cpus = allowed_cpus()
    if not (missed and shared and len(cpus) >= 2):
        return []
    return [
        f"the embedded broker shared the consumer's cores and took {cpu['broker']:.2f} of a core while publishing; "
        f"a deployment's broker runs on other machines: measure that way with --broker-cpus {cpus[0]} (the broker "
        f"alone on CPU {cpus[0]}, the rest on the other CPUs)"
    ]


def at_half_load(settings: dict[str, Any]) -> bool:
    """The latency target is for half the system's throughput, not for a rate given by hand."""
    return settings.get("latency_rate") is None


#: system / compute_limit from which a run is compute-bound: its I/O limit then bounds nothing
COMPUTE_BOUND = 0.5


def warnings(messages: int, relay_queue: int, system_per_compute: float | None = None) -> list[str]:
    """What makes this run's figures less comparable than they look. A compute-bound run (MobileNetV2)
    gets no word about its I/O limit being a burst: the model bounds it, not the I/O, and the
    messages a steady relay needs would be gigabytes of images."""
    compute_bound = system_per_compute is not None and system_per_compute >= COMPUTE_BOUND
    if messages < 4 * relay_queue and not compute_bound:
        return [
            f"{messages:,} messages: the relay's first {relay_queue:,} fit in its producer queue, so the "
            f"I/O limit reads high (a burst, not a steady rate); use --messages {4 * relay_queue} or more"
        ]
    return []


def _at_least(value: float | None, floor: float) -> bool | None:
    return None if value is None else value >= floor


def print_table(result: dict[str, Any]) -> None:
    settings = result["settings"]
    given = f", inputs from {settings['inputs']}" if settings.get("inputs") else ""
    cpus = result["environment"]["cpus"]
    alone = settings.get("broker_cpus")
    broker = f" (the embedded broker alone on CPU {describe(alone)}, the rest on the others)" if alone else ""
    print(f"\nbenchmark: {result['workload']} on {cpus} CPUs{broker}, batch {settings['batch_size']}{given}")
    print(f"{'measure':<36} {'messages/s':>14}")
    for name, rate in result["rates"].items():
        print(f"{name:<36} {f'{rate:14.1f}' if rate else '-':>14}")
    print(f"\n{'ratio':<44} {'value':>8}")
    for name, value in result["ratios"].items():
        print(f"{name:<44} {value if value is not None else '-':>8}")
    latency, consumed = result.get("latency_ms", {}), result.get("consume_latency_ms", {})
    if "p50" in latency:
        print(f"\nlatency at {result['latency_rate']:,.0f} msg/s, from the input's timestamp (ms):")
        print(f"  {'to':<38} {'p50':>7} {'p95':>7} {'p99':>7}")
        relay, relay_consumed = result.get("io_limit_latency_ms", {}), result.get("io_limit_consume_latency_ms", {})
        rows = (
            ("the worker consuming it", consumed),
            ("its output acknowledged", latency),
            ("the bare relay consuming it (no model)", relay_consumed),
            ("the relay's output acknowledged", relay),
        )
        for name, row in rows:
            if "p50" in row:
                print(f"  {name:<38} {row['p50']:>7} {row['p95']:>7} {row['p99']:>7}")
        _print_stages(result.get("stages_ms", {}))
        if result.get("steady_cpu"):
            print(f"  {cpu.describe(result['steady_cpu'])}")
    print(
        f"full batch predict: {result['full_batch_ms']:.2f} ms; traces after warm-up: {result['traces_after_warmup']}"
    )
    print(f"worker memory: {result['rss_after_warmup_mb']} MB after warm-up, peak {result['peak_rss_mb']} MB")
    _print_spread(result)
    for warning in result.get("warnings", []):
        print(f"\nnote: {warning}")
    print("\ntargets:")
    for name, ok in result["targets"].items():
        print(f"  [{'ok' if ok else 'MISS' if ok is not None else 'n/a'}] {name}")


def _print_stages(stages: dict[str, dict[str, float]]) -> None:
    """The worker's share, stage by stage, per batch (``consumer.timing.STAGES``)."""
    if not any("p50" in row for row in stages.values()):
        return
    print(f"  {'the worker, per batch:':<38} {'p50':>7} {'p95':>7} {'p99':>7}")
    for name, row in stages.items():
        if "p50" in row:
            print(f"    {name:<36} {row['p50']:>7} {row['p95']:>7} {row['p99']:>7}")


def _print_spread(result: dict[str, Any]) -> None:
    """With several rounds: each figure's range, so a reader sees how much the median can be trusted."""
    runs = result.get("runs", {})
    if len(runs.get("system", [])) < 2:
        return
    print(f"\n{len(runs['system'])} rounds, median shown; every round's figure:")
    for name, values in runs.items():
        shown = ", ".join(f"{v:,.2f}" if name == "system / io_limit" else f"{v:,.0f}" for v in values)
        print(f"  {name:<30} {shown}")


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.write_text(json.dumps(result, indent=2, default=str))
