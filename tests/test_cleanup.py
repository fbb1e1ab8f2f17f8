"""What the tools leave behind, even when stopped early: nothing (no broker, consumer or pool
worker process, no temporary file)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from consumer.codec import pack_input
from producer_tools.consumer_run import ConsumerProcess, consumer_command
from producer_tools.embedded_broker import EmbeddedBroker
from tests.helpers import ENV, Topics, gone, publish


def _wait_for_child(parent: psutil.Process, name: str, timeout: float = 60) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [c for c in parent.children(recursive=True) if name in c.name()]
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no {name!r} process under {parent.pid} after {timeout}s")


@pytest.mark.parametrize(
    ("after_s", "signum"),
    [(1.0, signal.SIGTERM), (4.0, signal.SIGHUP)],  # while its consumer joins the group; while it measures
    ids=["SIGTERM-joining", "SIGHUP-measuring"],
)
def test_sigterm_or_sighup_stops_a_tool_and_the_embedded_broker_it_started(
    after_s: float, signum: signal.Signals, tmp_path: Path
) -> None:
    """SIGHUP (a closed terminal or ssh session) ended a tool at once, leaving its broker running
    until the kernel's parent-death signal, and its log folder behind."""
    command = [sys.executable, "-m", "producer_tools", "fetch-latency", "--seconds", "120", "--rate", "200"]
    env = {**ENV, "TMPDIR": str(tmp_path)}
    tool = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        broker = _wait_for_child(psutil.Process(tool.pid), "tansu")
        time.sleep(after_s)
        tool.send_signal(signum)
        _, err = tool.communicate(timeout=60)
    finally:
        tool.kill()
    assert tool.returncode == 128 + signum, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"terminated ({signum.name}): stopped what this command had started"), err
    assert gone(broker, timeout=5), "the embedded broker outlived the tool"
    assert "|FAIL|" not in err, err  # no client was left to complain about the broker it stopped
    assert _left_in(tmp_path) == [], "the broker's log folder was left behind"


def test_a_run_refused_at_start_leaves_no_temporary_folder(tmp_path: Path) -> None:
    """A metrics port in use ends the run with exit 2 before any worker starts; the supervisor's
    scratch and metrics folders were left behind."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = consumer_command("127.0.0.1:1", tmp_path / "m.keras", "in", "out", "g", "--metrics-port", str(port))
        done = subprocess.run(command, env={**ENV, "TMPDIR": str(temporary)}, capture_output=True, text=True)
    assert done.returncode == 2 and f"metrics_port={port}" in done.stderr.strip().splitlines()[-1]
    assert _left_in(temporary) == []


def _left_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_the_embedded_broker_removes_its_own_log_folder_but_not_a_log_it_was_given(tmp_path: Path) -> None:
    with EmbeddedBroker() as broker:
        own = broker.log_path
        assert own.exists()
    assert not own.parent.exists()
    given = tmp_path / "broker.log"
    with EmbeddedBroker(log_path=given):
        pass
    assert given.exists()


@pytest.mark.integration
def test_the_consumer_leaves_no_temporary_file_even_from_a_killed_worker(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path, tmp_path: Path
) -> None:
    """TensorFlow writes a file of generated code per function it converts, and removes them only
    at a normal interpreter exit, which a worker never has: they piled up in the system's /tmp."""
    inp, out = topics("in", "out", partitions=2)
    publish(bootstrap, inp, ((None, pack_input(np.ones(4, "float32"), id=i)) for i in range(100)))
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {**ENV, "TMPDIR": str(temporary)}
    run = ConsumerProcess(consumer_command(bootstrap, mlp_path, inp, out, group, "--workers", "2"), env)
    with run:
        first = run.wait_for("worker ready", 2)[0]
        during = _left_in(temporary)
        psutil.Process(first["pid"]).kill()
        run.wait_for("worker ready", 3)
        summary = run.stop()
    assert summary["restarts"] == 1, run.tail()
    assert any("__autograph_generated_file" in name for name in during), during  # what there was to remove
    assert _left_in(temporary) == []


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
                initargs = ({str(mlp_path)!r}, {str(tmp_path)!r}, "serving_default", ((), False))
                pool = ProcessPoolExecutor(1, get_context("spawn"), _pool_init, initargs)
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
        assert gone(worker, timeout=30), "the pool worker outlived the process that started it"
    finally:
        parent.kill()


@pytest.mark.integration
def test_a_tool_killed_outright_takes_its_embedded_broker_and_consumer_with_it(tmp_path: Path, mlp_path: Path) -> None:
    """SIGKILL (or the out-of-memory killer) runs no clean-up in the tool: before, its broker and its
    consumer (supervisor and workers) lived on. Now the kernel signals them when the tool ends."""
    script = tmp_path / "tool.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, time
            from pathlib import Path
            from producer_tools.consumer_run import ConsumerProcess, consumer_command
            from producer_tools.embedded_broker import EmbeddedBroker
            from producer_tools.topics import create_topics

            if __name__ == "__main__":
                broker = EmbeddedBroker(log_path=Path({str(tmp_path / "broker.log")!r})).start()
                create_topics(broker.bootstrap_servers, ["in", "out"], partitions=2)
                command = consumer_command(broker.bootstrap_servers, Path({str(mlp_path)!r}), "in", "out", "g")
                run = ConsumerProcess(command)
                worker = run.wait_for("worker ready")[0]["pid"]
                print(json.dumps([broker.pid, run.process.pid, worker]), flush=True)
                time.sleep(300)
            """
        )
    )
    tool = subprocess.Popen([sys.executable, str(script)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert tool.stdout is not None
        broker, supervisor, worker = (psutil.Process(pid) for pid in json.loads(tool.stdout.readline()))
        assert "tansu" in broker.name() and supervisor.ppid() == tool.pid == broker.ppid()
        tool.kill()
        tool.wait(10)
        assert gone(broker, timeout=10), "the embedded broker outlived the tool that started it"
        assert gone(supervisor, timeout=60), "the consumer outlived the tool that started it"
        assert gone(worker, timeout=30), "the consumer's worker outlived the tool that started it"
    finally:
        tool.kill()


def test_a_thread_s_child_is_started_as_it_is() -> None:
    """The kernel signals a child when the *thread* that started it ends: from any thread but the
    main one, the child would be signalled early, so it is started without the launcher."""
    from producer_tools.lifetime import ending_with_this_process

    command = ["tansu", "broker"]
    tied = ending_with_this_process(command, signal.SIGKILL)
    assert tied[0] == sys.executable and tied[-2:] == command and str(os.getpid()) in tied
    seen: list[list[str]] = []
    thread = threading.Thread(target=lambda: seen.append(ending_with_this_process(command, signal.SIGKILL)))
    thread.start()
    thread.join()
    assert seen == [command]
