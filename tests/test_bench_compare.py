"""``bench-compare``: bench results side by side, and one line for a file that is not one. The full
bench run that writes a real result (and compares it with itself) is in test_bench.py."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from producer_tools.cli import main


def _result(system: float, p99: float, budget: int, consumer_args: list[str]) -> dict[str, Any]:
    """The parts of a ``bench --json`` result that the comparison reads (what bench writes)."""
    return {
        "started_at": "2026-12-02T00:39:00+00:00",
        "workload": "mlp",
        "settings": {"messages": 400000, "batch_size": 1024, "consumer_args": consumer_args, "rounds": 3},
        "environment": {"cpus": 2, "tensorflow": "2.21.0"},
        "rates": {"io_limit": 240000.0, "system": system, "model.predict per message": 19.5},
        "ratios": {"system / io_limit": round(system / 240000.0, 2)},
        "runs": {
            "system": [system, system * 1.1, system * 0.9],
            "system / io_limit": [0.5, 0.6, 0.7],
            "latency_p99_ms": [p99, p99 + 5, p99 - 5],
            "io_limit_latency_p99_ms": [p99 / 2, p99 / 2 + 5, p99 / 2 - 5],
        },
        "latency_rate": system / 2,
        "latency_ms": {"p50": 30.0, "p95": 50.0, "p99": p99},
        "consume_latency_ms": {"p50": 20.0, "p95": 30.0, "p99": 40.0},
        "io_limit_latency_ms": {"p50": 15.0, "p95": 25.0, "p99": p99 / 2},
        "full_batch_ms": 0.8,
        "memory_growth_mb": 56.0,
        "traces_after_warmup": 0,
        "targets": {f"latency p99 <= {budget} ms at half load": p99 <= budget, "zero traces after warm-up": True},
    }


def _rows(lines: list[str]) -> dict[str, list[str]]:
    """The table's rows by label (the header's is ""), cells split where two spaces or more part them."""
    split = (re.split(r"\s{2,}", line.rstrip()) for line in lines if line.strip())
    return {parts[0]: parts[1:] for parts in split}


def _write(folder: Path, name: str, result: Any) -> Path:
    path = folder / name
    path.write_text(json.dumps(result))
    return path


def test_two_results_are_shown_side_by_side_with_what_differs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _write(tmp_path, "a.json", _result(150000.0, 80.0, 63, []))
    second = _write(tmp_path, "b.json", _result(180000.0, 60.0, 64, ["--workers", "1"]))
    assert main(["bench-compare", str(first), str(second)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"1: {first} (mlp, started 2026-12-02T00:39:00+00:00)"
    rows = _rows(lines)
    assert rows["system msg/s"] == ["150,000", "180,000", "1.20"]  # the second over the first
    assert rows["model.predict per message msg/s"] == ["19.5", "19.5", "1.00"]
    assert rows["system / io_limit"] == ["0.62", "0.75"]
    assert rows["end to end p99 ms"] == ["80.0", "60.0", "0.75"]
    assert rows["end to end p99 ms, rounds' range"] == ["75 to 85", "55 to 65"]
    assert rows["bare relay p99 ms"] == ["40.0", "30.0", "0.75"]  # the I/O limit's, at the same rate
    assert rows["bare relay p99 ms, rounds' range"] == ["35 to 45", "25 to 35"]
    # the same target lines up although each run computed its own budget
    assert rows["[target] latency p99 <= … ms at half load"] == ["MISS", "ok"]
    assert rows["[target] zero traces after warm-up"] == ["ok", "ok"]
    differing = lines[lines.index("settings that differ:") + 1 :]
    assert differing[0] == "  consumer_args: [] | ['--workers', '1']" and "  messages:" not in lines
    assert "environment: the same in every run" in lines


def test_results_of_another_workload_or_missing_figures_are_marked_not_hidden(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mlp = _result(150000.0, 80.0, 63, [])
    mobilenet = copy.deepcopy(mlp) | {"workload": "mobilenet", "targets": {"system >= 0.9 x compute limit": True}}
    del mobilenet["started_at"]  # a result from before bench recorded it
    del mobilenet["runs"]
    del mobilenet["io_limit_latency_ms"]  # nor measured the bare relay's latency
    paths = [_write(tmp_path, f"{i}.json", r) for i, r in enumerate((mlp, mobilenet, mlp))]
    assert main(["bench-compare", *map(str, paths)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == f"2: {paths[1]} (mobilenet, started at an unrecorded time)"
    assert "note: the runs measure different workloads (mlp, mobilenet)" in lines
    rows = _rows(lines)
    assert rows[""] == ["1", "2", "3"]  # no ratio column for three runs
    assert rows["[target] system >= 0.9 x compute limit"] == ["-", "ok", "-"]
    assert rows["system / io_limit, rounds' range"] == ["0.50 to 0.70", "-", "0.50 to 0.70"]
    assert rows["bare relay p50 ms"] == ["15.0", "-", "15.0"]


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "no such file: {path}"),
        ("not json", "could not read {path} as JSON (Expecting value: line 1 column 1 (char 0))"),
        (
            [1, 2],
            "{path} is not a bench result (no workload, settings, environment, rates, ratios, targets): "
            "write one with python -m producer_tools bench --json PATH",
        ),
        ({"rates": {"system": "fast"}}, "{path} is not a bench result as bench writes it (TypeError: "),
        ({"latency_ms": {"p99": "slow"}}, "{path} is not a bench result as bench writes it (ValueError: "),
    ],
)
def test_a_file_that_is_not_a_bench_result_is_refused_in_one_line(
    content: Any, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _write(tmp_path, "good.json", _result(150000.0, 80.0, 63, []))
    path = tmp_path / "other.json"
    if isinstance(content, dict):
        broken = _result(150000.0, 80.0, 63, [])
        for key, value in content.items():
            broken[key] = broken[key] | value
        path.write_text(json.dumps(broken))
    elif content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    assert main(["bench-compare", str(good), str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing half-printed
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: " + says.format(path=path))


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path) -> None:
    """``… | head``: the reader of stdout closed before the table was written. Before, a
    ``BrokenPipeError`` traceback; now exit 1 and nothing on stderr, as shell tools do."""
    first = _write(tmp_path, "a.json", _result(150000.0, 80.0, 63, []))
    second = _write(tmp_path, "b.json", _result(180000.0, 60.0, 64, []))
    command = [sys.executable, "-m", "producer_tools", "bench-compare", str(first), str(second)]
    tool = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert tool.stdout is not None and tool.stderr is not None
    tool.stdout.close()  # before it has printed anything: it starts in about a second
    err = tool.stderr.read()
    assert tool.wait(60) == 1 and err == ""
