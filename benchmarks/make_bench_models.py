"""Build the three benchmark models into ``benchmarks/build/models`` (gitignored).

A model repository servekit can serve as is (``<repo>/<model>/1/model.tflite``), one
model per kind the batching facts in the design are about:

====================  ==========================================  =========================
model                 signature ``serving_default``               why
====================  ==========================================  =========================
``tiny``              ``x`` f32[-1,64] -> ``y`` f32[-1,10]         64 -> 64 -> 10 dense (the
                                                                  digits demo's shape): almost
                                                                  no compute, so the numbers
                                                                  are the HTTP and Python cost
``wide``              ``x`` f32[-1,512] -> ``y`` f32[-1,10]        512 -> 4096 -> 4096 -> 10
                                                                  dense (~76 MB of weights):
                                                                  batch 1 is a memory-bound
                                                                  matrix-vector product,
                                                                  batch 64 a matrix-matrix one
``mobilenet_v2``      ``image`` f32[-1,224,224,3] ->               MobileNetV2, random weights
                      ``probabilities`` f32[-1,1000]               (no downloads here; speed
                                                                  does not care): a conv net,
                                                                  where batching barely helps
====================  ==========================================  =========================

Why 4096 wide: batch 1 is memory-bound only when the weights do not fit in the last-level
cache. The 512 -> 2048 -> 2048 -> 10 net (21 MB) fits in this machine's 32 MB L3, so
batch 1 runs from cache and its raw interpreter gains only 2.9x from batch 1 to 64;
at 4096 (76 MB) batch 1 reads its weights from memory and the gain is 7.8x (measured
here, 1 thread). Pass ``--wide-width 2048`` to build the smaller one.

Weights are random (seed 0), captured as constants and exported like
``scripts/make_models.py`` (a ``tf.function`` with a named ``TensorSpec`` returning a
dict, an empty ``tf.Module`` as the trackable object), so each file has a
``serving_default`` signature with a dynamic batch dimension. Each file is loaded back
with ai-edge-litert and run at batch 1 and 3 before the script says it is done.

Files are rebuilt only when missing (``--force`` rebuilds). Needs TensorFlow::

    .venv/bin/python benchmarks/make_bench_models.py          # or /work/tfenv/bin/python
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import argparse
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

SEED = 0
WIDE_WIDTH = 4096  # hidden units of the wide model (see above)
OUT = Path(__file__).resolve().parent / "build" / "models"


def _dense_stack(sizes: list[int]) -> Callable[[], bytes]:
    """A ReLU MLP ``sizes[0] -> ... -> sizes[-1]`` (softmax on top) as a TFLite model."""

    def build() -> bytes:
        rng = np.random.default_rng(SEED)
        layers = [
            (
                tf.constant(rng.normal(0, np.sqrt(2 / n_in), (n_in, n_out)).astype(np.float32)),
                tf.constant(np.zeros(n_out, np.float32)),
            )
            for n_in, n_out in itertools.pairwise(sizes)
        ]

        @tf.function(input_signature=[tf.TensorSpec([None, sizes[0]], tf.float32, name="x")])
        def serve(x: tf.Tensor) -> dict[str, tf.Tensor]:
            h = x
            for i, (w, b) in enumerate(layers):
                h = tf.matmul(h, w) + b
                h = tf.nn.relu(h) if i < len(layers) - 1 else tf.nn.softmax(h)
            return {"y": h}

        return _convert(serve)

    return build


def _mobilenet_v2() -> bytes:
    import keras

    keras.utils.set_random_seed(SEED)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))

    @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32, name="image")])
    def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"probabilities": model(image, training=False)}

    # Freeze the Keras variables into constants, then export like the dense models.
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    frozen = convert_variables_to_constants_v2(serve.get_concrete_function())

    @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32, name="image")])
    def serve_frozen(image: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"probabilities": frozen(image)[0]}

    return _convert(serve_frozen)


def _convert(fn: tf.types.experimental.PolymorphicFunction) -> bytes:
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [fn.get_concrete_function()], tf.Module()
    )
    return bytes(converter.convert())


@dataclass(frozen=True)
class Recipe:
    """How one benchmark model is made; ``description`` names everything that shapes
    the file, so a built file whose stamp differs is stale."""

    description: str
    make: Callable[[], bytes]
    input_name: str
    row_shape: tuple[int, ...]


def _dense(sizes: list[int]) -> Recipe:
    return Recipe(f"dense {'-'.join(map(str, sizes))}", _dense_stack(sizes), "x", (sizes[0],))


def recipes(wide_width: int = WIDE_WIDTH) -> dict[str, Recipe]:
    return {
        "tiny": _dense([64, 64, 10]),
        "wide": _dense([512, wide_width, wide_width, 10]),
        "mobilenet_v2": Recipe("mobilenet_v2", _mobilenet_v2, "image", (224, 224, 3)),
    }


def check(path: Path, input_name: str, row_shape: tuple[int, ...]) -> None:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
    for rows in (1, 3):
        x = np.random.default_rng(SEED).random((rows, *row_shape), dtype=np.float32)
        (out,) = runner(**{input_name: x}).values()
        assert out.shape[0] == rows and np.isfinite(out).all(), (path, out.shape)


def build(
    out: Path = OUT,
    force: bool = False,
    only: list[str] | None = None,
    wide_width: int = WIDE_WIDTH,
) -> Path:
    for name, recipe in recipes(wide_width).items():
        if only and name not in only:
            continue
        path = out / name / "1" / "model.tflite"
        stamp = out / name / "BUILT_AS"  # the recipe it was built from
        stale = not stamp.is_file() or stamp.read_text() != recipe.description
        if path.is_file() and not force and not stale:
            print(f"{path}: exists ({path.stat().st_size / 1e6:.1f} MB)")
            continue
        t = time.perf_counter()
        content = recipe.make()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        check(path, recipe.input_name, recipe.row_shape)
        stamp.write_text(recipe.description)
        print(
            f"{path}: {len(content) / 1e6:.1f} MB, input {recipe.input_name!r}, built and checked "
            f"in {time.perf_counter() - t:.1f} s"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--force", action="store_true", help="rebuild existing files")
    parser.add_argument("--only", nargs="*", choices=list(recipes()), help="build just these")
    parser.add_argument(
        "--wide-width", type=int, default=WIDE_WIDTH, help="hidden units of the wide model"
    )
    args = parser.parse_args()
    build(args.out, args.force, args.only, args.wide_width)


if __name__ == "__main__":
    main()
