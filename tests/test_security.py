"""Security settings reach both clients, and a configured secret never reaches output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from consumer import kafka_io
from consumer.codec import pack_input
from consumer.config import load_settings
from tests.helpers import ENV, Topics, consumer_command, publish

pytestmark = pytest.mark.integration
SECRET = "s3cr3t-Passw0rd-do-not-print"
SECURITY = {
    "TFSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "TFSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "TFSTREAM_KAFKA_SASL_USERNAME": "alice",
    "TFSTREAM_KAFKA_SASL_PASSWORD": SECRET,
    "TFSTREAM_KAFKA_SSL_CA_LOCATION": "/etc/ssl/certs/ca-certificates.crt",
}


def test_tls_and_sasl_settings_pass_through_to_both_clients(tmp_path: Path) -> None:
    settings = load_settings(
        {"bootstrap_servers": "b:9093", "input_topic": "i", "output_topic": "o", "group": "g", "model": tmp_path},
        environ=SECURITY,
    )
    for config in (kafka_io.consumer_config(settings, "c"), kafka_io.producer_config(settings, "p")):
        assert config["security.protocol"] == "SASL_SSL" and config["sasl.mechanism"] == "SCRAM-SHA-512"
        assert config["sasl.username"] == "alice" and config["sasl.password"] == SECRET
        assert config["ssl.ca.location"] == "/etc/ssl/certs/ca-certificates.crt"
    assert settings.redacted()["kafka"]["sasl.password"] == "***"


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_a_configured_password_never_appears_in_any_output(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path, tmp_path: Path
) -> None:
    inp, out = topics("in", "out", partitions=1)
    publish(bootstrap, inp, [(b"k", pack_input(np.ones(4, "float32"), id=i)) for i in range(20)])
    # 1. a full bounded run at debug level, the password configured but unused (PLAINTEXT broker)
    config = tmp_path / "consumer.toml"
    config.write_text(f'[kafka]\n"sasl.username" = "alice"\n"sasl.password" = "{SECRET}"\n')
    ok = _run(
        [
            *consumer_command(bootstrap, mlp_path, inp, out, group, "--stop-at-end", "--log-level", "debug"),
            "--config",
            str(config),
        ],
        ENV,
    )
    # 2. a run whose SASL handshake fails against this broker: errors and retries are logged
    failing = _run(
        consumer_command(bootstrap, mlp_path, inp, out, group + "-sasl", "--log-level", "debug"),
        {
            **ENV,
            "TFSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "TFSTREAM_KAFKA_SASL_MECHANISM": "PLAIN",
            "TFSTREAM_KAFKA_SASL_USERNAME": "alice",
            "TFSTREAM_KAFKA_SASL_PASSWORD": SECRET,
            "TFSTREAM_CONNECT_TIMEOUT_S": "5",
            "TFSTREAM_START_ATTEMPTS": "1",
        },
    )
    # 3. a configuration error naming the kafka table, and the help text
    bad = _run([*consumer_command(bootstrap, mlp_path, inp, out, group), "--max-batch-size", "0"], {
        **ENV, "TFSTREAM_KAFKA_SASL_PASSWORD": SECRET})  # fmt: skip
    helped = _run([sys.executable, "-m", "consumer", "run", "--help"], {**ENV, "TFSTREAM_KAFKA_SASL_PASSWORD": SECRET})
    print(f"exit codes: bounded run {ok.returncode}, failed SASL {failing.returncode}, bad flag {bad.returncode}")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert failing.returncode != 0 and bad.returncode == 2 and helped.returncode == 0
    for run in (ok, failing, bad, helped):
        assert SECRET not in run.stdout + run.stderr
    assert len(ok.stderr) > 1000  # debug logging did produce output to search
