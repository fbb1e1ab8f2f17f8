"""Configuration: file < environment < CLI, librdkafka pass-through, one-line errors, no secrets shown."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from consumer import cli
from consumer.config import load_client_tables, load_settings
from consumer.errors import ConfigError
from producer_tools.clients import Clients

REQUIRED = {"bootstrap_servers": "k:9092", "input_topic": "in", "output_topic": "out", "group": "g", "model": "m.keras"}


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return str(path)


def test_cli_overrides_environment_which_overrides_the_file(tmp_path: Path) -> None:
    file = write(tmp_path, 'max_batch_size = 64\nmax_wait_ms = 5\ngroup = "from-file"\n')
    env = {"TFSTREAM_MAX_BATCH_SIZE": "128", "TFSTREAM_GROUP": "from-env"}
    s = load_settings({**REQUIRED, "group": None, "max_wait_ms": 7.0}, file, env)
    assert (s.max_batch_size, s.max_wait_ms, s.group) == (128, 7.0, "from-env")


def test_librdkafka_settings_pass_through_from_file_and_environment(tmp_path: Path) -> None:
    file = write(
        tmp_path,
        '[kafka]\n"security.protocol" = "SASL_SSL"\n[kafka.consumer]\n"session.timeout.ms" = 6000\n'
        '[kafka.producer]\n"linger.ms" = 20\n',
    )
    env = {"TFSTREAM_KAFKA_SASL_PASSWORD": "hunter2", "TFSTREAM_KAFKA_PRODUCER_LINGER_MS": "50"}
    s = load_settings(REQUIRED, file, env)
    assert s.kafka == {"security.protocol": "SASL_SSL", "sasl.password": "hunter2"}
    assert s.kafka_consumer == {"session.timeout.ms": 6000}
    assert s.kafka_producer == {"linger.ms": "50"}


def test_secrets_are_redacted_from_the_printable_settings() -> None:
    s = load_settings(
        REQUIRED, None, {"TFSTREAM_KAFKA_SASL_PASSWORD": "hunter2", "TFSTREAM_KAFKA_SSL_KEY_PASSWORD": "pw"}
    )
    assert "hunter2" not in str(s.redacted()) and "pw'" not in str(s.redacted())
    assert s.redacted()["kafka"]["sasl.password"] == "***"


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"output_topic": "in"}, "loop"),
        ({"dlq_topic": "out"}, "dlq_topic must differ from output_topic"),
        ({"from_beginning": True, "from_timestamp": "2024-01-01T00:00:00"}, "exclude"),
        ({"from_timestamp": "yesterday"}, "from_timestamp"),
        ({"until_timestamp": "1960-01-01T00:00:00+01:00"}, "until_timestamp=.*: Kafka timestamps start at 1970"),
        ({"from_timestamp": "2024-01-02T00:00:00Z", "until_timestamp": "2024-01-01T00:00:00Z"}, "until_timestamp must"),
        ({"allowed_batch_sizes": "1,2,4"}, r"allowed_batch_sizes=\[1, 2, 4\] ends at 4, but max_batch_size is 256"),
        ({"allowed_batch_sizes": "8,512"}, "pass --max-batch-size 512, or end the list with 256"),
        ({"allowed_batch_sizes": "0,256"}, "holds 0: batch sizes are 1 or more"),
        ({"allowed_batch_sizes": ",,"}, "allowed_batch_sizes is empty"),
        ({"allowed_batch_sizes": "8,16.5,256"}, "allowed_batch_sizes='8,16.5,256'.*list whole batch sizes"),
        ({"preprocess": "not a ref"}, "preprocess='not a ref'.*: use module:function, as in mypackage.prep:scale$"),
        ({"custom_objects": "mylayers,1bad"}, "custom_objects='mylayers,1bad'.*: list Python modules separated by"),
        ({"custom_objects": ["a b"]}, r"custom_objects=\['a b'\].*: list Python modules separated by commas"),
        ({"gpu_memory": "lots"}, "gpu_memory='lots'.*: use grow, or a whole number of MiB such as 4096$"),
        ({"transactional_id_prefix": "a b"}, "transactional_id_prefix='a b'.*: use letters, digits"),
        # names a real cluster refuses, which the embedded broker took
        ({"output_topic": "bad/name"}, "output_topic='bad/name'.*is not a Kafka topic name"),
        ({"input_topic": "t1:0"}, "input_topic='t1:0'.*is not a Kafka topic name"),
        ({"dlq_topic": ".."}, "dlq_topic='..'.*is not a Kafka topic name"),
        ({"output_topic": "x" * 250}, "is not a Kafka topic name"),
        ({"max_wait_ms": float("nan")}, "max_wait_ms=nan.*: Input should be a finite number"),
        ({"drain_timeout_s": float("inf")}, "drain_timeout_s=inf.*: Input should be a finite number"),
        # a librdkafka value no type of it takes was "kafka.linger.ms.str=…: Input should be a valid string"
        ({"kafka": {"linger.ms": float("nan")}}, r"setting kafka\.linger\.ms=nan .*: Input should be a finite number$"),
        ({"kafka": {"linger.ms": ["x"]}}, r"linger\.ms=\['x'\] .*: Input should be a string, a number or true/false"),
    ],
)
def test_a_bad_value_fails_with_one_line_naming_it(override: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        load_settings({**REQUIRED, **override}, None, {})
    assert "\n" not in str(info.value)


def test_a_secret_in_a_bad_value_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({**REQUIRED, "kafka": {"sasl.password": ["hunter2"]}}, None, {})
    assert "hunter2" not in str(info.value)


def test_cli_exits_2_with_one_line_on_missing_or_bad_settings(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert cli.main(["run", "--input-topic", "in"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert cli.main(["run", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read config file" in capsys.readouterr().err
    bad = write(tmp_path, "max_batch_size = [")
    assert cli.main(["run", "--config", bad]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    assert cli.main(["run", "--config", write(tmp_path, 'kafka = "acks=all"\n')]) == 2
    assert "[kafka] must be a table of librdkafka settings" in capsys.readouterr().err
    # watching a single model for new versions would quietly do nothing
    (tmp_path / "m.keras").write_bytes(b"")
    required = ["--bootstrap-servers", "b:9092", "--input-topic", "in", "--output-topic", "out", "--group", "g"]
    assert cli.main(["run", *required, "--model", str(tmp_path / "m.keras"), "--model-poll-seconds", "5"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: invalid setting model_poll_seconds=5: it watches a versioned model directory")


@pytest.mark.parametrize(
    ("toml", "says"),
    [
        (
            'custom_object = ["m"]\n',
            "unknown setting custom_object (from config file {f}): did you mean custom_objects?",
        ),
        ("max_batch = 8\n", "unknown setting max_batch (from config file {f}): did you mean max_batch_size?"),
        ("zzz = 1\n", "unknown setting zzz (from config file {f}): the settings are listed under Configuration"),
    ],
)
def test_an_unknown_setting_in_the_file_names_the_one_it_is_likely_a_typo_of(
    toml: str, says: str, tmp_path: Path
) -> None:
    """It said only: Extra inputs are not permitted."""
    config = write(tmp_path, toml)
    with pytest.raises(ConfigError) as info:
        load_settings(REQUIRED, config, {})
    assert str(info.value).startswith(says.format(f=config))


def test_an_unknown_tfstream_variable_is_a_warning_naming_the_one_it_is_likely_a_typo_of(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A misspelt variable was ignored without a word (and the setting left at its default)."""
    from consumer.config import unknown_environment

    known = {"TFSTREAM_CONFIG": "c.toml", "TFSTREAM_KAFKA_SASL_PASSWORD": "x", "TFSTREAM_MAX_BATCH_SIZE": "8"}
    environ = {**known, "TFSTREAM_MAX_BATCH": "8", "TFSTREAM_MODLE": "m.keras", "OTHER_MAX_BATCH": "8"}
    assert unknown_environment(environ) == [
        "TFSTREAM_MAX_BATCH is not a setting, and is ignored: did you mean TFSTREAM_MAX_BATCH_SIZE?",
        "TFSTREAM_MODLE is not a setting, and is ignored: did you mean TFSTREAM_MODEL?",
    ]
    # the run says so first: here the setting it was meant for is missing
    monkeypatch.setenv("TFSTREAM_MODLE", "m.keras")
    assert cli.main(["run", "--bootstrap-servers", "b:9092", "--input-topic", "in", "--output-topic", "out"]) == 2
    warning, error = capsys.readouterr().err.strip().splitlines()
    assert warning == "warning: TFSTREAM_MODLE is not a setting, and is ignored: did you mean TFSTREAM_MODEL?"
    assert error.startswith("error: missing setting")


def test_cli_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["run", "--max-batch-size", "many"])
    assert info.value.code == 2


def test_docker_compose_file_is_valid_and_creates_the_topics() -> None:
    import yaml

    compose = yaml.safe_load((Path(__file__).parent.parent / "docker-compose.yml").read_text())
    kafka, topics = compose["services"]["kafka"], compose["services"]["create-topics"]
    assert kafka["image"].startswith("apache/kafka") and "9092:9092" in kafka["ports"]
    assert "broker,controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert all(t in topics["command"][0] for t in ("inputs", "predictions", "dead-letters"))


@pytest.mark.parametrize(
    ("delivery", "producer", "refused"),
    [
        ("at-least-once", {"enable.idempotence": False}, True),
        ("at-least-once", {"delivery.report.only.error": "true"}, True),  # nothing would ever commit
        ("exactly-once", {"delivery.report.only.error": "false"}, True),
        ("exactly-once", {"delivery.report.only.error": "true"}, False),  # what it sets itself
        ("at-least-once", {"linger.ms": 20}, False),
        ("at-least-once", {"acks": -1}, False),  # librdkafka's other name for all
        ("at-least-once", {"acks": "1"}, True),
    ],
)
def test_producer_settings_the_delivery_guarantee_needs_cannot_be_overridden(
    delivery: str, producer: dict[str, object], refused: bool
) -> None:
    from consumer.kafka_io import producer_config

    settings = load_settings({**REQUIRED, "delivery": delivery, "kafka_producer": producer}, None, {})
    if not refused:
        config = producer_config(settings, "client")
        assert config["delivery.report.only.error"] is (delivery == "exactly-once")
        return
    with pytest.raises(ConfigError, match="the consumer's delivery guarantee needs") as info:
        producer_config(settings, "client")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("tables", "stem"),
    [
        ({}, None),
        ({"kafka": {"group.instance.id": "fraud"}}, "fraud"),
        ({"kafka": {"group.instance.id": "both"}, "kafka_consumer": {"group.instance.id": "consumer"}}, "consumer"),
    ],
)
def test_a_group_instance_id_is_the_stem_of_each_workers_own_and_stays_off_the_producer(
    tables: dict[str, dict[str, object]], stem: str | None
) -> None:
    import socket

    from consumer.kafka_io import consumer_config, producer_config

    settings = load_settings({**REQUIRED, **tables}, None, {})
    ids = [consumer_config(settings, "client", number).get("group.instance.id") for number in (0, 3)]
    host = socket.gethostname()
    assert ids == ([None, None] if stem is None else [f"{stem}-{host}-0", f"{stem}-{host}-3"])
    assert "group.instance.id" not in producer_config(settings, "client")


def test_a_call_that_overruns_its_bound_is_a_hung_client_and_others_pass_through() -> None:
    """``call_within`` guards the transactional calls librdkafka does not always bound itself."""
    import threading

    from consumer.errors import ClientHungError
    from consumer.kafka_io import call_within

    never = threading.Event()
    with pytest.raises(ClientHungError, match="the producer's commit_transaction did not return within 0s"):
        call_within(0.2, never.wait, "the producer's commit_transaction")
    assert call_within(5, lambda: 42, "a quick call") == 42
    with pytest.raises(KeyError, match="raised in its thread"):
        call_within(5, lambda: {}["raised in its thread"], "a failing call")
    never.set()


def test_an_asynchronous_commit_result_yields_what_the_broker_accepted_or_raises_its_failure() -> None:
    """What the worker's ``on_commit`` takes from a result: the partitions accepted, nothing when
    there was nothing to commit, and a failed request as an error (logged, and retried at the next
    commit)."""
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    from consumer.kafka_io import commit_result

    assert commit_result(None, [TopicPartition("in", 0, 5), TopicPartition("in", 1, 7)]) == {("in", 0): 5, ("in", 1): 7}
    assert commit_result(KafkaError(KafkaError._NO_OFFSET), []) == {}
    with pytest.raises(KafkaException, match="REBALANCE_IN_PROGRESS"):
        commit_result(KafkaError(KafkaError.REBALANCE_IN_PROGRESS), [TopicPartition("in", 0, 5)])


def test_a_stopping_worker_gets_its_drain_twice_and_exactly_once_its_last_commit_before_a_kill() -> None:
    """With the brokers out of reach an exactly-once stop took 118.6 s with the defaults; the
    supervisor killed workers after ``drain_timeout_s`` + 30 s (60 s)."""
    from consumer.supervisor import Supervisor

    def budget(**extra: object) -> float:
        return Supervisor(load_settings({**REQUIRED, **extra}, None, {}), [])._stop_budget_s()

    assert budget() == 2 * 30 + 30
    assert budget(delivery="exactly-once") == 2 * 30 + 30 + 60 + 5
    assert budget(delivery="exactly-once", drain_timeout_s=10, transaction_timeout_ms=20_000) == 2 * 10 + 30 + 25


@pytest.mark.parametrize(
    ("tables", "says"),
    [
        ({"kafka": {"no.such.setting": 1}}, 'No such configuration property: "no.such.setting"'),
        ({"kafka_consumer": {"fetch.wait.max.ms": "soon"}}, 'Invalid value for configuration property "fetch.wait'),
        ({"kafka_producer": {"compression.type": "rar"}}, 'Invalid value "rar" for configuration property'),
        # librdkafka ends this reason with a newline: the line went on, on the next
        ({"kafka_consumer": {"session.timeout.ms": 0}}, '"session.timeout.ms" value 0 is outside allowed range 1..'),
        ({"kafka": {"security.protocol": "SSL", "ssl.ca.location": "/no/such/ca.pem"}}, "ssl.ca.location failed"),
        ({"kafka": {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"}}, "sasl.username and sasl.password"),
    ],
)
def test_a_kafka_setting_librdkafka_refuses_exits_2_in_one_line_before_any_worker_starts(
    tables: dict[str, dict[str, object]], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was a worker failing to start three times (exit 1), each after loading the model."""
    from consumer.kafka_io import check_client_settings

    settings = load_settings({**REQUIRED, **tables}, None, {})
    with pytest.raises(ConfigError) as info:
        check_client_settings(settings)
    assert says in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith("invalid Kafka client setting: ")
    # through the command: one line, exit 2, and no worker started
    toml = "".join(
        f"[{table.replace('_', '.')}]\n" + "".join(f'"{key}" = {value!r}\n' for key, value in values.items())
        for table, values in tables.items()
    ).replace("'", '"')
    required = ["--bootstrap-servers", "b:9092", "--input-topic", "in", "--output-topic", "out", "--group", "g"]
    assert cli.main(["run", *required, "--model", "m.keras", "--config", write(tmp_path, toml)]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [f"error: {info.value}"] and "starting workers" not in captured.out


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_valid_kafka_settings_pass_the_check_without_connecting(delivery: str) -> None:
    import socket

    from consumer.kafka_io import check_client_settings

    tables = {"kafka": {"linger.ms": 3, "security.protocol": "plaintext"}, "kafka_consumer": {"fetch.wait.max.ms": 50}}
    with socket.socket() as listener:  # where the settings point: the check must not connect to it
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        bootstrap = f"127.0.0.1:{listener.getsockname()[1]}"
        settings = load_settings({**REQUIRED, **tables, "delivery": delivery, "bootstrap_servers": bootstrap}, None, {})
        check_client_settings(settings)
        listener.settimeout(1.0)
        with pytest.raises(TimeoutError):
            listener.accept()


def test_custom_objects_are_modules_from_a_comma_list_a_toml_list_or_the_environment(tmp_path: Path) -> None:
    from consumer.cli import build_parser, settings_from_args

    argv = ["run", *(f"--{k.replace('_', '-')}={v}" for k, v in REQUIRED.items()), "--custom-objects", "a, b.c"]
    assert settings_from_args(build_parser().parse_args([*argv, "--trust-model-code"])).custom_objects == ["a", "b.c"]
    config = write(tmp_path, 'custom_objects = ["layers", "my.losses"]\ntrust_model_code = true\n')
    from_file = load_settings(REQUIRED, config, {})
    assert (from_file.custom_objects, from_file.trust_model_code) == (["layers", "my.losses"], True)
    from_env = load_settings(REQUIRED, None, {"TFSTREAM_CUSTOM_OBJECTS": "layers", "TFSTREAM_TRUST_MODEL_CODE": "1"})
    assert (from_env.custom_objects, from_env.trust_model_code) == (["layers"], True)
    assert (load_settings(REQUIRED, None, {}).custom_objects, load_settings(REQUIRED, None, {}).trust_model_code) == (
        [],
        False,
    )


@pytest.mark.parametrize(
    ("module", "name", "says"),
    [
        (None, "absent", "cannot import 'absent' (No module named 'absent'); it must be importable in the workers"),
        (None, "absent.layers", "cannot import 'absent.layers' (No module named 'absent'); it must be importable"),
        ('raise RuntimeError("boom")\n', "absent", "importing 'absent' raised RuntimeError: boom; fix the module"),
        (
            "import not_installed_anywhere\n",
            "absent",
            "importing 'absent' raised ModuleNotFoundError: No module named 'not_installed_anywhere'; install it "
            "where the workers run",
        ),
    ],
)
def test_custom_objects_that_cannot_be_imported_are_a_configuration_error_before_the_model_or_the_broker(
    module: str | None, name: str, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from consumer.worker import Worker

    if module is not None:
        (tmp_path / "absent.py").write_text(module)
    monkeypatch.syspath_prepend(str(tmp_path))
    settings = load_settings({**REQUIRED, "model": str(tmp_path / "none.keras"), "custom_objects": name}, None, {})
    with pytest.raises(ConfigError) as info:
        Worker(settings).start()
    assert str(info.value).startswith(f"invalid setting custom_objects=[{name!r}]: " + says)
    assert "\n" not in str(info.value)


def test_the_custom_objects_of_a_module_are_the_public_classes_and_functions_it_defines() -> None:
    from consumer.user_code import defined_in
    from tests import custom_layers

    # not keras or tf (imported), not POISON (imported, and a number), not _helper (private)
    assert sorted(defined_in(custom_layers)) == ["Scale", "Shift", "half_tanh"]


@pytest.mark.parametrize(
    ("module", "spec", "says"),
    [
        ('raise RuntimeError("boom")\n', "raises:f", "importing 'raises' raised RuntimeError: boom"),
        ("x = (\n", "broken:f", "importing 'broken' raised SyntaxError: '(' was never closed"),
        ("LIMIT = 3\n", "constant:LIMIT", "'LIMIT' is not a function"),
        ("def f(x):\n    return x\n", "fine:g", "module 'fine' has no 'g'"),
    ],
)
def test_a_preprocess_module_that_cannot_serve_is_a_configuration_error_before_the_model_or_the_broker(
    module: str, spec: str, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module that raised while imported was a worker failing to start three times (exit 1), each
    after loading the model and only once the broker answered."""
    from consumer.worker import Worker

    (tmp_path / f"{spec.split(':')[0]}.py").write_text(module)
    monkeypatch.syspath_prepend(str(tmp_path))
    # no model file and no broker: the preprocess function is what the worker loads first
    settings = load_settings({**REQUIRED, "model": str(tmp_path / "none.keras"), "preprocess": spec}, None, {})
    with pytest.raises(ConfigError) as info:
        Worker(settings).start()
    assert str(info.value).startswith(f"invalid setting preprocess={spec!r}: ") and says in str(info.value)
    assert "\n" not in str(info.value)


def test_a_preprocess_that_gives_a_model_of_any_length_no_fixed_shape_is_a_configuration_error(tmp_path: Path) -> None:
    from consumer.worker import Worker
    from tests import models

    spec = "tests.preprocessors:first_four_tokens"
    model = models.token_classifier(tmp_path / "tokens.keras")
    # no broker: the model is loaded, and refused, before the worker contacts it
    settings = load_settings({**REQUIRED, "model": str(model), "preprocess": spec}, None, {})
    with pytest.raises(ConfigError) as info:
        Worker(settings).start()
    assert str(info.value).startswith(
        f"invalid setting preprocess={spec!r}: the model takes tokens: int32[None], a dimension of any size, "
    )


def test_the_tools_take_bootstrap_servers_from_the_flag_the_environment_the_file_then_kafka_bootstrap_servers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("TFSTREAM_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS", "TFSTREAM_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    file = write(tmp_path, 'bootstrap_servers = "file:9092"\n[kafka]\n"client.rack" = "r1"\n')

    def bootstrap(flag: str | None, config: str | None) -> str:
        return Clients(argparse.Namespace(bootstrap_servers=flag, config=config)).bootstrap

    assert bootstrap(None, file) == "file:9092"
    assert Clients(argparse.Namespace(bootstrap_servers=None, config=file)).common["client.rack"] == "r1"
    monkeypatch.setenv("TFSTREAM_BOOTSTRAP_SERVERS", "env:9092")
    assert bootstrap(None, file) == "env:9092"
    assert bootstrap("flag:9092", file) == "flag:9092"
    monkeypatch.delenv("TFSTREAM_BOOTSTRAP_SERVERS")
    with pytest.raises(ConfigError, match="missing setting bootstrap_servers: pass --bootstrap-servers"):
        bootstrap(None, None)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-env:9092")  # the last resort, after the file
    assert (bootstrap(None, file), bootstrap(None, None)) == ("file:9092", "kafka-env:9092")


def test_a_hot_reloaded_version_of_any_length_is_served_at_the_shape_of_the_same_preprocess(tmp_path: Path) -> None:
    """The watcher builds each new version the way the first was: with the preprocess function's shapes."""
    from consumer.loading import version_builder
    from consumer.preprocess import load_preprocess, shapes_from
    from consumer.versions import ModelVersion
    from tests import models

    spec = "tests.preprocessors:four_token_ids"
    settings = load_settings({**REQUIRED, "model": str(tmp_path), "preprocess": spec}, None, {})
    fix_shapes = shapes_from(load_preprocess(spec))  # as loading.load makes it for the first version
    version = ModelVersion(7, models.token_classifier(tmp_path / "7.keras"))
    served = version_builder(settings, [2], fix_shapes)(version)
    assert (served.number, served.model.signature.describe()) == (7, "tokens: int32[4]")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            "[kafka.consumer]\nsession.timeout.ms = 6000\n",
            "[kafka.consumer] holds session as a table: TOML splits a bare name at its dots; quote librdkafka "
            'names: "session.timeout.ms" = 6000',
        ),
        (
            '[kafka]\nssl.endpoint.identification.algorithm = "none"\n',
            "[kafka] holds ssl as a table: TOML splits a bare name at its dots; quote librdkafka names: "
            '"ssl.endpoint.identification.algorithm" = "none"',
        ),
        ("[kafka.producer]\nenable.idempotence = true\n", '"enable.idempotence" = true'),
        (  # was "invalid setting kafka.fetch.min.bytes.str=[1, 2] …: Input should be a valid string"
            '[kafka]\n"bootstrap.servers" = ["a:9092", "b:9092"]\n',
            "[kafka] bootstrap.servers = ['a:9092', 'b:9092']: a librdkafka setting takes a string, a number or "
            'true/false (several items are one string: "a,b")',
        ),
        (
            '[kafka.consumer]\n"x" = 2024-01-01\n',
            "[kafka.consumer] x = 2024-01-01: a librdkafka setting takes a string, "
            'a number or true/false (several items are one string: "a,b")',
        ),
    ],
)
def test_a_librdkafka_setting_written_as_toml_cannot_mean_it_says_how_to_write_it(
    tmp_path: Path, text: str, says: str
) -> None:
    """Before: ``invalid setting kafka_consumer.session.str={'timeout': {'ms': 6000}}: Input should be a
    valid string``, which named neither the line nor the fix; the tools too."""
    file = write(tmp_path, text)
    for load in (lambda: load_settings(REQUIRED, file, {}), lambda: load_client_tables(file, {})):
        with pytest.raises(ConfigError) as info:
            load()
        assert str(info.value).startswith(f"config file {file}: ") and str(info.value).endswith(says)


@pytest.mark.parametrize(
    ("table", "name", "ours"),
    [
        ("kafka", "bootstrap.servers", "bootstrap_servers"),
        ("kafka.producer", "metadata.broker.list", "bootstrap_servers"),
        ("kafka.consumer", "group.id", "group"),
        ("kafka.producer", "transactional.id", "transactional_id_prefix"),
        ("kafka", "transaction.timeout.ms", "transaction_timeout_ms"),
    ],
)
def test_a_table_setting_a_librdkafka_name_the_consumer_sets_from_its_own_setting_is_refused(
    tmp_path: Path, table: str, name: str, ours: str
) -> None:
    """``bootstrap.servers`` in [kafka] replaced ``--bootstrap-servers`` unseen, while every error
    named the other address; ``group.id`` replaced ``--group`` so; the transaction settings were ignored."""
    file = write(tmp_path, f'[{table}]\n"{name}" = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(REQUIRED, file, {})
    assert str(info.value) == (
        f"invalid settings: {name} in the [{table}] settings is the {ours} setting: set it as that "
        f"(--{ours.replace('_', '-')}, TFSTREAM_{ours.upper()} or {ours} in the file), not in the table"
    )
    environ = {"TFSTREAM_KAFKA_BOOTSTRAP_SERVERS": "x:1"}  # the environment's tables too, and the tools'
    with pytest.raises(ConfigError, match=r"bootstrap\.servers in the \[kafka\] settings is the bootstrap_servers"):
        load_settings(REQUIRED, None, environ)
    with pytest.raises(ConfigError, match=r"bootstrap\.servers in the \[kafka\] settings is the bootstrap_servers"):
        load_client_tables(None, environ)
