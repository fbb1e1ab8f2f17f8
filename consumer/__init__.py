"""Streaming TensorFlow/Keras inference for Kafka.

The supervisor and CLI live here without importing TensorFlow; the worker side
(``consumer.worker`` and what it imports) loads TensorFlow.
"""

__version__ = "0.1.0"
