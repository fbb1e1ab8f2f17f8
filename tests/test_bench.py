"""The bench command runs end to end on a tiny workload. Figures are not checked here: speed is
measured by running the bench, never asserted in the test suite."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from consumer.affinity import allowed_cpus, describe
from consumer.devices import DEFAULT_CPU_WORKERS, usable_cores
from producer_tools.bench import baselines, cpu, report, run, system, workloads
from producer_tools.bench.system import PRIMERS
from producer_tools.cli import main
from producer_tools.consumer_run import consumer_flags_problem
from producer_tools.embedded_broker import EmbeddedBroker
from producer_tools.reader import read_topic
from producer_tools.topics import create_topics
from tests import models, preprocessors

pytestmark = pytest.mark.integration


def test_bench_runs_every_phase_and_writes_its_json(
    bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    tiny = ["--messages", "400", "--batch-size", "32", "--latency-seconds", "1", "--baseline-seconds", "1"]
    tiny += ["--latency-rate", "200", "--rounds", "2"]
    argv = ["bench", "--bootstrap-servers", bootstrap, *tiny, "--json", str(out), "--workdir", str(tmp_path)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    measures = [
        "io_limit",
        "compute_limit",
        "system",
        "model.predict per message",
        "tf.function per message",
        "process pool",
    ]
    assert list(result["rates"]) == measures and all(result["rates"][m] > 0 for m in measures)
    assert set(result["ratios"]) == {f"system / {m}" for m in measures if m != "system"}
    assert result["system_summary"]["predicted"] == 400 and result["traces_after_warmup"] == 0
    # two rounds of the relay, the system and the latency: the figures shown are the median round's
    runs = result["runs"]
    counted = ("io_limit", "system", "system / io_limit", "latency_p99_ms", "io_limit_latency_p99_ms")
    assert [len(runs[k]) for k in counted] == [2, 2, 2, 2, 2]
    # (of two, the one less flattering to the system)
    assert min(runs["system"]) == pytest.approx(result["rates"]["system"], abs=0.1)
    assert max(runs["io_limit"]) == pytest.approx(result["rates"]["io_limit"], abs=0.1)
    # each round's relay ran both ways of fetching, and its I/O limit is the faster
    ways = [runs["io_limit, librdkafka fetch"], runs["io_limit, lean fetch"]]
    assert all(rate > 0 for rates in ways for rate in rates)
    assert runs["io_limit"] == [max(pair) for pair in zip(*ways, strict=True)]
    assert result["latency_ms"]["p99"] == max(runs["latency_p99_ms"]) and result["settings"]["rounds"] == 2
    # the consumer runs with its defaults: two CPU workers where there are two cores
    assert len(result["system_summary"]["workers"]) == min(DEFAULT_CPU_WORKERS, usable_cores())
    assert {"p50", "p95", "p99"} <= set(result["latency_ms"]) and result["environment"]["cpus"] >= 1
    assert result["environment"]["cpus_usable"] == usable_cores()
    # the steady phase ran at the rate asked for, so the half-load latency target does not apply;
    # its inputs (after a few primers) were consumed before their outputs were acknowledged
    assert result["latency_rate"] == 200 and result["latency_ms"]["count"] == 200 + PRIMERS
    target = next(name for name in result["targets"] if name.startswith("latency p99"))
    assert result["targets"][target] is None
    consumed, end_to_end = result["consume_latency_ms"], result["latency_ms"]
    assert consumed["count"] == 200 + PRIMERS and all(0 < consumed[p] <= end_to_end[p] for p in ("p50", "p99", "max"))
    # the bare relay ran at the same rate in each round, every input relayed and acknowledged; the
    # figures shown are its median round's (of two, the lower p99: the one less flattering to the system)
    relay, relay_consumed = result["io_limit_latency_ms"], result["io_limit_consume_latency_ms"]
    assert relay["count"] == relay_consumed["count"] == 200 + PRIMERS
    # in as many processes as the system had workers (each percentile the worst of them, as the workers')
    assert result["io_limit_latency_processes"] == len(result["system_summary"]["workers"])
    assert all(0 < relay_consumed[p] <= relay[p] for p in ("p50", "p99", "max"))
    assert relay["p99"] == min(runs["io_limit_latency_p99_ms"])
    # the worker's share, stage by stage: every stage timed for the same batches, each within the whole
    stages = result["stages_ms"]
    assert list(stages) == ["batching", "queue", "predict", "emit", "acknowledge"]
    assert len({row["count"] for row in stages.values()}) == 1 and stages["predict"]["count"] >= 1
    assert all(0 <= row["p50"] <= row["max"] < end_to_end["max"] for row in stages.values())
    assert stages["predict"]["p50"] > 0 and stages["acknowledge"]["p50"] > 0
    # where the cores went while it published: the session's broker listens on this host, and the
    # consumer and the publisher worked; none took more than the machine has
    cpu = result["steady_cpu"]
    assert cpu["seconds"] >= 1 and cpu["cpus"] == result["environment"]["cpus"]
    assert cpu["consumer"] > 0 and cpu["publisher"] > 0 and cpu["broker"] is not None and cpu["broker"] > 0
    assert all(0 <= cpu[k] <= cpu["cpus"] + 0.2 for k in ("busy", "broker", "consumer", "publisher"))
    assert cpu["broker_process"].startswith("tansu")  # named, so that a proxy in front of a broker shows as one
    versions = {k: result["environment"][k] for k in ("confluent_kafka", "librdkafka", "tensorflow")}
    assert all(v.count(".") >= 2 for v in versions.values()), versions  # full versions, not a first character
    assert result["rss_after_warmup_mb"] > 0 and result["peak_rss_mb"] >= result["rss_after_warmup_mb"]
    table = capsys.readouterr().out
    assert "system / io_limit" in table and "targets:" in table and "the worker consuming it" in table
    assert "the worker, per batch:" in table and "    acknowledge " in table
    assert "2 rounds, median shown" in table
    assert "the bare relay consuming it (no model)" in table and "the relay's output acknowledged" in table
    assert "cores busy while publishing: " in table and "the broker (tansu" in table and "the consumer " in table
    # 400 messages fit in the relay's producer queue: the run says its I/O limit is a burst figure
    assert len(result["warnings"]) == 1 and "I/O limit reads high" in table
    # when it ran, so that runs on a shared machine can be placed in time; and it compares with itself
    assert datetime.fromisoformat(result["started_at"]).tzinfo is not None
    assert main(["bench-compare", str(out), str(out)]) == 0
    compared = capsys.readouterr().out.splitlines()
    system_row = next(line for line in compared if line.startswith("system msg/s")).split()
    assert system_row[-1] == "1.00" and system_row[-2] == system_row[-3] == f"{result['rates']['system']:,.0f}"
    consumer_cores = next(line for line in compared if line.startswith("cores while publishing: consumer")).split()
    assert consumer_cores[-1] == consumer_cores[-2] == f"{cpu['consumer']:.2f}"
    assert "settings: the same in every run" in compared and "environment: the same in every run" in compared


def test_the_broker_is_looked_for_on_this_host_only_at_the_bootstrap_servers_that_are_local() -> None:
    assert cpu.local_ports("127.0.0.1:9092,kafka:9093,localhost:19092,[::1]:29092") == {9092, 19092, 29092}
    assert cpu.local_ports("kafka-1:9092,10.0.0.5:9092") == set() and cpu.listening_pids(set()) == set()
    line = cpu.describe({"cpus": 2, "busy": 1.9, "steal": 0.0, "broker": None, "consumer": 1.0, "publisher": 0.3})
    assert line.endswith("the broker runs elsewhere)") and "1.90 of 2" in line
    proxied = {"cpus": 2, "busy": 1.2, "steal": 0.0, "broker": 0.01, "broker_process": "docker-proxy"}
    line = cpu.describe(proxied | {"consumer": 1.0, "publisher": 0.2})
    assert "(the broker (docker-proxy) 0.01, the consumer 1.00" in line


def test_a_bare_relay_that_missed_the_latency_target_at_half_load_is_said() -> None:
    """The target is then below the I/O floor: no model, and still over it."""
    result = {"settings": {"max_wait_ms": 10, "latency_rate": None}, "full_batch_ms": 2.0}
    assert report.latency_budget_ms(result) == 66
    (note,) = report.latency_floor(result | {"io_limit_latency_ms": {"p99": 104.2}})
    assert note.startswith("the bare relay (no model) had a p99 of 104 ms at the same rate") and "(66 ms)" in note
    assert report.latency_floor(result | {"io_limit_latency_ms": {"p99": 60.0}}) == []
    assert report.latency_floor(result) == []  # a result from before the relay's latency was measured
    at_a_given_rate = {**result, "settings": {"max_wait_ms": 10, "latency_rate": 200}}
    assert report.latency_floor(at_a_given_rate | {"io_limit_latency_ms": {"p99": 104.2}}) == []


def test_a_missed_target_beside_the_embedded_broker_points_to_broker_cpus() -> None:
    """Most of such a tail is the broker's share of the consumer's cores; a deployment has none."""
    settings = {"max_wait_ms": 10, "latency_rate": None, "broker": "embedded", "broker_cpus": None}
    missed = {"settings": settings, "full_batch_ms": 2.0, "latency_ms": {"p99": 120.0}}
    cpu_of_broker = {"steady_cpu": {"broker": 0.48, "cpus": 2}}
    first = allowed_cpus()[0]
    if len(allowed_cpus()) < 2:
        assert report.shared_broker(missed | cpu_of_broker) == []  # no CPU to spare for the broker
        return
    (note,) = report.shared_broker(missed | cpu_of_broker)
    assert note.startswith("the embedded broker shared the consumer's cores and took 0.48 of a core")
    assert f"--broker-cpus {first} (the broker alone on CPU {first}" in note
    assert report.shared_broker(missed | cpu_of_broker | {"latency_ms": {"p99": 60.0}}) == []  # within 66 ms
    assert report.shared_broker(missed) == []  # the broker's CPU not measured: not on this host
    for other in ({"broker_cpus": [0]}, {"broker": "127.0.0.1:9092"}, {"latency_rate": 2000.0}):
        assert report.shared_broker(missed | cpu_of_broker | {"settings": settings | other}) == []


def test_a_run_long_enough_for_a_steady_relay_has_no_warning() -> None:
    assert report.warnings(400_000, 100_000) == []
    assert report.warnings(399_999, 100_000) != []
    assert report.warnings(399_999, 100_000, system_per_compute=0.17) != []  # the MLP: I/O-bound


def test_a_compute_bound_run_has_no_warning_about_its_io_limit() -> None:
    # MobileNetV2's 2,000 images are a burst for the relay, but its model is what bounds the system
    assert report.warnings(2_000, 100_000, system_per_compute=0.98) == []


def test_the_latency_target_applies_only_at_half_load() -> None:
    assert report.at_half_load({"latency_rate": None}) and report.at_half_load({})  # {}: a run from before the flag
    assert not report.at_half_load({"latency_rate": 2000.0})


@pytest.mark.usefixtures("keras_code_restored")
def test_a_model_with_its_own_keras_code_is_benched_with_the_consumer_args_that_serve_it(
    bootstrap: str, tmp_path: Path
) -> None:
    """The consumer's ``--custom-objects`` and ``--trust-model-code``, given in ``--consumer-args``,
    apply to the bench's own loads of the model too: the compute limit, the per-message loops and
    the process pool's processes, which could not load it before."""
    path, _ = models.with_custom_code(tmp_path / "custom.keras", lambda_layer=True)
    args = ("--custom-objects", "tests.custom_layers", "--trust-model-code")
    workload = run._workload(run.BenchOptions(workload=str(path), workdir=tmp_path, consumer_args=args))
    assert workload.model_code == (("tests.custom_layers",), True)
    inputs = workload.inputs(64)
    typed = workload.model_inputs(inputs)
    assert baselines.compute_limit(workload, typed, min_seconds=0.2)[0] > 0
    topics = run._topics(bootstrap, 1)
    system.publish(bootstrap, topics["in"], system.encode(workload, inputs), 64)
    rates = run._usual(bootstrap, topics, workload, typed, 1.0)
    assert all((rate or 0) > 0 for rate in rates.values()), rates


@pytest.mark.parametrize(
    ("flags", "says"),
    [([], "fetch.wait.max.ms 20, paced fetch"), (["--prefetch"], "fetch.wait.max.ms 20, prefetching fetch")],
)
def test_fetch_latency_measures_each_record_against_a_real_broker(
    flags: list[str], says: str, bootstrap: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """By default the probe fetches as the workers do; ``--prefetch`` with librdkafka's own fetch."""
    argv = ["fetch-latency", "--bootstrap-servers", bootstrap, "--seconds", "3", "--rate", "500", *flags]
    assert main(argv) == 0
    line = capsys.readouterr().out
    print(line)
    assert f"{says}, 500 msg/s" in line and "record timestamp to consumed p50" in line
    counted = int(line.rsplit("(", 1)[1].split()[0].replace(",", ""))
    assert 700 <= counted <= 1500  # the two seconds after the first second's warm-up, at 500 a second
    round_trip_p50 = float(line.split("fetch round trip p50 ")[1].split()[0])
    assert 0 < round_trip_p50 < 1000  # from librdkafka's statistics windows after the warm-up


def test_fetch_latency_refuses_a_rate_that_is_not_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["fetch-latency", "--rate", "0"])
    assert exit.value.code == 2 and "must be positive" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--linger-ms", "-1"], "--linger-ms -1: must be 0 or more"),
        # found by hand: librdkafka took nan and inf, then sent nothing, and the tool blamed the broker
        (["--linger-ms", "nan"], "--linger-ms nan: must be 0 or more, at most 900000"),
        (["--linger-ms", "inf"], "--linger-ms inf: must be 0 or more, at most 900000"),
        (["--fetch-wait-ms", "300001"], "at most 300000"),
        # found by hand: a run no longer than its warm-up counted nothing, and blamed the broker
        (["--seconds", "1"], "--seconds 1: its first 1 s is warm-up, not counted; give more than 1"),
    ],
)
def test_fetch_latency_refuses_settings_it_cannot_run_with(
    flags: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fetch-latency", *flags]) == 2  # before any broker is started
    err = capsys.readouterr().err
    assert err.startswith("error: invalid setting") and says in err and len(err.strip().splitlines()) == 1


def test_the_usual_approaches_run_on_a_savedmodel_workload(bootstrap: str, tmp_path: Path) -> None:
    """The bench crashed on a SavedModel given by path (Keras 3 cannot load one): its usual
    approaches call the serving signature; per-message ``model.predict`` does not apply (None)."""
    workload = workloads.build(str(models.shaped_saved_model(tmp_path / "sm", [None, 4])), tmp_path)
    inputs = workload.inputs(64)
    topics = run._topics(bootstrap, 1)
    system.publish(bootstrap, topics["in"], system.encode(workload, inputs), 64)
    rates = run._usual(bootstrap, topics, workload, workload.model_inputs(inputs), 1.0)
    assert rates["model.predict per message"] is None
    assert (rates["tf.function per message"] or 0) > 0 and (rates["process pool"] or 0) > 0


@pytest.mark.parametrize("model", ["keras_dict_inputs", "saved_model_with_a_string_input"])
def test_the_usual_approaches_and_the_compute_limit_run_on_models_with_named_and_string_inputs(
    model: str, bootstrap: str, tmp_path: Path
) -> None:
    """They measured single-tensor models only: a model with named inputs got no usual approaches at
    all, and one with a string input crashed the bench in its compute limit (a traceback)."""
    if model == "keras_dict_inputs":
        path = models.multi_input(tmp_path / "m.keras")  # float32 and int32 inputs by name, two outputs
    else:
        path = models.text_and_numbers(tmp_path / "sm")
    workload = workloads.build(str(path), tmp_path)
    assert workload.signature.named_inputs
    inputs = workload.inputs(64)
    typed = workload.model_inputs(inputs)
    examples_per_second, full_batch_s = baselines.compute_limit(workload, typed, min_seconds=0.2)
    assert examples_per_second > 0 and full_batch_s > 0
    topics = run._topics(bootstrap, 1)
    system.publish(bootstrap, topics["in"], system.encode(workload, inputs), 64)
    rates = run._usual(bootstrap, topics, workload, typed, 1.0)
    # a SavedModel has no model.predict under Keras 3; every other approach ran and predicted
    assert (rates["model.predict per message"] is None) == (model == "saved_model_with_a_string_input")
    assert (rates["tf.function per message"] or 0) > 0 and (rates["process pool"] or 0) > 0
    if model == "keras_dict_inputs":
        assert (rates["model.predict per message"] or 0) > 0


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        ("'--workers 2", 'cannot split "\'--workers 2" into flags (No closing quotation)'),
        ("--workers 2 --max-batch-size 64", "--max-batch-size is set by the bench itself (use bench --batch-size)"),
        ("--signature=triple", "--signature is set by the bench itself (use bench --signature)"),
        ("--stop-at-end", "--stop-at-end is set by the bench itself (it differs per phase)"),
        ("--workers 2 --bogus 3", "python -m consumer run would refuse them: unrecognized arguments: --bogus 3"),
        (
            "--workers 0",
            "python -m consumer run would refuse them: invalid setting workers=0 (from command line): "
            "Input should be greater than or equal to 1",
        ),
    ],
)
def test_consumer_args_the_bench_cannot_pass_are_refused_before_it_starts(
    flags: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A flag the bench sets itself would silently override it for the system alone (its batch size,
    say, while the compute limit ran at another); an unclosed quote crashed with a traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", f"--consumer-args={flags}", "--workdir", str(tmp_path / "work")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"python -m producer_tools bench: error: argument --consumer-args: {says}"
    )
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("given", [["--consumer-args", "--trust-model-code"], ["--consumer-args=--trust-model-code"]])
def test_consumer_args_of_one_flag_are_taken_as_the_value(given: list[str]) -> None:
    """argparse took a lone flag after --consumer-args for an option of the bench's own, and refused
    the command (expected one argument); flags with a space between them passed."""
    from producer_tools.cli import _flags_as_values, build_parser

    args = build_parser().parse_args(_flags_as_values(["bench", *given, "--rounds", "2"]))
    assert (args.consumer_args, args.rounds) == (("--trust-model-code",), 2)


def test_consumer_args_the_consumer_takes_pass_the_check() -> None:
    """The check runs the consumer's own parser and settings; what they take, it lets through."""
    assert consumer_flags_problem(["--workers", "2", "--delivery", "exactly-once", "--log-level", "debug"]) is None


@pytest.mark.parametrize(("flag", "value"), [("--batch-size", "70000"), ("--max-wait-ms", "99999")])
def test_a_batch_setting_the_consumer_would_refuse_is_refused_before_the_bench_starts(
    flag: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bench took any positive value, which the consumer under test refuses past its limits:
    the bench says so at once, in the consumer's terms."""
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", flag, value, "--workdir", str(tmp_path / "work")])
    limit = {"--batch-size": 65536, "--max-wait-ms": 60000}[flag]
    assert exit_info.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1] == (
        f"python -m producer_tools bench: error: argument {flag}: must be at most {limit} (the consumer's limit), "
        f"got {value}"
    )
    assert not (tmp_path / "work").exists()


def test_a_workload_that_is_no_name_and_no_path_is_refused_before_the_bench_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped workload was taken for a model path, and the bench ended with exit 1 only once it
    had started TensorFlow, saying the model path did not exist."""
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--workload", "mobilenetv2", "--workdir", str(tmp_path / "work")])
    assert exit_info.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1] == (
        "python -m producer_tools bench: error: argument --workload: 'mobilenetv2' is neither mlp, mobilenet nor "
        "an existing model path"
    )
    assert not (tmp_path / "work").exists()


def test_a_savedmodel_is_benched_through_the_signature_given(tmp_path: Path) -> None:
    """``--signature``: the bench loaded ``serving_default`` only, so a SavedModel without one could
    not be benched at all (its error said to pass a ``--signature`` the bench did not have)."""
    path = models.two_signatures(tmp_path / "sm")  # "double" and "triple", no serving_default
    workload = workloads.build(str(path), tmp_path, serving_signature="triple")
    x = np.arange(8, dtype="float32").reshape(2, 4)
    glue = baselines.glue_call(workload.model_path, "tf.function", workload.serving_signature)
    assert glue is not None and np.array_equal(glue({"x": x})["y"].numpy(), x * 3)
    typed = workload.model_inputs(workload.inputs(64))
    examples_per_second, _ = baselines.compute_limit(workload, typed, min_seconds=0.2)
    assert examples_per_second > 0
    assert baselines.process_pool(workload, typed, workers=1) > 0  # its process loads "triple"
    command = system.command("127.0.0.1:1", "in", "out", workload, ())
    assert command[command.index("--signature") + 1] == "triple"


def test_a_model_that_fixes_its_batch_is_benched_at_that_batch_and_another_is_refused(
    bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = models.fixed_batch_keras(tmp_path / "fixed.keras", 16)
    assert workloads.build(str(path), tmp_path).batch_size == 16  # not the default 256, which it cannot run
    argv = ["bench", "--bootstrap-servers", bootstrap, "--workload", str(path), "--batch-size", "32"]
    assert main([*argv, "--workdir", str(tmp_path / "work")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: invalid setting --batch-size 32: model 'fixed' takes batches of exactly 16 (its inputs fix the "
        "batch dimension); run with --batch-size 16, or leave it out"
    )


@pytest.mark.parametrize(
    ("command", "flag", "path", "says"),
    [
        ("bench", "--json", "no-such-folder/bench.json", "'{d}/no-such-folder' is not a writable directory"),
        ("bench", "--json", "a-folder", "it is a folder; give a file name"),
        ("bench", "--workdir", "a-file/run", "'{d}/a-file' is a file, not a folder"),
        ("demo", "--workdir", "a-file", "'{d}/a-file' is a file, not a folder"),
    ],
)
def test_a_path_the_run_could_not_write_is_refused_before_it_starts(
    command: str, flag: str, path: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by hand: ``bench --json`` into a missing folder crashed with a traceback after the whole
    run, its results lost; a ``--workdir`` that was a file crashed at start."""
    (tmp_path / "a-file").write_text("")
    (tmp_path / "a-folder").mkdir()
    workdir = tmp_path / "work"
    argv = [command, flag, str(tmp_path / path)] + (["--workdir", str(workdir)] if flag == "--json" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: invalid setting {flag}={str(tmp_path / path)!r}: {says.format(d=tmp_path)}"]
    assert not workdir.exists()  # nothing ran: no model built, no broker started


def test_results_that_cannot_be_written_after_the_run_fail_in_one_line_with_the_table_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The folder checked at the start is gone when the run ends (here: removed by the run): exit 1
    and one line, after the table. The bench itself is replaced by its removal of the folder (its
    full run is ``test_bench_runs_every_phase_and_writes_its_json``)."""
    folder = tmp_path / "results"
    folder.mkdir()

    def run_that_removes_the_folder(options: run.BenchOptions) -> dict[str, object]:
        folder.rmdir()
        return {"figures": "measured"}

    monkeypatch.setattr(run, "run", run_that_removes_the_folder)
    monkeypatch.setattr(report, "print_table", lambda result: print("the table", result["figures"]))
    assert main(["bench", "--json", str(folder / "bench.json"), "--workdir", str(tmp_path / "work")]) == 1
    captured = capsys.readouterr()
    assert captured.out == "the table measured\n"
    assert captured.err.strip().splitlines() == [
        f"error: could not write the results to {folder / 'bench.json'} (No such file or directory); "
        "the table above has them"
    ]


def _every_measure_runs_on(
    bootstrap: str, workload: workloads.Workload, inputs: workloads.Inputs, flags: tuple[str, ...]
) -> None:
    """The compute limit, the usual approaches and the system's drain (with ``flags``) all run on
    ``inputs``, and the system predicts every one."""
    count = len(next(iter(inputs.values())))
    typed = workload.model_inputs(inputs)
    assert baselines.compute_limit(workload, typed, min_seconds=0.2)[0] > 0
    topics = run._topics(bootstrap, 1)
    system.publish(bootstrap, topics["in"], system.encode(workload, inputs), count)
    rates = run._usual(bootstrap, topics, workload, typed, 1.0)
    assert all((rate or 0) > 0 for rate in rates.values()), rates
    drained = system.drain(bootstrap, topics["in"], topics["out"], workload, ("--max-wait-ms", "5", *flags))
    assert (drained["predicted"], drained["dead_lettered"]) == (count, 0)


def test_a_model_of_any_length_is_benched_through_the_consumer_s_preprocess_function(
    bootstrap: str, tmp_path: Path
) -> None:
    """``--consumer-args '--preprocess m:f'`` applies where the consumer applies it: the bench sends
    what the function declares it takes (token lists of random lengths), and the compute limit, the
    per-message loops and the process pool get the model's inputs from it. Before, such a model was
    refused by the bench, which made inputs of the model's own shapes only."""
    path = models.token_classifier(tmp_path / "tokens.keras")  # Input((None,)): any length
    args = ("--preprocess", "tests.preprocessors:four_token_ids")
    workload = run._workload(run.BenchOptions(workload=str(path), workdir=tmp_path, consumer_args=args))
    assert workload.signature.inputs[0].shape == (4,)  # compiled at what the function gives
    inputs = workload.inputs(64)
    lengths = {len(row) for row in inputs["tokens"]}
    assert min(lengths) >= 1 and max(lengths) <= workloads.ANY_LENGTH_MAX and len(lengths) > 5
    typed = workload.model_inputs(inputs)
    assert typed["tokens"].shape == (64, 4) and typed["tokens"].dtype == np.int32
    assert typed["tokens"][0].tolist() == preprocessors.pad_or_cut(inputs["tokens"][0]).tolist()
    _every_measure_runs_on(bootstrap, workload, inputs, args)


@pytest.mark.parametrize(
    ("model", "says"),
    [
        (
            "token_classifier:tokens.keras",
            "model input 'tokens' has a dimension of any size [None]; the bench makes inputs of the model's own "
            "shapes: give it the preprocess function that serves the model (--consumer-args '--preprocess "
            "module:function'), or bench the model exported with fixed input shapes",
        ),
        (
            "texts:texts",
            "model input 'texts' takes strings of shape [3]; a message carries one string per input: give the "
            "bench the preprocess function that serves the model (--consumer-args '--preprocess module:function'), "
            "or bench a model that takes one string an example (shape [] or [1])",
        ),
    ],
)
def test_without_its_preprocess_function_a_model_that_needs_one_is_refused_by_the_bench_before_it_runs(
    tmp_path: Path, model: str, says: str
) -> None:
    """A model of any length, or of several strings an example, is served behind a preprocess
    function. The second ran the I/O limit and the compute limit, then failed with the consumer's log
    lines when the consumer it started refused the model."""
    from consumer.errors import ModelError

    make, file = model.split(":")  # the function of tests.models, and the file it saves
    with pytest.raises(ModelError) as info:
        workloads.build(str(getattr(models, make)(tmp_path / file)), tmp_path)
    assert str(info.value) == says


def test_a_preprocess_function_that_fails_on_the_inputs_the_bench_makes_is_refused_before_it_runs(
    tmp_path: Path,
) -> None:
    """An undecorated function takes one string an example, which the bench can only make up (b'x'):
    one that parses it (four float32s here, as an image decoder would parse a JPEG) fails at build,
    in one line, before anything is published, naming --inputs."""
    from consumer.errors import ConfigError

    path = models.mlp(tmp_path / "m.keras")
    with pytest.raises(ConfigError) as info:
        workloads.build(str(path), tmp_path, preprocess="tests.preprocessors:decode_floats")
    said = str(info.value)
    assert said == (
        "the preprocess function failed on an input the bench made (InvalidArgumentError: Input to DecodeRaw has "
        "length 1 that is not a multiple of 4, the size of float): the bench sends random values of what it takes "
        "(features: string[]; b'x' for a string, lengths 1 to 32 where any size is declared); give it examples it "
        "takes with --inputs FILE"
    )


def test_examples_given_with_inputs_are_what_the_bench_sends_through_the_preprocess_function(
    bootstrap: str, tmp_path: Path
) -> None:
    """``--inputs FOLDER`` (files of four float32s, as images for a decoder): sent as the consumer
    takes them, cycled; the compute limit, the usual approaches and the system run on them."""
    folder = tmp_path / "raw"
    folder.mkdir()
    rows = np.arange(20, dtype="float32").reshape(5, 4)
    for i, row in enumerate(rows):
        (folder / f"{i}.bin").write_bytes(row.tobytes())
    path = models.mlp(tmp_path / "m.keras")
    args = ("--preprocess", "tests.preprocessors:decode_floats")
    options = run.BenchOptions(workload=str(path), workdir=tmp_path, consumer_args=args, inputs=folder)
    workload = run._workload(options)
    inputs = workload.inputs(12)
    assert [bytes(value) for value in inputs["features"]] == [rows[i % 5].tobytes() for i in range(12)]
    np.testing.assert_array_equal(workload.model_inputs(inputs)["features"], rows[np.arange(12) % 5])
    _every_measure_runs_on(bootstrap, workload, inputs, args)


@pytest.mark.parametrize(
    ("model", "file", "says"),
    [
        ("mlp", "wide.npy", "example 0 is not what the consumer takes for this model (features: float32[4]): input "
         "'features' has shape [5]; the model takes [4]"),
        ("mlp", "named.npz", "example 0 gives inputs ['other'], and the model takes ['features']: name them"),
        ("mlp", "texts", "example 0 is not what the consumer takes for this model (features: float32[4]): input "
         "'features' takes float32, got bin"),
        ("multi_input", "good.npy", "the model takes 2 inputs, ['a', 'b'], and the file's examples are one each"),
    ],
)  # fmt: skip
def test_examples_the_consumer_would_refuse_are_refused_before_the_bench_runs(
    tmp_path: Path, model: str, file: str, says: str
) -> None:
    """Checked as the consumer checks a message: sent, they would be dead-lettered, and the run
    would measure failures."""
    from consumer.errors import ConfigError

    np.save(tmp_path / "good.npy", np.ones((3, 4), "float32"))
    np.save(tmp_path / "wide.npy", np.ones((3, 5), "float32"))
    np.savez(tmp_path / "named.npz", other=np.ones((3, 4), "float32"))
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("some words")
    path = getattr(models, model)(tmp_path / "m.keras")
    with pytest.raises(ConfigError) as info:
        workloads.build(str(path), tmp_path, given_from=tmp_path / file)
    assert str(info.value).startswith(f"--inputs {str(tmp_path / file)!r}: {says}")


def test_a_drain_that_could_not_predict_every_input_fails_the_bench_saying_why(bootstrap: str, tmp_path: Path) -> None:
    """Its throughput would count failures: before, the bench reported it as the system's."""
    from consumer.errors import ConfigError

    workload = workloads.build(str(models.mlp(tmp_path / "m.keras")), tmp_path)
    topics = run._topics(bootstrap, 1)
    values = [*system.encode(workload, workload.inputs(5)), b"not msgpack"]
    system.publish(bootstrap, topics["in"], values, len(values))
    with pytest.raises(ConfigError) as info:
        system.drain(bootstrap, topics["in"], topics["out"], workload, ("--max-wait-ms", "5"))
    said = str(info.value)
    assert said.startswith("the consumer could not predict 1 of the 6 inputs the bench sent; the first: ")
    assert said.endswith(": the figures would be of failures; bench inputs the model takes (--inputs FILE)")


def test_a_preprocess_function_that_cannot_give_the_model_its_inputs_is_refused_as_the_consumer_refuses_it(
    tmp_path: Path,
) -> None:
    """In the consumer's words, at build: not after the limits, by the consumer the bench started."""
    from consumer.errors import ConfigError

    path = models.mlp(tmp_path / "m.keras")
    with pytest.raises(ConfigError) as info:
        workloads.build(str(path), tmp_path, preprocess="tests.preprocessors:widens_to_float64")
    assert str(info.value) == (
        "invalid setting preprocess='tests.preprocessors:widens_to_float64': for one input it returns "
        "features: float64[4], and the model takes features: float32[4]: make it return that"
    )


def test_the_usual_approaches_count_the_rows_of_a_model_s_first_output_nested_or_not() -> None:
    """A Keras model of nested outputs gave them a dict of dicts, of no length: a TypeError."""
    rows = np.zeros((5, 2))
    for outputs in (rows, [rows], {"a": rows}, {"head": {"score": rows, "parts": [rows]}}, ([rows, rows],)):
        assert baselines._first_output(outputs).shape == (5, 2)


def _threads_cpus(pid: int) -> set[str]:
    """The CPU list each thread of ``pid`` may run on, as the kernel lists it."""
    lists = set()
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        line = next(x for x in status.read_text().splitlines() if x.startswith("Cpus_allowed_list:"))
        lists.add(line.split(":", 1)[1].strip())
    return lists


@pytest.mark.skipif(len(allowed_cpus()) < 2, reason="needs two CPUs, one to set apart for the broker")
def test_an_embedded_broker_given_cpus_runs_every_thread_on_them_and_serves(tmp_path: Path) -> None:
    before = os.sched_getaffinity(0)
    own = allowed_cpus()[-1]
    with EmbeddedBroker(cpus=[own]) as broker:
        assert broker.pid is not None and _threads_cpus(broker.pid) == {str(own)}
        assert os.sched_getaffinity(0) == before  # this process's own are as they were
        create_topics(broker.bootstrap_servers, ["t"], partitions=1)
        system.publish(broker.bootstrap_servers, "t", [b"x"] * 3, 3)
        assert len(read_topic(broker.bootstrap_servers, "t", timeout=30, min_count=3)) == 3


@pytest.mark.skipif(len(allowed_cpus()) < 2, reason="needs two CPUs, one to set apart for the broker")
def test_bench_broker_cpus_sets_the_broker_apart_and_runs_the_rest_on_the_other_cpus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = os.sched_getaffinity(0)
    broker_cpu, *rest = allowed_cpus()
    out = tmp_path / "bench.json"
    tiny = ["--messages", "300", "--batch-size", "32", "--latency-seconds", "1", "--baseline-seconds", "1"]
    argv = ["bench", "--broker-cpus", str(broker_cpu), *tiny, "--latency-rate", "200", "--json", str(out)]
    assert main([*argv, "--workdir", str(tmp_path)]) == 0
    result = json.loads(out.read_text())
    assert result["settings"]["broker_cpus"] == [broker_cpu] and result["settings"]["broker"] == "embedded"
    # the consumer under test saw only the rest: one CPU worker on each of them, pinned there
    workers = result["system_summary"]["workers"]
    assert sorted(w["cpus"] for w in workers) == sorted(describe([cpu]) for cpu in rest[:DEFAULT_CPU_WORKERS])
    assert result["io_limit_latency_processes"] == len(workers) and result["system_summary"]["predicted"] == 300
    assert result["steady_cpu"]["broker"] > 0  # the broker was found, on its own CPU
    assert result["environment"]["cpus_usable"] == min(len(rest), usable_cores())
    assert f"(the embedded broker alone on CPU {broker_cpu}, the rest on the others)" in capsys.readouterr().out
    assert os.sched_getaffinity(0) == before


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("x", "'x' is not a CPU list"),
        ("1-0", "'1-0' has a range that runs backwards"),
        ("0-99999999", "names a CPU this process may not run on"),  # refused before it is expanded
        ("all", "is not a CPU list"),
    ],
)
def test_broker_cpus_that_are_no_cpu_list_of_this_process_are_refused(
    value: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["bench", "--broker-cpus", value])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit.value.code == 2 and says in err[-1] and err[-1].startswith("python -m producer_tools bench: error:")


def test_broker_cpus_that_leave_nothing_for_the_consumer_or_name_another_broker_are_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    every = describe(allowed_cpus())
    with pytest.raises(SystemExit) as exit:
        main(["bench", "--broker-cpus", every])
    assert exit.value.code == 2 and "leaves no CPU for the consumer under test" in capsys.readouterr().err
    assert main(["bench", "--broker-cpus", "0", "--bootstrap-servers", "127.0.0.1:1"]) == 2  # before any run
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: --broker-cpus places the embedded broker, and --bootstrap-servers names another: drop one "
        "(pin that broker yourself, as with taskset)"
    ]
