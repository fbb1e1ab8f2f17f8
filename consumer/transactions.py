"""Exactly-once delivery: outputs, dead letters and consumed offsets commit in one transaction.

A transaction spans the batches produced since the last commit (``commit_interval_ms``); the
outbox's lock keeps every batch whole inside one. Errors are handled as librdkafka's
``examples/transactions.c`` does: a retriable error retries the commit, an abortable one aborts
and the worker reads again from its last committed offsets, anything else is fatal (the worker
restarts).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from consumer import kafka_io
from consumer.delivery import Outbox
from consumer.errors import SUCCESSOR, BrokerError, ClientHungError, ConfigError, FencedError, TfStreamError
from consumer.offsets import OffsetTracker

#: A newer producer with the same ``transactional.id`` took over (librdkafka's and the broker's codes).
_FENCED = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}


def start_error(err: KafkaError, transactional_id: str, transaction_timeout_ms: int) -> TfStreamError:
    """Why a worker could not start its transactions, in one line that says what to change."""
    reason = err.str()
    if err.code() == KafkaError.INVALID_TRANSACTION_TIMEOUT:
        return ConfigError(
            f"invalid setting transaction_timeout_ms={transaction_timeout_ms}: the brokers refuse it ({reason}); "
            "set it at or below their transaction.max.timeout.ms (900000, 15 minutes, unless changed)"
        )
    if err.code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
        return BrokerError(
            f"cannot start a Kafka transaction: this principal may not use transactional.id {transactional_id!r} "
            f"({reason}); grant it WRITE and DESCRIBE on that TransactionalId (a PREFIXED ACL on "
            "transactional_id_prefix covers every worker), or use --delivery at-least-once"
        )
    return BrokerError(
        f"cannot start a Kafka transaction ({reason}); exactly-once needs brokers with transactions enabled, "
        "or use --delivery at-least-once"
    )


class Transactions:
    """Begins, commits and aborts the transactions of one worker's producer."""

    def __init__(
        self,
        producer: Producer,
        outbox: Outbox,
        tracker: OffsetTracker,
        transaction_timeout_ms: int,
        log: Any,
        transactional_id: str = "",
    ) -> None:
        self.producer, self.outbox, self.tracker, self.log = producer, outbox, tracker, log
        self.transaction_timeout_ms = transaction_timeout_ms
        #: each transactional call's own timeout: half the transaction's
        self.timeout_s = transaction_timeout_ms / 2000
        self.transactional_id = transactional_id
        #: set once a call blocked past its bound: the producer is never called again
        self.hung: ClientHungError | None = None

    def start(self) -> None:
        """Fence any earlier producer with this transactional id, then open the first transaction."""
        try:
            self._call("init_transactions", lambda: self.producer.init_transactions(self.timeout_s))
            self.producer.begin_transaction()
        except KafkaException as exc:
            raise start_error(exc.args[0], self.transactional_id, self.transaction_timeout_ms) from None

    def commit(self, consumer: Consumer) -> bool:
        """Commit what was produced with the offsets it covers; False if the transaction was aborted
        (the caller must rewind), True otherwise. Nothing is committed while no offset moved."""
        with self.outbox.lock:
            offsets = self.tracker.committable()
            if not offsets:
                return True
            request = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
            try:
                # asked here, in the consumer's own thread: asked from another thread while a
                # rebalance callback runs (a revoke commits), it got no answer (not in 8 s, probed)
                metadata = consumer.consumer_group_metadata()
                self._retrying(
                    "send_offsets_to_transaction",
                    lambda: self.producer.send_offsets_to_transaction(request, metadata, self.timeout_s),
                )
                self._commit_transaction()
            except KafkaException as exc:
                return self._failed(exc.args[0])
            self.tracker.mark_committed(offsets)
            self.outbox.committed()
            self.producer.begin_transaction()
            return True

    def _commit_transaction(self) -> None:
        self._retrying("commit_transaction", lambda: self.producer.commit_transaction(self.timeout_s))

    def _retrying(self, what: str, step: Callable[[], None]) -> None:
        """Run one step of a commit, again at once while it fails retriably (timed out), for up to
        ``transaction.timeout.ms`` (the coordinator aborts the transaction after that anyway). Not
        later: once a commit has begun, librdkafka refuses new records until it ends; and a commit
        put off past a revoke would commit the revoked partitions' outputs without their offsets.
        The caller holds the outbox's lock, so the batches wait meanwhile."""
        deadline = time.monotonic() + 2 * self.timeout_s
        while True:
            try:
                self._call(what, step)
                return
            except KafkaException as exc:
                error = exc.args[0]
                if not error.retriable() or error.txn_requires_abort() or time.monotonic() >= deadline:
                    raise
                self.log.warning("transaction commit failed; retrying", error=error.str())

    def _abort_transaction(self) -> None:
        self._call("abort_transaction", lambda: self.producer.abort_transaction(self.timeout_s))

    def _call(self, what: str, step: Callable[[], None]) -> None:
        """One blocking transactional call, bounded: librdkafka does not always keep its own timeout."""
        self.refuse_if_hung()
        try:
            bound = kafka_io.transactional_call_bound_s(2 * self.timeout_s)
            kafka_io.call_within(bound, step, f"the producer's {what}")
        except ClientHungError as exc:
            self.hung = exc
            raise

    def refuse_if_hung(self) -> None:
        """``ClientHungError`` once a call of this producer blocked past its bound."""
        if self.hung is not None:
            raise self.hung

    def _failed(self, error: KafkaError) -> bool:
        self._refuse_if_fenced(error)
        if error.txn_requires_abort():
            self.abort(f"the transaction failed ({error.str()})")
            return False
        if error.retriable():
            raise BrokerError(
                f"could not commit a transaction within {2 * self.timeout_s:.0f}s ({error.str()}); {SUCCESSOR} "
                "aborts it with the same transactional id"
            )
        raise BrokerError(
            f"fatal transaction error ({error.str()}); {SUCCESSOR} fences this producer with the same transactional id"
        )

    def abort(self, reason: str) -> None:
        """Abort the open transaction; records of batches still in flight are dropped until ``resume``."""
        with self.outbox.lock:
            self.log.warning("transaction aborted; its inputs will be processed again", reason=reason)
            self.outbox.discarding = True
            self.outbox.aborted()
            try:
                self._abort_transaction()
            except KafkaException as exc:
                self._refuse_if_fenced(exc.args[0])
                raise BrokerError(f"could not abort a transaction ({exc.args[0].str()})") from None

    def refuse_if_fenced(self, error: KafkaError) -> None:
        """``FencedError`` if ``error``, the producer's fatal error, says another producer took this
        worker's transactional id. A record refused with ``_FATAL`` does not say which error it was:
        an abort, refused too, tells."""
        if error.code() == KafkaError._FATAL:
            try:
                self._abort_transaction()
            except KafkaException as exc:
                error = exc.args[0]
        self._refuse_if_fenced(error)

    def _refuse_if_fenced(self, error: KafkaError) -> None:
        """``FencedError`` if ``error`` says another producer took this worker's transactional id."""
        if error.code() in _FENCED:
            raise FencedError(
                f"another producer took this worker's transactional id {self.transactional_id!r} ({error.str()}): "
                "another consumer of this group runs under this host name with the same transactional_id_prefix "
                "(containers sharing one host name?); give each deployment its own transactional_id_prefix"
            )

    def resume(self) -> None:
        with self.outbox.lock:
            self.outbox.discarding = False
            self.producer.begin_transaction()

    def close(self) -> None:
        """At shutdown, after the last commit: abort the empty transaction left open."""
        try:
            self._abort_transaction()
        except KafkaException as exc:
            self.log.warning("could not close the last transaction", error=exc.args[0].str())
