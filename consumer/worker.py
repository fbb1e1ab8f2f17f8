"""A consumer-group member that owns one device.

    fetch loop (this thread)            predict thread (consumer/serving.py)
    consume → route → batcher ──put──▶ pipeline (tf.data) → predict → emit → outbox
        ▲  commit contiguous done offsets ◀── delivery reports mark inputs done ──┘

The worker starts everything, runs the loop and answers the group's rebalances; one turn of the
fetch loop is ``consumer.fetch_loop``, the commits ``consumer.commits``, the paused partitions
``consumer.pauses``. ``max.poll.interval.ms`` is only at risk during a revoke, whose drain is
capped at half of it.
"""

from __future__ import annotations

import gc
import math
import os
import socket
import threading
import time
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from consumer import kafka_io, metrics
from consumer.batcher import Batcher
from consumer.bounded import BoundedRun
from consumer.careful import CrashGuard, Feed
from consumer.codec import Limits
from consumer.commits import Commits
from consumer.config import Settings
from consumer.counts import Counters
from consumer.dead_lettering import DeadLetters
from consumer.delivery import wait_until
from consumer.errors import SUCCESSOR, BrokerError, ClientHungError, DeliveryError
from consumer.fetch_loop import READ_AHEAD_CHUNK, Books, FetchLoop
from consumer.idle import IdleCheck
from consumer.joining import JoinWait
from consumer.loading import load, preprocess_setting
from consumer.logs import get_logger
from consumer.offsets import OffsetTracker, Partition
from consumer.outputs import Emitter
from consumer.pauses import Pauses
from consumer.pipeline import Pipeline
from consumer.positions import (
    EndOfInput,
    GroupHistory,
    apply_start_positions,
    group_history,
    new_group_notice,
    skipped_by_new_group,
)
from consumer.producing import open_producing
from consumer.progress import total_lag
from consumer.reload import Served, Watcher
from consumer.serving import Serving
from consumer.stuck import batch_stuck_for
from consumer.timing import Timeline, peak_rss_mb, rss_mb
from consumer.topic_rules import TopicRules

#: Waits before reading again after outputs could not be delivered.
FIRST_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS = 1.0, 30.0
#: At a stop, how long the consumer's queue may be served before ``close()`` (``_serve_rebalance_before_close``)
CLOSE_QUEUE_SECONDS = 1.0


def message_bytes(messages: list[Message]) -> int:
    """What messages weigh: their values' bytes (a Message's len is its value's)."""
    return sum(map(len, messages))


class Worker:
    """Loads and warms the model, joins the group, and streams until stopped or done."""

    # made by ``start`` (``_connect``): the clients, and the fetch loop's collaborators
    consumer: Consumer
    producer_config: dict[str, Any]
    pauses: Pauses
    commits: Commits
    fetching: FetchLoop

    def __init__(self, settings: Settings, slot: int = 0, device: str = "cpu", host_number: int | None = None) -> None:
        self.settings, self.slot, self.device = settings, slot, device
        self.host_number = slot if host_number is None else host_number
        self.log = get_logger("consumer.worker")
        self.metrics = metrics.WorkerMetrics(slot, device) if metrics.enabled() else None
        self.counters = Counters(sink=self.metrics.count if self.metrics else None)
        #: inputs from the committed offsets to the ends of its partitions, from librdkafka's statistics
        #: every few seconds; None: not known yet
        self.lag: int | None = None
        self._joined = False
        self.tracker = OffsetTracker()
        self.ends = EndOfInput()
        #: holds fetched messages with their coordinates and timestamps, read once here
        self.batcher = Batcher(settings.max_batch_size, settings.max_wait_ms, weigh=message_bytes)
        self._stop = threading.Event()
        #: set once the worker shuts down: an assignment delivered after it is left alone
        self._closing = False
        #: when a ``--stop-at-end`` run is done, and how the worker leaves it
        self.bounded = BoundedRun(settings.stop_at_end, self.ends, self.tracker, self.log)
        self.timeline = Timeline()
        if self.metrics is not None:
            self.timeline.on_stage = self.metrics.stage
        self.rss_after_warmup_mb = 0.0
        self._backoff = FIRST_BACKOFF_SECONDS
        #: inputs read but not committed when the worker stopped: the next start reads them again
        self.uncommitted_at_stop = 0
        #: the ``--preprocess`` function, imported first thing in ``start``
        self.preprocess: Any = None
        #: where its supervisor keeps what its workers died with (``consumer.crashes``); None: no supervisor
        self.crash_folder: str | None = None
        self.guard: CrashGuard | None = None

    # -- start ---------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop fetching, finish what is in flight, commit, leave the group (signal-safe)."""
        self._stop.set()

    def start(self) -> None:
        """Everything before joining the group: the user's code, the model and its compiled
        functions (``consumer.loading``), then the clients and topics."""
        loaded = load(self.settings, self.log, self.metrics)
        self.preprocess = loaded.preprocess
        freeze_heap()
        self.rss_after_warmup_mb = rss_mb()
        self._connect()
        self.serving = self._serving(loaded.served, loaded.watcher)
        if self.crash_folder is not None:
            self.guard = CrashGuard(self.crash_folder, self.slot, self.tracker, self._feed(), self.log)
        books = Books(self.tracker, self.ends, self.timeline, self.counters, self.metrics)
        self.fetching = FetchLoop(
            self.settings, self.consumer, self.batcher, self.serving, books, self.pauses, self.commits, self.guard,
            self.log, self.group_instance_id,
        )  # fmt: skip
        if self.metrics is not None:
            self.metrics.serving(loaded.served.info["version"])
        if loaded.watcher is not None:
            loaded.watcher.start()

    def member_ids(self) -> dict[str, str]:
        """The ids this worker is known by in Kafka, where the deployment sets them (for its ready line)."""
        ids = {
            "group_instance_id": self.group_instance_id,
            "transactional_id": self.producer_config.get("transactional.id"),
        }
        return {name: value for name, value in ids.items() if value}

    def _connect(self) -> None:
        """The consumer (after checking the topics), the producer, its outbox and any transactions."""
        s = self.settings
        client_id = f"tfstream-{s.group}-{self.slot}"
        config = self._open_consumer(client_id)
        topics = [s.input_topic, s.output_topic] + ([s.dlq_topic] if s.dlq_topic else [])
        try:
            missing, partitions = kafka_io.check_topics(self.consumer, topics, s.bootstrap_servers, s.connect_timeout_s)
            if s.input_topic in missing:
                raise kafka_io.missing_topic_error(s.input_topic, s.bootstrap_servers)
            if s.output_partitioning == "input":
                kafka_io.check_partition_for_partition(s.input_topic, s.output_topic, partitions)
            self.history = self._group_history(partitions[s.input_topic])
        except Exception:
            kafka_io.close_consumer(self.consumer)
            raise
        self._note_new_group(str(config.get("auto.offset.reset", "")))
        self.idle = IdleCheck(lambda: kafka_io.admin_client(s), s.group, s.input_topic, not self._cooperative, self.log)
        for topic in missing:  # outputs wait (paused, nothing committed) until it exists
            self.log.error(f"topic {topic!r} does not exist: create it; until then outputs cannot be delivered")
        present = [t for t in topics[1:] if t not in missing]
        producing = open_producing(s, client_id, self.host_number, present, self.tracker, self.timeline, self.log)
        self.producer_config, self.producer = producing.config, producing.producer
        self.outbox, self.transactions = producing.outbox, producing.transactions
        if self.metrics is not None:
            self.outbox.on_acknowledged = self._acknowledged
        self.pauses = Pauses(self.consumer, self._finished_partitions)
        interval_s = s.commit_interval_ms / 1000
        self.commits = Commits(
            self.consumer, self.tracker, interval_s, self.log, self.transactions, self._read_again, self._reset_backoff
        )

    def _open_consumer(self, client_id: str) -> dict[str, Any]:
        """The consumer, with this worker's callbacks; its configuration, for what depends on it."""
        s = self.settings
        config = kafka_io.consumer_config(s, client_id, self.host_number)
        self.group_instance_id: str | None = config.get(kafka_io.GROUP_INSTANCE_ID)
        self.drain_budget = min(s.drain_timeout_s, int(config["max.poll.interval.ms"]) / 2000)
        config["on_commit"] = lambda error, partitions: self.commits.on_commit(error, partitions)
        if self.metrics is not None or s.progress_interval_s:
            config.setdefault("statistics.interval.ms", kafka_io.STATISTICS_INTERVAL_MS)  # a setting of the user's wins
            config["stats_cb"] = self._on_statistics
        self.consumer = Consumer(config)
        self._cooperative = kafka_io.cooperative(config)
        self._assign = self.consumer.incremental_assign if self._cooperative else self.consumer.assign
        # long enough for a member gone with a partition to be expired (its session) or to join again
        session_ms = int(config.get("session.timeout.ms", 45000))  # librdkafka's default
        self.bounded.handovers.timeout_s = max(session_ms, int(config["max.poll.interval.ms"])) / 1000
        self._reads_committed = kafka_io.reads_committed(config)
        return config

    def _serving(self, served: Served, watcher: Watcher | None) -> Serving:
        """The pipeline into the model, and where its outputs and dead letters go."""
        s = self.settings
        dlq_rules = self.outbox.topic_rules.get(s.dlq_topic or "", TopicRules())
        limit = dlq_rules.max_bytes or self.outbox.producer_limit
        dead_letters = DeadLetters(
            self.outbox, s.dlq_topic, s.group, served.info, self.counters, self.log, limit, keep_key=dlq_rules.compacted
        )
        if self.metrics is not None:
            dead_letters.on_dead_letter = self.metrics.dead_letter
        limits = Limits(s.max_message_bytes, s.max_tensor_elements, s.max_dims)
        with preprocess_setting(s):
            self.pipeline = Pipeline(
                served.predictor, limits, s.pipeline_depth, self.preprocess, s.reject_non_finite, s.tombstones
            )
        if self.preprocess is not None:  # what messages must carry, which the model's inputs no longer say
            self.log.info(
                "preprocess function ready",
                takes=self.pipeline.raw_signature.describe(),
                vectorized=self.pipeline.vectorized,  # over a whole batch at once, else example by example
            )
        worker = f"{socket.gethostname()}/{os.getpid()}/{self.slot}/{self.device}"
        emitter = Emitter(
            self.outbox, s.output_topic, served.info, s.output_format, self.counters, dead_letters, worker,
            own_headers=s.output_headers == "all", tombstones=s.tombstones,
            to_input_partitions=s.output_partitioning == "input",
        )  # fmt: skip
        return Serving(served, self.pipeline, emitter, dead_letters, self.outbox, watcher, self.metrics, self.log)

    def _feed(self) -> Feed:
        return Feed(
            self.batcher,
            self.pipeline,
            self.serving.dead_letters,
            flush=lambda: self._flush_batcher(math.inf),
            failed=self._failed,
            stopping=self._stop.is_set,
            between=lambda: self.commits.maybe(),
        )

    # -- run -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Stream until ``request_stop`` or, with ``stop_at_end``, until the input is done."""
        if not hasattr(self, "serving"):
            self.start()
        started = time.monotonic()
        self.joining = JoinWait(self.log, self.settings.group)
        self.consumer.subscribe(
            [self.settings.input_topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        predict = threading.Thread(target=self.serving.run, name="predict", daemon=True)
        predict.start()
        self.outbox.serve_acknowledgements()
        try:
            while not self._stop.is_set() and not self.bounded.leaves(self.consumer, self.commits.now):
                self._raise_failures(predict)
                self.fetching.turn()
                self.commits.maybe()
                self.serving.tick_logs()
                self.idle.check()
                self.joining.check(self._joined)
        finally:
            self._shutdown(predict)
        self._raise_failures(predict, finished=True)
        return self.summary(time.monotonic() - started)

    def summary(self, seconds: float) -> dict[str, Any]:
        return {
            **self.counters.snapshot(),
            "traces_after_warmup": self.traces_after_warmup,
            "uncommitted": self.uncommitted_at_stop,
            "seconds": round(seconds, 3),
            "device": self.device,
            **self.timeline.summary(),
            "rss_after_warmup_mb": self.rss_after_warmup_mb,
            "peak_rss_mb": peak_rss_mb(),
        }

    def status(self) -> dict[str, Any]:
        """For the supervisor's /readyz (and the gauges): joined, stuck, in flight. Any thread."""
        now = time.monotonic()
        stuck_s = batch_stuck_for(self.serving.batch_started_at, now, self.settings.stuck_batch_s)
        stalled_s = self.serving.stalled_for(now)
        status: dict[str, Any] = {
            "ready": self._joined and stuck_s is None,
            "joined": self._joined,
            "in_flight": self.tracker.in_flight(),
            "traces_after_warmup": self.traces_after_warmup,
            "counts": self.counters.snapshot(),  # for the supervisor's progress line
            "lag": self.lag,
        }
        if stuck_s is not None:
            status["stuck_in_batch_s"] = round(stuck_s, 1)
        if stalled_s is not None and stalled_s >= 1.0:  # for the supervisor's ``stuck_kill_s``
            status["stalled_s"] = round(stalled_s, 1)
        if self.settings.stop_at_end:
            status["at_end"] = self.bounded.at_end()
        if self.metrics is not None:
            self.metrics.in_flight.set(status["in_flight"])
            self.metrics.traces.set(status["traces_after_warmup"])
            self.metrics.ready.set(1 if status["ready"] else 0)
        return status

    def _on_statistics(self, stats_json: str) -> None:
        """librdkafka's statistics (served by ``consume`` in the fetch loop): the consumer lag of
        the partitions this worker owns (the statistics keep those it owned before)."""
        owned = self.ends.assigned
        all_lags = kafka_io.partition_lags(stats_json, self.tracker.committed_offsets(), self._reads_committed)
        lags = {p: lag for p, lag in all_lags.items() if owned and p in owned}
        self.lag = total_lag(lags, owned)
        if self.metrics is not None:
            self.metrics.lags({partition: lag for partition, lag in lags.items() if lag is not None})

    def _acknowledged(self, topic: str, timestamps_ms: list[int]) -> None:
        assert self.metrics is not None
        now_ms = time.time() * 1000
        kind = "output" if topic == self.settings.output_topic else "dead_letter"
        self.metrics.acknowledged(kind, ((now_ms - ts) / 1000 for ts in timestamps_ms))

    @property
    def traces_after_warmup(self) -> int:
        return self.serving.traces_after_warmup

    def _raise_failures(self, predict: threading.Thread, finished: bool = False) -> None:
        self._refuse_dead_producer()
        failure = self.outbox.failure
        if failure is not None and failure.retriable and not finished and not self._stop.is_set():
            self._recover(failure)
        elif failure is not None:
            raise failure
        if self.serving.failure is not None:
            raise self.serving.failure
        if not finished and not predict.is_alive():
            raise RuntimeError("the predict thread ended unexpectedly")

    # -- rebalance -----------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        owned = {(tp.topic, tp.partition) for tp in partitions}
        if self._closing:
            # a stop met a rebalance: the close revokes this assignment at once, and librdkafka can
            # no longer read committed offsets (an error raised here escaped close() unhandled)
            self.log.info("partitions assigned while stopping; leaving them", partitions=sorted(owned))
            return
        self._joined = True  # with partitions, or idle in the group: either way a ready member
        self.bounded.assigned(owned)
        waited = self.joining.joined()  # the first assignment says how long the join took
        took = {} if waited is None else {"joined_in_s": waited}
        self.log.info("partitions assigned", partitions=sorted(owned), device=self.device, **took)
        self.ends.assign(owned)
        self._count_owned()
        self.idle.assigned(bool(self.ends.assigned))
        if self.guard is not None:
            self.guard.load(self.ends.assigned or owned)
        self.pauses.given(owned)
        if self._place_starts(consumer, partitions):
            self._assign(partitions)  # else the client assigns them as they are

    def _count_owned(self) -> None:
        if self.metrics is not None:
            self.metrics.assigned.set(len(self.ends.assigned or ()))

    def _group_history(self, partitions: int) -> GroupHistory:
        s = self.settings
        try:
            return group_history(self.consumer, s.input_topic, partitions, s.connect_timeout_s)
        except KafkaException as exc:
            raise BrokerError(
                f"could not read where the group left {s.input_topic} off ({exc.args[0].str()}); "
                "check that the broker is up and the group may read its offsets"
            ) from None

    def _note_new_group(self, reset: str) -> None:
        """Say so where a new group (no start flags) starts past records already in the topic: a
        bounded run then reads nothing of them, which surprises a first backfill."""
        s = self.settings
        if s.from_beginning or s.from_ms is not None:
            return
        try:
            skips = skipped_by_new_group(self.consumer, s.input_topic, self.history, reset, s.connect_timeout_s)
        except KafkaException:
            return  # only a notice: the run does not depend on it
        if skips:
            (self.log.warning if s.stop_at_end else self.log.info)(new_group_notice(s.group, s.input_topic, reset))

    def _place_starts(self, consumer: Consumer, partitions: list[TopicPartition]) -> bool:
        s = self.settings
        try:
            return apply_start_positions(consumer, partitions, s.from_beginning, s.from_ms, self.log, self.history)
        except KafkaException as exc:
            raise BrokerError(
                f"could not read where the group left {s.input_topic} off, to place the start flags "
                f"({exc.args[0].str()}); {SUCCESSOR} tries again"
            ) from None

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._producer_hung():  # the worker is leaving: nothing can be committed
            return
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        self.log.info("partitions revoked", partitions=sorted(revoked), device=self.device)
        self.bounded.off_end()
        # what the model has not been handed yet is left to the partitions' next owner, which reads
        # it again from the commit below: pushed through first, it held the whole group's rebalance
        # for as long as the model took over the read-ahead (up to 1,000 inputs; 14 s for 480
        # through a slow model under load, in a test whose second worker could not join meanwhile)
        unread = self.batcher.drop(lambda _message, coords, _timestamp: coords[0] not in revoked)
        self._finish(revoked, self.drain_budget, unread)
        if self._cooperative and not self._closing:
            self.bounded.gave_up(consumer, revoked)
        self._release(revoked)
        if self._cooperative:  # no assignment may follow, when the group took all it had
            self.idle.assigned(bool(self.ends.assigned))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._producer_hung():  # the worker is leaving: nothing can be committed
            return
        lost = {(tp.topic, tp.partition) for tp in partitions}
        self.bounded.off_end()
        self.log.warning("partitions lost: nothing of them is committed", partitions=sorted(lost))
        if self.transactions is not None:  # the open transaction holds their outputs: abort it
            self.transactions.abort("partitions lost")
            self._release(lost)
            self._read_again()
            return
        self._release(lost)

    def _read_again(self) -> None:
        """After an aborted transaction: read again, from the last committed offsets."""
        self._rewind()
        self.pauses.resume_unfinished()

    def _reset_backoff(self) -> None:
        self._backoff = FIRST_BACKOFF_SECONDS

    def _finished_partitions(self) -> set[Partition]:
        """Partitions a bounded run has read to their end: they stay paused."""
        return self.ends.at_end if self.settings.stop_at_end else set()

    def _rewind(self) -> None:
        """Let the batches in flight drain unsent, then read again from the last committed offsets
        (after an aborted transaction)."""
        self._drain_unsent()
        self._seek_to_commits()

    def _drain_unsent(self) -> None:
        """Send nothing more: drop the open batch, let the batches in flight pass the pipeline unsent."""
        self.outbox.discarding = True
        self.batcher.drop(lambda *_: False)
        if not wait_until(self.pipeline.idle, self.drain_budget, lambda: time.sleep(0.01)):
            raise BrokerError(
                f"the batches in flight did not drain while rewinding; {SUCCESSOR} reads again from the last "
                "committed offsets"
            )

    def _seek_to_commits(self) -> None:
        """Read again from the last committed offsets, and send again."""
        points = self.tracker.rewind_points()
        self.tracker.forget(points)
        if self.guard is not None:
            self.guard.rewound(points)
        self.ends.at_end -= set(points)
        for (topic, partition), offset in points.items():
            try:
                self.consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:
                raise BrokerError(f"could not rewind {topic}[{partition}] to {offset}: {exc.args[0].str()}") from None
        positions = {f"{t}[{p}]": o for (t, p), o in points.items()}
        self.log.info("rewound to the last committed offsets", positions=positions)
        if self.transactions is not None:
            self.transactions.resume()
        self.outbox.discarding = False

    def _recover(self, failure: DeliveryError) -> None:
        """Outputs cannot be delivered (a topic missing, not writable, brokers down): stop reading,
        commit nothing past the failure, rewind, wait, and try again; back-off doubles up to 30 s.
        A dead producer ends the worker instead (``_refuse_dead_producer``): no waiting fixes that."""
        self.log.error(
            "cannot deliver outputs",
            error=str(failure),
            action="consumption paused, nothing committed past the failure; fix the cause (create the topic, "
            "grant the permission, bring the brokers back) and the worker carries on by itself",
            retry_in_s=self._backoff,
        )
        self.pauses.pause_all()
        self._drain_unsent()
        self.outbox.flush(self.drain_budget)  # settle what is in flight: acknowledged inputs stay done
        self._refuse_dead_producer()
        if self.transactions is not None:
            self.transactions.abort(str(failure))
        else:
            self.commits.now()
        self.outbox.failure = None
        self._seek_to_commits()
        self._stop.wait(self._backoff)
        self._backoff = min(self._backoff * 2, MAX_BACKOFF_SECONDS)
        self.pauses.resume_unfinished()

    def _refuse_dead_producer(self) -> None:
        """librdkafka gave up on the output producer (a fatal error: an idempotence sequence it cannot
        repair, or, exactly once, fenced): end the worker, so that its supervisor starts it again with a
        new producer, from the last committed offsets. Fenced, the run ends (``FencedError``)."""
        error = self.outbox.dead_producer()
        if error is None:
            return
        if self.transactions is not None:
            self.transactions.refuse_if_fenced(error)
        raise BrokerError(
            f"the output producer hit a fatal error ({error.name()}: {error.str()}); {SUCCESSOR} reads "
            "again from the last committed offsets"
        )

    def _finish(self, partitions: set[Partition] | None, budget: float, left: int = 0) -> None:
        """Wait (bounded) until what the pipeline holds of ``partitions`` is acknowledged, and commit.
        ``left``: how many of their inputs a revoke took out of the batcher, unread: they stay in
        flight, never done, so the commit stops below them."""
        drained = wait_until(
            lambda: self.tracker.in_flight(partitions) <= left or self._failed(), budget, lambda: self.outbox.poll(0.05)
        )
        if not drained and self.transactions is not None:
            raise BrokerError(
                f"the drain budget ran out with inputs in flight, exactly once; {SUCCESSOR} reads again from "
                "the last committed offsets"
            )
        if not drained:
            self.log.warning(
                "drain budget spent; uncommitted inputs will be read again",
                in_flight=self.tracker.in_flight(partitions) - left,
                budget_s=budget,
            )
        self.commits.maybe(force=True, partitions=partitions)

    def _flush_batcher(self, budget: float) -> None:
        """Hand every batch still in the batcher to the pipeline, as its queue makes room. A batch is
        taken only when there is room: taken and then refused, its inputs would never be done, and
        the drain would wait out its whole budget for them."""
        deadline = time.monotonic() + budget
        while len(self.batcher) and time.monotonic() < deadline and not self._failed():
            if self.pipeline.has_room():  # this loop is the queue's only producer: the put cannot block
                self.fetching.close_batch()
            else:  # the predict thread is still busy
                self.outbox.poll(0.05)

    def _end_pipeline(self, predict: threading.Thread) -> None:
        """Queue the pipeline's end for the predict thread, waiting for room while it can still make
        some: a predict thread that died with the queue full never would, and the worker would hang
        instead of exiting with its failure."""
        deadline = time.monotonic() + self.settings.drain_timeout_s
        while not self.pipeline.close(timeout=0.1):
            if not predict.is_alive() or time.monotonic() > deadline:
                return

    def _failed(self) -> bool:
        outbox = self.outbox
        return outbox.failure is not None or outbox.fatal_error is not None or self.serving.failure is not None

    def _release(self, partitions: set[Partition]) -> None:
        self.pauses.release(partitions)
        self.tracker.forget(partitions)
        if self.guard is not None:
            self.guard.release(partitions)
        self.ends.revoke(partitions)
        self._count_owned()
        self.batcher.drop(lambda _message, coords, _timestamp: coords[0] not in partitions)

    # -- shutdown ------------------------------------------------------------------------
    def _shutdown(self, predict: threading.Thread) -> None:
        self._closing = True
        try:
            self._drain(predict)
        except ClientHungError:
            self._abandon()
            raise
        self._serve_rebalance_before_close()
        if not kafka_io.close_consumer(self.consumer):
            self.log.warning(
                f"the consumer did not close within {kafka_io.CONSUMER_CLOSE_SECONDS:g}s (a librdkafka hang): "
                "the worker ends without it"
            )
        self.serving.flush_logs()
        self.log.info("worker stopped", **self.counters.snapshot(), traces_after_warmup=self.traces_after_warmup)

    def _serve_rebalance_before_close(self) -> None:
        """A rebalance that completed during the drain (a member joining in a rolling deploy) is
        served here, from the consumer's queue, not by ``close()``. Handed an assignment, the close
        was seen to block for good with the interpreter lock held (two suite runs of the last six),
        freezing the whole process: the client's fallback ``assign`` for the callback is the one
        call it makes there with that lock held. ``_closing`` keeps the worker off what it is
        given; records taken here are neither processed nor committed (their next owner reads them)."""
        deadline = time.monotonic() + CLOSE_QUEUE_SECONDS
        try:
            while self.consumer.consume(READ_AHEAD_CHUNK, 0) and time.monotonic() < deadline:
                pass
        except KafkaException as exc:  # the close is still made
            self.log.warning("could not serve the consumer's queue before closing it", error=str(exc))

    def _drain(self, predict: threading.Thread) -> None:
        """Finish what was read, deliver it and commit; ``ClientHungError`` at once if the producer
        hung (nothing can be delivered or committed through it)."""
        if self.transactions is not None:
            self.transactions.refuse_if_hung()
        self.log.info("draining", in_flight=self.tracker.in_flight())
        self._flush_batcher(self.settings.drain_timeout_s)  # a stop pushes what was read through
        self._finish(None, self.settings.drain_timeout_s)
        self._end_pipeline(predict)
        predict.join(timeout=self.settings.drain_timeout_s)
        self.outbox.flush(self.settings.drain_timeout_s)
        self.outbox.stop_serving()
        self.commits.now()
        self._count_uncommitted()
        if self.serving.watcher is not None:
            self.serving.watcher.stop()
        if self.transactions is not None:
            self.transactions.close()

    def _count_uncommitted(self) -> None:
        """At least once, a stop whose last commit failed (brokers out of reach) or whose drain ran out
        leaves inputs to be read again: say how many, here and in the summary. (Exactly once, a last
        commit that fails ends the worker with its error instead.)"""
        self.uncommitted_at_stop = self.tracker.uncommitted()
        if self.uncommitted_at_stop:
            self.log.warning(
                "inputs not committed at the stop: the next start reads them again",
                uncommitted=self.uncommitted_at_stop,
            )

    def _producer_hung(self) -> bool:
        return self.transactions is not None and self.transactions.hung is not None

    def _abandon(self) -> None:
        """The producer hung: leave the group at once, without draining or committing (the rebalance
        callbacks do nothing now), so that the partitions move on. The open transaction commits
        nothing: this worker's successor, with the same transactional id, fences the hung producer
        and aborts it."""
        try:
            kafka_io.call_within(self.drain_budget, self.consumer.close, "the consumer's close")
        except (ClientHungError, KafkaException) as exc:
            self.log.warning("could not leave the group: it drops this member after session.timeout.ms", error=str(exc))


def freeze_heap() -> None:
    """Move everything alive after warm-up (TensorFlow, Keras, the model: hundreds of thousands of
    objects) out of the garbage collector's view. Otherwise each full collection walks them all,
    a 100+ ms pause of every thread, seen as a latency tail of up to a second."""
    gc.collect()
    gc.freeze()
