"""``bench-compare``: the figures of several ``bench --json`` results side by side.

On a shared machine a figure means little alone (the same run moves ±20% from hour to hour), so
comparing two settings or two versions is a matter of runs next to each other: this reads their
JSON files and prints the measures, the ratios, the latency, memory and the targets in columns,
then whatever settings and versions differ between them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from consumer.errors import ConfigError

Row = tuple[str, list[str]]
#: what every bench result has; a JSON file without them is not one
REQUIRED = ("workload", "settings", "environment", "rates", "ratios", "targets")
LABEL_WIDTH, CELL_WIDTH = 34, 14
#: a target a run did not check (another workload's)
ABSENT = object()


def load(path: Path) -> dict[str, Any]:
    """One ``bench --json`` result; ``ConfigError`` in one line if it is missing or not one."""
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no such file: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"could not read {path} as JSON ({exc})") from None
    missing = [key for key in REQUIRED if not isinstance(result, dict) or key not in result]
    if missing:
        raise ConfigError(
            f"{path} is not a bench result (no {', '.join(missing)}): "
            "write one with python -m producer_tools bench --json PATH"
        )
    try:
        table([result], [str(path)])  # every figure where bench writes it, and a number
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path} is not a bench result as bench writes it ({type(exc).__name__}: {exc})") from None
    return result


def table(results: list[dict[str, Any]], names: list[str]) -> str:
    """The comparison as text: a header naming each run, one row per figure, then the differences."""
    lines = [f"{i}: {name} ({r['workload']}, started {r.get('started_at', 'at an unrecorded time')})"
             for i, (name, r) in enumerate(zip(names, results, strict=True), 1)]  # fmt: skip
    workloads = sorted({str(r["workload"]) for r in results})
    if len(workloads) > 1:
        lines.append(f"note: the runs measure different workloads ({', '.join(workloads)})")
    header = [str(i) for i in range(1, len(results) + 1)] + ([f"{len(results)} / 1"] if len(results) == 2 else [])
    rows = _rows(results)
    width = max(LABEL_WIDTH, *(len(label) + 2 for label, _ in rows))
    lines.append("")
    lines += [_line("", header, width)] + [_line(label, cells, width) for label, cells in rows]
    lines += _differences("settings", [r["settings"] for r in results])
    lines += _differences("environment", [r["environment"] for r in results])
    return "\n".join(lines)


def _line(label: str, cells: list[str], width: int) -> str:
    return (f"{label:<{width}}" + "".join(f"{cell:>{CELL_WIDTH}}" for cell in cells)).rstrip()


def _rows(results: list[dict[str, Any]]) -> list[Row]:
    rows: list[Row] = []
    for name in _union(r["rates"] for r in results):
        rows.append(_figure(f"{name} msg/s", [r["rates"].get(name) for r in results], _rate, ratio=True))
    for name in _union(r["ratios"] for r in results):
        rows.append(_figure(name, [r["ratios"].get(name) for r in results], "{:,.2f}"))
    rows += _round_ranges(results)
    rows.append(_figure("latency phase msg/s", [r.get("latency_rate") for r in results], _rate))
    kinds = (("consumed", "consume_latency_ms"), ("end to end", "latency_ms"), ("bare relay", "io_limit_latency_ms"))
    for kind, key in kinds:
        for p in ("p50", "p99"):
            rows.append(_figure(f"{kind} {p} ms", [r.get(key, {}).get(p) for r in results], "{:,.1f}", ratio=True))
    for part in ("busy", "broker", "consumer", "publisher"):  # cores, while the latency phase published
        cores = [(r.get("steady_cpu") or {}).get(part) for r in results]
        rows.append(_figure(f"cores while publishing: {part}", cores, "{:.2f}"))
    rows.append(_figure("full batch predict ms", [r.get("full_batch_ms") for r in results], "{:,.2f}"))
    rows.append(_figure("worker memory growth MB", [r.get("memory_growth_mb") for r in results], "{:,.0f}"))
    rows.append(_figure("traces after warm-up", [r.get("traces_after_warmup") for r in results], "{}"))
    targets = [{_target_name(k): v for k, v in r["targets"].items()} for r in results]
    for name in _union(targets):
        rows.append((f"[target] {name}", [_verdict(t.get(name, ABSENT)) for t in targets]))
    return rows


def _round_ranges(results: list[dict[str, Any]]) -> list[Row]:
    """With several rounds in any run: each run's lowest and highest round, where the noise shows."""
    runs = [r.get("runs", {}) for r in results]
    if all(len(run.get("system", [])) < 2 for run in runs):
        return []
    return [
        (f"{label}, rounds' range", [_range(run.get(name, []), fmt) for run in runs])
        for label, name, fmt in (
            ("system / io_limit", "system / io_limit", "{:.2f}"),
            ("end to end p99 ms", "latency_p99_ms", "{:,.0f}"),
            ("bare relay p99 ms", "io_limit_latency_p99_ms", "{:,.0f}"),
        )
    ]


def _range(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    return fmt.format(values[0]) if len(values) == 1 else f"{fmt.format(min(values))} to {fmt.format(max(values))}"


def _rate(value: float) -> str:
    """Messages a second: whole above 100, one decimal below (a per-message loop's 19.5)."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _figure(label: str, values: list[Any], fmt: str | Callable[[Any], str], ratio: bool = False) -> Row:
    """A row of figures; with ``ratio`` and two runs, the second over the first in a last column."""
    show = fmt if callable(fmt) else fmt.format
    cells = ["-" if v is None else show(v) for v in values]
    if ratio and len(values) == 2:
        first, second = values
        cells.append(f"{second / first:.2f}" if first and second is not None else "-")
    elif len(values) == 2:
        cells.append("")
    return label, cells


def _target_name(name: str) -> str:
    """A target without the figure its run computed (``latency p99 <= 63 ms`` → ``latency p99 <= … ms``),
    so that the same target lines up across runs."""
    return re.sub(r"<= [\d.]+ ms", "<= … ms", name)


def _verdict(ok: object) -> str:
    if ok is ABSENT:
        return "-"
    return "n/a" if ok is None else "ok" if ok else "MISS"


def _differences(title: str, sections: list[dict[str, Any]]) -> list[str]:
    """The keys of ``title`` whose values are not the same in every run, one line each."""
    keys = _union(sections)
    differing = [k for k in keys if len({json.dumps(s.get(k), sort_keys=True) for s in sections}) > 1]
    if not differing:
        return [f"\n{title}: the same in every run"]
    return [f"\n{title} that differ:"] + [
        f"  {key}: " + " | ".join("-" if s.get(key) is None else str(s.get(key)) for s in sections) for key in differing
    ]


def _union(mappings: Any) -> list[str]:
    """Every key of these mappings, in the order first seen."""
    seen: dict[str, None] = {}
    for mapping in mappings:
        seen.update(dict.fromkeys(mapping))
    return list(seen)
