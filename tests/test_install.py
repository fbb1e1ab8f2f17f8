"""Installing: TensorFlow comes with one extra, ``cpu`` or ``gpu``, never both; a Python without it, or with
both builds, is told so in one line before anything starts."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from consumer import tensorflow_install
from producer_tools.embedded_broker import free_port
from tests.helpers import ENV, ROOT, consumer_command

TOOLS = [sys.executable, "-m", "producer_tools"]

#: a ``sitecustomize`` that makes ``tensorflow`` unimportable in every process started with it, as in a
#: Python where the project was installed without its cpu or gpu extra
NO_TENSORFLOW = 'import sys\nsys.modules["tensorflow"] = None\n'


def test_each_extra_brings_one_tensorflow_build_and_the_base_none() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("tensorflow")]
    extras = project["optional-dependencies"]
    assert [d.split(">=")[0] for d in extras["cpu"]] == ["tensorflow-cpu", "tensorflow"]
    assert "platform_machine == 'x86_64'" in extras["cpu"][0] and "platform_machine != 'x86_64'" in extras["cpu"][1]
    assert [d.split(">=")[0] for d in extras["gpu"]] == ["tensorflow[and-cuda]"]
    assert "tfstream[cpu,embedded]" in extras["dev"]  # what scripts/bootstrap.sh installs, the tests' TensorFlow
    assert tensorflow_install.missing() is None and tensorflow_install.builds_over_each_other() is None


def _without_tensorflow(tmp_path: Path) -> dict[str, str]:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(NO_TENSORFLOW)
    return {**ENV, "PYTHONPATH": f"{shim}{os.pathsep}{ROOT}"}


@pytest.mark.parametrize(
    "command",
    [
        ["-m", "consumer", "run"],
        ["-m", "producer_tools", "bench", "--rounds", "1"],
        ["-m", "producer_tools", "demo"],
        ["-m", "producer_tools.digits", "train"],
    ],
    ids=["consumer run", "bench", "demo", "digits"],
)
def test_a_python_without_tensorflow_is_told_how_to_install_it(command: list[str], tmp_path: Path) -> None:
    if command[-1] == "run":
        command = consumer_command(f"127.0.0.1:{free_port()}", tmp_path / "m.keras", "in", "out", "g")[1:]
    elif command[1] != "producer_tools.digits":
        command = [*command, "--workdir", str(tmp_path / "work")]
    run = subprocess.run(
        [sys.executable, *command],
        env=_without_tensorflow(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert run.returncode == 1, run.stderr
    # one line, before any broker, worker or model: nothing else was started
    assert run.stderr.strip().splitlines() == [run.stderr.strip()]
    assert run.stderr.startswith("error: TensorFlow is not installed in this Python (")
    assert "pip install '.[cpu]' from the project's folder, or '.[gpu]' on an NVIDIA GPU host" in run.stderr
    assert not (tmp_path / "work").exists()


def test_two_tensorflow_builds_installed_together_are_named_at_start(tmp_path: Path) -> None:
    """What pip leaves after ``.[cpu]`` and ``.[gpu]`` (or a TensorFlow installed by hand next to the
    project's): the other build's metadata beside the one installed here."""
    here = [name for name in tensorflow_install.BUILDS if tensorflow_install._installed(name)]
    assert len(here) == 1
    other = next(name for name in tensorflow_install.BUILDS if name not in here)
    shim = tmp_path / "shim"
    (shim / f"{other.replace('-', '_')}-2.21.0.dist-info").mkdir(parents=True)
    (shim / f"{other.replace('-', '_')}-2.21.0.dist-info" / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {other}\nVersion: 2.21.0\n"
    )
    run = subprocess.run(
        consumer_command(f"127.0.0.1:{free_port()}", tmp_path / "m.keras", "in", "out", "g"),
        env={**ENV, "PYTHONPATH": f"{shim}{os.pathsep}{ROOT}", "TFSTREAM_LOG_FORMAT": "json"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    warning = next(line for line in run.stderr.splitlines() if "two TensorFlow builds installed" in line)
    assert "tensorflow and tensorflow-cpu are both installed" in warning
    assert "pip uninstall -y tensorflow tensorflow-cpu, then pip install '.[cpu]'" in warning
    # a warning only: the run goes on (to its worker, which finds no model here)
    assert run.returncode == 1 and run.stderr.strip().splitlines()[-1].startswith("error: model path")


@pytest.mark.integration
def test_a_host_without_tensorflow_publishes_inputs_and_collects_predictions(
    bootstrap: str, topics: Callable[..., list[str]], group: str, mlp_path: Path, tmp_path: Path
) -> None:
    """The project installed without an extra (``pip install .``): the user-side tools need no
    TensorFlow; the consumer between them runs where it is installed."""
    inp, out = topics("in", "out")
    rows = np.random.default_rng(0).random((40, 4), dtype=np.float32)
    np.save(tmp_path / "x.npy", rows)
    no_tensorflow = _without_tensorflow(tmp_path)
    published = subprocess.run(
        [*TOOLS, "publish", str(tmp_path / "x.npy"), "--topic", inp, "--bootstrap-servers", bootstrap],
        env=no_tensorflow, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert published.returncode == 0, published.stderr
    served = subprocess.run(
        consumer_command(bootstrap, mlp_path, inp, out, group, "--stop-at-end"),
        env=ENV, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert served.returncode == 0, served.stderr
    collected = subprocess.run(
        [*TOOLS, "collect", "--topic", out, "--out", str(tmp_path / "p.npz"), "--count", "40", "--bootstrap-servers",
         bootstrap],
        env=no_tensorflow, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert collected.returncode == 0, collected.stderr
    got = np.load(tmp_path / "p.npz")
    import keras

    expected = keras.saving.load_model(mlp_path).predict(rows, verbose=0)
    assert sorted(got["ids"].tolist()) == list(range(40))
    np.testing.assert_allclose(got["outputs"], expected[got["ids"]], rtol=1e-5, atol=1e-6)
