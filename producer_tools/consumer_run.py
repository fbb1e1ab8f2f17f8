"""``python -m consumer run`` as a subprocess: the command line and the environment the demo,
the bench and the tests start it with."""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: Short group timeouts: on the embedded broker a join then takes ~3 s instead of ~23 s.
FAST_GROUP_ENV = {
    "TFSTREAM_KAFKA_CONSUMER_SESSION_TIMEOUT_MS": "6000",
    "TFSTREAM_KAFKA_CONSUMER_HEARTBEAT_INTERVAL_MS": "500",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}


def consumer_command(bootstrap: str, model: Path, inp: str, out: str, group: str, *extra: str) -> list[str]:
    """The command line a user types, with ``extra`` flags appended."""
    return [
        sys.executable, "-m", "consumer", "run", "--bootstrap-servers", bootstrap,
        "--input-topic", inp, "--output-topic", out, "--group", group, "--model", str(model), *extra,
    ]  # fmt: skip


def consumer_env(**extra: str) -> dict[str, str]:
    """This process's environment with short group timeouts (for the embedded broker)."""
    return {**os.environ, **FAST_GROUP_ENV, **extra}
