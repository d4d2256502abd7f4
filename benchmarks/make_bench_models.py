"""Build the three benchmark models into ``benchmarks/build/models`` (gitignored).

A model repository servekit can serve as is, each model twice: as TFLite
(``<repo>/<model>/1/model.tflite``) and, exported by tf2onnx from the same
``tf.function`` and weights, as ONNX (``<repo>/<model>_onnx/1/model.onnx``, opset 17).
One model per kind the batching facts in the design are about:

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

Weights are random (seed 0), made as constants inside a ``tf.function`` with a named
``TensorSpec`` returning a dict (tf2onnx would turn captured tensors into graph
inputs). The TFLite file is converted like ``scripts/make_models.py`` (an empty
``tf.Module`` as the trackable object), so it has a ``serving_default`` signature with a
dynamic batch dimension; the ONNX file has the same input and output names and a
symbolic batch dimension. Each file is loaded back (ai-edge-litert, onnxruntime) and run
at batch 1 and 3, and the ONNX file's answers are checked against the TFLite file's,
before the script says it is done.

Files are rebuilt only when missing or built from another recipe (``--force``
rebuilds). Needs TensorFlow, and tf2onnx and onnxruntime for the ONNX files::

    .venv/bin/python benchmarks/make_bench_models.py          # or /work/tfenv/bin/python
    .venv/bin/python benchmarks/make_bench_models.py --only tiny --runtimes onnx
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
from typing import Any

import numpy as np
import tensorflow as tf

SEED = 0
WIDE_WIDTH = 4096  # hidden units of the wide model (see above)
OUT = Path(__file__).resolve().parent / "build" / "models"
ONNX_OPSET = 17  # ai.onnx: supported by every onnxruntime the lock allows (as scripts/)

ServeFn = Any  # a tf.function with one named input (TensorFlow ships no type hints)

# Each runtime's model file, and the name its copy of a benchmark model is served as.
RUNTIMES = {"tflite": "model.tflite", "onnx": "model.onnx"}


def served_name(model: str, runtime: str) -> str:
    """``tiny`` (TFLite), ``tiny_onnx`` (ONNX), ..."""
    return model if runtime == "tflite" else f"{model}_{runtime}"


def _dense_stack(sizes: list[int]) -> Callable[[], ServeFn]:
    """A ReLU MLP ``sizes[0] -> ... -> sizes[-1]`` (softmax on top)."""

    def build() -> ServeFn:
        rng = np.random.default_rng(SEED)
        weights = [
            (
                rng.normal(0, np.sqrt(2 / n_in), (n_in, n_out)).astype(np.float32),
                np.zeros(n_out, np.float32),
            )
            for n_in, n_out in itertools.pairwise(sizes)
        ]

        @tf.function(input_signature=[tf.TensorSpec([None, sizes[0]], tf.float32, name="x")])
        def serve(x: tf.Tensor) -> dict[str, tf.Tensor]:
            h = x
            for i, (w, b) in enumerate(weights):
                h = tf.matmul(h, tf.constant(w)) + tf.constant(b)
                h = tf.nn.relu(h) if i < len(weights) - 1 else tf.nn.softmax(h)
            return {"y": h}

        return serve

    return build


def _mobilenet_v2() -> ServeFn:
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

    return serve_frozen


def to_tflite(fn: ServeFn) -> bytes:
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [fn.get_concrete_function()], tf.Module()
    )
    return bytes(converter.convert())


def to_onnx(fn: ServeFn) -> bytes:
    import tf2onnx

    specs = list(fn.input_signature)
    model, _ = tf2onnx.convert.from_function(fn, input_signature=specs, opset=ONNX_OPSET)
    return bytes(model.SerializeToString())


EXPORTS: dict[str, Callable[[ServeFn], bytes]] = {"tflite": to_tflite, "onnx": to_onnx}


@dataclass(frozen=True)
class Recipe:
    """How one benchmark model is made; ``description`` names everything that shapes
    the file, so a built file whose stamp differs is stale."""

    description: str
    make: Callable[[], ServeFn]
    input_name: str
    row_shape: tuple[int, ...]

    def stamp(self, runtime: str) -> str:
        return (
            self.description
            if runtime == "tflite"
            else f"{self.description}, onnx opset {ONNX_OPSET}"
        )


def _dense(sizes: list[int]) -> Recipe:
    return Recipe(f"dense {'-'.join(map(str, sizes))}", _dense_stack(sizes), "x", (sizes[0],))


def recipes(wide_width: int = WIDE_WIDTH) -> dict[str, Recipe]:
    return {
        "tiny": _dense([64, 64, 10]),
        "wide": _dense([512, wide_width, wide_width, 10]),
        "mobilenet_v2": Recipe("mobilenet_v2", _mobilenet_v2, "image", (224, 224, 3)),
    }


def run_model(path: Path, input_name: str, x: np.ndarray) -> np.ndarray:
    """The model file's one output for ``x``, from its runtime (by file name)."""
    if path.suffix == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        assert names == [input_name], (path, names)
        (out,) = session.run(None, {input_name: x})
        return np.asarray(out)
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
    (out,) = runner(**{input_name: x}).values()
    return np.asarray(out)


def check(path: Path, input_name: str, row_shape: tuple[int, ...]) -> np.ndarray:
    """Runs at batch 1 and 3; returns the answers at batch 3."""
    outs: dict[int, Any] = {}
    for rows in (1, 3):
        x = np.random.default_rng(SEED).random((rows, *row_shape), dtype=np.float32)
        out = outs[rows] = run_model(path, input_name, x)
        assert out.shape[0] == rows and np.isfinite(out).all(), (path, out.shape)
    return np.asarray(outs[3])


def build(
    out: Path = OUT,
    force: bool = False,
    only: list[str] | None = None,
    wide_width: int = WIDE_WIDTH,
    runtimes: list[str] | None = None,
) -> Path:
    for name, recipe in recipes(wide_width).items():
        if only and name not in only:
            continue
        fn: ServeFn | None = None  # made once for every runtime that needs it
        built = False
        answers: dict[str, np.ndarray] = {}
        for runtime in runtimes or list(RUNTIMES):
            folder = out / served_name(name, runtime)
            path = folder / "1" / RUNTIMES[runtime]
            stamp = folder / "BUILT_AS"  # the recipe it was built from
            stale = not stamp.is_file() or stamp.read_text() != recipe.stamp(runtime)
            if path.is_file() and not force and not stale:
                print(f"{path}: exists ({path.stat().st_size / 1e6:.1f} MB)")
                continue
            t = time.perf_counter()
            fn = fn or recipe.make()
            content = EXPORTS[runtime](fn)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            answers[runtime] = check(path, recipe.input_name, recipe.row_shape)
            stamp.write_text(recipe.stamp(runtime))
            built = True
            print(
                f"{path}: {len(content) / 1e6:.1f} MB, input {recipe.input_name!r}, built and "
                f"checked in {time.perf_counter() - t:.1f} s"
            )
        if built:
            same_answers(out, name, recipe, answers)
    return out


def same_answers(out: Path, name: str, recipe: Recipe, answers: dict[str, np.ndarray]) -> None:
    """Every built runtime's file answers like the TFLite file (the same weights, a
    float32 rounding apart), so the benchmark compares runtimes on one model."""
    for runtime in RUNTIMES:
        path = out / served_name(name, runtime) / "1" / RUNTIMES[runtime]
        if runtime not in answers and path.is_file():
            answers[runtime] = check(path, recipe.input_name, recipe.row_shape)
    reference = answers.get("tflite")
    for runtime, got in answers.items():
        if reference is not None and runtime != "tflite":
            np.testing.assert_allclose(
                got,
                reference,
                rtol=1e-3,
                atol=1e-6,
                err_msg=f"{name}: {runtime} and tflite files answer differently "
                "(built from different weights? rebuild both with --force)",
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--force", action="store_true", help="rebuild existing files")
    parser.add_argument("--only", nargs="*", choices=list(recipes()), help="build just these")
    parser.add_argument(
        "--runtimes", nargs="*", choices=list(RUNTIMES), help="just these files (default: all)"
    )
    parser.add_argument(
        "--wide-width", type=int, default=WIDE_WIDTH, help="hidden units of the wide model"
    )
    args = parser.parse_args()
    build(args.out, args.force, args.only, args.wide_width, args.runtimes)


if __name__ == "__main__":
    main()
