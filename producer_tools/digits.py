"""A real example model: handwritten digits (the UCI 8x8 set scikit-learn ships, in ``data/``).

``python -m producer_tools.digits train --out DIR`` trains a small Keras classifier on 80% of the
1,797 images and writes ``DIR/digits.keras``, the held-out 20% as ``DIR/heldout.npy`` (64 float32
pixels in [0, 1] per row, ready for ``publish``) and ``DIR/labels.npy``, and prints the offline
accuracy. ``score`` compares predictions collected from Kafka (``collect --out preds.npz``; the ids
are the held-out row numbers) with the labels and with offline ``model.predict``.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from importlib import resources
from pathlib import Path

import numpy as np

from consumer import tensorflow_install

INPUT_NAME = "features"
SEED = 0


def load() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 images (64 pixels in [0, 1]) and their digits, in the file's order (``data/README.md``)."""
    packed = (resources.files("producer_tools") / "data" / "digits.csv.gz").read_bytes()
    table = np.loadtxt(gzip.decompress(packed).decode().splitlines(), delimiter=",")
    return (table[:, :-1] / 16.0).astype("float32"), table[:, -1].astype("int64")


def split(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    order = np.random.default_rng(SEED).permutation(len(x))
    cut = int(0.8 * len(x))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def train(out: Path, epochs: int = 40) -> tuple[np.ndarray, np.ndarray, float]:
    """Train, save ``digits.keras`` and ``heldout.npz`` in ``out``; return the held-out set and accuracy."""
    import keras

    x, y = load()
    x_train, y_train, x_test, y_test = split(x, y)
    keras.utils.set_random_seed(SEED)
    model = keras.Sequential(
        [
            keras.Input((64,), name=INPUT_NAME),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="digits",
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "digits.keras")
    np.save(out / "heldout.npy", x_test)
    np.save(out / "labels.npy", y_test)
    accuracy = float((model.predict(x_test, verbose=0).argmax(1) == y_test).mean())
    return x_test, y_test, accuracy


def score(predictions: Path, directory: Path) -> str:
    """Accuracy of collected predictions (an ``.npz`` from ``collect``) and their largest difference
    from offline ``model.predict`` on the same held-out rows."""
    import keras

    got = np.load(predictions)
    ids = got["ids"].astype(int)
    streamed = got["outputs"]
    features, labels = np.load(directory / "heldout.npy")[ids], np.load(directory / "labels.npy")[ids]
    offline = keras.saving.load_model(directory / "digits.keras").predict(features, verbose=0)
    accuracy = float((streamed.argmax(1) == labels).mean())
    offline_accuracy = float((offline.argmax(1) == labels).mean())
    difference = float(np.abs(streamed - offline).max())
    return (
        f"{len(ids)} predictions: streamed accuracy {accuracy:.4f}, offline model.predict {offline_accuracy:.4f}, "
        f"max |streamed - offline| = {difference:.2e}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m producer_tools.digits", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    t = commands.add_parser("train", help="train and save the model and the held-out set")
    t.add_argument("--out", type=Path, default=Path("examples/digits/model"))
    s = commands.add_parser("score", help="accuracy of collected predictions against labels and offline predict")
    s.add_argument("--predictions", type=Path, required=True)
    s.add_argument("--model-dir", type=Path, default=Path("examples/digits/model"), help="where train wrote")
    args = parser.parse_args(argv)
    if (missing := tensorflow_install.missing()) is not None:
        print(f"error: {missing}", file=sys.stderr)
        return 1
    if args.command == "train":
        x_test, _, accuracy = train(args.out)
        print(f"saved {args.out / 'digits.keras'}; held-out set: {len(x_test)} images in {args.out / 'heldout.npy'}")
        print(f"offline accuracy on the held-out set: {accuracy:.4f}")
        return 0
    for path in (args.predictions, args.model_dir / "digits.keras", args.model_dir / "heldout.npy"):
        if not path.exists():
            print(f"error: {path} does not exist; run 'train' first, and 'collect' the predictions", file=sys.stderr)
            return 2
    print(score(args.predictions, args.model_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
