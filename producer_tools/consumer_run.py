"""``python -m consumer run`` as a subprocess: the command line, the environment and the process
handle the demo, the bench and the tests use."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consumer.errors import ConfigError, TfStreamError
from producer_tools.lifetime import ending_with_this_process

if TYPE_CHECKING:
    from consumer.config import Settings

#: Short group timeouts: on the embedded broker a join then takes ~3 s instead of ~23 s.
FAST_GROUP_ENV = {
    "TFSTREAM_KAFKA_CONSUMER_SESSION_TIMEOUT_MS": "6000",
    "TFSTREAM_KAFKA_CONSUMER_HEARTBEAT_INTERVAL_MS": "500",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}


class ConsumerRunError(TfStreamError):
    """The consumer ended otherwise than asked, or not in time; the message ends with its last log lines
    (the demo and the bench then exit 1 showing them, not a traceback)."""


def consumer_command(bootstrap: str, model: Path, inp: str, out: str, group: str, *extra: str) -> list[str]:
    """The command line a user types, with ``extra`` flags appended."""
    return [
        sys.executable, "-m", "consumer", "run", "--bootstrap-servers", bootstrap,
        "--input-topic", inp, "--output-topic", out, "--group", group, "--model", str(model), *extra,
    ]  # fmt: skip


def consumer_flags_problem(flags: Sequence[str]) -> str | None:
    """What ``python -m consumer run`` would refuse in ``flags`` given with a run's own (the topics,
    the group, the model), in its own words; None if nothing."""
    try:
        consumer_settings(flags)
    except TfStreamError as exc:
        return str(exc)
    return None


def consumer_settings(flags: Sequence[str]) -> Settings:
    """The settings ``python -m consumer run`` would take from ``flags`` given with a run's own,
    checked as the consumer checks them (its parser, then ``checked_run`` with this environment),
    without starting it; what it would refuse is a ``ConfigError`` in its own words."""
    from consumer import cli

    argv = ["run", "--bootstrap-servers", "127.0.0.1:9092", "--input-topic", "in", "--output-topic", "out"]
    argv += ["--group", "g", "--model", "model.keras", *flags]
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            args = cli.build_parser().parse_args(argv)
    except SystemExit:  # the parser's: its message is its last line
        raise ConfigError(said.getvalue().strip().splitlines()[-1].split(" error: ", 1)[-1]) from None
    return cli.checked_run(args)[0]


def consumer_env(**extra: str) -> dict[str, str]:
    """This process's environment with short group timeouts (for the embedded broker)."""
    return {**os.environ, **FAST_GROUP_ENV, **extra}


class ConsumerProcess:
    """``python -m consumer run`` in its own process; its JSON log lines are collected as they come.
    As a context manager, it is stopped if the block ends while it still runs."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None) -> None:
        # SIGTERM once this process ends, however: killed outright, it cannot stop the consumer itself
        tied = ending_with_this_process(command, signal.SIGTERM)
        self.process = subprocess.Popen(tied, env=env or consumer_env(), stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def events(self, name: str) -> list[dict[str, Any]]:
        """The logged JSON lines whose ``event`` is ``name``, so far."""
        marker = f'"event": "{name}"'
        return [json.loads(line) for line in list(self.lines) if line.startswith("{") and marker in line]

    def wait_for(
        self, name: str, count: int = 1, timeout: float = 90, where: Callable[[dict[str, Any]], bool] | None = None
    ) -> list[dict[str, Any]]:
        """Wait until ``name`` was logged ``count`` times (counting only events ``where`` holds for, if
        given); ``ConsumerRunError`` if the process ends or time runs out."""

        def matching() -> list[dict[str, Any]]:
            return [event for event in self.events(name) if where is None or where(event)]

        self._wait(lambda: len(matching()) >= count, f"{count}x {name!r}", timeout)
        return matching()

    def wait_until_balanced(self, partitions: int, timeout: float = 180) -> None:
        """Wait until every worker holds its share of the ``partitions``: the first worker to join
        takes them all, and a rebalance follows as each other one joins."""
        workers = len(self.wait_for("starting workers", timeout=timeout)[0]["workers"])

        def balanced() -> bool:
            latest = {event["worker"]: event["partitions"] for event in self.events("partitions assigned")}
            held = [tuple(p) for owned in latest.values() for p in owned]
            return len(latest) == workers and len(held) == len(set(held)) == partitions

        self._wait(balanced, f"{workers} workers sharing {partitions} partitions", timeout)

    def _wait(self, condition: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                raise ConsumerRunError(f"the consumer exited while waiting for {what}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise ConsumerRunError(f"waited {timeout}s in vain for {what}:\n{self.tail()}")
            time.sleep(0.1)

    def __enter__(self) -> ConsumerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, timeout: float = 30) -> None:
        """If it still runs (the block ended early): SIGTERM, so it drains; SIGKILL after ``timeout``."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout: float = 90) -> dict[str, Any]:
        """SIGTERM, then ``finish``."""
        self.process.send_signal(signal.SIGTERM)
        return self.finish(timeout)

    def finish(self, timeout: float = 120) -> dict[str, Any]:
        """Wait for the exit; the supervisor's summary. ``ConsumerRunError`` unless it exited 0 with one
        within ``timeout`` (then it still runs: leave the ``with`` block, or ``close``, to stop it)."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ConsumerRunError(f"the consumer did not exit within {timeout:g}s:\n{self.tail()}") from None
        self.reader.join(10)
        summaries = self.events("summary")
        if self.process.returncode != 0 or len(summaries) != 1:
            raise ConsumerRunError(f"the consumer exited with {self.process.returncode}:\n{self.tail()}")
        return summaries[0]

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.lines[-lines:])
