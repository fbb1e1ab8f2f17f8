"""One typed configuration, merged from a TOML file, then the environment, then CLI flags.

Later sources win. Every setting ``x_y`` can come from ``--x-y``, ``TFSTREAM_X_Y`` or ``x_y``
in the file. librdkafka settings pass through untouched: the file's ``[kafka]`` table (both
clients), ``[kafka.consumer]`` and ``[kafka.producer]``, or ``TFSTREAM_KAFKA_SASL_PASSWORD``
style variables (``_`` becomes ``.``). A bad value raises ``ConfigError`` naming the setting.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from consumer import tombstones as tombstone_rules
from consumer.errors import ConfigError
from consumer.signature import DEFAULT_SIGNATURE

ENV_PREFIX = "TFSTREAM_"
#: ``TFSTREAM_`` variables that are not settings: the config file, and the test script's process count
_OTHER_VARIABLES = ("CONFIG", "TEST_PROCESSES")
KafkaValue = str | int | float | bool
_SECRET = re.compile(r"password|secret|token|credential|key\.pem|private|jaas", re.IGNORECASE)
_KAFKA_TABLES = {"kafka": "kafka", "consumer": "kafka_consumer", "producer": "kafka_producer"}
#: Kafka's own rule for topic names (its ``Topic.validate``): the embedded broker accepts others,
#: which a real cluster then refuses
_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")
_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def topic_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a Kafka topic, in words; None if it can."""
    if _TOPIC_NAME.fullmatch(name) and name not in {".", ".."}:
        return None
    return (
        f"{name!r} is not a Kafka topic name: use 1 to 249 of the letters a-z and A-Z, digits, '.', '_' "
        "and '-' (and not '.' or '..' alone)"
    )


def _topic_name(name: str) -> str:
    problem = topic_name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name


TopicName = Annotated[str, AfterValidator(_topic_name)]


#: the largest ``max_batch_size`` and ``max_wait_ms`` a run takes (the bench checks its own against them)
MAX_BATCH_SIZE, MAX_WAIT_MS = 65_536, 60_000.0
#: the earliest time a Kafka timestamp says: a negative one asks the broker for the earliest or the
#: latest offset instead (librdkafka gave up on 0001-01-01 with "Broker handle destroyed")
KAFKA_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
KAFKA_EPOCH_RULE = "Kafka timestamps start at 1970-01-01T00:00:00Z: give that or a later time"


def kafka_moment(value: datetime) -> datetime:
    """``value``, in UTC where it names no zone; ``ValueError`` before Kafka's timestamps start."""
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    if value < KAFKA_EPOCH:
        raise ValueError(KAFKA_EPOCH_RULE)
    return value


class Settings(BaseModel):
    """Everything a run needs; see the README's configuration reference for each field."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    bootstrap_servers: str = Field(min_length=1)
    input_topic: TopicName
    output_topic: TopicName
    group: str = Field(min_length=1)
    model: Path
    dlq_topic: TopicName | None = None
    workers: int | None = Field(None, ge=1, le=256)
    devices: str = "auto"
    max_batch_size: int = Field(256, ge=1, le=MAX_BATCH_SIZE)
    max_wait_ms: float = Field(10.0, ge=0, le=MAX_WAIT_MS)
    allowed_batch_sizes: list[int] | None = None
    from_beginning: bool = False
    from_timestamp: datetime | None = None
    until_timestamp: datetime | None = None
    stop_at_end: bool = False
    model_name: str | None = None
    model_version: str | None = None
    signature: str = Field(DEFAULT_SIGNATURE, min_length=1)
    model_poll_seconds: float | None = Field(None, gt=0, le=86_400)
    workers_per_device: int = Field(1, ge=1, le=64)
    cpu_affinity: Literal["cores", "off"] = "cores"
    gpu_memory: str = Field("grow", pattern=r"^(grow|[1-9][0-9]*)$")
    allow_cpu_fallback: bool = False
    jit_compile: bool = False
    preprocess: str | None = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    custom_objects: list[str] = Field(default_factory=list)
    trust_model_code: bool = False
    output_format: Literal["msgpack", "json"] = "msgpack"
    output_headers: Literal["all", "source"] = "all"
    output_partitioning: Literal["key", "input"] = "key"
    tombstones: tombstone_rules.Mode = tombstone_rules.DEAD_LETTER
    delivery: Literal["at-least-once", "exactly-once"] = "at-least-once"
    transactional_id_prefix: str = Field("tfstream", min_length=1, pattern=r"^[\w.-]+$")
    transaction_timeout_ms: int = Field(60_000, ge=1000, le=900_000)
    commit_interval_ms: int = Field(1000, ge=10, le=600_000)
    pipeline_depth: int = Field(4, ge=1, le=64)
    read_ahead_mb: float = Field(32.0, gt=0, le=4096)
    drain_timeout_s: float = Field(30.0, gt=0, le=3600)
    connect_timeout_s: float = Field(30.0, gt=0, le=3600)
    start_attempts: int = Field(3, ge=1, le=1000)
    max_message_bytes: int = Field(16 * 1024 * 1024, ge=64)
    max_tensor_elements: int = Field(16 * 1024 * 1024, ge=1)
    max_dims: int = Field(8, ge=0, le=32)
    reject_non_finite: bool = False
    metrics_port: int | None = Field(None, ge=0, le=65535)
    stuck_batch_s: float = Field(60.0, gt=0, le=86_400)
    stuck_kill_s: float = Field(300.0, ge=0, le=86_400)
    progress_interval_s: float = Field(30.0, ge=0, le=86_400)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    kafka: dict[str, KafkaValue] = Field(default_factory=dict)
    kafka_consumer: dict[str, KafkaValue] = Field(default_factory=dict)
    kafka_producer: dict[str, KafkaValue] = Field(default_factory=dict)

    @field_validator("allowed_batch_sizes", mode="before")
    @classmethod
    def _split_sizes(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        parts = [v.strip() for v in value.split(",") if v.strip()]
        if not all(v.isdigit() for v in parts):
            raise ValueError("list whole batch sizes separated by commas, as in 8,16,32")
        return [int(v) for v in parts]

    @field_validator("custom_objects", mode="before")
    @classmethod
    def _split_modules(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and not all(isinstance(v, str) and _MODULE.fullmatch(v) for v in value):
            raise ValueError("list Python modules separated by commas, as in mylayers,mypackage.losses")
        return value

    @field_validator("from_timestamp", "until_timestamp")
    @classmethod
    def _assume_utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else kafka_moment(value)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.from_beginning and self.from_timestamp:
            raise ValueError("from_beginning and from_timestamp exclude each other; choose one")
        if self.from_timestamp and self.until_timestamp and self.until_timestamp <= self.from_timestamp:
            raise ValueError("until_timestamp must be later than from_timestamp")
        if self.input_topic in {self.output_topic, self.dlq_topic}:
            raise ValueError("output_topic and dlq_topic must differ from input_topic (a loop)")
        if self.dlq_topic is not None and self.dlq_topic == self.output_topic:
            raise ValueError("dlq_topic must differ from output_topic: dead letters are inputs, not predictions")
        problem = _batch_sizes_problem(self.allowed_batch_sizes, self.max_batch_size)
        if problem:
            raise ValueError(problem)
        problem = own_names_problem({table: getattr(self, table) for table in _KAFKA_TABLES.values()}, OWN_NAMES)
        if problem:
            raise ValueError(problem)
        return self

    @property
    def from_ms(self) -> int | None:
        return _epoch_ms(self.from_timestamp)

    @property
    def until_ms(self) -> int | None:
        return _epoch_ms(self.until_timestamp)

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict with every secret-looking Kafka value replaced."""
        data = self.model_dump(mode="json")
        for table in _KAFKA_TABLES.values():
            data[table] = redact(data[table])
        return data


def _batch_sizes_problem(sizes: list[int] | None, max_batch_size: int) -> str | None:
    """What is wrong with ``allowed_batch_sizes`` given ``max_batch_size``, in one line; None: nothing."""
    if sizes is None:
        return None
    if not sizes:
        return "allowed_batch_sizes is empty: list the batch sizes to compile, as in 8,16,32, or leave it unset"
    if min(sizes) < 1:
        return f"allowed_batch_sizes={sizes} holds {min(sizes)}: batch sizes are 1 or more"
    if max(sizes) != max_batch_size:
        return (
            f"allowed_batch_sizes={sizes} ends at {max(sizes)}, but max_batch_size is {max_batch_size}: "
            f"the largest compiled size is the largest batch; pass --max-batch-size {max(sizes)}, "
            f"or end the list with {max_batch_size}"
        )
    return None


#: librdkafka names the consumer sets from settings of its own: in a [kafka*] table one would
#: replace that setting unseen (errors would name the other), or be ignored
OWN_NAMES = {
    "bootstrap.servers": "bootstrap_servers",
    "metadata.broker.list": "bootstrap_servers",  # librdkafka's other name for it
    "group.id": "group",
    "transactional.id": "transactional_id_prefix",
    "transaction.timeout.ms": "transaction_timeout_ms",
}


def own_names_problem(tables: Mapping[str, Mapping[str, Any]], names: Mapping[str, str]) -> str | None:
    """What to say of a table that sets one of ``names`` (librdkafka's name → the setting of ours), if any."""
    for table, values in tables.items():
        for key in values:
            if key in names:
                ours = names[key]
                return (
                    f"{key} in the [{table.replace('_', '.')}] settings is the {ours} setting: set it as that "
                    f"(--{ours.replace('_', '-')}, {ENV_PREFIX}{ours.upper()} or {ours} in the file), not in the table"
                )
    return None


def redact(kafka: Mapping[str, Any]) -> dict[str, Any]:
    return {k: "***" if _SECRET.search(k) else v for k, v in kafka.items()}


def _epoch_ms(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


def load_settings(
    cli: Mapping[str, Any],
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge ``defaults`` < file < environment < CLI and validate; raise ``ConfigError`` with one line."""
    environ = os.environ if environ is None else environ
    config_file = config_file or environ.get(ENV_PREFIX + "CONFIG")
    merged: dict[str, Any] = dict(defaults or {})
    sources: dict[str, str] = dict.fromkeys(merged, "defaults")
    for source, values in (
        (f"config file {config_file}", _read_toml(config_file) if config_file else {}),
        ("environment", _read_env(environ)),
        ("command line", {k: v for k, v in cli.items() if v is not None}),
    ):
        for key, value in values.items():
            if key in _KAFKA_TABLES.values():
                merged[key] = {**merged.get(key, {}), **value}
            else:
                merged[key] = value
            sources[key] = source
    try:
        return Settings(**merged)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, sources)) from None


def load_client_tables(config_file: str | None = None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What the user-side tools share with the consumer: ``bootstrap_servers`` and the librdkafka
    tables (``kafka``, ``kafka_consumer``, ``kafka_producer``), from the file, then the environment."""
    environ = os.environ if environ is None else environ
    config_file = config_file or environ.get(ENV_PREFIX + "CONFIG")
    merged: dict[str, Any] = {table: {} for table in _KAFKA_TABLES.values()}
    for values in (_read_toml(config_file) if config_file else {}, _read_env(environ)):
        for table in _KAFKA_TABLES.values():
            merged[table] |= {str(k): v for k, v in values.get(table, {}).items()}
        if "bootstrap_servers" in values:
            merged["bootstrap_servers"] = values["bootstrap_servers"]
    tables = {table: merged[table] for table in _KAFKA_TABLES.values()}
    problem = own_names_problem(tables, {k: v for k, v in OWN_NAMES.items() if v == "bootstrap_servers"})
    if problem:
        raise ConfigError(f"invalid settings: {problem}")
    return merged


#: what a setting checked by a pattern takes, said instead of the pattern itself
_PATTERN_HINTS = {
    "gpu_memory": "use grow, or a whole number of MiB such as 4096",
    "preprocess": "use module:function, as in mypackage.prep:scale",
    "transactional_id_prefix": "use letters, digits, '.', '_' and '-' only",
}


#: the branches of ``KafkaValue``, as pydantic names them at the end of a failed value's location
_KAFKA_VALUE_TYPES = ("str", "int", "float", "bool")


def _first_error(exc: ValidationError) -> Any:
    """The error to report: the first, or for a librdkafka value that none of ``KafkaValue``'s types
    takes, one error for the value (pydantic gives one a type, and the first said only "a valid
    string", under a location ending in ``.str``)."""
    errors = exc.errors()
    first = errors[0]
    loc = first["loc"]
    if not (len(loc) == 3 and loc[0] in _KAFKA_TABLES.values() and loc[-1] in _KAFKA_VALUE_TYPES):
        return first
    finite = any(e["loc"][:2] == loc[:2] and e["type"] == "finite_number" for e in errors)
    message = "Input should be a finite number" if finite else "Input should be a string, a number or true/false"
    return {**first, "loc": loc[:2], "msg": message, "type": "kafka_value"}


def _one_line(exc: ValidationError, sources: Mapping[str, str]) -> str:
    first = _first_error(exc)
    key = ".".join(str(part) for part in first["loc"])
    top = str(first["loc"][0]) if first["loc"] else ""
    if first["type"] == "missing":
        return (
            f"missing setting {key}: pass --{key.replace('_', '-')}, set {ENV_PREFIX}{key.upper()} "
            "or put it in the --config file"
        )
    if not key:
        return f"invalid settings: {first['msg'].removeprefix('Value error, ')}"
    where = f" (from {sources[top]})" if top in sources else ""
    if first["type"] == "extra_forbidden":
        tables = {"kafka_consumer", "kafka_producer"}  # [kafka.consumer] and [kafka.producer] in the file
        return f"unknown setting {key}{where}: {_closest(key, set(Settings.model_fields) - tables)}"
    shown = "***" if _SECRET.search(key) else repr(first.get("input"))
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "string_pattern_mismatch" and key in _PATTERN_HINTS:
        message = _PATTERN_HINTS[key]
    return f"invalid setting {key}={shown}{where}: {message}"


def _closest(name: str, names: Iterable[str]) -> str:
    """What to say of an unknown setting ``name``: the known one it is likely a typo of, if any."""
    return did_you_mean(name, names) or "the settings are listed under Configuration in the README, and by --help"


def did_you_mean(name: str, names: Iterable[str], cutoff: float = 0.6) -> str | None:
    """``did you mean X?``, X the one of ``names`` that ``name`` is likeliest a typo of; None if none is close."""
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=cutoff)
    return f"did you mean {close[0]}?" if close else None


def unknown_environment(environ: Mapping[str, str] | None = None) -> list[str]:
    """A warning for each ``TFSTREAM_`` variable that is no setting (a typo is otherwise ignored):
    the consumer's settings, ``TFSTREAM_CONFIG`` and the ``TFSTREAM_KAFKA_*`` tables are known."""
    environ = os.environ if environ is None else environ
    known = {f"{ENV_PREFIX}{name.upper()}" for name in _scalar_fields()} | {
        f"{ENV_PREFIX}{name}" for name in _OTHER_VARIABLES
    }
    return [
        f"{name} is not a setting, and is ignored: {_closest(name, sorted(known))}"
        for name in sorted(environ)
        if name.startswith(ENV_PREFIX) and name not in known and not name.startswith(f"{ENV_PREFIX}KAFKA_")
    ]


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    kafka = data.pop("kafka", {})
    if not isinstance(kafka, dict):
        raise ConfigError(f"config file {path}: [kafka] must be a table of librdkafka settings")
    for client in ("consumer", "producer"):
        if client in kafka:
            data[_KAFKA_TABLES[client]] = kafka.pop(client)
    if kafka:
        data["kafka"] = kafka
    for table in _KAFKA_TABLES.values():
        _refuse_nested(path, table, data.get(table))
    return {key.replace("-", "_"): value for key, value in data.items()}


def _toml(value: Any) -> str:
    """A value as TOML writes it."""
    if isinstance(value, bool):
        return str(value).lower()
    return f'"{value}"' if isinstance(value, str) else str(value)


def _refuse_nested(path: str, table: str, values: Any) -> None:
    """A librdkafka name written bare in TOML (``session.timeout.ms = 6000``) is a table of tables
    to TOML, not the name: say so, with the line to write instead."""
    if not isinstance(values, dict):
        return
    for key, value in values.items():
        if isinstance(value, dict):
            dotted, leaf = key, value
            while isinstance(leaf, dict) and len(leaf) == 1:
                ((inner, leaf),) = leaf.items()
                dotted = f"{dotted}.{inner}"
            shown = "…" if isinstance(leaf, dict) else _toml(leaf)
            raise ConfigError(
                f"config file {path}: [{table.replace('_', '.')}] holds {key} as a table: TOML splits a bare name at "
                f'its dots; quote librdkafka names: "{dotted}" = {shown}'
            )
        if not isinstance(value, KafkaValue):  # an array, a date: pydantic named its union's first member
            raise ConfigError(
                f"config file {path}: [{table.replace('_', '.')}] {key} = {_toml(value)}: a librdkafka setting takes a "
                'string, a number or true/false (several items are one string: "a,b")'
            )


def _scalar_fields() -> set[str]:
    """The settings but the librdkafka tables: each a ``TFSTREAM_<NAME>`` variable of its own."""
    return set(Settings.model_fields) - set(_KAFKA_TABLES.values())


def _read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    fields = _scalar_fields()
    values: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        for prefix in ("kafka_consumer_", "kafka_producer_", "kafka_"):
            if key.startswith(prefix):
                table = prefix.rstrip("_")
                values.setdefault(table, {})[key[len(prefix) :].replace("_", ".")] = value
                break
        else:
            if key in fields:
                values[key] = value
    return values
