"""The supervisor: one spawned worker process per device slot, restarted when it dies.

It never imports TensorFlow, and starts workers with ``spawn``, never ``fork``: a process that
forks after TensorFlow or CUDA initialised hangs (the Celery prefork failure). It forwards
SIGTERM/SIGINT/SIGHUP as SIGTERM so every worker drains, restarts crashed workers with exponential back-off
(reset once a worker stayed up for ``healthy_after_s``), and gives up with the worker's own
one-line reason when a worker keeps dying before it ever became ready.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.process import BaseProcess
from typing import Any

from consumer import crashes, kafka_io, metrics
from consumer.affinity import describe
from consumer.child import EXIT_CONFIG, EXIT_DONE, EXIT_FENCED, EXIT_MODEL, EXIT_UNDELIVERABLE, worker_main
from consumer.config import Settings
from consumer.counts import COUNTED
from consumer.devices import WorkerSlot
from consumer.endpoints import Endpoints
from consumer.errors import ConfigError
from consumer.host_slots import HostSlots
from consumer.logs import get_logger
from consumer.progress import Progress, lag_and_eta

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
#: each drains the run (a second one stops it at once): SIGHUP too, a closed terminal's or ssh session's,
#: which would otherwise end the supervisor without its summary
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: worker exits a restart cannot cure: the run ends with this code
_FINAL = {EXIT_CONFIG: EXIT_USAGE} | dict.fromkeys((EXIT_MODEL, EXIT_UNDELIVERABLE, EXIT_FENCED), EXIT_FAILURE)
#: Worker summary counts that add up across workers.
SUMMED = (
    "consumed",
    "predicted",
    "dead_lettered",
    "skipped",
    "batches",
    "padded_rows",
    "traces_after_warmup",
    "uncommitted",
)
#: Counts that add up over a worker's runs, too (``uncommitted`` does not: the next run reads it again).
ADDED_UP = tuple(key for key in SUMMED if key != "uncommitted")
#: How long every worker of a bounded run must have said it is at its end before they are stopped
AT_END_SETTLE_S = 1.0
#: What follows a worker's death while stopping: it sent no summary, so the run's ``uncommitted``
#: leaves its inputs out.
UNCOMMITTED_READ_AGAIN = (
    "its inputs not yet committed (not in the summary's uncommitted: it sent none) are read again by the "
    "next run, from the last committed offsets"
)


@dataclass
class Child:
    """What the supervisor knows of one worker slot across its restarts."""

    slot: WorkerSlot
    process: BaseProcess | None = None
    report: multiprocessing.connection.Connection | None = None
    ready_at: float | None = None
    failures: int = 0  # consecutive crashes, reset after a healthy period
    start_failures: int = 0  # consecutive crashes before ever becoming ready
    restart_at: float | None = None
    restarts: int = 0
    finished: bool = False
    exit_code: int | None = None
    last_error: str = ""
    summary: dict[str, Any] = field(default_factory=dict)  # its current or last run's, if it sent one
    status: dict[str, Any] = field(default_factory=dict)  # the worker's last status report
    #: the running worker's counts, in memory it shares with the supervisor (``Counters.tally``)
    tally: Sequence[int] = field(default_factory=lambda: [0] * len(COUNTED))
    #: what its ended runs did, summed (``run_counts``): a restarted worker's earlier runs count too
    counted: Counter[str] = field(default_factory=Counter)
    status_at: float | None = None
    at_end_since: float | None = None  # since when its reports say it is at its end (a bounded run)
    killed_for: str = ""  # why the supervisor killed the running worker (its death's name), if it did

    @property
    def alive(self) -> bool:
        return self.process is not None

    def name(self) -> str:
        return f"worker {self.slot.slot} ({self.slot.device})"


@dataclass(frozen=True)
class RestartPolicy:
    """Exponential back-off between restarts; how many failed starts end the run."""

    base_s: float = 1.0
    max_s: float = 30.0
    healthy_after_s: float = 60.0
    start_attempts: int = 3

    def delay(self, failures: int) -> float:
        return float(min(self.max_s, self.base_s * 2 ** max(0, failures - 1)))


class Supervisor:
    """Starts, watches, restarts and stops the worker processes of one deployment member."""

    def __init__(self, settings: Settings, slots: list[WorkerSlot], policy: RestartPolicy | None = None) -> None:
        self.settings = settings
        self.policy = policy or RestartPolicy(start_attempts=settings.start_attempts)
        self.children = [Child(slot) for slot in slots]
        self.log = get_logger("consumer.supervisor")
        self._context = multiprocessing.get_context("spawn")
        self._signals: list[int] = []
        self._stopping_since: float | None = None
        self._fatal: tuple[int, str] | None = None
        self.error: str | None = None  # the one line to print when ``run`` returns non-zero
        self.endpoints: Endpoints | None = None
        self._metrics_dir = metrics.prepare_directory() if settings.metrics_port is not None else None
        self._scratch = ""  # the workers' temporary files, one folder each, removed when they exit
        self._restarts = metrics.restarts_counter() if self._metrics_dir else None
        self._host_slots = HostSlots(settings.transactional_id_prefix, settings.group)
        #: inputs its workers died with (``consumer.crashes``), saved where they read it
        self._suspects = crashes.Suspects()
        self.progress = Progress(settings.progress_interval_s, time.monotonic())

    # -- main loop -----------------------------------------------------------------------
    def run(self) -> int:
        self._install_signal_handlers()
        self._scratch = tempfile.mkdtemp(prefix="tfstream-scratch-")
        try:  # whatever happens from here, the folders are removed (a metrics port in use, say)
            self.log.info("starting workers", workers=[c.slot.device for c in self.children], pid=os.getpid())
            self._serve_endpoints()
            self._claim_host_numbers()
            for child in self.children:
                self._start(child)
            while not all(c.finished for c in self.children):
                if self._signals and self._stopping_since is None:
                    self._stop_all("signal received: draining workers")
                self._wait(0.5)
                self._stop_if_all_at_end()
                self._restart_due()
                self._kill_if_stuck()
                self._kill_if_drain_hangs()
                self._log_progress()
        except BaseException:
            self._end_workers()
            raise
        finally:
            self._close_endpoints()
            self._remove_files()
            self._host_slots.release()
        return self._result()

    def _log_progress(self) -> None:
        line = self.progress.line(time.monotonic())
        if line is None:
            return
        line["in_flight"] = sum(c.status.get("in_flight", 0) for c in self.children)
        ready = sum(1 for c in self.children if c.alive and c.status.get("ready"))
        line["workers_ready"] = f"{ready}/{len(self.children)}"
        lags = [c.status.get("lag") for c in self.children if not c.finished]
        line |= lag_and_eta(lags, self.progress.done_per_s, self.settings.stop_at_end)
        self.log.info("progress", **line)

    def _claim_host_numbers(self) -> None:
        """Exactly-once or static membership: numbers for the workers' transactional ids and group
        instance ids that no other supervisor of this group on this host holds
        (``consumer.host_slots``), kept across the workers' restarts."""
        if self.settings.delivery != "exactly-once" and kafka_io.static_member_stem(self.settings) is None:
            return
        try:
            numbers = self._host_slots.claim(len(self.children))
        except OSError as exc:
            self.log.warning(
                "cannot claim worker ids on this host; a second supervisor of this group here would "
                "fence this one's workers",
                folder=str(self._host_slots.folder),
                error=str(exc),
            )
            return
        for child, number in zip(self.children, numbers, strict=True):
            child.slot = replace(child.slot, host_number=number)
        self.log.info("worker ids claimed on this host", numbers=numbers)

    def _serve_endpoints(self) -> None:
        if self.settings.metrics_port is None:
            return
        try:
            self.endpoints = Endpoints(self.settings.metrics_port, self.readiness).start()
        except OSError as exc:
            raise ConfigError(f"invalid setting metrics_port={self.settings.metrics_port}: {exc.strerror}") from None
        self.log.info("serving /metrics, /healthz and /readyz", port=self.endpoints.port)

    def _close_endpoints(self) -> None:
        if self.endpoints is not None:
            self.endpoints.stop()

    def _remove_files(self) -> None:
        for folder in (self._metrics_dir, self._scratch):
            if folder:
                shutil.rmtree(folder, ignore_errors=True)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when every worker is up, reported within 5 s, joined its group and is not stuck."""
        now = time.monotonic()
        workers = []
        for c in self.children:
            fresh = c.status_at is not None and now - c.status_at < 5
            ready = c.alive and c.ready_at is not None and fresh and bool(c.status.get("ready"))
            workers.append({**c.status, "worker": c.slot.slot, "device": c.slot.device, "ready": ready})
        return self._stopping_since is None and all(w["ready"] for w in workers), {"workers": workers}

    def _start(self, child: Child) -> None:
        receive, send = self._context.Pipe(duplex=False)
        child.tally = self._context.Array("q", len(COUNTED), lock=False)  # a run's own, from 0
        process = self._context.Process(
            target=worker_main,
            args=(self.settings, child.slot, send, self._scratch_of(child), self._hold_at_end(), child.tally),
            name=f"tfstream-worker-{child.slot.slot}",
        )
        process.start()
        send.close()  # the child holds the only writing end: EOF means it is gone
        child.process, child.report, child.ready_at, child.restart_at = process, receive, None, None
        child.killed_for, child.summary = "", {}
        self.log.info(
            "worker started", worker=child.slot.slot, device=child.slot.device, pid=process.pid, **pinned(child.slot)
        )

    def _scratch_of(self, child: Child) -> str:
        """The worker's temporary folder: TensorFlow writes a file of generated code there for each
        function it converts, and removes them only on a normal interpreter exit, which a worker
        never has (it ends with ``os._exit``, or a SIGKILL)."""
        return os.path.join(self._scratch, f"worker-{child.slot.slot}")

    def _wait(self, timeout: float) -> None:
        live = [c for c in self.children if c.alive]
        waitables: list[Any] = [c.report for c in live] + [c.process.sentinel for c in live if c.process]
        if not waitables:
            time.sleep(timeout)
            return
        ready = multiprocessing.connection.wait(waitables, timeout)
        for child in live:
            assert child.process is not None
            if child.report in ready:
                self._read_reports(child)
            if child.process.sentinel in ready:
                self._on_exit(child)

    def _read_reports(self, child: Child) -> None:
        assert child.report is not None
        try:
            while child.report.poll():
                kind, payload = child.report.recv()
                self._on_report(child, kind, payload)
        except (EOFError, OSError):
            pass

    def _on_report(self, child: Child, kind: str, payload: Any) -> None:
        if kind == "ready":
            child.ready_at, child.start_failures = time.monotonic(), 0
            ids = {name: payload[name] for name in ("group_instance_id", "transactional_id") if name in payload}
            self.log.info(
                "worker ready", worker=child.slot.slot, device=child.slot.device, pid=payload.get("pid"), **ids
            )
        elif kind == "status":
            child.status, child.status_at = payload, time.monotonic()
            child.at_end_since = (child.at_end_since or child.status_at) if payload.get("at_end") else None
            self.progress.update(child.slot.slot, payload.get("counts", {}))
        elif kind == "summary":
            child.summary = payload
        elif kind == "error":
            child.last_error = str(payload)

    # -- exits and restarts --------------------------------------------------------------
    def _on_exit(self, child: Child) -> None:
        assert child.process is not None and child.report is not None
        self._read_reports(child)
        child.process.join()
        code = child.process.exitcode if child.process.exitcode is not None else EXIT_FAILURE
        child.report.close()
        child.counted.update(run_counts(child.summary, child.status, child.tally))
        if code < 0 and child.ready_at is not None and self._stopping_since is None:
            self._note_crash(child, child.killed_for or _killed_by(code))
        shutil.rmtree(self._scratch_of(child), ignore_errors=True)
        if self._metrics_dir is not None and child.process.pid:
            metrics.worker_exited(child.process.pid)
        if self._stopping_since is not None and code == -signal.SIGTERM and child.ready_at is None:
            code = EXIT_DONE  # our SIGTERM came before its handlers: it held no partitions yet
        if code < 0 and self._stopping_since is not None:  # the run's error line (``_result``)
            child.last_error = f"{child.killed_for or _describe_exit(code)} while stopping: {UNCOMMITTED_READ_AGAIN}"
        child.process, child.report, child.exit_code = None, None, code
        child.status, child.status_at, child.at_end_since = {}, None, None
        if code == EXIT_DONE or self._stopping_since is not None:
            child.finished = True
            self.log.info("worker exited", worker=child.slot.slot, exit_code=code)
        elif code in _FINAL:
            self._give_up(_FINAL[code], child.last_error or f"{child.name()} exited with {code}")
        else:
            self._schedule_restart(child, code)

    def _kill_if_stuck(self) -> None:
        """A ready worker whose pipeline has not moved for ``stuck_kill_s`` (or that has not reported
        for as long) is killed: an input may hang it (a preprocess or kernel that never returns) as
        one may kill it, and its restart runs the inputs it held as suspects (``_note_crash``)."""
        limit, now = self.settings.stuck_kill_s, time.monotonic()
        if not limit or self._stopping_since is not None:
            return
        for child in self.children:
            if child.process is None or child.ready_at is None or child.killed_for or not child.process.pid:
                continue
            silent = now - (child.status_at or child.ready_at)
            stalled = max(child.status.get("stalled_s", 0.0), silent)
            if stalled >= limit:
                what = "no status" if silent >= limit else "no batch through its pipeline"
                child.killed_for = f"killed as stuck ({what} for {limit:g} s)"
                self.log.error(
                    "worker stuck: killing it; the inputs in its pipeline become suspects",
                    worker=child.slot.slot,
                    reason=child.killed_for,
                )
                _signal(child.process.pid, signal.SIGKILL)

    def _note_crash(self, child: Child, death: str) -> None:
        """A ready worker died of a signal: the inputs its pipeline held become suspects (to run one at a
        time if they were a group alone in it), or the one it held alone is quarantined
        (``consumer.crashes``). A worker the supervisor killed (a drain that hung) is not counted: that
        happens only while stopping."""
        flight = crashes.read_flight(crashes.flight_path(self._scratch, child.slot.slot))
        if flight is None:
            return
        found = self._suspects.crashed(flight, death)
        self._suspects.save(crashes.suspects_path(self._scratch))
        if isinstance(found, tuple):
            self.log.error(
                "an input killed a worker alone: it goes to the dead letters without running again",
                worker=child.slot.slot,
                input=crashes.named(*found),
                death=death,
            )
        elif found:
            said = (
                "a worker died with a group of suspects alone in its pipeline: the workers run them one at a time "
                "from now on"
                if "only" in flight
                else "a worker died with inputs in flight: the workers run them apart from now on"
            )
            self.log.warning(said, worker=child.slot.slot, inputs=found, death=death)

    def _schedule_restart(self, child: Child, code: int) -> None:
        reason = child.killed_for or child.last_error or _describe_exit(code)
        now = time.monotonic()
        if child.ready_at is None:
            child.start_failures += 1
            if child.start_failures >= self.policy.start_attempts:
                attempts = f" ({child.start_failures} attempts)" if child.start_failures > 1 else ""
                self._give_up(EXIT_FAILURE, f"{reason} [{child.name()} could not start{attempts}]")
                return
        elif now - child.ready_at >= self.policy.healthy_after_s:
            child.failures = 0
        child.failures += 1
        child.restart_at = now + self.policy.delay(child.failures)
        self.log.warning(
            "worker died; restarting",
            worker=child.slot.slot,
            device=child.slot.device,
            reason=reason,
            restart_in_s=round(child.restart_at - now, 1),
        )

    def _restart_due(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is not None and child.restart_at <= now and self._stopping_since is None:
                child.restarts += 1
                if self._restarts is not None:
                    self._restarts.labels(worker=str(child.slot.slot)).inc()
                self._start(child)

    def _give_up(self, code: int, message: str) -> None:
        if self._fatal is None:
            self._fatal = (code, message)
        self._stop_all("a worker failed for good: stopping the others")

    # -- stopping ------------------------------------------------------------------------
    def _hold_at_end(self) -> bool:
        """A bounded run's workers leave together (``consumer.bounded``); one alone need not wait."""
        return self.settings.stop_at_end and len(self.children) > 1

    def _stop_if_all_at_end(self) -> None:
        """Every worker has said it is at its end, for ``AT_END_SETTLE_S`` at least: a worker whose
        rebalance callback took it off its end says so at once, and a moment's overlap of the
        others' reports (one's end after a rebalance round, another's from before it) is not a
        finished run."""
        if not self._hold_at_end() or self._stopping_since is not None:
            return
        running = [c for c in self.children if not c.finished]
        if not running or not all(c.alive and c.at_end_since is not None for c in running):
            return
        if time.monotonic() - max(c.at_end_since or 0.0 for c in running) >= AT_END_SETTLE_S:
            self._stop_all("every worker reached the end of its partitions: stopping them together")

    def _stop_all(self, why: str) -> None:
        if self._stopping_since is None:
            self._stopping_since = time.monotonic()
            self.log.info(why)
        for child in self.children:
            if child.restart_at is not None or not child.alive:
                child.restart_at, child.finished = None, True
            elif child.process is not None and child.process.pid:
                _signal(child.process.pid, signal.SIGTERM)

    def _kill_if_drain_hangs(self) -> None:
        budget = self._stop_budget_s()
        if self._stopping_since is None or time.monotonic() - self._stopping_since < budget:
            return
        for child in self.children:
            if child.process is not None and child.process.pid:
                self.log.error("worker did not drain in time: killing it", worker=child.slot.slot)
                child.killed_for = f"the worker was killed by the supervisor, its drain past {budget:g} s"
                _signal(child.process.pid, signal.SIGKILL)

    def _end_workers(self) -> None:
        """The supervisor itself failed (a bug): its workers are told to stop (they drain) and waited
        for within the stop budget, then killed. Left running, they kept its exit waiting for good:
        multiprocessing joins a process's children at its exit, and a worker stops only when told to
        or once its parent is gone."""
        running = [(c.process, c.process.pid) for c in self.children if c.process is not None and c.process.pid]
        for _, pid in running:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + self._stop_budget_s()
        for process, pid in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                _signal(pid, signal.SIGKILL)
                process.join(5)

    def _stop_budget_s(self) -> float:
        """How long a stopping worker may take before it is killed: its drain waits up to
        ``drain_timeout_s`` twice (for acknowledgements, then for the producer's flush), and, exactly
        once, its last commit may take ``transaction_timeout_ms``, and a call that hangs its margin more.
        With the brokers out of reach, an exactly-once stop took 118.6 s with the defaults, and was
        SIGKILLed at the former budget (``drain_timeout_s`` + 30 s) instead of ending with its reason."""
        s = self.settings
        exactly_once = s.delivery == "exactly-once"
        commit = kafka_io.transactional_call_bound_s(s.transaction_timeout_ms / 1000) if exactly_once else 0
        return 2 * s.drain_timeout_s + 30 + commit

    def _install_signal_handlers(self) -> None:
        def handle(signum: int, _frame: Any) -> None:
            self._signals.append(signum)
            if len(self._signals) > 1:  # a second signal: no more waiting
                for child in self.children:
                    if child.process is not None and child.process.pid:
                        _signal(child.process.pid, signal.SIGKILL)
                self._remove_files()
                os._exit(EXIT_FAILURE)

        for signum in STOP_SIGNALS:
            signal.signal(signum, handle)

    def _result(self) -> int:
        self.log.info("supervisor stopped", restarts=sum(c.restarts for c in self.children))
        if self._fatal is not None:
            self.error = self._fatal[1]
            return self._fatal[0]
        failed = [c for c in self.children if c.exit_code not in (EXIT_DONE, None)]
        if failed:
            first = failed[0]
            self.error = f"{first.last_error or _describe_exit(first.exit_code)} [{first.name()}]"
        return EXIT_FAILURE if failed else EXIT_OK

    def summary(self) -> dict[str, Any]:
        """Totals over every run of every worker, and one entry per worker: its counts over its runs,
        the rest (latency, memory, …) its last run's. ``uncommitted`` is the last runs' alone: what an
        earlier run left uncommitted, the next one read again."""
        workers: list[dict[str, Any]] = [
            {"worker": c.slot.slot, "device": c.slot.device, **pinned(c.slot)}
            | {"restarts": c.restarts, "exit_code": c.exit_code}
            | c.summary
            | {key: c.counted[key] for key in ADDED_UP}
            for c in self.children
        ]
        totals = {key: sum(int(w.get(key, 0)) for w in workers) for key in SUMMED}
        return {**totals, "restarts": sum(c.restarts for c in self.children), "workers": workers}


def run_counts(summary: dict[str, Any], status: dict[str, Any], tally: Sequence[int]) -> dict[str, int]:
    """What one run of a worker did: its summary's counts, or without one (it was killed, or died),
    its ``tally`` (``Counters.tally``, as of its last addition), with the traces of its last status
    report. Before 2026-12-04 that report's counts stood in, sent once a second: the counts of a
    killed worker's last second were lost."""
    traces = status.get("traces_after_warmup", 0)
    source = summary or {**dict(zip(COUNTED, tally, strict=True)), "traces_after_warmup": traces}
    return {key: int(source.get(key, 0)) for key in ADDED_UP}


def pinned(slot: WorkerSlot) -> dict[str, str]:
    """``{"cpus": "0-3"}`` for a worker pinned to its cores (``consumer.affinity``), else nothing."""
    return {"cpus": describe(slot.cpus)} if slot.cpus else {}


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _killed_by(code: int) -> str:
    """A worker's death by a signal (``code`` < 0, as ``Process.exitcode`` gives it): "killed by SIGABRT"."""
    return f"killed by {signal.Signals(-code).name}"


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        return f"the worker was {_killed_by(code)}"
    return f"the worker exited with code {code}"
