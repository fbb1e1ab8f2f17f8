"""``python -m producer_tools``: the user-side tools.

Exit codes: 0 done; 1 a runtime failure (undelivered messages, broker errors); 2 a usage or
input-file error, one line naming what was wrong (nothing is published then); 130 interrupted
(Ctrl-C), 143 terminated (SIGTERM): either way what the command started (an embedded broker, a
consumer, a process pool) is stopped first.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from confluent_kafka import KafkaException

from consumer import tensorflow_install
from consumer.affinity import allowed_cpus, describe
from consumer.arguments import (
    at_most,
    input_file_flags,
    not_negative,
    parse_command_line,
    positive,
    rate,
    seconds,
    topic,
)
from consumer.config import MAX_BATCH_SIZE, MAX_WAIT_MS
from consumer.errors import STAGES, BrokerError, ConfigError, TfStreamError
from consumer.kafka_io import FETCH_WAIT_MS
from consumer.logs import write_to_devnull
from consumer.signature import DEFAULT_SIGNATURE
from producer_tools import commands
from producer_tools.bench.workloads import BUILT_IN
from producer_tools.clients import add_client_flags
from producer_tools.consumer_run import consumer_flags_problem
from producer_tools.paths import check_output_file, check_workdir

Command = Callable[[argparse.Namespace], int]
#: librdkafka's upper limit for ``fetch.wait.max.ms``
MAX_FETCH_WAIT_MS = 300_000
#: the longest ``linger.ms`` librdkafka takes
MAX_LINGER_MS = 900_000
MAX_PORT = 65_535
#: the most partitions a topic may be created with (confluent-kafka's ``NewTopic`` refuses more)
MAX_PARTITIONS = 100_000
#: an argparse type: a topic's partitions
_PARTITIONS = at_most(positive(int), MAX_PARTITIONS, f"{MAX_PARTITIONS} (the Kafka client's limit)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m producer_tools", description="User-side tools for tfstream.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _publish(sub)
    _collect(sub)
    _dead_letters(sub)
    _replay(sub)
    _reset_offsets(sub)
    _lag(sub)
    topics = _command(sub, "create-topics", commands.run_create_topics, "create topics that do not exist yet")
    topics.add_argument("topics", nargs="+", type=topic, metavar="TOPIC", help="the names of the topics to create")
    topics.add_argument("--partitions", type=_PARTITIONS, default=4, help="partitions of each new topic (default 4)")
    topics.add_argument(
        "--replication-factor",
        type=positive(int),
        metavar="N",
        help="copies of each new partition (default: the broker's default.replication.factor)",
    )
    _demo(sub)
    _bench(sub)
    _bench_compare(sub)
    _fetch_latency(sub)
    about_broker = "run the embedded broker in the foreground until Ctrl-C"
    broker = sub.add_parser("broker", help=about_broker, description=about_broker)
    broker.add_argument(
        "--port", type=_port, default=9092, help="the port to listen on (0: any free one; default 9092)"
    )
    broker.set_defaults(run=lambda args: run_broker(args.port))
    return parser


def _command(sub: argparse._SubParsersAction, name: str, run: Command, help: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=help)
    add_client_flags(parser)
    parser.set_defaults(run=run)
    return parser


def _publish(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "publish", commands.run_publish, "publish inputs from a file in wire format v1")
    p.add_argument("file", type=Path, help=".npy, .npz, .jsonl, .csv, or a folder of files sent as raw bytes")
    p.add_argument("--topic", required=True, type=topic, help="the input topic")
    input_file_flags(p)
    p.add_argument("--tensor-form", choices=["raw", "list"], default="raw", help="raw bytes (default) or nested lists")
    p.add_argument("--rate", type=rate, metavar="N", help="messages per second (default: as fast as possible)")
    how_many = p.add_mutually_exclusive_group()  # both given, one would be quietly ignored
    how_many.add_argument("--count", type=positive(int), metavar="N", help="send N messages, cycling through the file")
    how_many.add_argument(
        "--repeat", type=positive(int), default=1, metavar="K", help="send the file K times (default 1)"
    )


def _collect(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "collect", commands.run_collect, "read predictions into .npz or .jsonl")
    p.add_argument("--topic", required=True, type=topic, help="the prediction topic")
    p.add_argument("--out", required=True, type=Path, help="where to write: PATH.npz or PATH.jsonl")
    p.add_argument("--count", type=positive(int), metavar="N", help="stop after N records")
    p.add_argument("--idle", type=seconds, metavar="S", help="stop after S seconds without a new record")
    p.add_argument("--join", type=Path, metavar="FILE", help="the input file: write (input, prediction) pairs")
    p.add_argument("--join-on", choices=["id", "key"], default="id", help="match inputs by id (default) or key")
    input_file_flags(p)


def _dead_letters(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub, "dead-letters", commands.run_dead_letters, "count a dead-letter topic's inputs by why they failed"
    )
    p.add_argument("--topic", required=True, type=topic, help="the dead-letter topic (the consumer's --dlq-topic)")
    p.add_argument("--out", type=Path, metavar="PATH.jsonl", help="also write each dead letter, with its input")
    p.add_argument("--count", type=positive(int), metavar="N", help="stop after N records")
    p.add_argument("--idle", type=seconds, metavar="S", help="stop after S seconds without a new record")


def _replay(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "replay", commands.run_replay, "copy a time range of one topic to another (backfills)")
    p.add_argument("--from-topic", required=True, type=topic, help="the topic to read (left as it is)")
    p.add_argument("--to-topic", required=True, type=topic, help="the topic to append the copies to (it must exist)")
    p.add_argument("--from-timestamp", metavar="ISO8601", help="first record time kept (inclusive)")
    p.add_argument("--until-timestamp", metavar="ISO8601", help="records at or after this time are left out")
    p.add_argument(
        "--error",
        action="append",
        metavar="CLASS",
        help="copy only dead letters of this error class, as dead-letters names it (WrongShapeError; repeatable)",
    )
    p.add_argument(
        "--stage",
        action="append",
        choices=STAGES,
        help="copy only dead letters of this stage (repeatable)",
    )


def _reset_offsets(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "reset-offsets", commands.run_reset_offsets, "move a stopped group's committed offsets")
    _group_and_topic(p)
    to = p.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-timestamp", metavar="ISO8601", help="the first record at or after this time")
    to.add_argument("--to-earliest", action="store_true", help="the start of each partition")
    to.add_argument("--to-latest", action="store_true", help="the end of each partition (skip the backlog)")
    p.add_argument("--dry-run", action="store_true", help="show the new offsets, commit nothing")


def _group_and_topic(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--group", required=True, help="the consumer group")
    parser.add_argument("--topic", required=True, type=topic, help="the topic the group reads")


def _lag(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "lag", commands.run_lag, "per-partition committed offset, end offset and lag of a group")
    _group_and_topic(p)
    p.add_argument("--watch", type=seconds, metavar="S", help="refresh every S seconds until Ctrl-C")


def _demo(sub: argparse._SubParsersAction) -> None:
    about = "run the whole path on the embedded broker and summarise"
    demo = sub.add_parser("demo", help=about, description=about)
    demo.add_argument(
        "--bootstrap-servers",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
        help="use this Kafka, not the embedded broker [env KAFKA_BOOTSTRAP_SERVERS]",
    )
    demo.add_argument("--workdir", type=Path, default=Path("demo-output"), help="where the model and logs go")
    demo.add_argument(
        "--count", type=positive(int), default=360, help="held-out digits to publish (at most 360, the default)"
    )
    demo.set_defaults(run=run_demo)


def _bench(sub: argparse._SubParsersAction) -> None:
    about = "measure the system against its limits and the usual approaches"
    p = sub.add_parser("bench", help=about, description=about)
    p.add_argument("--bootstrap-servers", help="use this Kafka, not the embedded broker")
    p.add_argument("--workload", default="mlp", type=_workload, help="mlp, mobilenet, or a model path (default mlp)")
    p.add_argument(
        "--messages", type=positive(int), metavar="N", help="preloaded messages (mlp 400000, mobilenet 2000)"
    )
    p.add_argument(
        "--batch-size", type=_within_consumer(positive(int), MAX_BATCH_SIZE), metavar="N",
        help="max batch size (mlp 1024, mobilenet 32)",
    )  # fmt: skip
    p.add_argument(
        "--max-wait-ms",
        type=_within_consumer(not_negative(float), MAX_WAIT_MS),
        default=10.0,
        metavar="MS",
        help="the consumer's --max-wait-ms",
    )
    p.add_argument("--latency-seconds", type=seconds, default=10.0, metavar="S", help="steady-rate phase")
    p.add_argument(
        "--latency-rate", type=rate, metavar="R",
        help="publish rate of the steady phase, msg/s (default: half the system's throughput, which the target is for)",
    )  # fmt: skip
    p.add_argument("--baseline-seconds", type=seconds, default=10.0, metavar="S", help="per-message loops")
    p.add_argument("--backlog", type=positive(int), metavar="N", help="also drain a backlog of N messages for memory")
    p.add_argument(
        "--partitions", type=_PARTITIONS, default=4, metavar="N", help="partitions of its topics (default 4)"
    )
    p.add_argument(
        "--rounds", type=positive(int), default=1, metavar="N",
        help="measure the I/O limit, the system and the latency N times, interleaved; report the median (default 1)",
    )  # fmt: skip
    p.add_argument(
        "--signature", default=DEFAULT_SIGNATURE, metavar="NAME",
        help="the SavedModel signature to serve, for a model path (default serving_default)",
    )  # fmt: skip
    p.add_argument(
        "--inputs", type=Path, metavar="FILE",
        help="examples to send, cycled: a file publish takes (a folder of images, .jsonl, .npy, .npz, .csv); "
        "default: random inputs from the model's signature",
    )  # fmt: skip
    p.add_argument(
        "--broker-cpus", type=_broker_cpus, default=(), metavar="CPUS",
        help="run the embedded broker alone on these CPUs (Linux's list format: 0, 0-1, 0,2), and the bench, "
        "the relays and the consumer under test on the rest, as a deployment keeps the broker off its "
        "workers' cores (default: every process on every CPU)",
    )  # fmt: skip
    p.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON")
    p.add_argument("--workdir", type=Path, default=Path("bench-output"), help="models and the broker log")
    p.add_argument(
        "--consumer-args", type=_consumer_flags, default=(), metavar="'FLAGS'",
        help="more flags for python -m consumer run, e.g. '--workers 2 --delivery exactly-once'; its "
        "--preprocess, --custom-objects and --trust-model-code serve the bench's own inputs and loads too",
    )  # fmt: skip
    p.set_defaults(run=run_bench)


def _broker_cpus(text: str) -> tuple[int, ...]:
    """``--broker-cpus``: CPU ids as Linux lists them, each one this process may run on, and not all."""
    if not hasattr(os, "sched_setaffinity"):
        raise argparse.ArgumentTypeError("it needs Linux's CPU affinity, which this system lacks: drop it")
    allowed = allowed_cpus()
    bounds = _cpu_ranges(text)
    too_high = any(high > allowed[-1] for _, high in bounds)  # checked before a range is expanded
    cpus = () if too_high else tuple(sorted({cpu for low, high in bounds for cpu in range(low, high + 1)}))
    if too_high or not set(cpus) <= set(allowed):
        raise argparse.ArgumentTypeError(f"{text!r} names a CPU this process may not run on: use {describe(allowed)}")
    if len(cpus) == len(allowed):
        raise argparse.ArgumentTypeError(
            f"{text!r} leaves no CPU for the consumer under test: give the broker fewer than all of {describe(allowed)}"
        )
    return cpus


def _cpu_ranges(text: str) -> list[tuple[int, int]]:
    """``0-1,4`` as [(0, 1), (4, 4)], each range read before any is expanded (``0-99999999`` is no list)."""
    parts = [part.strip().partition("-") for part in text.split(",")]
    if not all(first.isdigit() and (last.isdigit() or not dash) for first, dash, last in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not a CPU list: give CPU ids as Linux lists them (0, 0-1, 0,2)")
    bounds = [(int(first), int(last or first)) for first, _, last in parts]
    if any(low > high for low, high in bounds):
        raise argparse.ArgumentTypeError(f"{text!r} has a range that runs backwards: write the lower CPU first")
    return bounds


#: consumer flags the bench sets itself, with the bench flag that sets each (None: set per phase)
BENCH_SETS = {
    "--bootstrap-servers": "--bootstrap-servers", "--model": "--workload", "--signature": "--signature",
    "--max-batch-size": "--batch-size", "--max-wait-ms": "--max-wait-ms", "--input-topic": None,
    "--output-topic": None, "--group": None, "--log-format": None, "--from-beginning": None, "--stop-at-end": None,
}  # fmt: skip


def _consumer_flags(text: str) -> tuple[str, ...]:
    """``--consumer-args``: split as a shell would; none of the flags the bench sets itself."""
    try:
        flags = tuple(shlex.split(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"cannot split {text!r} into flags ({exc})") from None
    for flag in flags:
        name = flag.split("=", 1)[0]
        if name in BENCH_SETS:
            owner = BENCH_SETS[name]
            instead = f"use bench {owner}" if owner else "it differs per phase"
            raise argparse.ArgumentTypeError(f"{name} is set by the bench itself ({instead})")
    problem = consumer_flags_problem(flags)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"python -m consumer run would refuse them: {problem}")
    return flags


def run_bench(args: argparse.Namespace) -> int:
    from producer_tools.bench import report
    from producer_tools.bench.run import BenchOptions, run

    require_tensorflow()
    if args.broker_cpus and args.bootstrap_servers:
        raise ConfigError(
            "--broker-cpus places the embedded broker, and --bootstrap-servers names another: drop one "
            "(pin that broker yourself, as with taskset)"
        )
    check_workdir(args.workdir, "--workdir")
    if args.json:
        check_output_file(args.json, "--json")
    options = BenchOptions(
        workload=args.workload, messages=args.messages, batch_size=args.batch_size, max_wait_ms=args.max_wait_ms,
        latency_seconds=args.latency_seconds, latency_rate=args.latency_rate, baseline_seconds=args.baseline_seconds,
        backlog=args.backlog, partitions=args.partitions, json_path=args.json, workdir=args.workdir,
        bootstrap=args.bootstrap_servers, rounds=args.rounds, signature=args.signature,
        consumer_args=args.consumer_args, inputs=args.inputs, broker_cpus=args.broker_cpus,
    )  # fmt: skip
    result = run(options)
    report.print_table(result)
    if args.json:
        try:
            report.write_json(args.json, result)
        except OSError as exc:  # the folder went away or the disk filled during the run
            problem = f"could not write the results to {args.json} ({exc.strerror})"
            raise TfStreamError(f"{problem}; the table above has them") from None
        print(f"results written to {args.json}")
    return 0


def _flags_as_values(argv: Sequence[str]) -> list[str]:
    """``--consumer-args '--trust-model-code'``: argparse takes a lone flag after an option for an
    option of its own, not the value (``'--workers 2'`` passes, having a space); joined with ``=``."""
    joined: list[str] = []
    for arg in argv:
        if joined and joined[-1] == "--consumer-args" and arg.startswith("-"):
            joined[-1] = f"--consumer-args={arg}"
        else:
            joined.append(arg)
    return joined


def _bench_compare(sub: argparse._SubParsersAction) -> None:
    help = "show bench --json results side by side, with the settings and versions that differ"
    p = sub.add_parser("bench-compare", help=help, description=help)
    p.add_argument("results", nargs="+", type=Path, metavar="RESULT.json", help="files written by bench --json")
    p.set_defaults(run=run_bench_compare)


def run_bench_compare(args: argparse.Namespace) -> int:
    from producer_tools.bench import compare

    results = [compare.load(path) for path in args.results]
    print(compare.table(results, [str(path) for path in args.results]))
    return 0


def _fetch_latency(sub: argparse._SubParsersAction) -> None:
    help = "how long records wait before a caught-up consumer has them (the broker's share of latency)"
    description = f"{help}; publishes to a new topic fetch-latency-ID, which it leaves in place"
    p = sub.add_parser("fetch-latency", help=help, description=description)
    p.add_argument("--bootstrap-servers", help="use this Kafka, not the embedded broker")
    p.add_argument(
        "--fetch-wait-ms", type=positive(int), default=FETCH_WAIT_MS, metavar="MS",
        help=f"fetch.wait.max.ms (default {FETCH_WAIT_MS}, the consumer's)",
    )  # fmt: skip
    p.add_argument(
        "--prefetch", action="store_true",
        help="librdkafka's own fetch (again as soon as a response lands), not the consumer's paced one",
    )  # fmt: skip
    p.add_argument("--rate", type=rate, default=5000.0, metavar="R", help="records per second")
    p.add_argument(
        "--seconds",
        type=seconds,
        default=8.0,
        metavar="S",
        help="how long to publish (the first second is warm-up)",
    )
    p.add_argument("--linger-ms", type=float, default=5.0, metavar="MS", help="the publisher's linger.ms")
    p.set_defaults(run=run_fetch_latency)


def run_fetch_latency(args: argparse.Namespace) -> int:
    from producer_tools.bench.fetch_latency import WARM_UP_SECONDS, Probe, measure

    if not 0 <= args.linger_ms <= MAX_LINGER_MS:  # also nan, which librdkafka took and then sent nothing
        raise ConfigError(
            f"invalid setting --linger-ms {args.linger_ms:g}: must be 0 or more, "
            f"at most {MAX_LINGER_MS} (librdkafka's limit)"
        )
    if args.fetch_wait_ms > MAX_FETCH_WAIT_MS:
        raise ConfigError(
            f"invalid setting --fetch-wait-ms {args.fetch_wait_ms}: librdkafka takes at most {MAX_FETCH_WAIT_MS}"
        )
    if args.seconds <= WARM_UP_SECONDS:
        raise ConfigError(
            f"invalid setting --seconds {args.seconds:g}: its first {WARM_UP_SECONDS:g} s is warm-up, not counted; "
            f"give more than {WARM_UP_SECONDS:g}"
        )
    probe = Probe(args.fetch_wait_ms, args.rate, args.seconds, args.linger_ms, paced=not args.prefetch)
    from producer_tools.embedded_broker import bootstrap_or_embedded

    with bootstrap_or_embedded(args.bootstrap_servers) as bootstrap:
        result = measure(bootstrap, probe)
    ages, round_trip = result["consumed"], result["fetch_round_trip_ms"]
    if not ages["count"]:
        raise BrokerError("the probe received no records: check that the broker accepts produce and fetch")
    held = "n/a" if round_trip["p50"] is None else f"p50 {round_trip['p50']} ms, p99 {round_trip['p99']}"
    print(
        f"fetch.wait.max.ms {probe.fetch_wait_ms}, {'paced' if probe.paced else 'prefetching'} fetch, "
        f"{probe.rate:,.0f} msg/s, publisher linger.ms {probe.linger_ms:g}: "
        f"record timestamp to consumed p50 {ages['p50']} ms, p95 {ages['p95']}, p99 {ages['p99']}, "
        f"max {ages['max']} ({ages['count']:,} records); fetch round trip {held}"
    )
    return 0


def _port(text: str) -> int:
    port = int(text) if text.isdigit() else -1
    if not 0 <= port <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"must be a TCP port, 0 to {MAX_PORT}, got {text}")
    return port


def _workload(text: str) -> str:
    """A built-in workload's name, or a path that exists (what it holds, the model loader checks)."""
    if text not in BUILT_IN and not Path(text).exists():
        raise argparse.ArgumentTypeError(f"{text!r} is neither {', '.join(BUILT_IN)} nor an existing model path")
    return text


class Terminated(BaseException):
    """SIGTERM (or SIGHUP: a closed terminal or ssh session), raised in the main thread like Ctrl-C's
    ``KeyboardInterrupt``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def stop_signals_unwind() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into ``Terminated`` while a command runs, so that every ``with`` block on the
    way out stops what it started; without it the process dies at once and leaves its embedded
    broker and consumer running."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated(signum)

    previous = {signum: signal.signal(signum, terminate) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_command_line(build_parser(), _flags_as_values(sys.argv[1:] if argv is None else argv))
    try:
        with stop_signals_unwind():
            code = int(args.run(args))
            sys.stdout.flush()  # here, not at exit: a reader gone (``| head``) is met below
            return code
    except BrokenPipeError:  # stdout's reader went away: stop without a traceback, as shell tools do
        write_to_devnull(sys.stdout.fileno())  # else the interpreter's own flush at exit fails again
        return 1
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (TfStreamError, KafkaException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: stopped what this command had started", file=sys.stderr)
        return 130
    except Terminated as stop:
        name = signal.Signals(stop.signum).name
        print(f"terminated ({name}): stopped what this command had started", file=sys.stderr)
        return 128 + stop.signum


def run_demo(args: argparse.Namespace) -> int:
    from producer_tools import demo

    if not 1 <= args.count <= 360:
        raise ConfigError("invalid setting --count: the demo publishes between 1 and 360 held-out digits")
    require_tensorflow()
    check_workdir(args.workdir, "--workdir")
    return demo.main(args.bootstrap_servers, args.workdir, args.count)


def require_tensorflow() -> None:
    """Before a command that trains or runs a model starts anything (a broker, a consumer)."""
    if (missing := tensorflow_install.missing()) is not None:
        raise TfStreamError(missing)


def run_broker(port: int) -> int:
    from producer_tools.embedded_broker import EmbeddedBroker

    with EmbeddedBroker(port=port) as broker:
        print(f"embedded broker ready on {broker.bootstrap_servers} (log: {broker.log_path}); Ctrl-C stops it")
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            while (ended := broker.ended_by_itself()) is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            return 0
        # a broker that died (killed, out of memory) must not look alive: clients would just time out
        raise BrokerError(f"the embedded broker stopped by itself ({ended}); its log, kept: {broker.log_path}")


def _within_consumer(parse: Callable[[str], float | int], high: float) -> Callable[[str], float | int]:
    """``parse``, no more than what ``python -m consumer run`` takes (``high``)."""
    return at_most(parse, high, f"{high:g} (the consumer's limit)")
