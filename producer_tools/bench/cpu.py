"""Where the host's cores go while the bench publishes at a steady rate.

A deployment's workers have their machine to themselves; on one host, the broker and the bench's
publisher take their share of the same cores. The bench reads the CPU time of each (``psutil``)
over the steady phase, so that a missed latency target can be read against how busy the host was.
"""

from __future__ import annotations

import time
from typing import Any

import psutil

LOCAL_HOSTS = frozenset({"localhost", "::1", "0.0.0.0"})


def local_ports(bootstrap: str) -> set[int]:
    """The ports of the bootstrap servers that run on this host (``127.0.0.1:9092,kafka:9092`` → 9092)."""
    ports = set()
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        host = host.strip("[]")
        if port.isdigit() and (host in LOCAL_HOSTS or host.startswith("127.")):
            ports.add(int(port))
    return ports


def listening_pids(ports: set[int]) -> set[int]:
    """The processes of this user listening on these TCP ports (none found: the broker runs elsewhere)."""
    if not ports:
        return set()
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return set()
    return {
        c.pid for c in connections if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port in ports and c.pid
    }


def _cpu_seconds(pids: set[int]) -> dict[int, float]:
    seconds = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:  # it ended: its time since the last reading is lost, not miscounted
            continue
        seconds[pid] = times.user + times.system
    return seconds


def _names(pids: set[int]) -> str | None:
    """The processes' names, as the line shows them (``tansu-…``; ``docker-proxy`` for a broker in a
    container, whose own CPU is then not this one's)."""
    names = set()
    for pid in pids:
        try:
            names.add(psutil.Process(pid).name())
        except psutil.Error:
            continue
    return ", ".join(sorted(names)) or None


def _tree(pid: int) -> set[int]:
    try:
        root = psutil.Process(pid)
        return {pid, *(child.pid for child in root.children(recursive=True))}
    except psutil.Error:
        return set()


def _machine() -> tuple[float, float]:
    """Seconds of CPU the machine spent busy, and stolen by the hypervisor, since boot (all cores)."""
    times = psutil.cpu_times()
    busy = times.user + times.system + getattr(times, "nice", 0.0)
    busy += getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0)
    return busy, getattr(times, "steal", 0.0)


class CpuMeter:
    """CPU used, in cores, from its creation to ``read()``: the machine, the broker (a process on
    this host listening on a bootstrap port), the consumer (its process and the workers) and the
    bench itself (the publisher)."""

    def __init__(self, bootstrap: str, consumer_pid: int) -> None:
        self.consumer_pid = consumer_pid
        self.broker = listening_pids(local_ports(bootstrap))
        self.broker_process = _names(self.broker)
        self.consumer = _tree(consumer_pid)
        self.publisher = {psutil.Process().pid}
        self._start = _cpu_seconds(self.broker | self.consumer | self.publisher)
        self._machine = _machine()
        self._at = time.monotonic()

    def read(self) -> dict[str, Any]:
        seconds = max(time.monotonic() - self._at, 1e-9)
        self.consumer |= _tree(self.consumer_pid)  # a worker restarted meanwhile
        now = _cpu_seconds(self.broker | self.consumer | self.publisher)
        busy, steal = (end - start for end, start in zip(_machine(), self._machine, strict=True))

        def cores(pids: set[int]) -> float:
            return round(sum(now[p] - self._start.get(p, 0.0) for p in pids if p in now) / seconds, 2)

        return {
            "seconds": round(seconds, 1),
            "cpus": psutil.cpu_count() or 1,
            "busy": round(busy / seconds, 2),
            "steal": round(steal / seconds, 2),
            "broker": cores(self.broker) if self.broker else None,
            "broker_process": self.broker_process,
            "consumer": cores(self.consumer),
            "publisher": cores(self.publisher),
        }


def describe(cpu: dict[str, Any]) -> str:
    """One line for the table: how busy the host was, and who took it."""
    process = f" ({cpu['broker_process']})" if cpu.get("broker_process") else ""
    broker = f"the broker{process} {cpu['broker']:.2f}, " if cpu.get("broker") is not None else ""
    elsewhere = "" if cpu.get("broker") is not None else "; the broker runs elsewhere"
    return (
        f"cores busy while publishing: {cpu['busy']:.2f} of {cpu['cpus']} ({broker}the consumer "
        f"{cpu['consumer']:.2f}, the bench's publisher {cpu['publisher']:.2f}; steal {cpu['steal']:.2f}{elsewhere})"
    )
