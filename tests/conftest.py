"""Shared fixtures: one broker per session (or KAFKA_BOOTSTRAP_SERVERS), fresh topics, real models."""

from __future__ import annotations

import faulthandler
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.relay import Relay

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: Short group timeouts: a join takes ~3 s instead of ~23 s on the embedded broker.
FAST_GROUP = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


#: A test's phase (setup, call, teardown) still running this long is stuck where its timeout
#: (pyproject's ``timeout``, a signal) cannot reach it: in C code (librdkafka, TensorFlow) that does
#: not return to the interpreter, or in a clean-up after the timeout's exception. Its process's
#: stacks go to HANGS and the process ends, so that the run fails and says where, rather than hangs.
HUNG_AFTER_SECONDS = 420
HANGS = Path(__file__).resolve().parent.parent / ".pytest-hangs"


@contextmanager
def _watched(item: pytest.Item, phase: str) -> Iterator[None]:
    """Armed per phase, not once per test: pytest's faulthandler plugin cancels any pending dump when
    a phase reports an exception, which would leave the teardown after a timeout unwatched."""
    HANGS.mkdir(exist_ok=True)
    path = HANGS / f"{os.getpid()}.txt"
    with path.open("w") as dump:
        dump.write(f"{item.nodeid} ({phase}) still ran after {HUNG_AFTER_SECONDS}s; its process's threads:\n")
        dump.flush()
        faulthandler.dump_traceback_later(HUNG_AFTER_SECONDS, exit=True, file=dump)
        try:
            yield
        finally:
            faulthandler.cancel_dump_traceback_later()
    path.unlink()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _watched(item, "setup"):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _watched(item, "call"):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    with _watched(item, "teardown"):
        yield


#: The modules whose tests take tens of seconds each (killed workers, frozen brokers, slow models, a
#: whole bench): they run first, so that the test processes (scripts/test.sh) end together instead of
#: one of them running the last long test alone while the others are idle.
LONG_FIRST = ("test_faults.py", "test_supervisor.py", "test_cli.py", "test_bench.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name not in LONG_FIRST)  # stable: the order within each stays


#: The embedded broker's process id, for fault tests that freeze it (None with KAFKA_BOOTSTRAP_SERVERS).
BROKER_PID: list[int | None] = [None]


@pytest.fixture(scope="session")
def bootstrap() -> Iterator[str]:
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    from producer_tools.embedded_broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        BROKER_PID[0] = broker.pid
        yield broker.bootstrap_servers


@pytest.fixture
def broker_pid(bootstrap: str) -> int:
    """The embedded broker's pid; skips against an external Kafka, which a test cannot freeze."""
    if BROKER_PID[0] is None:
        pytest.skip("needs the embedded broker (KAFKA_BOOTSTRAP_SERVERS is set)")
    return BROKER_PID[0]


@pytest.fixture
def relay() -> Iterator[Relay]:
    """A broker of its own behind a relay that can put it out of reach; skips against an external Kafka."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("needs the embedded broker (KAFKA_BOOTSTRAP_SERVERS is set)")
    from producer_tools.embedded_broker import EmbeddedBroker, free_port
    from tests.relay import Relay

    port = free_port()
    with EmbeddedBroker(advertised_port=port) as broker:
        relay = Relay(broker.port, port)
        yield relay
        relay.cut()


@pytest.fixture
def topics(bootstrap: str) -> Callable[..., list[str]]:
    """Create fresh topics: ``topics("in", "out", partitions=3)`` → uuid-suffixed names."""
    from producer_tools.topics import create_topics

    def make(*names: str, partitions: int = 3) -> list[str]:
        suffix = uuid.uuid4().hex[:8]
        made = [f"{name}-{suffix}" for name in names]
        create_topics(bootstrap, made, partitions=partitions)
        return made

    return make


@pytest.fixture
def group() -> str:
    return f"group-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def mlp_path(model_dir: Path) -> Path:
    from tests import models

    return models.mlp(model_dir / "mlp.keras")


@pytest.fixture(scope="session")
def multi_path(model_dir: Path) -> Path:
    from tests import models

    return models.multi_input(model_dir / "multi.keras")


@pytest.fixture
def keras_code_restored() -> Iterator[None]:
    """For a test that prepares a model's own code in this process (a worker run here with
    ``custom_objects`` or ``trust_model_code``): Keras' custom objects and safe mode as they were
    after it, so that no other test loads a model with them. ``tests.custom_layers`` is imported
    first, as its registration with Keras (at import) is for good."""
    import keras
    from keras.src.backend.common import global_state

    import tests.custom_layers  # noqa: F401

    objects = dict(keras.saving.get_custom_objects())
    safe_mode = global_state.get_global_attribute("safe_mode_saving")
    yield
    keras.saving.get_custom_objects().clear()
    keras.saving.get_custom_objects().update(objects)
    global_state.set_global_attribute("safe_mode_saving", safe_mode)
