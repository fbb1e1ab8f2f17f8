"""The body of each ``python -m producer_tools`` command: read arguments, act, print one summary line."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime

import numpy as np

from consumer.config import kafka_moment
from consumer.errors import ConfigError
from consumer.positions import TimeWindow
from producer_tools import collect, dead_letters, groups, publish, replay, sources
from producer_tools.clients import Clients, close_consumer
from producer_tools.paths import check_output_file
from producer_tools.reader import ReadProgress, StopWhen, partitions_of, read_partitions
from producer_tools.topics import BROKER_DEFAULT, TopicShape, create_topics, shapes


def epoch_ms(text: str | None, flag: str) -> int | None:
    """An ISO 8601 time (UTC when no zone is given) as epoch milliseconds."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"invalid setting {flag}={text!r}: use ISO 8601, e.g. 2024-06-01T00:00:00Z") from None
    try:
        moment = kafka_moment(moment)
    except ValueError as exc:
        raise ConfigError(f"invalid setting {flag}={text!r}: {exc}") from None
    return int(moment.timestamp() * 1000)


def read_options(args: argparse.Namespace) -> sources.ReadOptions:
    if args.dtype is not None and args.dtype != sources.TEXT:
        try:
            np.dtype(args.dtype)
        except TypeError:
            raise ConfigError(
                f"invalid setting --dtype={args.dtype!r}: use a NumPy dtype name such as float32, or "
                f"{sources.TEXT} for a .csv's columns of text"
            ) from None
    return sources.ReadOptions(
        key_field=args.key_field,
        id_field=args.id_field,
        input_name=args.input_name,
        columns=tuple(c.strip() for c in args.columns.split(",")) if args.columns else None,
        dtype=args.dtype,
        varying_shapes=args.varying_shapes,
    )


def refuse_unused(flags: list[str], reads: str, give: str) -> None:
    """Flags of how something is read, given without it, would do nothing: ``ConfigError`` naming
    the first (``reads``: what they read; ``give``: the flag that gives it)."""
    if flags:
        raise ConfigError(f"{flags[0]} reads {reads}, and none is given: pass {give}, or drop {flags[0]}")


def given_read_flags(args: argparse.Namespace) -> list[str]:
    """The input-file flags given (``--columns``, ``--dtype`` …), as typed."""
    return [sources.flag(option) for option in sources.given_options(read_options(args))]


def run_publish(args: argparse.Namespace) -> int:
    examples = sources.read_inputs(args.file, read_options(args))  # the whole file is checked first
    clients = Clients(args)
    partitions_of(clients.admin(), args.topic)
    producer = clients.producer(to_topic=args.topic)
    planned, total = publish.plan(examples, args.repeat, args.count)
    started = time.monotonic()
    delivered = publish.send_all(producer, args.topic, planned, total, args.tensor_form == "list", args.rate)
    seconds = time.monotonic() - started
    print(
        f"published {delivered.ok} of {total} messages to {args.topic} in {seconds:.1f}s "
        f"({delivered.ok / max(seconds, 1e-9):,.0f} msg/s); {delivered.failed} failed"
        + (f" (first error: {delivered.first_error})" if delivered.failed else "")
    )
    if args.dtype is None and args.tensor_form == "raw" and (wide := float64_inputs(examples[0])):
        print(
            f"note: {wide} sent as float64 (NumPy's and JSON's default), twice the bytes of the float32 a model "
            "usually takes and casts them to; for such a model, publish with --dtype float32",
            file=sys.stderr,
        )
    return 0 if delivered.ok == total else 1


def float64_inputs(example: sources.Example) -> str:
    """The example's float64 inputs, named (``inputs`` for a lone one), or "" if it has none."""
    inputs = example.inputs if isinstance(example.inputs, dict) else {"inputs": example.inputs}
    return ", ".join(name for name, tensor in inputs.items() if getattr(tensor, "dtype", None) == np.float64)


def run_collect(args: argparse.Namespace) -> int:
    suffix = args.out.suffix.lower()
    if suffix not in {".npz", ".jsonl"}:
        raise ConfigError(f"invalid setting --out={str(args.out)!r}: write .npz or .jsonl")
    check_output_file(args.out, "--out")  # before reading, not after
    if args.join and args.varying_shapes and suffix == ".npz":
        raise ConfigError(
            "invalid setting --varying-shapes: inputs of several shapes do not stack in .npz; write .jsonl"
        )
    if not args.join:  # collect's input-file flags read the --join file
        refuse_unused(given_read_flags(args), "the --join file", "--join FILE")
    join = collect.Join(sources.read_inputs(args.join, read_options(args)), args.join_on) if args.join else None
    try:
        if suffix == ".jsonl":
            with collect.JsonLines(args.out, join) as lines:
                found = _read_predictions(args, lines.write)
            written = lines.written
        else:
            found = _read_predictions(args, None)
            written = collect.write_npz(args.out, found, join)
    except OSError as exc:
        raise ConfigError(f"cannot write --out={str(args.out)!r}: {exc.strerror or exc}") from None
    unmatched = f"; {found.decoded - written} without a matching input" if join else ""
    print(
        f"collected {written} predictions from {args.topic} into {args.out}"
        f"{unmatched}; {found.undecodable} undecodable records skipped"
        + (f" (first: {found.first_undecodable})" if found.undecodable else "")
        + (f"; {found.deletions} deletions (records without a value) skipped" if found.deletions else "")
    )
    return 0


def _read_predictions(args: argparse.Namespace, sink: collect.Sink | None) -> collect.Collected:
    """The output topic's predictions, kept or handed to ``sink``; ``ConfigError`` if none is one."""
    consumer = Clients(args).consumer()
    stop = StopWhen(at_end=args.count is None and args.idle is None, count=args.count, idle=args.idle)
    found = collect.Collected(sink=sink)
    try:
        with ReadProgress(consumer, stop, f"collect {args.topic}") as progress:
            for msg in read_partitions(consumer, args.topic, stop):
                progress.read(msg)
                found.add(msg)
    finally:
        close_consumer(consumer)
    if found.undecodable and not found.decoded:
        raise ConfigError(
            f"no record in {args.topic!r} is a prediction ({found.undecodable + found.deletions} read"
            f"{_and_deletions(found.deletions)}; first: {found.first_undecodable}): "
            "--topic must be the consumer's --output-topic"
        )
    return found


def _and_deletions(deletions: int) -> str:
    return f", {deletions} of them without a value" if deletions else ""


def run_dead_letters(args: argparse.Namespace) -> int:
    if args.out is not None:
        if args.out.suffix.lower() != ".jsonl":
            raise ConfigError(f"invalid setting --out={str(args.out)!r}: write .jsonl")
        check_output_file(args.out, "--out")  # before reading, not after
    tally = dead_letters.Tally()
    try:
        if args.out is None:
            _read_dead_letters(args, tally, None)
        else:
            with dead_letters.JsonLines(args.out) as lines:
                _read_dead_letters(args, tally, lines)
    except OSError as exc:
        raise ConfigError(f"cannot write --out={str(args.out)!r}: {exc.strerror or exc}") from None
    if tally.total:
        print("\n".join(tally.lines()))
    written = f"; written to {args.out}" if args.out is not None else ""
    others = f"; {tally.others} records that are not dead letters skipped" if tally.others else ""
    print(f"read {tally.total} dead letters from {args.topic}{written}{others}")
    return 0


def _read_dead_letters(
    args: argparse.Namespace, tally: dead_letters.Tally, lines: dead_letters.JsonLines | None
) -> None:
    """Count each record of the topic, and write each dead letter to ``lines``; ``ConfigError`` if
    the topic has records and none is a dead letter."""
    consumer = Clients(args).consumer()
    stop = StopWhen(at_end=args.count is None and args.idle is None, count=args.count, idle=args.idle)
    try:
        with ReadProgress(consumer, stop, f"dead-letters {args.topic}") as progress:
            for msg in read_partitions(consumer, args.topic, stop):
                progress.read(msg)
                letter = dead_letters.read(msg)
                tally.add(msg, letter)
                if letter is not None and lines is not None:
                    lines.write(msg, letter)
    finally:
        close_consumer(consumer)
    if tally.others and not tally.total:
        raise ConfigError(
            f"no record in {args.topic!r} is a dead letter ({tally.others} read; first: {tally.first_other}, "
            "without tfstream.errors.* headers): --topic must be the consumer's --dlq-topic"
        )


def run_replay(args: argparse.Namespace) -> int:
    window = TimeWindow(
        epoch_ms(args.from_timestamp, "--from-timestamp"), epoch_ms(args.until_timestamp, "--until-timestamp")
    )
    if window.from_ms is not None and window.until_ms is not None and window.until_ms <= window.from_ms:
        raise ConfigError("invalid settings: --until-timestamp must be later than --from-timestamp")
    if args.from_topic == args.to_topic:
        raise ConfigError("invalid settings: --to-topic must differ from --from-topic")
    keep = dead_letters.OfKind(args.error, args.stage) if args.error or args.stage else None
    clients = Clients(args)
    partitions_of(clients.admin(), args.to_topic)
    consumer, producer = clients.consumer(), clients.producer(to_topic=args.to_topic)
    try:
        counts, delivered = replay.replay(consumer, producer, args.from_topic, args.to_topic, window, keep)
    finally:
        close_consumer(consumer)
    copied = counts.read - counts.outside - counts.left_out
    if keep is not None and counts.read > counts.outside and not keep.seen:
        raise ConfigError(
            f"no record in the window of {args.from_topic!r} is a dead letter ({counts.read - counts.outside} read): "
            "--error and --stage copy dead letters; --from-topic must be the consumer's --dlq-topic"
        )
    left_out = f", {counts.left_out} not dead letters of {keep}" if keep is not None else ""
    print(
        f"replayed {delivered.ok} of {copied} records in the window from {args.from_topic} to {args.to_topic} "
        f"({counts.read} read, {counts.outside} outside the window{left_out}); {delivered.failed} failed"
        + (f" (first error: {delivered.first_error})" if delivered.failed else "")
    )
    return 0 if delivered.ok == copied else 1


def run_reset_offsets(args: argparse.Namespace) -> int:
    clients = Clients(args)
    to = "earliest" if args.to_earliest else "latest" if args.to_latest else "timestamp"
    timestamp = epoch_ms(args.to_timestamp, "--to-timestamp")
    groups.refuse_if_active(clients.admin(), args.group)
    consumer = clients.consumer(group=args.group, **{"isolation.level": "read_uncommitted"})
    try:
        bounds = groups.end_offsets(consumer, args.topic)
        before = groups.committed_offsets(consumer, args.topic, sorted(bounds))
        after = groups.targets(consumer, args.topic, to, timestamp, bounds)
        for partition in sorted(after):
            print(f"  {args.topic}[{partition}]  {_shown(before[partition])} -> {after[partition]}")
        if not args.dry_run:
            groups.commit(consumer, args.topic, after)
    finally:
        close_consumer(consumer)
    verb = "would move" if args.dry_run else "moved"
    print(f"{verb} group {args.group} on {args.topic} ({len(after)} partitions) to {to}{' (dry run)' * args.dry_run}")
    return 0


def run_create_topics(args: argparse.Namespace) -> int:
    admin = Clients(args).admin()
    factor = BROKER_DEFAULT if args.replication_factor is None else args.replication_factor
    created = create_topics(admin, args.topics, partitions=args.partitions, replication_factor=factor)
    found = shapes(admin, args.topics)
    for name in dict.fromkeys(args.topics):
        print(_topic_line(name, name in created, found.get(name), args.partitions))
    return 0


def _topic_line(name: str, created: bool, shape: TopicShape | None, partitions: int) -> str:
    """One topic's outcome; an existing topic with other partitions than asked is said to be left so."""
    if shape is None:  # created, and the metadata does not show it yet
        return f"created {name}: {partitions} partitions"
    what = f"{shape.partitions} partitions, replication factor {shape.replication_factor}"
    if created:
        return f"created {name}: {what}"
    if shape.partitions != partitions:
        return f"exists {name}: {what} (not the {partitions} partitions asked for: left as it is)"
    return f"exists {name}: {what}"


def run_lag(args: argparse.Namespace) -> int:
    consumer = Clients(args).consumer(group=args.group)
    try:
        while True:
            rows = groups.lag(consumer, args.topic)
            _print_lag(args.group, args.topic, rows)
            if not args.watch:
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0
    finally:
        close_consumer(consumer)


def _print_lag(group: str, topic: str, rows: list[groups.PartitionLag]) -> None:
    print(f"{'partition':>9} {'committed':>12} {'end':>12} {'lag':>10}")
    for row in rows:
        print(f"{row.partition:>9} {_shown(row.committed):>12} {row.end:>12} {row.lag:>10}")
    print(f"group {group} on {topic}: total lag {sum(r.lag for r in rows)} over {len(rows)} partitions", flush=True)
    if any(row.committed is None for row in rows):
        print(
            "-: the group never committed there, and its lag counts from the partition's first record (a consumer "
            "run of a group that never committed starts at the end, unless --from-beginning or --from-timestamp)",
            flush=True,
        )


def _shown(offset: int | None) -> str:
    return "-" if offset is None else str(offset)
