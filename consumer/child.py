"""The entry point of one spawned worker process: pin the device, then import TensorFlow and serve.

It reports to the supervisor over a one-way pipe: ``("ready", info)`` once the model is warmed
up and the topics are checked, ``("summary", counts)`` when it finished cleanly, and
``("error", message)`` before a failing exit, and ``("status", ...)`` every second once ready
(for ``/readyz``). Exit codes tell the supervisor what to do:
0 done, 1 failed (restart), 2 configuration error and 3 model error (both final).
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from consumer import logs
from consumer.affinity import describe, pin_process
from consumer.config import Settings
from consumer.devices import PCI_BUS_ORDER, WorkerSlot
from consumer.errors import ConfigError, DeliveryError, FencedError, ModelError, TfStreamError

EXIT_DONE, EXIT_FAILED, EXIT_CONFIG, EXIT_MODEL = 0, 1, 2, 3
#: an output no retry can deliver (larger than ``message.max.bytes``): a restart would meet it again
EXIT_UNDELIVERABLE = 4
#: exactly-once: another producer took this worker's transactional id; a restart would take it back
EXIT_FENCED = 5
STATUS_SECONDS = 1.0
#: How long a worker thread holds the interpreter lock before another waiting one gets it (Python's
#: default is 5 ms). Four threads share it: the fetch loop, tf.data's decode, predict with its
#: outputs, delivery reports. With 5 ms, a batch's delivery reports waited up to 150-190 ms for the
#: lock at half load (the MLP's p99 end to end 129-269 ms over five runs, against 115-137 with 1 ms).
GIL_SWITCH_SECONDS = 0.001


def worker_main(
    settings: Settings,
    slot: WorkerSlot,
    report: multiprocessing.connection.Connection,
    scratch: str,
    hold_at_end: bool = False,
    tally: Any = None,
) -> None:
    """Run one worker until it is done; never returns (exits with a code the supervisor reads).
    Its temporary files go to ``scratch``, which the supervisor removes once it exited. With
    ``hold_at_end``, a bounded run's worker waits at its end until the supervisor stops it. Its
    counts are kept in ``tally`` too (``Counters.tally``), which the supervisor reads if it dies."""
    os.setpgrp()  # a terminal's Ctrl-C reaches the supervisor only; it forwards SIGTERM
    os.makedirs(scratch, exist_ok=True)
    tempfile.tempdir = scratch
    os.environ.update(slot.environment(), TMPDIR=scratch)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's C++ INFO lines are noise here
    os.environ.setdefault("CUDA_DEVICE_ORDER", PCI_BUS_ORDER)  # GPU numbers as nvidia-smi counts them
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    try:
        summary = _serve(settings, slot, report, hold_at_end, os.path.dirname(scratch), tally)
        _send(report, "summary", summary)
        code = EXIT_DONE
    except ConfigError as exc:
        code = _fail(report, exc, EXIT_CONFIG)
    except ModelError as exc:
        code = _fail(report, exc, EXIT_MODEL)
    except DeliveryError as exc:
        code = _fail(report, exc, EXIT_FAILED if exc.retriable else EXIT_UNDELIVERABLE)
    except FencedError as exc:
        code = _fail(report, exc, EXIT_FENCED)
    except TfStreamError as exc:
        code = _fail(report, exc, EXIT_FAILED)
    except BaseException as exc:  # a bug: keep the traceback, but still tell the supervisor in one line
        import traceback

        traceback.print_exc()
        code = _fail(report, f"{type(exc).__name__}: {exc}", EXIT_FAILED)
    sys.stderr.flush()
    os._exit(code)


def _serve(
    settings: Settings,
    slot: WorkerSlot,
    report: multiprocessing.connection.Connection,
    hold_at_end: bool,
    crash_folder: str,
    tally: Any,
) -> dict[str, Any]:
    logs.configure(settings.log_level, settings.log_format, worker=slot.slot, device=slot.device)
    pin_cpus(slot)
    configure_tensorflow(slot, settings.gpu_memory, settings.allow_cpu_fallback)
    from consumer.worker import Worker  # imports TensorFlow, after the device is pinned

    worker = Worker(settings, slot.slot, slot.device, slot.host_number)
    worker.counters.tally = tally
    worker.bounded.hold = hold_at_end
    worker.crash_folder = crash_folder  # the supervisor's: what its workers died with (``consumer.crashes``)
    worker.bounded.on_end_reached = worker.bounded.report_status = lambda: _send_status(report, worker)  # at once
    install_signal_handlers(worker.request_stop)
    when_parent_dies(worker.request_stop)
    worker.start()
    _send(report, "ready", {"device": slot.device, "pid": os.getpid(), **worker.member_ids()})
    _report_status_every_second(worker, report)
    return worker.run()


def pin_cpus(slot: WorkerSlot) -> None:
    """Keep this worker on its share of the cores (``consumer.affinity``), before TensorFlow and
    librdkafka start their threads, which inherit it. A failure is said and served unpinned."""
    if slot.cpus and (problem := pin_process(slot.cpus)) is not None:
        logs.get_logger("consumer.worker").warning(
            "could not pin the worker to its CPUs; it runs wherever the OS puts it",
            cpus=describe(slot.cpus),
            error=problem,
            fix="--cpu-affinity off stops trying",
        )


def configure_tensorflow(slot: WorkerSlot, gpu_memory: str = "grow", allow_cpu_fallback: bool = False) -> None:
    """Threads for a CPU share; on a GPU, memory grown on demand or capped at ``gpu_memory`` MiB
    (so several workers can share one GPU). Both must happen before any op runs. A worker given a
    GPU that TensorFlow cannot see fails, unless ``allow_cpu_fallback``: TensorFlow itself would
    quietly run on the CPU, many times slower."""
    import tensorflow as tf

    if slot.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(slot.intra_op_threads)
        tf.config.threading.set_inter_op_parallelism_threads(slot.inter_op_threads)
    gpus = tf.config.list_physical_devices("GPU")
    if slot.gpu_id is not None and not gpus:
        _no_gpu(slot, allow_cpu_fallback, built_with_cuda=tf.test.is_built_with_cuda())
    for gpu in gpus:
        if gpu_memory == "grow":
            tf.config.experimental.set_memory_growth(gpu, True)
        else:
            limit = tf.config.LogicalDeviceConfiguration(memory_limit=int(gpu_memory))
            tf.config.set_logical_device_configuration(gpu, [limit])


def _no_gpu(slot: WorkerSlot, allow_cpu_fallback: bool, built_with_cuda: bool) -> None:
    why = "no working NVIDIA driver or GPU" if built_with_cuda else "this TensorFlow is built without CUDA"
    if allow_cpu_fallback:
        logs.get_logger("consumer.worker").warning(
            "no GPU visible to TensorFlow: running on the CPU (--allow-cpu-fallback)",
            cuda_visible_devices=slot.gpu_id,
            cause=why,
        )
        return
    raise ConfigError(
        f"worker {slot.slot} was given {slot.device}, but TensorFlow sees no GPU (CUDA_VISIBLE_DEVICES={slot.gpu_id}; "
        f"{why}): install the gpu extra (pip install '.[gpu]', without '.[cpu]') and check nvidia-smi, run with "
        "--devices cpu, or pass --allow-cpu-fallback"
    )


def install_signal_handlers(stop: Any) -> None:
    """First SIGTERM/SIGINT: drain and exit 0. A second one: exit at once."""
    received: list[int] = []

    def handle(signum: int, _frame: Any) -> None:
        if received:
            os._exit(EXIT_FAILED)
        received.append(signum)
        stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def when_parent_dies(action: Callable[[], object]) -> None:
    """In a spawned process: run ``action`` (in a thread of its own) once the process that started
    it is gone. A worker whose supervisor was killed drains and exits instead of living on as an
    orphan; the bench's process-pool workers exit too."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        action()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _report_status_every_second(worker: Any, report: multiprocessing.connection.Connection) -> None:
    """What /readyz needs: joined the group, not stuck in a batch."""

    def loop() -> None:
        while _send_status(report, worker):
            time.sleep(STATUS_SECONDS)

    threading.Thread(target=loop, name="status", daemon=True).start()


def _fail(report: multiprocessing.connection.Connection, error: BaseException | str, code: int) -> int:
    message = logs.one_line(str(error))
    if not _send(report, "error", message):
        logs.line(f"error: {message}")
    return code


_SEND_LOCK = threading.RLock()  # the status thread and the main thread share the pipe


def _send_status(report: multiprocessing.connection.Connection, worker: Any) -> bool:
    """The status is made under the pipe's lock: one made before a newer one cannot arrive after it
    (the status thread's, saying a held worker was at its end, after a rebalance callback's saying
    it no longer was)."""
    with _SEND_LOCK:
        return _send(report, "status", worker.status())


def _send(report: multiprocessing.connection.Connection, kind: str, payload: Any) -> bool:
    try:
        with _SEND_LOCK:
            report.send((kind, json.loads(json.dumps(payload, default=str))))
        return True
    except (OSError, ValueError):
        return False
