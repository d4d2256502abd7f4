"""Train the small Keras models `tests/test_optimize.py` optimizes (run as a subprocess).

    python tests/optimize_support.py OUT_DIR

Writes to OUT_DIR, in a few seconds on 2 cores (TensorFlow stays out of the pytest process):

    dense.keras, dense.h5, dense_savedmodel/   Dense(32, relu) -> Dense(10, softmax)
                                               input "pixels" f32[-1, 64]
    conv.keras, conv_savedmodel/               Conv2D(8, 3) -> MaxPool -> Dense(10, softmax)
                                               input "image" f32[-1, 8, 8, 1]
    {dense,conv}_train.npz                     x (training rows, the model's shape), y
    {dense,conv}_test.npz                      x (held-out rows), y
    {dense,conv}_reference.npy                 the Keras model's probabilities on the test rows
    cumprod_savedmodel/                        tf.math.cumprod: no TFLite builtin kernel
    digamma_savedmodel/                        tf.math.digamma: no TFLite or Flex kernel

Data: scikit-learn's bundled ``load_digits`` (8x8 images, pixels scaled to [0, 1]), the same
stratified 80/20 split as ``scripts/make_models.py``.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path
from typing import Any

import numpy as np

SEED = 0


def _fit(model: Any, x: np.ndarray, y: np.ndarray) -> None:
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=0.01),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(x, y, epochs=10, batch_size=64, verbose=0)


def _unsupported_op_model(tf: Any, out: Path, name: str, op: Any) -> None:
    module = tf.Module()

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def serve(x: Any) -> dict[str, Any]:
        return {"y": op(x)}

    module.serve = serve
    tf.saved_model.save(
        module, str(out / f"{name}_savedmodel"), signatures={"serving_default": serve}
    )


def main(out: Path) -> None:
    import keras
    import tensorflow as tf
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    keras.utils.set_random_seed(SEED)
    out.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    x = (digits.images.reshape(-1, 64) / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=SEED
    )

    dense = keras.Sequential(
        [
            keras.Input((64,), name="pixels"),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10, activation="softmax", name="probabilities"),
        ]
    )
    conv = keras.Sequential(
        [
            keras.Input((8, 8, 1), name="image"),
            keras.layers.Conv2D(8, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax", name="probabilities"),
        ]
    )
    for name, model, shape in (("dense", dense, (-1, 64)), ("conv", conv, (-1, 8, 8, 1))):
        train, test = x_train.reshape(shape), x_test.reshape(shape)
        _fit(model, train, y_train)
        model.save(out / f"{name}.keras")
        model.export(str(out / f"{name}_savedmodel"), verbose=False)
        np.savez(out / f"{name}_train.npz", x=train, y=y_train)
        np.savez(out / f"{name}_test.npz", x=test, y=y_test)
        reference = np.asarray(model.predict(test, verbose=0), dtype=np.float32)
        np.save(out / f"{name}_reference.npy", reference)
        accuracy = float(np.mean(reference.argmax(axis=1) == y_test))
        print(f"{name}: held-out accuracy {accuracy:.4f}")
    dense.save(out / "dense.h5")
    _unsupported_op_model(tf, out, "cumprod", lambda t: tf.math.cumprod(t, axis=1))
    _unsupported_op_model(tf, out, "digamma", tf.math.digamma)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
