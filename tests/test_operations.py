"""Operations: the Prometheus endpoint scraped during a real run, and the health probes."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from consumer.codec import pack_input
from consumer.stuck import batch_stuck_for
from producer_tools.embedded_broker import free_port
from tests.helpers import (
    ENV,
    Deployment,
    Topics,
    alert_metrics,
    consumer_command,
    documented_metrics,
    metric_family,
    publish,
    wait_for_outputs,
)


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _samples(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, body = _get(port, "/metrics")
    assert status == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def _total(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


@pytest.mark.integration
def test_metrics_and_probes_during_a_real_run(bootstrap: str, topics: Topics, group: str, mlp_path: Path) -> None:
    inp, out, dlq = topics("in", "out", "dlq", partitions=4)
    port = free_port()
    command = consumer_command(
        bootstrap, mlp_path, inp, out, group, "--workers", "2", "--dlq-topic", dlq, "--metrics-port", str(port)
    )
    deployment = Deployment(command, {**ENV, "TFSTREAM_PROGRESS_INTERVAL_S": "1"})
    deployment.wait_for("serving /metrics, /healthz and /readyz")
    assert _get(port, "/healthz")[0] == 200
    not_yet, _ = _get(port, "/readyz")  # the workers are still loading and warming up
    deployment.wait_for("partitions assigned", 2)
    good = [(str(i).encode(), pack_input(np.ones(4, "float32"), id=i)) for i in range(600)]
    publish(bootstrap, inp, good + [(b"bad", b"\xc1")] * 6)
    wait_for_outputs(bootstrap, out, set(range(600)))
    # the progress line (a long run said nothing between its start and its summary), once the
    # statistics (every 5 s) show the group caught up
    caught_up = deployment.wait_for("progress", where=lambda line: (line["predicted"], line["lag"]) == (600, 0))
    ready, body = _get(port, "/readyz")
    samples = _samples(port)
    deployment.stop()
    progress = deployment.events("progress")
    assert (caught_up[0]["consumed"], caught_up[0]["dead_lettered"]) == (606, 6) and "eta_s" not in caught_up[0]
    assert caught_up[0]["workers_ready"] == "2/2" and any(line["predicted_per_s"] > 0 for line in progress)
    assert [line["predicted"] for line in progress] == sorted(line["predicted"] for line in progress)
    workers = json.loads(body)["workers"]
    print(f"/readyz before warm-up {not_yet}, after {ready}: {workers}")
    assert not_yet == 503 and ready == 200 and len(workers) == 2 and all(w["joined"] for w in workers)
    assert sum(w["counts"]["consumed"] for w in workers) == 606  # as the summary counts them, so far
    assert _total(samples, "tfstream_messages_consumed_total") == 606
    assert _total(samples, "tfstream_messages_predicted_total") == 600
    assert _total(samples, "tfstream_messages_dead_lettered_total", reason="NotMsgpackError") == 6
    assert _total(samples, "tfstream_records_produced_total", kind="output") == 600
    assert _total(samples, "tfstream_records_produced_total", kind="dead_letter") == 6
    assert _total(samples, "tfstream_end_to_end_latency_seconds_count") == 606
    assert _total(samples, "tfstream_consume_latency_seconds_count") == 606  # every input, once, when fetched
    consumed_s = _total(samples, "tfstream_consume_latency_seconds_sum")
    assert 0 < consumed_s < _total(samples, "tfstream_end_to_end_latency_seconds_sum")
    batches = _total(samples, "tfstream_batch_rows_count")
    assert batches >= 600 / 32 and _total(samples, "tfstream_batch_rows_sum") == 600
    for stage in ("batching", "queue_wait", "predict", "emit", "acknowledge"):  # the worker's share, per batch
        assert _total(samples, f"tfstream_{stage}_seconds_count") == batches, stage
    assert _total(samples, "tfstream_acknowledge_seconds_sum") > 0
    assert _total(samples, "tfstream_in_flight_messages") == 0
    assert _total(samples, "tfstream_traces_since_warmup") == 0
    assert _total(samples, "tfstream_worker_info", device="cpu") == 2
    assert _total(samples, "tfstream_worker_ready") == 2
    owned = [_total(samples, "tfstream_assigned_partitions", worker=str(w)) for w in (0, 1)]
    assert sum(owned) == 4 and min(owned) >= 1  # the four partitions, split between the two workers
    lag = {dict(labels)["partition"]: v for (n, labels), v in samples.items() if n == "tfstream_consumer_lag"}
    assert sorted(lag) == ["0", "1", "2", "3"] and sum(lag.values()) == 0
    # every series the alerting rules read is served, as they name it (restarts: once a worker restarts)
    scraped = {name for name, _ in samples}
    assert alert_metrics() - scraped <= {"tfstream_worker_restarts_total"}, alert_metrics() - scraped
    # and every series served is in the README's table
    documented = documented_metrics()
    served = {metric_family(name) for name in scraped}
    assert served <= documented, served - documented


def test_a_batch_running_past_its_budget_counts_as_stuck() -> None:
    assert batch_stuck_for(None, now=100.0, budget_s=60) is None  # idle
    assert batch_stuck_for(50.0, now=100.0, budget_s=60) is None  # 50 s into a 60 s budget
    assert batch_stuck_for(30.0, now=100.0, budget_s=60) == 70.0
