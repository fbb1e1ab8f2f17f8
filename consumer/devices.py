"""Which devices this machine offers and how workers are laid out on them, without TensorFlow.

The supervisor must never initialise CUDA (a forked or spawned child would inherit a broken
context), so GPUs are found from ``CUDA_VISIBLE_DEVICES`` or ``nvidia-smi -L``, never from
TensorFlow. Each worker slot names one device; CPU workers split the cores between them, and GPU
workers those near their GPU (its NUMA node's).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from consumer.affinity import (
    SYSFS_PCI,
    allowed_cpus,
    cpu_limit,
    cpu_shares,
    owns_cpus,
    pci_local_cpus,
    shares_near_devices,
    usable_count,
)
from consumer.errors import ConfigError

#: ``nvidia-smi -L``: a GPU (``GPU 0: NAME (UUID: GPU-…)``), or, indented under it, a MIG device
#: (``  MIG 1g.5gb Device 0: (UUID: MIG-…)``)
_NVIDIA_SMI_DEVICE = re.compile(r"^(?:GPU (\d+):|\s+MIG .*\(UUID: (MIG-[^)\s]+)\))", re.MULTILINE)
#: CUDA_DEVICE_ORDER under which GPU numbers are nvidia-smi's; the workers run with it unless it is set
PCI_BUS_ORDER = "PCI_BUS_ID"


@dataclass(frozen=True)
class WorkerSlot:
    """One worker process: its slot number, its device, and the TensorFlow threads it may use."""

    slot: int
    device: str  # "cpu" or "gpu:<id>" (the id as CUDA_VISIBLE_DEVICES takes it)
    intra_op_threads: int = 0  # 0: TensorFlow's default
    inter_op_threads: int = 0
    #: the number its ids on this host end with (exactly-once ``transactional.id``, static
    #: ``group.instance.id``), unique among this group's workers here (``consumer.host_slots``); None: ``slot``
    host_number: int | None = None
    #: the CPUs its threads are pinned to (``--cpu-affinity cores``); empty: wherever the OS runs them
    cpus: tuple[int, ...] = ()

    @property
    def gpu_id(self) -> str | None:
        return self.device[4:] if self.device.startswith("gpu:") else None

    def environment(self) -> dict[str, str]:
        """Variables to set before TensorFlow is imported in the worker."""
        env = {"CUDA_VISIBLE_DEVICES": self.gpu_id if self.gpu_id is not None else ""}
        if self.intra_op_threads:
            env["OMP_NUM_THREADS"] = str(self.intra_op_threads)
        return env


def discover_gpus(environ: Mapping[str, str] | None = None) -> list[str]:
    """GPU ids visible to this process: ``CUDA_VISIBLE_DEVICES`` if set, else ``nvidia-smi -L``'s
    GPUs, each split by MIG as its MIG devices (``listed_devices``)."""
    environ = os.environ if environ is None else environ
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    return [device for device, _ in listed_devices(_nvidia_smi(["-L"], environ))]


def listed_devices(listing: str) -> list[tuple[str, str]]:
    """(device id, the number of its GPU) for each device an ``nvidia-smi -L`` listing holds: a GPU
    by its number, or, for a GPU split by MIG, each MIG device under it by UUID instead (a CUDA
    process sees one MIG device, so each is a worker's device of its own)."""
    devices: list[tuple[str, str]] = []
    gpu: str | None = None
    for number, mig in _NVIDIA_SMI_DEVICE.findall(listing):
        if number:
            gpu = number
            devices.append((gpu, gpu))
        elif gpu is not None:
            if devices[-1] == (gpu, gpu):  # split: the GPU itself is not a device CUDA can use
                devices.pop()
            devices.append((mig, gpu))
    return devices


def _nvidia_smi(args: list[str], environ: Mapping[str, str]) -> str:
    """What ``nvidia-smi ARGS`` prints; "" without nvidia-smi or when it fails."""
    smi = shutil.which("nvidia-smi", path=environ.get("PATH"))
    if smi is None:
        return ""
    try:
        return subprocess.run([smi, *args], capture_output=True, text=True, timeout=15, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def gpu_local_cpus(
    ids: Sequence[str], environ: Mapping[str, str] | None = None, pci: Path = SYSFS_PCI
) -> dict[str, list[int]]:
    """The CPUs near each GPU (its NUMA node's, from its PCI device), for the ids that can be matched
    to one: a GPU's UUID (or its prefix, as CUDA takes it) or a MIG device's (its GPU's) always; a
    number when it counts in PCI bus order, as nvidia-smi does (``CUDA_DEVICE_ORDER=PCI_BUS_ID``,
    which the workers get unless the environment says otherwise: CUDA's own default order guesses
    the fastest GPU first)."""
    environ = os.environ if environ is None else environ
    by_number = environ.get("CUDA_DEVICE_ORDER", PCI_BUS_ORDER) == PCI_BUS_ORDER
    listing = _nvidia_smi(["--query-gpu=index,uuid,pci.bus_id", "--format=csv,noheader"], environ)
    rows = [[field.strip() for field in line.split(",")] for line in listing.splitlines() if line.count(",") == 2]
    split = any(gpu.startswith("MIG-") for gpu in ids)
    listed = listed_devices(_nvidia_smi(["-L"], environ)) if split else []
    parents = {device: gpu for device, gpu in listed if device.startswith("MIG-")}  # a MIG device's GPU
    near: dict[str, list[int]] = {}
    for gpu in ids:
        if gpu in parents:
            buses = [bus for index, _, bus in rows if index == parents[gpu]]  # nvidia-smi's own numbers
        else:
            buses = [bus for index, uuid, bus in rows if (gpu == index and by_number) or _uuid_names(gpu, uuid)]
        if len(buses) == 1 and (cpus := pci_local_cpus(buses[0], pci)):
            near[gpu] = cpus
    return near


def _uuid_names(gpu: str, uuid: str) -> bool:
    """Whether ``gpu`` is ``uuid`` or a prefix of it that CUDA_VISIBLE_DEVICES accepts (``GPU-5f0d``)."""
    return gpu.upper().startswith("GPU-") and uuid.upper().startswith(gpu.upper())


def usable_cores() -> int:
    """CPUs' worth this process may use: the CPUs in its affinity, or its cgroup's quota if lower."""
    return usable_count(len(allowed_cpus()), cpu_limit())


#: CPU workers when ``--workers`` is not given (fewer on a host with fewer cores). One interpreter's
#: record path (decode, encode, produce, delivery reports) is held to about one core by Python's
#: global interpreter lock; a second interpreter lifted the I/O-bound MLP from 27,800 to 42,600
#: msg/s on 2 cores and left compute-bound MobileNetV2 where it was (0.92 and 0.90 of compute).
DEFAULT_CPU_WORKERS = 2


def plan_workers(
    devices: str,
    workers: int | None,
    environ: Mapping[str, str] | None = None,
    cpus: Sequence[int] | None = None,
    per_device: int = 1,
    pin_cpus: bool = False,
    quota: float | None = None,
    gpu_cpus: Mapping[str, Sequence[int]] | None = None,
) -> list[WorkerSlot]:
    """Turn ``--devices`` and ``--workers`` into worker slots; raise ``ConfigError`` if they conflict.
    CPU workers share ``cpus`` under a CPU ``quota`` (default: this process's, ``consumer.affinity``);
    with ``pin_cpus`` each worker gets its own share, a GPU worker near its GPU (``gpu_cpus``: the
    CPUs near each GPU id; default: read from nvidia-smi and sysfs)."""
    spec = devices.strip().lower()
    if cpus is None:
        cpus, quota = allowed_cpus(), cpu_limit()
    if spec == "cpu":
        return _cpu_slots(workers, list(cpus), quota, pin_cpus)
    if spec == "auto":
        gpus = discover_gpus(environ)
        if not gpus:
            return _cpu_slots(workers, list(cpus), quota, pin_cpus)
        ids = gpus
    elif spec.startswith("gpu:"):
        ids = [d.strip() for d in devices.strip()[4:].split(",")]
        if not all(ids) or len({d.lower() for d in ids}) != len(ids):
            raise ConfigError(f"invalid setting devices={devices!r}: list GPU ids once each, as in gpu:0,1")
    else:
        raise ConfigError(f"invalid setting devices={devices!r}: use auto, cpu, or gpu:ID[,ID...]")
    slots = _gpu_slots(ids, workers, per_device)
    if not pin_cpus or not owns_cpus(len(cpus), quota):
        return slots
    return _near_gpus(slots, cpus, gpu_local_cpus(ids, environ) if gpu_cpus is None else gpu_cpus)


def _near_gpus(slots: list[WorkerSlot], cpus: Sequence[int], near: Mapping[str, Sequence[int]]) -> list[WorkerSlot]:
    """Each GPU worker pinned to its own share of the allowed CPUs near its GPU; none pinned unless
    every GPU's are known (a worker left to roam would crowd the pinned ones)."""
    allowed = set(cpus)
    local = [tuple(sorted(allowed.intersection(near.get(slot.gpu_id or "", ())))) for slot in slots]
    if not all(local):
        return slots
    return [replace(slot, cpus=share) for slot, share in zip(slots, shares_near_devices(local), strict=True)]


def _cpu_slots(workers: int | None, cpus: list[int], quota: float | None, pin: bool) -> list[WorkerSlot]:
    """Split the cores (or the quota's worth) between CPU workers so that together they do not
    oversubscribe; with ``pin``, each gets its own share of the cores (``consumer.affinity``) when
    they are the process's own (no lower quota) and there are as many as workers."""
    cores = usable_count(len(cpus), quota)
    workers = workers or min(DEFAULT_CPU_WORKERS, cores)
    intra = max(1, cores // workers)
    inter = min(2, intra)
    shares = cpu_shares(workers, cpus) if pin and owns_cpus(len(cpus), quota) else None
    return [WorkerSlot(slot, "cpu", intra, inter, cpus=shares[slot] if shares else ()) for slot in range(workers)]


def oversubscribed(slots: list[WorkerSlot], cores: int) -> str | None:
    """A warning when more CPU workers than cores were asked for (allowed, but rarely what helps)."""
    cpu_workers = sum(1 for slot in slots if slot.device == "cpu")
    if cpu_workers <= cores:
        return None
    return (
        f"{cpu_workers} CPU workers on {cores} core(s): each holds its own copy of the model and they take turns on "
        f"the cores (3 or 4 workers on 2 cores drained slower than 2); --workers {cores} or fewer is usually faster"
    )


def _gpu_slots(ids: list[str], workers: int | None, per_device: int = 1) -> list[WorkerSlot]:
    """``per_device`` workers on each GPU (they share it: give each a --gpu-memory limit)."""
    capacity = len(ids) * per_device
    if workers is not None and workers > capacity:
        raise ConfigError(
            f"invalid setting workers={workers}: only {len(ids)} GPU(s) ({','.join(ids)}) with {per_device} "
            "worker(s) each are available; lower --workers, raise --workers-per-device, or use --devices cpu"
        )
    devices = [f"gpu:{gpu}" for gpu in ids for _ in range(per_device)]
    return [WorkerSlot(slot, device) for slot, device in enumerate(devices[: workers or capacity])]
