"""What the tools leave behind when stopped early: nothing (no broker, consumer or pool worker)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from producer_tools.consumer_run import ConsumerProcess, consumer_command
from tests.helpers import ENV, Topics


def _wait_for_child(parent: psutil.Process, name: str, timeout: float = 60) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [c for c in parent.children(recursive=True) if name in c.name()]
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no {name!r} process under {parent.pid} after {timeout}s")


def _gone(process: psutil.Process, timeout: float = 30) -> bool:
    try:
        process.wait(timeout)
    except psutil.TimeoutExpired:
        return False
    return True


@pytest.mark.parametrize("after_s", [1.0, 4.0])  # while its consumer joins the group; while it measures
def test_sigterm_stops_a_tool_and_the_embedded_broker_it_started(after_s: float) -> None:
    command = [sys.executable, "-m", "producer_tools", "fetch-latency", "--seconds", "120", "--rate", "200"]
    tool = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        broker = _wait_for_child(psutil.Process(tool.pid), "tansu")
        time.sleep(after_s)
        tool.send_signal(signal.SIGTERM)
        _, err = tool.communicate(timeout=60)
    finally:
        tool.kill()
    assert tool.returncode == 143, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("terminated (SIGTERM): stopped what this command had started"), err
    assert _gone(broker, timeout=5), "the embedded broker outlived the tool"
    assert "|FAIL|" not in err, err  # no client was left to complain about the broker it stopped


@pytest.mark.integration
def test_a_consumer_process_stops_when_its_block_ends_early(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path
) -> None:
    inp, out = topics("in", "out")
    run = ConsumerProcess(consumer_command(bootstrap, mlp_path, inp, out, group), ENV)
    with pytest.raises(RuntimeError, match="on purpose"), run:
        run.wait_for("starting workers")
        raise RuntimeError("on purpose")
    assert run.process.returncode == 0, run.tail()  # SIGTERM: it drained and exited cleanly


def test_pool_workers_exit_when_the_process_that_started_them_is_killed(tmp_path: Path, mlp_path: Path) -> None:
    script = tmp_path / "pool_parent.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, time
            from concurrent.futures import ProcessPoolExecutor
            from multiprocessing import get_context
            from producer_tools.bench.baselines import _pool_init

            if __name__ == "__main__":
                pool = ProcessPoolExecutor(1, get_context("spawn"), _pool_init, ({str(mlp_path)!r},))
                print(pool.submit(os.getpid).result(), flush=True)
                time.sleep(300)
            """
        )
    )
    parent = subprocess.Popen([sys.executable, str(script)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        worker = psutil.Process(int(parent.stdout.readline()))
        parent.kill()  # SIGKILL: no clean-up of its own can run
        parent.wait(10)
        assert _gone(worker, timeout=30), "the pool worker outlived the process that started it"
    finally:
        parent.kill()
