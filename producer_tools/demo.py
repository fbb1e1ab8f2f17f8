"""The main job on the embedded broker: the whole path, end to end, in one command.

Starts the broker, creates the topics, trains the digits classifier (``producer_tools.digits``:
the UCI handwritten digits in ``producer_tools/data``), publishes its held-out images (and a few
malformed inputs), runs ``python -m consumer run --stop-at-end`` and compares what came out with
offline ``model.predict``: same accuracy, same numbers.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from consumer.codec import pack_input, unpack_output
from consumer.errors import BrokerError
from producer_tools import dead_letters, digits
from producer_tools.clients import kafka_producer
from producer_tools.consumer_run import consumer_command, consumer_env
from producer_tools.embedded_broker import bootstrap_or_embedded
from producer_tools.reader import read_topic
from producer_tools.topics import create_topics

TOPICS = {"input": "demo-inputs", "output": "demo-predictions", "dlq": "demo-dead-letters"}


def publish(bootstrap: str, inputs: np.ndarray, bad: int) -> None:
    producer = kafka_producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for i, row in enumerate(tqdm(inputs, desc="publish", unit="msg")):
        producer.produce(TOPICS["input"], pack_input(row, id=i), key=f"user-{i % 50}".encode())
    for i in range(bad):
        producer.produce(TOPICS["input"], b"\x93not a map" if i % 2 else pack_input(np.zeros(3, "float32")))
    if producer.flush(30):
        raise BrokerError("the demo inputs were not all delivered within 30 s; is the broker up?")


def run_consumer(bootstrap: str, model: Path) -> int:
    group = f"demo-{int(time.time())}"
    command = consumer_command(
        bootstrap, model, TOPICS["input"], TOPICS["output"], group,
        "--dlq-topic", TOPICS["dlq"], "--from-beginning", "--stop-at-end", "--max-wait-ms", "20",
    )  # fmt: skip
    print("$ " + " ".join(command[1:]), flush=True)
    return subprocess.call(command, env=consumer_env())


def summarise(bootstrap: str, model_path: Path, inputs: np.ndarray, labels: np.ndarray, bad: int) -> int:
    import keras

    outputs = {}
    for msg in tqdm(read_topic(bootstrap, TOPICS["output"], min_count=len(inputs)), desc="collect", unit="msg"):
        record = unpack_output(msg.value() or b"")
        outputs[record["id"]] = record
    dead = read_topic(bootstrap, TOPICS["dlq"], min_count=bad)
    offline = keras.saving.load_model(model_path).predict(inputs, verbose=0)
    ids = sorted(outputs)
    streamed = np.stack([outputs[i]["outputs"] for i in ids])
    agree = float(np.abs(streamed - offline[ids]).max()) if ids else float("nan")
    accuracy = float((streamed.argmax(1) == labels[ids]).mean()) if ids else 0.0
    offline_accuracy = float((offline.argmax(1) == labels).mean())
    print(f"\npredictions: {len(outputs)} of {len(inputs)} inputs; dead letters: {len(dead)} of {bad} malformed")
    print(f"model: {outputs[ids[0]]['model'] if ids else '-'}")
    print(f"accuracy on the held-out digits: streamed {accuracy:.4f}, offline model.predict {offline_accuracy:.4f}")
    print(f"max |streamed - model.predict| = {agree:.2e}")
    for i in ids[:3]:
        src = outputs[i]["source"]
        where = f"{src['topic']}[{src['partition']}]@{src['offset']}"
        print(f"  id={i} class={int(streamed[ids.index(i)].argmax())} from {where}")
    reasons = [dead_letters.reason(msg) for msg in dead]
    for reason in reasons[:2]:
        print(f"  dead letter: {reason}")
    explained = all(reasons)  # each dead letter says why in its headers
    return 0 if len(outputs) == len(inputs) and len(dead) == bad and explained else 1


def main(bootstrap: str | None, workdir: Path, count: int | None = None, bad: int = 4) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    log_path, embedded = workdir / "broker.log", bootstrap is None
    with bootstrap_or_embedded(bootstrap, log_path) as bootstrap:
        if embedded:
            print(f"embedded broker on {bootstrap} (log: {log_path})", flush=True)
        create_topics(bootstrap, TOPICS.values(), partitions=4)
        print("training the digits classifier (the UCI handwritten digits)…", flush=True)
        inputs, labels, _ = digits.train(workdir)
        model_path = workdir / "digits.keras"
        inputs, labels = inputs[:count], labels[:count]
        publish(bootstrap, inputs, bad)
        status = run_consumer(bootstrap, model_path)
        if status != 0:
            print(f"error: the consumer exited with {status}", file=sys.stderr)
            return status
        return summarise(bootstrap, model_path, inputs, labels, bad)
    return 1
