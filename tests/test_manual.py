"""The user's manual stays true: the generated flag reference, the compose file, the example model."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from consumer import kafka_io
from consumer.config import Settings, load_settings, unknown_environment
from producer_tools import cli_reference, digits
from tests.helpers import alert_metrics, alert_rules, documented_metrics, metric_family

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_flag_reference_is_what_the_parsers_say() -> None:
    readme = (ROOT / "README.md").read_text()
    assert cli_reference.reference() in readme, "run: python -m producer_tools.cli_reference --write README.md"
    for command in ("consumer run", "producer_tools publish", "producer_tools create-topics", "producer_tools bench"):
        assert f"#### `python -m {command}`" in readme


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a heading: lower case, punctuation but ``-`` and ``_`` dropped,
    spaces made ``-``."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("name", ["README.md", "CHANGELOG.md"])
def test_every_link_within_the_manual_leads_to_a_heading_and_every_section_is_in_its_contents(name: str) -> None:
    text = (ROOT / name).read_text()
    headings = re.findall(r"^#+ (.+)$", text, re.MULTILINE)
    anchors = {github_anchor(heading) for heading in headings}
    broken = sorted({link for link in re.findall(r"\]\(#([^)]+)\)", text) if link not in anchors})
    assert not broken, f"links to no heading of {name}: {broken}"
    for link in re.findall(r"\]\(([\w./-]+\.md)[)#]", text):
        assert (ROOT / link).is_file(), f"{name} links to {link}, which does not exist"
    if name == "README.md":
        contents = text.split("**Contents**", 1)[1].split("\n## ", 1)[0]
        sections = re.findall(r"^## (.+)$", text, re.MULTILINE)
        missing = [h for h in sections if f"](#{github_anchor(h)})" not in contents]
        assert not missing, f"sections not in the README's contents: {missing}"


def test_every_command_and_flag_says_what_it_is_for() -> None:
    lines = cli_reference.reference().splitlines()
    unexplained = [line for line in lines if line.startswith("| ") and line.endswith("|  |")]
    assert not unexplained, "give these a help text in their parser"
    headings = [i for i, line in enumerate(lines) if line.startswith("#### ")]
    assert all(lines[i + 2] for i in headings), "give each command a description"


def test_the_compose_file_wires_kafka_topics_consumer_gpu_and_prometheus() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "create-topics", "consumer", "consumer-gpu", "prometheus"} <= set(services)
    kafka = services["kafka"]["environment"]
    assert "HOST://" in kafka["KAFKA_LISTENERS"] and "INTERNAL://" in kafka["KAFKA_LISTENERS"]
    for name in ("consumer", "consumer-gpu"):
        service = services[name]
        env = service["environment"]
        assert env["TFSTREAM_BOOTSTRAP_SERVERS"] == "kafka:29092"  # the internal listener
        assert service["depends_on"]["create-topics"]["condition"] == "service_completed_successfully"
        assert env["TFSTREAM_MODEL"].startswith("/models/") and any(":/models" in v for v in service["volumes"])
        # Docker kills a container at its grace period: not before the longest stop, at least once
        # (Supervisor._stop_budget_s; it was 60 s)
        longest_stop_s = 2 * Settings.model_fields["drain_timeout_s"].default + 30
        assert int(service["stop_grace_period"].removesuffix("s")) > longest_stop_s
    gpu = services["consumer-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert services["consumer"]["build"]["args"]["BASE"].startswith("python:3.11")
    scrape = yaml.safe_load((ROOT / "examples" / "prometheus.yml").read_text())
    assert "consumer:9108" in scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert (
        "ARG BASE=tensorflow/tensorflow:" in dockerfile
        and 'ENTRYPOINT ["python", "-m", "consumer", "run"]' in dockerfile
    )


def test_the_alert_rules_parse_and_read_only_metrics_the_readme_documents() -> None:
    import promql_parser

    rules = alert_rules()
    assert len(rules) >= 8 and len({rule["alert"] for rule in rules}) == len(rules)
    for rule in rules:
        promql_parser.parse(rule["expr"])  # a PromQL syntax error raises
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
    documented = documented_metrics()
    used = {metric_family(name) for name in alert_metrics()}
    assert used and used <= documented, used - documented
    scrape = yaml.safe_load((ROOT / "examples" / "prometheus.yml").read_text())
    assert scrape["rule_files"] == ["alerts.yml"]
    prometheus = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["prometheus"]
    assert "./examples/alerts.yml:/etc/prometheus/alerts.yml:ro" in prometheus["volumes"]


def test_the_kubernetes_example_probes_the_metrics_port_outlasts_a_stop_and_sets_only_real_settings() -> None:
    documents = list(yaml.safe_load_all((ROOT / "examples" / "kubernetes.yaml").read_text()))
    (stateful,) = [d for d in documents if d["kind"] == "StatefulSet"]
    (service,) = [d for d in documents if d["kind"] == "Service"]
    pod = stateful["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    port = int(env["TFSTREAM_METRICS_PORT"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == port and service["spec"]["ports"][0]["port"] == port
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert stateful["spec"]["serviceName"] == service["metadata"]["name"]
    # the consumer takes every variable, as it would at start: no unknown name, every value valid,
    # every Kafka client setting one librdkafka accepts
    assert unknown_environment(env) == []
    settings = load_settings({}, environ=env)
    kafka_io.check_client_settings(settings)
    assert settings.kafka_consumer["group.instance.id"] == "digits" and settings.delivery == "at-least-once"
    longest_stop_s = 2 * settings.drain_timeout_s + 30  # Supervisor._stop_budget_s, at least once
    assert pod["terminationGracePeriodSeconds"] > longest_stop_s
    assert container["volumeMounts"][0]["mountPath"] == str(settings.model.parent)
    assert container["resources"]["limits"]["cpu"] == container["resources"]["requests"]["cpu"]


def test_the_digits_example_trains_a_real_model_and_scores_collected_predictions(tmp_path: Path) -> None:
    x_test, _, accuracy = digits.train(tmp_path, epochs=10)
    assert len(x_test) == 360 and accuracy > 0.9  # 1,797 real images, 20% held out
    assert np.load(tmp_path / "heldout.npy").shape == (360, 64) and np.load(tmp_path / "labels.npy").shape == (360,)
    import keras

    offline = keras.saving.load_model(tmp_path / "digits.keras").predict(x_test, verbose=0)
    ids = np.arange(0, 360, 3)
    np.savez(tmp_path / "preds.npz", ids=ids, outputs=offline[ids])  # what collect writes, for a third of them
    line = digits.score(tmp_path / "preds.npz", tmp_path)
    assert line.startswith("120 predictions")
    # the same rows in a batch of 120 and one of 360: equal up to float rounding (the summation order
    # depends on the batch shape and the CPU; 0 on one machine, 1.8e-07 on another)
    assert float(line.rsplit("= ", 1)[1]) <= 1e-5


def test_the_readme_s_preprocess_for_tokens_of_any_length_serves_a_model_of_any_length(tmp_path: Path) -> None:
    """The Preprocessing section's ``first_128_tokens``, as printed, gives a text model saved with
    ``Input((None,))`` a shape to be compiled at, and cuts or pads every list to it."""
    import tensorflow as tf

    from consumer.model import load_model
    from consumer.preprocess import shapes_from
    from tests import models

    readme = (ROOT / "README.md").read_text()
    start = readme.index(
        "```python\n@tf.function(input_signature=[tf.TensorSpec([None], tf.int32)])\ndef first_128_tokens"
    )
    snippet = readme[start + len("```python\n") : readme.index("```", start + 3)]
    scope: dict[str, object] = {"tf": tf}
    exec(snippet, scope)
    first_128_tokens = scope["first_128_tokens"]
    model = load_model(models.token_classifier(tmp_path / "tokens.keras"), fix_shapes=shapes_from(first_128_tokens))
    assert model.signature.describe() == "tokens: int32[128]"
    for length in (0, 5, 128, 300):
        cut = first_128_tokens(tf.range(1, length + 1, dtype=tf.int32)).numpy()  # type: ignore[operator]
        assert cut.shape == (128,) and cut[: min(length, 128)].tolist() == list(range(1, min(length, 128) + 1))
        assert not cut[length:].any()


@pytest.mark.usefixtures("keras_code_restored")
def test_the_readme_s_custom_layers_module_serves_a_model_saved_with_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ``mylayers.py`` of Custom layers and Lambda layers, as printed: a model saved with its
    two layers and its activation loads as the workers load it with ``--custom-objects``."""
    import keras

    from consumer.model import load_model
    from consumer.user_code import prepare_keras

    readme = (ROOT / "README.md").read_text()
    start = readme.index("```python\n# mylayers.py\n")
    (tmp_path / "readme_layers.py").write_text(readme[start + len("```python\n") : readme.index("```", start + 3)])
    monkeypatch.syspath_prepend(str(tmp_path))
    layers = importlib.import_module("readme_layers")
    features = keras.Input((4,), name="features")
    scaled = layers.Shift()(layers.Scale(3.0)(features))
    model = keras.Model(features, keras.layers.Dense(2, activation=layers.half_tanh)(scaled))
    model.save(tmp_path / "custom.keras")
    assert prepare_keras(["readme_layers"], trust_model_code=False) == ["Scale", "Shift", "half_tanh"]
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    served = load_model(tmp_path / "custom.keras").call({"features": x})
    np.testing.assert_allclose(next(iter(served.values())).numpy(), model.predict(x, verbose=0), atol=1e-6)
