"""Every error this project raises, under one root.

    TfStreamError
     ├── ConfigError              a setting is wrong: exit 2 with one line
     ├── ModelError               the model cannot be loaded or is not supported
     ├── BrokerError              Kafka cannot be reached, or a topic is missing
     │    ├── FencedError          exactly-once: another producer took this worker's transactional id
     │    └── ClientHungError      a librdkafka call did not return within its own timeout
     ├── DeliveryError            the broker refused an output: stop, commit nothing past it
     └── InputError               one message cannot be predicted: it goes to the dead-letter topic
          ├── CodecError           (stage "decode") not wire format v1
          │    ├── NotMsgpackError
          │    ├── NotAMapError
          │    ├── MissingInputsError
          │    ├── UnsupportedVersionError
          │    ├── MalformedTensorError
          │    ├── UnknownDtypeError
          │    ├── ShapeDataMismatchError
          │    └── TooLargeError
          ├── ValidationError      (stage "validate") valid v1, but not what this model takes
          │    ├── WrongInputsError
          │    ├── WrongShapeError
          │    ├── WrongDtypeError
          │    └── NonFiniteError
          ├── PreprocessError      (stage "preprocess") the user's preprocess function failed
          ├── PredictError         (stage "predict") the model failed on this one input
          │    └── WorkerCrashError  or killed its worker, alone (set aside, not run again)
          └── EmitError            (stage "emit") its output could not be encoded
               ├── OutputTooLargeError   or is larger than Kafka takes, because of the input
               └── UnkeyedOutputError    or has no key (its input had none) for a compacted topic

Input errors are data, not control flow: the worker turns them into dead letters and
the stream goes on. The other errors end the process with their message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from confluent_kafka import KafkaError


class TfStreamError(Exception):
    """Root of every error raised by this project."""


class ConfigError(TfStreamError):
    """A setting is missing or has a bad value; the message names the setting."""


class ModelError(TfStreamError):
    """The model cannot be loaded, or its signature is not one we can serve."""


class PreprocessMismatch(ValueError):
    """The preprocess function cannot give the model what it takes: no input can get through (the
    worker says so as an invalid ``preprocess`` setting)."""


class BrokerError(TfStreamError):
    """Kafka cannot be reached, or a topic the run needs does not exist."""


#: How a ``BrokerError`` that ends one worker says what comes next: true whether the supervisor
#: restarts the worker or the run is stopping (then its next start takes over).
SUCCESSOR = "the worker ends, and its successor (restarted now, or the next run's if this one is stopping)"


class FencedError(BrokerError):
    """Exactly-once: a newer producer with this worker's ``transactional.id`` fenced it. The worker
    stops for good: restarted, it would fence the other one in turn."""


class ClientHungError(BrokerError):
    """A librdkafka call did not return within its own timeout and a margin (librdkafka issue 5456:
    a transactional call that waits for a coordinator can block for ever once the broker was out of
    reach). The client can be neither used nor closed; the worker ends, and its supervisor starts it
    again with new clients."""


class DeliveryError(TfStreamError):
    """The broker did not acknowledge an output; nothing past it is committed. ``retriable``: the
    cause may go away (a topic created, a permission granted, a broker back), so the worker pauses
    and tries again instead of exiting."""

    def __init__(self, message: str, retriable: bool = False, cause: KafkaError | None = None) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.cause = cause  # the delivery report's KafkaError


#: where an input can fail, in the order it goes through them (a dead letter's ``tfstream.errors.stage``)
STAGES = ("decode", "validate", "preprocess", "predict", "emit")


class InputError(TfStreamError):
    """One input message cannot be predicted. ``stage`` says where it failed."""

    stage = "decode"


class CodecError(InputError):
    """The message does not follow wire format v1."""


class NotMsgpackError(CodecError):
    """The value is not a single, complete msgpack object (or exceeds unpack limits)."""


class NotAMapError(CodecError):
    """The value is msgpack, but not a map."""


class MissingInputsError(CodecError):
    """The map has no ``"inputs"`` key."""


class UnsupportedVersionError(CodecError):
    """The ``"v"`` field names a format version this build does not read."""


class MalformedTensorError(CodecError):
    """A TENSOR is neither a raw-bytes map, a nested list of numbers, nor bin."""


class UnknownDtypeError(CodecError):
    """A raw-bytes TENSOR names a dtype that is not a supported NumPy name."""


class ShapeDataMismatchError(CodecError):
    """The ``data`` length does not equal the shape's element count times the item size."""


class TooLargeError(CodecError):
    """The message, a tensor or its rank exceeds the configured limits."""


class ValidationError(InputError):
    """The message is valid v1 but does not fit this model's signature."""

    stage = "validate"


class WrongInputsError(ValidationError):
    """Inputs are missing, unknown, or given unnamed to a multi-input model."""


class WrongShapeError(ValidationError):
    """An input's shape is not the model's (batch dimension excluded)."""


class WrongDtypeError(ValidationError):
    """An input's dtype cannot be cast to the model's without changing its kind."""


class NonFiniteError(ValidationError):
    """An input holds NaN or infinity and the run rejects non-finite values."""


class PreprocessError(InputError):
    """The user's preprocess function raised on this input."""

    stage = "preprocess"


class PredictError(InputError):
    """The model raised on this input even when run alone."""

    stage = "predict"


class WorkerCrashError(PredictError):
    """A worker died (a signal: a crash in TensorFlow or the preprocess function, or the OOM killer)
    with this input in its pipeline, then again with it alone there (``consumer.crashes``): it is
    set aside without being run again, so that it cannot stop its partition."""


class EmitError(InputError):
    """This input's output could not be encoded (a bug, caught so one input cannot stop the stream)."""

    stage = "emit"


class OutputTooLargeError(EmitError):
    """This input's output record is larger than the producer's ``message.max.bytes`` (or the output
    topic's lower ``max.message.bytes``), because of what the input carries into it (its key, headers
    or id) or a string output of its own."""


class UnkeyedOutputError(EmitError):
    """This input has no key, so neither would its output, and the output topic is compacted
    (``cleanup.policy`` compact): Kafka takes no record without a key there."""
