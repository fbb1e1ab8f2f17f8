"""``python -m consumer``: the command-line contract.

``run`` starts the supervisor (no TensorFlow here), which spawns one worker per device. ``check``
loads the model in this process and runs sample inputs through it, without Kafka (``consumer.check``).
Usage and configuration errors exit 2 with one line; other failures exit 1 with one line;
SIGTERM/SIGINT/SIGHUP drain every worker and exit 0 (a second signal exits at once).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from consumer import __version__, kafka_io, logs, tensorflow_install
from consumer.affinity import allowed_cpus, cpu_limit, owns_cpus, usable_count
from consumer.arguments import input_file_flags, parse_command_line, positive, topic
from consumer.config import ENV_PREFIX, Settings, load_settings, unknown_environment
from consumer.devices import WorkerSlot, oversubscribed, plan_workers
from consumer.errors import ConfigError
from consumer.supervisor import EXIT_FAILURE, EXIT_USAGE, Supervisor
from consumer.versions import check_polling


def _flag(group: Any, name: str, help: str, **kwargs: Any) -> None:
    dest = name.lstrip("-").replace("-", "_")
    env = f" [env {ENV_PREFIX}{dest.upper()}]"
    group.add_argument(name, dest=dest, default=None, help=help + env, **kwargs)


def _switch(group: Any, name: str, help: str) -> None:
    """An on/off flag: given, it sets the setting to true; absent, the environment or file decides."""
    _flag(group, name, help, action="store_const", const=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m consumer",
        description="Streaming TensorFlow/Keras inference for Kafka.",
        epilog=f"Every flag falls back to the environment variable shown, then to --config "
        f"(or {ENV_PREFIX}CONFIG). librdkafka settings: [kafka], [kafka.consumer], [kafka.producer] "
        f"tables in the config file, or {ENV_PREFIX}KAFKA_<KEY> variables.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_run_parser(commands)
    add_check_parser(commands)
    return parser


def add_run_parser(commands: Any) -> argparse.ArgumentParser:
    run = commands.add_parser(
        "run",
        help="consume inputs, predict, publish outputs",
        description="Run the consumer-group member(s) for one model.",
    )
    _add_run_flags(run)
    return run


def add_check_parser(commands: Any) -> argparse.ArgumentParser:
    about = (
        "Check a run's settings and model without Kafka: load the model as a worker does, say what messages must "
        "carry, and predict a file's inputs as the workers would (the Kafka settings may be left out), or a "
        "topic's records (--sample-topic, which reads Kafka)."
    )
    check = commands.add_parser(
        "check", help="check settings, model and sample inputs, without Kafka", description=about
    )
    _add_run_flags(check)
    inputs = check.add_argument_group("sample inputs")
    source = inputs.add_mutually_exclusive_group()
    source.add_argument(
        "--inputs",
        metavar="FILE",
        help="a file publish takes (.npy, .npz, .jsonl, .csv, a folder): each example packed as publish sends it, "
        "then decoded and predicted as a worker does",
    )
    sample = [
        source.add_argument(
            "--sample-topic",
            metavar="TOPIC",
            type=topic,
            help="instead of a file, records of a topic as they are (the input topic, or the dead letters a new "
            "version should take), read without joining a group; needs --bootstrap-servers",
        ),
        inputs.add_argument(
            "--sample-count", type=positive(int), metavar="N", help="how many records of --sample-topic (default 1000)"
        ),
    ]
    where = inputs.add_mutually_exclusive_group()
    sample += [
        where.add_argument(
            "--sample-from-timestamp",
            metavar="ISO8601",
            help="the sample's first records at or after this time (default: each partition's start)",
        ),
        where.add_argument(
            "--sample-latest",
            action="store_true",
            default=None,
            help="the topic's latest --sample-count records (shared over its partitions) instead of its first: "
            "what the producers send now",
        ),
    ]
    read_flags = input_file_flags(inputs)  # as publish reads the file
    only_check = ("inputs", *(action.dest for action in sample), *read_flags)
    check.set_defaults(check_only=only_check)  # not settings of a run: ``settings_from_args``
    return check


def _add_run_flags(run: argparse.ArgumentParser) -> None:
    """The flags ``run`` and ``check`` share, by group, in the order ``--help`` shows them."""
    for add in (_kafka_flags, _model_flags, _batching_flags, _device_flags, _bound_flags, _other_flags):
        add(run)
    run.add_argument(
        "--config", default=None, metavar="FILE.toml", help=f"TOML configuration file [env {ENV_PREFIX}CONFIG]"
    )


def _kafka_flags(run: argparse.ArgumentParser) -> None:
    kafka = run.add_argument_group("Kafka")
    _flag(kafka, "--bootstrap-servers", "Kafka brokers, HOST:PORT[,HOST:PORT]", metavar="HOSTS")
    _flag(kafka, "--input-topic", "topic to read inputs from", metavar="IN")
    _flag(kafka, "--output-topic", "topic to write predictions to", metavar="OUT")
    _flag(kafka, "--group", "consumer group id; every member of a deployment uses the same one")
    _flag(kafka, "--dlq-topic", "dead-letter topic for inputs that cannot be predicted", metavar="DLQ")


def _model_flags(run: argparse.ArgumentParser) -> None:
    model = run.add_argument_group("model")
    _flag(
        model,
        "--model",
        "a Keras .keras file (or a whole model saved as .h5) or a SavedModel directory",
        metavar="PATH",
    )
    _flag(model, "--model-name", "name reported in outputs (default: the file's stem)")
    _flag(
        model,
        "--model-version",
        "a versioned model directory: the version to serve (default: the highest); a single model: the "
        "version reported in outputs (default: content hash)",
    )
    _flag(model, "--signature", "the SavedModel signature to serve (default serving_default)", metavar="NAME")
    _flag(model, "--model-poll-seconds", "watch a versioned --model, swap in new versions", type=float, metavar="S")
    _flag(
        model,
        "--preprocess",
        "TensorFlow function of one example (run over whole batches where TensorFlow vectorizes it), module:function",
        metavar="MODULE:FN",
    )
    _flag(
        model,
        "--custom-objects",
        "modules defining the Keras layers, losses or functions the model was saved with, comma-separated",
        metavar="MODULE,...",
    )
    _switch(model, "--trust-model-code", "load Keras Lambda layers' Python code (safe_mode=False): trusted files only")
    _switch(model, "--jit-compile", "compile predict functions with XLA")


def _batching_flags(run: argparse.ArgumentParser) -> None:
    batching = run.add_argument_group("batching")
    _flag(batching, "--max-batch-size", "largest batch (default 256)", type=int, metavar="N")
    _flag(
        batching,
        "--max-wait-ms",
        "a partial batch goes once its oldest input waited this long and the model is about to be free (default 10)",
        type=float,
        metavar="MS",
    )
    _flag(
        batching,
        "--allowed-batch-sizes",
        "compiled batch sizes, comma-separated, the largest equal to --max-batch-size (default: powers of two, "
        "and their midpoints from 8 up, to --max-batch-size)",
        metavar="N,N,...",
    )


def _device_flags(run: argparse.ArgumentParser) -> None:
    devices = run.add_argument_group("devices")
    _flag(
        devices,
        "--workers",
        "worker processes (default: one per GPU, or two on a CPU with two cores or more)",
        type=int,
        metavar="N",
    )
    _flag(devices, "--devices", "auto, cpu, or gpu:0,1,... (default auto)", metavar="SPEC")
    _flag(devices, "--workers-per-device", "workers sharing each GPU (default 1)", type=int, metavar="N")
    _flag(
        devices,
        "--cpu-affinity",
        "cores (default: each worker pinned to its own equal share of whole cores, a GPU worker's near its "
        "GPU) or off (the OS moves the workers' threads between all cores)",
        choices=["cores", "off"],
    )
    _flag(devices, "--gpu-memory", "per worker: grow (default, on demand) or a fixed limit in MiB", metavar="grow|MIB")
    _switch(
        devices,
        "--allow-cpu-fallback",
        "a worker given a GPU that TensorFlow cannot see runs on the CPU with a warning, instead of failing",
    )


def _bound_flags(run: argparse.ArgumentParser) -> None:
    bounds = run.add_argument_group("start and end")
    start = bounds.add_mutually_exclusive_group()
    _switch(start, "--from-beginning", "start new partitions at the earliest offset")
    _flag(start, "--from-timestamp", "start new partitions at this time and skip older records", metavar="ISO8601")
    _flag(bounds, "--until-timestamp", "skip records at or after this time", metavar="ISO8601")
    _switch(bounds, "--stop-at-end", "process what the partitions held at start, then exit 0")


def _other_flags(run: argparse.ArgumentParser) -> None:
    other = run.add_argument_group("other")
    _flag(
        other,
        "--delivery",
        "at-least-once (default) or exactly-once (transactions; readers use isolation.level=read_committed)",
        choices=["at-least-once", "exactly-once"],
    )
    _flag(other, "--output-format", "msgpack (wire format v1, default) or json", choices=["msgpack", "json"])
    _flag(
        other,
        "--output-headers",
        "all (default: the input's own headers and the worker's five tfstream.* ones) or source (the input's "
        "own only: about 150 bytes less per output)",
        choices=["all", "source"],
    )
    _flag(
        other,
        "--output-partitioning",
        "key (default: the producer's partitioner, by the input's key) or input (each output to the partition "
        "of its input's number: the input's order, keyed or not; the output topic needs as many partitions)",
        choices=["key", "input"],
    )
    _flag(
        other,
        "--tombstones",
        "inputs without a value (a compacted topic's deletions): dead-letter (default), skip, or forward (a "
        "record without a value, with the input's key, to the output topic)",
        choices=["dead-letter", "skip", "forward"],
    )
    _flag(
        other,
        "--metrics-port",
        "serve /metrics, /healthz and /readyz on this port (default: off; 0 picks a free one)",
        type=int,
        metavar="PORT",
    )
    _flag(other, "--log-level", "debug, info, warning or error", choices=["debug", "info", "warning", "error"])
    _flag(
        other,
        "--log-format",
        "auto (console on a terminal, else JSON), json or console",
        choices=["auto", "json", "console"],
    )


#: what ``check`` fills in for the Kafka settings it does not use, when no flag, variable or file gives them
CHECK_PLACEHOLDERS = {
    "bootstrap_servers": "unused:9092",
    "input_topic": "unused-in",
    "output_topic": "unused-out",
    "group": "unused",
}


def settings_from_args(args: argparse.Namespace) -> Settings:
    only_check = getattr(args, "check_only", ())  # check's own flags: its --inputs and how that file is read
    values = {k: v for k, v in vars(args).items() if k not in {"command", "config", "check_only", *only_check}}
    defaults = CHECK_PLACEHOLDERS if args.command == "check" else None
    return load_settings(values, args.config, defaults=defaults)


def checked_run(args: argparse.Namespace) -> tuple[Settings, list[WorkerSlot]]:
    """A run's settings and worker slots from its parsed flags, or ``ConfigError`` in one line for
    what it would refuse before starting (the bench checks its ``--consumer-args`` with it too)."""
    settings = settings_from_args(args)
    check_polling(settings.model, settings.model_poll_seconds)
    slots = plan_workers(
        settings.devices,
        settings.workers,
        per_device=settings.workers_per_device,
        pin_cpus=settings.cpu_affinity == "cores",
    )
    kafka_io.check_client_settings(settings)
    return settings, slots


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_command_line(build_parser(), argv)
    for unknown in unknown_environment():  # first: a missing setting may be one of them, misspelt
        logs.line(f"warning: {unknown}")
    try:
        settings, slots = checked_run(args)
    except ConfigError as exc:
        logs.line(f"error: {exc}")
        return EXIT_USAGE
    if (missing := tensorflow_install.missing()) is not None:  # else every worker would fail the same way
        logs.line(f"error: {missing}")
        return EXIT_FAILURE
    if args.command == "check":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # as in a worker: TensorFlow's C++ INFO lines are noise
        logs.configure(settings.log_level, settings.log_format, worker="check")
        from consumer import check

        return check.main(settings, args.inputs, args)
    logs.configure(settings.log_level, settings.log_format, worker="supervisor")
    if (builds := tensorflow_install.builds_over_each_other()) is not None:
        logs.get_logger("consumer.supervisor").warning("two TensorFlow builds installed", advice=builds)
    cpus, quota = len(allowed_cpus()), cpu_limit()
    cores = usable_count(cpus, quota)
    if (warning := oversubscribed(slots, cores)) is not None:
        logs.get_logger("consumer.supervisor").warning("more CPU workers than cores", advice=warning)
    if any(slot.device == "cpu" for slot in slots) and not owns_cpus(cpus, quota):
        logs.get_logger("consumer.supervisor").info(
            "a CPU quota below the CPUs allowed: CPU workers sized to it, not pinned", quota=quota, sized_to=cores
        )
    gpu_slots = [slot for slot in slots if slot.gpu_id is not None]
    if gpu_slots and settings.cpu_affinity == "cores" and not any(slot.cpus for slot in gpu_slots):
        logs.get_logger("consumer.supervisor").info(
            "GPU workers not pinned near their GPUs",
            why="the CPUs of their GPUs' NUMA nodes are unknown, or not this process's own",
            reads="nvidia-smi --query-gpu=index,uuid,pci.bus_id, then /sys/bus/pci/devices/ADDRESS/local_cpulist",
        )
    supervisor = Supervisor(settings, slots)
    try:
        code = supervisor.run()
    except ConfigError as exc:
        logs.line(f"error: {exc}")
        return EXIT_USAGE
    summary = {"event": "summary", **supervisor.summary()}
    summary["supervisor_imported_tensorflow"] = "tensorflow" in sys.modules
    logs.line(json.dumps(summary))
    if summary["uncommitted"]:
        logs.line(
            f"warning: {summary['uncommitted']} inputs were read but not committed when the run stopped (the "
            "brokers did not take the last commit, or the drain ran out); the next start reads them again"
        )
    if supervisor.error:
        logs.line(f"error: {supervisor.error}")
    return code
