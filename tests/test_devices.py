"""Device discovery and worker layout: no TensorFlow, no CUDA initialisation, clear refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from consumer.affinity import cpu_limit, cpu_shares, describe, parse_cpu_list, physical_cores
from consumer.devices import discover_gpus, gpu_local_cpus, oversubscribed, plan_workers
from consumer.errors import ConfigError
from consumer.supervisor import RestartPolicy

ROOT = Path(__file__).resolve().parent.parent


def fake_nvidia_smi(tmp_path: Path, listing: str) -> dict[str, str]:
    """A PATH holding an ``nvidia-smi`` that prints ``listing``, as on a GPU host."""
    tool = tmp_path / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\ncat <<'END'\n{listing}\nEND\n")
    tool.chmod(0o755)
    return {"PATH": f"{tmp_path}:{os.environ['PATH']}"}


def test_the_supervisor_side_never_imports_tensorflow() -> None:
    code = (
        "import sys, consumer.cli, consumer.supervisor, consumer.child, consumer.devices; "
        "consumer.cli.build_parser(); print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert run.stdout.split() == ["False", "False"]


def test_cpu_workers_split_the_cores_between_them() -> None:
    slots = plan_workers("cpu", 2, cpus=range(8))
    assert [(s.device, s.intra_op_threads, s.inter_op_threads) for s in slots] == [("cpu", 4, 2), ("cpu", 4, 2)]
    assert slots[0].environment() == {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "4"}
    assert [s.intra_op_threads for s in plan_workers("cpu", 3, cpus=[0, 1])] == [1, 1, 1]


def test_more_cpu_workers_than_cores_are_allowed_with_a_warning() -> None:
    """Allowed (a user may know better), but said: each worker holds its own model, and 3 or 4 on 2
    cores drained slower than 2 (README, Performance)."""
    assert oversubscribed(plan_workers("cpu", 2, cpus=[0, 1]), 2) is None
    assert oversubscribed(plan_workers("gpu:0,1,2", None, cpus=[0, 1]), 2) is None  # GPU workers own their device
    warning = oversubscribed(plan_workers("cpu", 3, cpus=[0, 1]), 2)
    assert warning is not None and warning.startswith("3 CPU workers on 2 core(s): each holds its own copy")
    assert warning.endswith("--workers 2 or fewer is usually faster")


def test_auto_without_gpus_means_two_cpu_workers_sharing_the_cores(tmp_path: Path) -> None:
    env = fake_nvidia_smi(tmp_path, "No devices were found") | {"PATH": str(tmp_path)}
    slots = plan_workers("auto", None, environ=env, cpus=[0, 1])
    assert [(s.device, s.intra_op_threads) for s in slots] == [("cpu", 1), ("cpu", 1)]
    eight = plan_workers("cpu", None, cpus=range(8))
    assert [(s.device, s.intra_op_threads) for s in eight] == [("cpu", 4), ("cpu", 4)]
    (single,) = plan_workers("auto", None, environ=env, cpus=[0])
    assert single.intra_op_threads == 1


def fake_topology(tmp_path: Path, cores: dict[int, int]) -> Path:
    """A ``/sys/devices/system/cpu`` where CPU n belongs to physical core ``cores[n]`` of package 0."""
    for cpu, core in cores.items():
        topology = tmp_path / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text("0\n")
        (topology / "core_id").write_text(f"{core}\n")
    return tmp_path


def test_cpu_workers_each_get_an_equal_share_of_whole_cores_with_their_hyperthreads(tmp_path: Path) -> None:
    """Linux numbers a core's second hyperthread after all the first ones: CPUs 0 and 4 are one core.
    Cutting the CPU list in halves would give both workers the same four cores."""
    sysfs = fake_topology(tmp_path, {cpu: cpu % 4 for cpu in range(8)})
    assert physical_cores(range(8), sysfs) == [(0, 4), (1, 5), (2, 6), (3, 7)]
    assert cpu_shares(2, range(8), sysfs) == [(0, 1, 4, 5), (2, 3, 6, 7)]
    assert cpu_shares(4, range(8), sysfs) == [(0, 4), (1, 5), (2, 6), (3, 7)]


def test_cores_left_from_an_even_split_are_shared_and_too_few_cores_pin_nothing(tmp_path: Path) -> None:
    sysfs = tmp_path / "none"  # no topology: each CPU is a core of its own
    assert cpu_shares(2, [0, 1, 2], sysfs) == [(0, 2), (1, 2)]
    assert cpu_shares(3, [0, 1], sysfs) is None
    assert cpu_shares(2, [3, 9, 5, 7], sysfs) == [(3, 5), (7, 9)]  # a narrower set given by taskset or a cpuset


def test_cpu_workers_are_pinned_only_when_asked_and_gpu_workers_only_near_a_known_gpu() -> None:
    slots = plan_workers("cpu", 2, cpus=[0, 1], pin_cpus=True)
    assert [(s.intra_op_threads, s.cpus) for s in slots] == [(1, (0,)), (1, (1,))]
    assert [s.cpus for s in plan_workers("cpu", 2, cpus=[0, 1])] == [(), ()]
    assert [s.cpus for s in plan_workers("cpu", 3, cpus=[0, 1], pin_cpus=True)] == [(), (), ()]
    assert [s.cpus for s in plan_workers("gpu:0,1", None, cpus=[0, 1], pin_cpus=True, gpu_cpus={})] == [(), ()]
    assert describe([8, 0, 1, 2, 3, 10, 11]) == "0-3,8,10-11"


def test_gpu_workers_get_their_own_share_of_the_cores_near_their_gpu() -> None:
    """Two sockets of 8 cores, GPUs 0 and 1 on the first, 2 and 3 on the second: the workers of a
    socket split its cores (as an MPI rankfile binds ranks near their GPUs), so a worker's host
    threads (tf.data, Kafka I/O, TensorFlow's pools, sized to them) stay by its GPU."""
    first, second = range(100, 108), range(108, 116)  # CPUs sysfs does not know: each a core of its own
    near = {"0": first, "1": first, "2": second, "3": second}
    slots = plan_workers("gpu:0,1,2,3", None, cpus=range(100, 116), pin_cpus=True, gpu_cpus=near)
    assert [describe(s.cpus) for s in slots] == ["100-103", "104-107", "108-111", "112-115"]
    shared = plan_workers("gpu:0,2", None, cpus=range(100, 116), pin_cpus=True, per_device=2, gpu_cpus=near)
    assert [(s.device, describe(s.cpus)) for s in shared] == [
        ("gpu:0", "100-103"),
        ("gpu:0", "104-107"),
        ("gpu:2", "108-111"),
        ("gpu:2", "112-115"),
    ]
    crowded = plan_workers("gpu:0,1", None, cpus=[100, 108], pin_cpus=True, gpu_cpus=near)
    assert [s.cpus for s in crowded] == [(100,), (100,)]  # fewer cores than workers on a node: shared


def test_gpu_workers_stay_unpinned_where_the_cores_near_their_gpu_are_unknown_or_not_theirs() -> None:
    near = {"0": range(100, 104), "1": range(104, 108)}
    every = range(100, 108)
    assert [s.cpus for s in plan_workers("gpu:0,1,2", None, cpus=every, pin_cpus=True, gpu_cpus=near)] == [()] * 3
    assert [s.cpus for s in plan_workers("gpu:1", None, cpus=range(100, 104), pin_cpus=True, gpu_cpus=near)] == [()]
    assert [s.cpus for s in plan_workers("gpu:0", None, cpus=every, pin_cpus=True, quota=2.0, gpu_cpus=near)] == [()]
    assert [s.cpus for s in plan_workers("gpu:0", None, cpus=every, gpu_cpus=near)] == [()]


def test_the_cpus_near_a_gpu_are_read_from_its_pci_device(tmp_path: Path) -> None:
    pci = tmp_path / "pci"
    for address, cpus in {"0000:3b:00.0": "0-3,8-11\n", "0000:af:00.0": "4-7,12-15\n"}.items():
        (pci / address).mkdir(parents=True)
        (pci / address / "local_cpulist").write_text(cpus)
    query = "0, GPU-aaa1, 00000000:3B:00.0\n1, GPU-aab2, 00000000:AF:00.0\n2, GPU-ccc3, 00000000:D8:00.0"
    env = fake_nvidia_smi(tmp_path, query)
    near = gpu_local_cpus(["0", "GPU-aab2", "2", "GPU-aa", "MIG-1"], env, pci)
    # GPU 2's device is not in sysfs, GPU-aa names two GPUs, a MIG instance is not a PCI device
    assert near == {"0": [0, 1, 2, 3, 8, 9, 10, 11], "GPU-aab2": [4, 5, 6, 7, 12, 13, 14, 15]}
    # with CUDA's own order a number may name another GPU than nvidia-smi's: only UUIDs are matched
    assert gpu_local_cpus(["0", "GPU-aaa1"], env | {"CUDA_DEVICE_ORDER": "FASTEST_FIRST"}, pci) == {
        "GPU-aaa1": [0, 1, 2, 3, 8, 9, 10, 11]
    }
    assert gpu_local_cpus(["0"], {"PATH": str(tmp_path / "no-nvidia-smi")}, pci) == {}
    # a MIG device is near its GPU's node: its GPU is found in nvidia-smi -L, its address by number
    smi = tmp_path / "nvidia-smi"
    answers = f"if [ \"$1\" = -L ]; then cat <<'END'\n{MIG_LISTING}\nEND\nelse cat <<'END'\n{query}\nEND\nfi\n"
    smi.write_text("#!/bin/sh\n" + answers)
    fastest = env | {"CUDA_DEVICE_ORDER": "FASTEST_FIRST"}
    assert gpu_local_cpus(["MIG-222", "MIG-999", "1"], fastest, pci) == {"MIG-222": [0, 1, 2, 3, 8, 9, 10, 11]}
    assert parse_cpu_list("0-2,7\n") == [0, 1, 2, 7] and parse_cpu_list("") == [] and parse_cpu_list("x-1") == []


def cgroups(tmp_path: Path, membership: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A cgroup mount at ``tmp_path / "fs"`` holding ``files``, and a ``/proc/self/cgroup`` saying ``membership``."""
    root = tmp_path / "fs"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (tmp_path / "self").write_text(membership)
    return root, tmp_path / "self"


def test_a_cgroup_cpu_quota_is_read_from_v2_and_v1_taking_the_lowest_up_the_tree(tmp_path: Path) -> None:
    """A container's ``--cpus 1.5`` or a pod's CPU limit leaves every host CPU in the affinity."""
    pod = {"kubepods/pod1/cpu.max": "200000 100000\n", "kubepods/pod1/c1/cpu.max": "max 100000\n"}
    assert cpu_limit(*cgroups(tmp_path / "a", "0::/kubepods/pod1/c1\n", pod)) == 2.0
    assert cpu_limit(*cgroups(tmp_path / "b", "0::/\n", {"cpu.max": "150000 100000\n"})) == 1.5
    assert cpu_limit(*cgroups(tmp_path / "c", "0::/\n", {"cpu.max": "max 100000\n"})) is None
    v1 = {"cpu,cpuacct/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}
    # in a container, its host path is not under the mount: the mount itself is its cgroup
    assert cpu_limit(*cgroups(tmp_path / "d", "5:memory:/x\n4:cpu,cpuacct:/docker/abc\n", v1)) == 0.5
    unlimited = {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}
    assert cpu_limit(*cgroups(tmp_path / "e", "1:cpu:/\n0::/\n", unlimited)) is None
    assert cpu_limit(tmp_path / "nothing", tmp_path / "no-such-file") is None


def test_under_a_cpu_quota_workers_are_sized_to_it_and_not_pinned() -> None:
    """Eight CPUs visible, a quota of 2.5: two workers of one thread each (rounded down, or the quota
    throttles them), and no core pinned, since none is the process's own."""
    slots = plan_workers("cpu", None, cpus=range(8), pin_cpus=True, quota=2.5)
    assert [(s.intra_op_threads, s.cpus) for s in slots] == [(1, ()), (1, ())]
    assert [s.intra_op_threads for s in plan_workers("cpu", 1, cpus=range(8), quota=0.5)] == [1]
    owned = plan_workers("cpu", None, cpus=range(8), pin_cpus=True, quota=8.0)  # a quota of all of them
    assert [(s.intra_op_threads, len(s.cpus)) for s in owned] == [(4, 4), (4, 4)]


def test_auto_finds_gpus_with_nvidia_smi_and_gives_each_its_own_worker(tmp_path: Path) -> None:
    listing = "GPU 0: NVIDIA A10G (UUID: GPU-aaa)\nGPU 1: NVIDIA A10G (UUID: GPU-bbb)"
    slots = plan_workers("auto", None, environ=fake_nvidia_smi(tmp_path, listing))
    assert [s.device for s in slots] == ["gpu:0", "gpu:1"]
    assert [s.environment()["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0", "1"]
    assert [s.device for s in plan_workers("auto", 1, environ=fake_nvidia_smi(tmp_path, listing))] == ["gpu:0"]


MIG_LISTING = """GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-aaa)
  MIG 3g.20gb     Device  0: (UUID: MIG-111)
  MIG 3g.20gb     Device  1: (UUID: MIG-222)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-bbb)"""


def test_a_gpu_split_by_mig_gives_a_worker_to_each_of_its_mig_devices(tmp_path: Path) -> None:
    """A CUDA process sees one MIG device: with GPU 0 split in two, ``--devices auto`` runs a worker
    on each half (by its UUID, the only name CUDA takes for it) and one on the whole GPU 1."""
    env = fake_nvidia_smi(tmp_path, MIG_LISTING)
    assert discover_gpus(env) == ["MIG-111", "MIG-222", "1"]
    slots = plan_workers("auto", None, environ=env, gpu_cpus={})
    assert [s.environment()["CUDA_VISIBLE_DEVICES"] for s in slots] == ["MIG-111", "MIG-222", "1"]


def test_cuda_visible_devices_wins_over_nvidia_smi(tmp_path: Path) -> None:
    env = fake_nvidia_smi(tmp_path, "GPU 0: x\nGPU 1: y\nGPU 2: z") | {"CUDA_VISIBLE_DEVICES": "2,GPU-abc"}
    assert discover_gpus(env) == ["2", "GPU-abc"]
    assert discover_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []


def test_explicit_gpu_lists_pin_one_worker_per_gpu() -> None:
    assert [s.device for s in plan_workers("gpu:1,3", None)] == ["gpu:1", "gpu:3"]
    # UUIDs as nvidia-smi prints them: CUDA_VISIBLE_DEVICES takes them in that case only
    by_uuid = plan_workers("GPU:GPU-5f0d,GPU-77aa", None)
    assert [s.environment()["CUDA_VISIBLE_DEVICES"] for s in by_uuid] == ["GPU-5f0d", "GPU-77aa"]


@pytest.mark.parametrize(
    ("devices", "workers", "needle"),
    [
        ("gpu:0,1", 3, "only 2 GPU(s)"),
        ("gpu:0,0", None, "once each"),
        ("gpu:", None, "once each"),
        ("tpu", None, "use auto, cpu"),
    ],
)
def test_conflicting_device_settings_are_refused_in_one_line(devices: str, workers: int | None, needle: str) -> None:
    with pytest.raises(ConfigError, match="invalid setting") as info:
        plan_workers(devices, workers)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_restart_back_off_doubles_up_to_its_cap() -> None:
    policy = RestartPolicy(base_s=1, max_s=10)
    assert [policy.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_several_workers_can_share_each_gpu() -> None:
    slots = plan_workers("gpu:0,1", None, per_device=2)
    assert [s.device for s in slots] == ["gpu:0", "gpu:0", "gpu:1", "gpu:1"]
    assert [s.environment()["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0", "0", "1", "1"]
    assert len(plan_workers("gpu:0,1", 3, per_device=2)) == 3
    with pytest.raises(ConfigError, match="raise --workers-per-device"):
        plan_workers("gpu:0", 3, per_device=2)


@pytest.mark.parametrize(("value", "ok"), [("grow", True), ("2048", True), ("0", False), ("2GB", False)])
def test_gpu_memory_is_grow_or_a_limit_in_mib(value: str, ok: bool, tmp_path: Path) -> None:
    from consumer.config import load_settings

    cli = {"bootstrap_servers": "b", "input_topic": "i", "output_topic": "o", "group": "g", "model": tmp_path}
    if ok:
        assert load_settings({**cli, "gpu_memory": value}, environ={}).gpu_memory == value
    else:
        with pytest.raises(ConfigError, match="gpu_memory"):
            load_settings({**cli, "gpu_memory": value}, environ={})
