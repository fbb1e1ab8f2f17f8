"""Device discovery and worker layout: no TensorFlow, no CUDA initialisation, clear refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from consumer.devices import discover_gpus, oversubscribed, plan_workers
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
    slots = plan_workers("cpu", 2, cores=8)
    assert [(s.device, s.intra_op_threads, s.inter_op_threads) for s in slots] == [("cpu", 4, 2), ("cpu", 4, 2)]
    assert slots[0].environment() == {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "4"}
    assert [s.intra_op_threads for s in plan_workers("cpu", 3, cores=2)] == [1, 1, 1]


def test_more_cpu_workers_than_cores_are_allowed_with_a_warning() -> None:
    """Allowed (a user may know better), but said: each worker holds its own model, and 3 or 4 on 2
    cores drained slower than 2 (README, Performance)."""
    assert oversubscribed(plan_workers("cpu", 2, cores=2), 2) is None
    assert oversubscribed(plan_workers("gpu:0,1,2", None, cores=2), 2) is None  # GPU workers own their device
    warning = oversubscribed(plan_workers("cpu", 3, cores=2), 2)
    assert warning is not None and warning.startswith("3 CPU workers on 2 core(s): each holds its own copy")
    assert warning.endswith("--workers 2 or fewer is usually faster")


def test_auto_without_gpus_means_two_cpu_workers_sharing_the_cores(tmp_path: Path) -> None:
    env = fake_nvidia_smi(tmp_path, "No devices were found") | {"PATH": str(tmp_path)}
    slots = plan_workers("auto", None, environ=env, cores=2)
    assert [(s.device, s.intra_op_threads) for s in slots] == [("cpu", 1), ("cpu", 1)]
    assert [(s.device, s.intra_op_threads) for s in plan_workers("cpu", None, cores=8)] == [("cpu", 4), ("cpu", 4)]
    (single,) = plan_workers("auto", None, environ=env, cores=1)
    assert single.intra_op_threads == 1


def test_auto_finds_gpus_with_nvidia_smi_and_gives_each_its_own_worker(tmp_path: Path) -> None:
    listing = "GPU 0: NVIDIA A10G (UUID: GPU-aaa)\nGPU 1: NVIDIA A10G (UUID: GPU-bbb)"
    slots = plan_workers("auto", None, environ=fake_nvidia_smi(tmp_path, listing))
    assert [s.device for s in slots] == ["gpu:0", "gpu:1"]
    assert [s.environment()["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0", "1"]
    assert [s.device for s in plan_workers("auto", 1, environ=fake_nvidia_smi(tmp_path, listing))] == ["gpu:0"]


def test_cuda_visible_devices_wins_over_nvidia_smi(tmp_path: Path) -> None:
    env = fake_nvidia_smi(tmp_path, "GPU 0: x\nGPU 1: y\nGPU 2: z") | {"CUDA_VISIBLE_DEVICES": "2,GPU-abc"}
    assert discover_gpus(env) == ["2", "GPU-abc"]
    assert discover_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []


def test_explicit_gpu_lists_pin_one_worker_per_gpu() -> None:
    assert [s.device for s in plan_workers("gpu:1,3", None)] == ["gpu:1", "gpu:3"]


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
