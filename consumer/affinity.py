"""Which CPUs each worker runs on: its own equal share of whole cores (``--cpu-affinity cores``), a
GPU worker's cut from those of its GPU's NUMA node (the PCI device's ``local_cpulist``).

Like TorchServe's launcher core pinning (worker i gets the i-th block of cores), every thread of a
pinned worker (its interpreter, TensorFlow's pools, librdkafka's) stays on the cores it owns, so
two workers do not take turns on one core while another sits idle, and a thread does not migrate
away from its warm cache. The shares are cut from the CPUs this process may use, so a narrower set
given from outside (``taskset``, ``docker run --cpuset-cpus``, a Kubernetes CPU manager) is kept;
the hyperthreads of one core go to the same worker. No TensorFlow here: the supervisor plans the
shares, and the worker pins itself before it imports TensorFlow or starts a thread.

A CPU quota (``docker run --cpus``, a Kubernetes CPU limit: the cgroup's ``cpu.max``) leaves every
host CPU in the affinity, but throttles the process past its share of time, for the rest of each
100 ms period. Where one is set below the CPUs allowed, workers and their threads are sized to it
(rounded down, as Go's automaxprocs does), and nothing is pinned: the process owns no core.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

SYSFS_CPUS = Path("/sys/devices/system/cpu")
SYSFS_PCI = Path("/sys/bus/pci/devices")
CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")
#: a PCI address: domain (nvidia-smi prints 8 hex digits, sysfs 4), then bus:device.function
_PCI_ADDRESS = re.compile(r"^([0-9a-fA-F]{1,8}):([0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7])$")


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on, in order (all of them where affinity is not supported)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def cpu_limit(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> float | None:
    """CPUs' worth of time this process's cgroup may use: the lowest quota on its cgroup and their
    ancestors (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``); None if none."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if not controllers:  # cgroup v2
            quotas += [q for d in _up_from(root, path) if (q := _v2_quota(d)) is not None]
        elif "cpu" in controllers.split(","):
            for mount in {root / controllers, root / "cpu", root / "cpu,cpuacct"}:
                quotas += [q for d in _up_from(mount, path) if (q := _v1_quota(d)) is not None]
    return min(quotas, default=None)


def _up_from(mount: Path, path: str) -> Iterator[Path]:
    """The cgroup's folder under ``mount`` and its ancestors up to ``mount`` (in a container the
    cgroup's own folder is often the mount itself, its host path not there)."""
    folder = mount / path.strip("/")
    while True:
        yield folder
        if folder == mount or mount not in folder.parents:
            return
        folder = folder.parent


def _v2_quota(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()
        return int(quota) / int(period)
    except (OSError, ValueError):  # absent, or "max": no quota
        return None


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def usable_count(cpus: int, limit: float | None) -> int:
    """How many CPUs' worth the workers may use: the CPUs allowed, or fewer under a quota (at least 1)."""
    return cpus if limit is None else max(1, min(cpus, math.floor(limit)))


def owns_cpus(cpus: int, limit: float | None) -> bool:
    """Whether the allowed CPUs are this process's to share out (no quota below them): pinning is
    only for those."""
    return limit is None or limit >= cpus


def physical_cores(cpus: Iterable[int], sysfs: Path = SYSFS_CPUS) -> list[tuple[int, ...]]:
    """``cpus`` grouped by the physical core they belong to (a core's hyperthreads together),
    ordered by their lowest CPU. A CPU whose topology cannot be read is a core of its own."""
    cores: dict[tuple[str, ...], list[int]] = {}
    for cpu in sorted(set(cpus)):
        topology = sysfs / f"cpu{cpu}" / "topology"
        try:
            key = ((topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip())
        except OSError:
            key = ("cpu", str(cpu))
        cores.setdefault(key, []).append(cpu)
    return sorted((tuple(group) for group in cores.values()), key=lambda group: group[0])


def cpu_shares(workers: int, cpus: Iterable[int], sysfs: Path = SYSFS_CPUS) -> list[tuple[int, ...]] | None:
    """One CPU set per worker: an equal number of whole cores each, in order, and the cores left over
    from an even split shared by all of them. None with fewer cores than workers (no share to give)."""
    cores = physical_cores(cpus, sysfs)
    each = len(cores) // max(1, workers)
    if each == 0:
        return None
    spare = [cpu for core in cores[each * workers :] for cpu in core]
    owned = [[cpu for core in cores[i * each : (i + 1) * each] for cpu in core] for i in range(workers)]
    return [tuple(sorted(share + spare)) for share in owned]


def parse_cpu_list(text: str) -> list[int]:
    """Linux's CPU list format (``0-3,8``) as CPU ids; [] for an empty or ill-formed one."""
    cpus: set[int] = set()
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            first, _, last = part.partition("-")
            cpus.update(range(int(first), int(last or first) + 1))
    except ValueError:
        return []
    return sorted(cpus)


def pci_local_cpus(bus_id: str, sysfs: Path = SYSFS_PCI) -> list[int]:
    """The CPUs of the NUMA node a PCI device hangs off (its ``local_cpulist``); [] if unknown.
    ``bus_id`` as nvidia-smi prints it (``00000000:3B:00.0``) or as sysfs names it (``0000:3b:00.0``)."""
    match = _PCI_ADDRESS.match(bus_id.strip())
    if match is None:
        return []
    domain, rest = match.groups()
    try:
        return parse_cpu_list((sysfs / f"{int(domain, 16):04x}:{rest.lower()}" / "local_cpulist").read_text())
    except OSError:
        return []


def shares_near_devices(local: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """One CPU set per worker given the CPUs near each worker's device (``local``, in worker
    order): the workers whose devices sit on one NUMA node split its cores between them as CPU
    workers split the host's (``cpu_shares``), or share them all when there are fewer cores."""
    shares: list[tuple[int, ...]] = list(local)
    for node in dict.fromkeys(local):
        members = [i for i, cpus in enumerate(local) if cpus == node]
        for i, share in zip(members, cpu_shares(len(members), node) or [node] * len(members), strict=True):
            shares[i] = share
    return shares


def pin_process(cpus: Iterable[int]) -> str | None:
    """Run this process, and the threads it starts from now on, on ``cpus`` only; why not, if it failed."""
    try:
        os.sched_setaffinity(0, set(cpus))
    except (AttributeError, OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@contextmanager
def running_on(cpus: Collection[int]) -> Iterator[None]:
    """In the block, this thread and the processes and threads it starts run on ``cpus`` (a child
    takes the affinity of the thread that started it; the process's other threads keep theirs).
    Empty: unchanged."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(cpus))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def describe(cpus: Iterable[int]) -> str:
    """CPU ids as Linux lists them (``0-3,8``)."""
    ranges: list[list[int]] = []
    for cpu in sorted(set(cpus)):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)
