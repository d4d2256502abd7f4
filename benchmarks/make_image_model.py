"""Build the benchmark's image model: a tiny classifier over a 224x224x3 float32 image.

    GlobalAveragePooling2D -> Dense(10, softmax), random weights (seed 0), not trained:
    the benchmark measures the wire format, so the model only has to take a realistically
    large input and do almost no compute.

Written: ``benchmarks/models/image_small/1/model.tflite`` (a few kB), signature
``serving_default``: ``image`` f32[-1,224,224,3] -> ``probabilities`` f32[-1,10].

Exported like ``scripts/make_models.py``: a ``tf.function`` with a named input spec that
returns a dict of named outputs, the Keras weights captured as constants, converted with
``TFLiteConverter.from_concrete_functions``. The written file is checked against Keras
with ``ai_edge_litert``.

Run with a Python that has TensorFlow (and ai-edge-litert), e.g.::

    /work/tfenv/bin/python benchmarks/make_image_model.py
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

SEED = 0
SIDE, CHANNELS, CLASSES = 224, 3, 10
OUT = Path(__file__).resolve().parent / "models" / "image_small" / "1" / "model.tflite"
MAX_FILE_BYTES = 1_000_000


def build() -> keras.Model:
    keras.utils.set_random_seed(SEED)
    model = keras.Sequential(
        [
            keras.Input((SIDE, SIDE, CHANNELS), name="image"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ]
    )
    return model


def export(model: keras.Model) -> bytes:
    kernel, bias = (tf.constant(np.asarray(w, dtype=np.float32)) for w in model.get_weights())

    @tf.function(
        input_signature=[tf.TensorSpec([None, SIDE, SIDE, CHANNELS], tf.float32, name="image")]
    )
    def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
        pooled = tf.reduce_mean(image, axis=[1, 2])
        return {"probabilities": tf.nn.softmax(tf.matmul(pooled, kernel) + bias)}

    # An empty module: the weights are constants; it makes the converter emit a signature.
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [serve.get_concrete_function()], tf.Module()
    )
    return bytes(converter.convert())


def check(path: Path, model: keras.Model) -> None:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
    x = np.random.default_rng(SEED).random((3, SIDE, SIDE, CHANNELS), dtype=np.float32)
    got = runner(image=x)["probabilities"]
    want = np.asarray(model(x))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    print(f"{path}: {path.stat().st_size} bytes; signature ok; matches Keras on 3 images")


def main() -> None:
    model = build()
    content = export(model)
    assert len(content) < MAX_FILE_BYTES, len(content)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_bytes(content)
    check(OUT, model)


if __name__ == "__main__":
    main()
