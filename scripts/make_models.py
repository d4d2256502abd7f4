"""Train the small demo/test TFLite models used by servekit and write them to the repo.

All models are trained on scikit-learn's bundled ``load_digits`` data set (8x8 grey-scale
digits, 64 features scaled to [0, 1]; no download needed) with a stratified 80/20 split
(``random_state=0``). Seeds are fixed and TensorFlow op determinism is enabled, so a rerun
reproduces the same files.

Written files (paths relative to the repository root)::

    src/servekit/demo/digits.tflite           bundled demo, Dense(64, relu) -> Dense(10, softmax)
                                              signature serving_default:
                                              pixels f32[-1,64] -> probabilities f32[-1,10]
    src/servekit/demo/digits.json             held-out accuracy (measured on the .tflite)
    src/servekit/demo/sample_request.json     {"instances": [...]} with 2 real test rows
    src/servekit/demo/sample_labels.json      the true labels of those 2 rows
    src/servekit/demo/__init__.py             empty (makes the data folder a package)
    tests/models/repo/digits/1/model.tflite   copy of the demo model
    tests/models/repo/digits/config.yaml      max_batch_size: 32
    tests/models/repo/digits_cnn/1/model.tflite
                                              image f32[-1,8,8,1] -> probabilities f32[-1,10]
    tests/models/repo/multi/1/model.tflite    features f32[-1,64], bias i32[-1,10]
                                              -> logits f32[-1,10], label i64[-1]
    tests/models/repo/fixed/1/model.tflite    pixels f32[1,64] -> probabilities f32[1,10];
                                              constant reshapes make it non-resizable
    tests/models/repo/digits_int8/1/model.tflite
                                              full-integer quantized dense model:
                                              pixels i8[-1,64] -> probabilities i8[-1,10]
    tests/models/repo/nosig/1/model.tflite    dense digits model WITHOUT signature defs
                                              (tensors ``pixels`` -> ``Identity``)
    tests/models/slow/slow/1/model.tflite     x f32[-1,64] -> y f32[-1,64]: a WHILE loop of
                                              SLOW_STEPS small matmuls, so one invoke takes
                                              milliseconds (overload/deadline tests) while
                                              the file stays a few KB
    tests/models/repo/lookup/1/model.tflite   index i32[-1,1] -> row f32[-1,4] (GATHER from a
                                              10x4 table); an index outside 0..9 makes
                                              invoke() itself fail: a real runtime fault
    tests/models/image/image/1/model.tflite   image f32[-1,224,224,3] -> probabilities f32[-1,10]:
                                              an image-sized input with a few fixed random
                                              weights (8x8 average pool, 3x3 conv, global
                                              mean, dense): /docs and the browser test with
                                              an image model, in a few KB
    tests/models/unsafe/<name>/1/model.tflite x f32[-1,8] -> y f32[-1,8]: resizable but NOT
                                              batch-safe, each in its own way: ``row0``
                                              adds row 0 to every row (STRIDED_SLICE with a
                                              fixed end), ``batchmean`` subtracts the mean
                                              over the batch (MEAN over axis 0), ``fold``
                                              transposes the batch into the features and
                                              reshapes back (TRANSPOSE + RESHAPE); one row
                                              alone gives a different answer than stacked

Exporting: every model is a ``tf.function`` with named ``tf.TensorSpec`` inputs that returns a
dict of named outputs, converted with ``TFLiteConverter.from_concrete_functions([fn], module)``.
The trained weights are captured as constants (the ``tf.Module`` passed as trackable object holds
no variables): tracking the Keras model itself makes the converter keep its weights as resource
variables (VAR_HANDLE/READ_VARIABLE ops) that are never initialised in the TFLite model. Omitting
the trackable object altogether yields a model with no signature defs (the ``nosig`` model).

After writing, every model is loaded with ``ai_edge_litert`` and its signatures, tensor details,
a small test batch and the held-out accuracy are printed.

Rerun (needs TensorFlow, scikit-learn and ai-edge-litert; takes well under two minutes)::

    /path/to/venv-with-tensorflow/bin/python scripts/make_models.py
"""

from __future__ import annotations

import os

# Quiet, reproducible TensorFlow: must be set before it is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import numpy.typing as npt
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SEED = 0
ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = ROOT / "src" / "servekit" / "demo"
REPO_DIR = ROOT / "tests" / "models" / "repo"
UNSAFE_DIR = ROOT / "tests" / "models" / "unsafe"
MAX_FILE_BYTES = 1_000_000
SIGNATURE_KEY = "serving_default"

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
Weights = list[npt.NDArray[np.float32]]


@dataclass(frozen=True)
class Data:
    """The digits split: float32 features in [0, 1] and int64 labels."""

    x_train: F32
    y_train: I64
    x_test: F32
    y_test: I64


def load_data() -> Data:
    """Load ``load_digits`` and split it 80/20 (stratified, ``random_state=0``)."""
    digits = load_digits()
    x = (digits.images.reshape(-1, 64) / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=SEED
    )
    return Data(x_train, y_train, x_test, y_test)


# --------------------------------------------------------------------------------------------
# Training (Keras) -> plain numpy weights
# --------------------------------------------------------------------------------------------


def _fit(model: keras.Model, x: F32, y: I64, epochs: int, *, from_logits: bool = False) -> Weights:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
        metrics=["accuracy"],
    )
    model.fit(x, y, epochs=epochs, batch_size=32, shuffle=True, verbose=0)
    return [np.asarray(w, dtype=np.float32) for w in model.get_weights()]


def train_dense(data: Data) -> Weights:
    """Dense(64, relu) -> Dense(10, softmax); returns [W1, b1, W2, b2]."""
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    return _fit(model, data.x_train, data.y_train, epochs=30)


def train_cnn(data: Data) -> Weights:
    """Conv2D(8, 3, relu, same) -> MaxPool(2) -> Flatten -> Dense(10, softmax)."""
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    return _fit(model, data.x_train.reshape(-1, 8, 8, 1), data.y_train, epochs=30)


def train_linear(data: Data) -> Weights:
    """Dense(10) producing logits (multinomial logistic regression); returns [W, b]."""
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    return _fit(model, data.x_train, data.y_train, epochs=30, from_logits=True)


# --------------------------------------------------------------------------------------------
# TensorFlow forward functions built from the frozen weights
# --------------------------------------------------------------------------------------------


def dense_forward(w: Weights) -> Callable[[tf.Tensor], tf.Tensor]:
    w1, b1, w2, b2 = (tf.constant(a) for a in w)

    def forward(x: tf.Tensor) -> tf.Tensor:
        hidden = tf.nn.relu(tf.matmul(x, w1) + b1)
        return tf.nn.softmax(tf.matmul(hidden, w2) + b2)

    return forward


def cnn_forward(w: Weights) -> Callable[[tf.Tensor], tf.Tensor]:
    kernel, conv_bias, w_out, b_out = (tf.constant(a) for a in w)

    def forward(image: tf.Tensor) -> tf.Tensor:
        h = tf.nn.relu(tf.nn.conv2d(image, kernel, strides=1, padding="SAME") + conv_bias)
        h = tf.nn.max_pool2d(h, ksize=2, strides=2, padding="VALID")
        h = tf.reshape(h, [-1, 4 * 4 * 8])  # same (row-major NHWC) order as keras Flatten
        return tf.nn.softmax(tf.matmul(h, w_out) + b_out)

    return forward


def spec(shape: list[int | None], dtype: tf.DType, name: str) -> tf.TensorSpec:
    return tf.TensorSpec(shape=shape, dtype=dtype, name=name)


def convert(
    serve: Callable[..., dict[str, tf.Tensor]],
    input_signature: list[tf.TensorSpec],
    *,
    with_signature: bool = True,
    configure: Callable[[tf.lite.TFLiteConverter], None] | None = None,
) -> bytes:
    """Trace ``serve`` as a ``tf.function`` with ``input_signature`` and convert it to TFLite.

    The TensorSpec names become the signature's input names and the keys of the returned
    dict its output names.
    """
    concrete = tf.function(serve, input_signature=input_signature).get_concrete_function()
    if with_signature:
        # An empty module: the weights are constants, so nothing has to be tracked, but
        # passing a trackable object is what makes the converter emit serving_default.
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], tf.Module())
    else:
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    if configure is not None:
        configure(converter)
    return bytes(converter.convert())


def export_dense(w: Weights) -> bytes:
    forward = dense_forward(w)

    def serve(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"probabilities": forward(pixels)}

    return convert(serve, [spec([None, 64], tf.float32, "pixels")])


def export_nosig(w: Weights) -> bytes:
    forward = dense_forward(w)

    def serve(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"probabilities": forward(pixels)}

    return convert(serve, [spec([None, 64], tf.float32, "pixels")], with_signature=False)


SLOW_STEPS = 24000


def export_slow() -> bytes:
    """Few weights, much compute: x <- tanh(x @ W) repeated SLOW_STEPS times."""
    rng = np.random.default_rng(SEED)
    w = tf.constant((rng.standard_normal((64, 64)) / 8).astype(np.float32))

    def serve(x: tf.Tensor) -> dict[str, tf.Tensor]:
        _, y = tf.while_loop(
            lambda i, _: i < SLOW_STEPS, lambda i, v: (i + 1, tf.tanh(v @ w)), (0, x)
        )
        return {"y": y}

    return convert(serve, [spec([None, 64], tf.float32, "x")])


def export_lookup() -> bytes:
    """A model whose invoke raises on some inputs: GATHER checks its indices at run time."""
    table = tf.constant(np.arange(40, dtype=np.float32).reshape(10, 4))

    def serve(index: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"row": tf.gather(table, index[:, 0])}

    return convert(serve, [spec([None, 1], tf.int32, "index")])


def export_image() -> bytes:
    """An image classifier's input and output, untrained: fixed random weights."""
    rng = np.random.default_rng(SEED)
    kernel = tf.constant(rng.standard_normal((3, 3, 3, 8)).astype(np.float32))
    w_out = tf.constant(rng.standard_normal((8, 10)).astype(np.float32))

    def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
        h = tf.nn.avg_pool2d(image, ksize=8, strides=8, padding="VALID")  # 28x28x3
        h = tf.nn.relu(tf.nn.conv2d(h, kernel, strides=1, padding="SAME"))
        h = tf.reduce_mean(h, axis=[1, 2])
        return {"probabilities": tf.nn.softmax(tf.matmul(h, w_out))}

    return convert(serve, [spec([None, 224, 224, 3], tf.float32, "image")])


UNSAFE_WIDTH = 8


def unsafe_forwards() -> dict[str, Callable[[tf.Tensor], tf.Tensor]]:
    """Models whose batch dimension resizes but whose rows are not independent."""
    w = tf.constant(np.random.default_rng(SEED).standard_normal((8, 8)).astype(np.float32))
    return {
        "row0": lambda x: x @ w + x[:1],
        "batchmean": lambda x: x @ w - tf.reduce_mean(x, axis=0, keepdims=True),
        "fold": lambda x: tf.reshape(tf.transpose(x @ w), [-1, UNSAFE_WIDTH]),
    }


def export_unsafe(forward: Callable[[tf.Tensor], tf.Tensor]) -> bytes:
    def serve(x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": forward(x)}

    return convert(serve, [spec([None, UNSAFE_WIDTH], tf.float32, "x")])


def check_unsafe(path: Path) -> str:
    """One row alone vs the same row stacked with others: how far apart the answers are."""
    rows = np.random.default_rng(SEED).random((4, UNSAFE_WIDTH), dtype=np.float32)
    interp = Interpreter(model_path=str(path))
    runner = interp.get_signature_runner("serving_default")
    alone = np.concatenate([runner(x=rows[i : i + 1])["y"] for i in range(len(rows))])
    stacked = runner(x=rows)["y"]
    return f"max |alone - stacked| = {float(np.abs(alone - stacked).max()):.3f}"


def export_cnn(w: Weights) -> bytes:
    forward = cnn_forward(w)

    def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"probabilities": forward(image)}

    return convert(serve, [spec([None, 8, 8, 1], tf.float32, "image")])


def export_multi(w: Weights) -> bytes:
    kernel, bias_vec = (tf.constant(a) for a in w)

    def serve(features: tf.Tensor, bias: tf.Tensor) -> dict[str, tf.Tensor]:
        logits = tf.matmul(features, kernel) + bias_vec + tf.cast(bias, tf.float32)
        return {"logits": logits, "label": tf.argmax(logits, axis=1, output_type=tf.int64)}

    return convert(
        serve,
        [
            spec([None, 64], tf.float32, "features"),
            spec([None, 10], tf.int32, "bias"),
        ],
    )


def export_fixed(w: Weights) -> bytes:
    """The dense digits model with a batch size baked in by constant-shape reshapes.

    ``reshape([1, 8, 8]) -> reshape([1, 64])`` alone is folded away by the converter (and
    FULLY_CONNECTED flattens its input anyway), so the 8x8 image is transposed in between and
    the rows of the first kernel are permuted to match: the maths is exactly the digits model,
    but the RESHAPE ops survive and fail to prepare for any batch size other than 1.
    """
    w1, b1, w2, b2 = w
    w1_transposed = w1.reshape(8, 8, 64).transpose(1, 0, 2).reshape(64, 64)
    forward = dense_forward([w1_transposed, b1, w2, b2])

    def serve(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        image = tf.reshape(pixels, [1, 8, 8])
        flat = tf.reshape(tf.transpose(image, [0, 2, 1]), [1, 64])
        return {"probabilities": forward(flat)}

    return convert(serve, [spec([1, 64], tf.float32, "pixels")])


def export_int8(w: Weights, calibration: F32) -> bytes:
    forward = dense_forward(w)

    def serve(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"probabilities": forward(pixels)}

    def representative_dataset() -> Iterator[list[F32]]:
        for row in calibration:
            yield [row[np.newaxis, :]]

    def configure(converter: tf.lite.TFLiteConverter) -> None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8

    return convert(serve, [spec([None, 64], tf.float32, "pixels")], configure=configure)


# --------------------------------------------------------------------------------------------
# Writing and checking
# --------------------------------------------------------------------------------------------


def write_bytes(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    if len(content) >= MAX_FILE_BYTES:
        raise SystemExit(f"{path} is {len(content)} bytes (limit {MAX_FILE_BYTES})")


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj) + "\n", encoding="utf-8")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def quantize(x: F32, scale: float, zero_point: int) -> npt.NDArray[np.int8]:
    q: F32 = np.round(x / scale) + zero_point
    return np.clip(q, -128, 127).astype(np.int8)


def describe(interpreter: Interpreter) -> None:
    print(f"  get_signature_list(): {interpreter.get_signature_list()}")
    for kind, details in (
        ("input ", interpreter.get_input_details()),
        ("output", interpreter.get_output_details()),
    ):
        for d in details:
            print(
                f"  {kind} name={d['name']!r} index={d['index']} dtype={np.dtype(d['dtype']).name}"
                f" shape={d['shape'].tolist()} shape_signature={d['shape_signature'].tolist()}"
                f" quantization={d['quantization']}"
            )


def predict(interpreter: Interpreter, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the serving_default signature, or the raw input/output tensors if there is none."""
    if interpreter.get_signature_list():
        runner = interpreter.get_signature_runner(SIGNATURE_KEY)
        return dict(runner(**inputs))
    (value,) = inputs.values()
    (inp,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(inp["index"], list(value.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], value)
    interpreter.invoke()
    return {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}


def check_fixed_resize(path: Path) -> str:
    """Try running the fixed model at batch 4; return how it fails (it must fail)."""
    interpreter = Interpreter(model_path=str(path))
    (inp,) = interpreter.get_input_details()
    try:
        interpreter.resize_tensor_input(inp["index"], [4, 64])
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], np.zeros((4, 64), np.float32))
        interpreter.invoke()
    except (RuntimeError, ValueError) as exc:
        return f"raises {type(exc).__name__}: {exc}"
    shape = interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).shape
    if shape == (4, 10):
        raise SystemExit(f"{rel(path)}: resizing to batch 4 unexpectedly works")
    return f"wrong output shape {shape}"


@dataclass(frozen=True)
class Check:
    """How to feed one model: its input builder and the output to score (if a classifier)."""

    path: Path
    make_inputs: Callable[[F32], dict[str, np.ndarray]]
    scored_output: str | None
    batch: int = 3


def check_model(check: Check, data: Data) -> float | None:
    path = check.path
    size = path.stat().st_size
    print(f"\n== {rel(path)} ({size} bytes)")
    if size >= MAX_FILE_BYTES:
        raise SystemExit(f"{rel(path)} is too large")
    interpreter = Interpreter(model_path=str(path))
    describe(interpreter)

    out = predict(interpreter, check.make_inputs(data.x_test[: check.batch]))
    for name, value in out.items():
        print(f"  batch of {check.batch}: {name} {value.dtype}{list(value.shape)}")
    if check.scored_output is None:
        return None

    if check.batch == 1:  # fixed batch: score row by row
        rows = [predict(interpreter, check.make_inputs(row[np.newaxis])) for row in data.x_test]
        preds = np.array([np.argmax(r[check.scored_output]) for r in rows])
    else:
        scores = predict(interpreter, check.make_inputs(data.x_test))[check.scored_output]
        preds = scores.argmax(axis=1) if scores.ndim == 2 else scores
    accuracy = float(np.mean(preds == data.y_test))
    shown = slice(0, check.batch)
    print(f"  predictions {preds[shown].tolist()} labels {data.y_test[shown].tolist()}")
    print(f"  held-out accuracy: {accuracy:.4f} on {len(data.y_test)} test rows")
    return accuracy


def print_multi_signature_info(path: Path) -> None:
    interpreter = Interpreter(model_path=str(path))
    print(f"\n== signature internals of {rel(path)}")
    print(f"  get_signature_list():        {interpreter.get_signature_list()}")
    print(f"  _get_full_signature_list():  {interpreter._get_full_signature_list()}")
    runner = interpreter.get_signature_runner(SIGNATURE_KEY)
    print("  get_signature_runner('serving_default').get_input_details():")
    for name, d in runner.get_input_details().items():
        print(f"    {name!r}: {d}")
    print("  get_signature_runner('serving_default').get_output_details():")
    for name, d in runner.get_output_details().items():
        print(f"    {name!r}: {d}")


def main() -> None:
    start = time.monotonic()
    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()

    data = load_data()
    print(f"digits: {len(data.y_train)} train rows, {len(data.y_test)} test rows")

    dense_w = train_dense(data)
    cnn_w = train_cnn(data)
    linear_w = train_linear(data)

    # Sanity check: the hand-written forward passes match what was trained.
    keras_free = dense_forward(dense_w)(tf.constant(data.x_test)).numpy()
    print(f"dense forward accuracy (TF): {np.mean(keras_free.argmax(1) == data.y_test):.4f}")

    digits_bytes = export_dense(dense_w)
    demo_model = DEMO_DIR / "digits.tflite"
    write_bytes(demo_model, digits_bytes)
    (REPO_DIR / "digits" / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(demo_model, REPO_DIR / "digits" / "1" / "model.tflite")
    (REPO_DIR / "digits" / "config.yaml").write_text("max_batch_size: 32\n", encoding="utf-8")
    write_bytes(REPO_DIR / "digits_cnn" / "1" / "model.tflite", export_cnn(cnn_w))
    write_bytes(REPO_DIR / "multi" / "1" / "model.tflite", export_multi(linear_w))
    write_bytes(REPO_DIR / "fixed" / "1" / "model.tflite", export_fixed(dense_w))
    write_bytes(REPO_DIR / "digits_int8" / "1" / "model.tflite", export_int8(dense_w, data.x_train))
    write_bytes(REPO_DIR / "nosig" / "1" / "model.tflite", export_nosig(dense_w))
    write_bytes(REPO_DIR / "lookup" / "1" / "model.tflite", export_lookup())
    write_bytes(REPO_DIR.parent / "slow" / "slow" / "1" / "model.tflite", export_slow())
    image_path = REPO_DIR.parent / "image" / "image" / "1" / "model.tflite"
    write_bytes(image_path, export_image())
    unsafe_paths = []
    for name, forward in unsafe_forwards().items():
        unsafe_paths.append(UNSAFE_DIR / name / "1" / "model.tflite")
        write_bytes(unsafe_paths[-1], export_unsafe(forward))

    # Demo data files.
    init = DEMO_DIR / "__init__.py"
    if not init.exists():
        init.write_text("", encoding="utf-8")
    rows = data.x_test[:2]
    write_json(
        DEMO_DIR / "sample_request.json",
        {"instances": [[round(float(v), 4) for v in row] for row in rows]},
    )
    write_json(DEMO_DIR / "sample_labels.json", [int(v) for v in data.y_test[:2]])

    # Check every model with ai_edge_litert.
    int8_path = REPO_DIR / "digits_int8" / "1" / "model.tflite"
    int8_scale, int8_zero_point = Interpreter(model_path=str(int8_path)).get_input_details()[0][
        "quantization"
    ]

    def pixels(x: F32) -> dict[str, np.ndarray]:
        return {"pixels": x}

    checks = [
        Check(demo_model, pixels, "probabilities"),
        Check(REPO_DIR / "digits" / "1" / "model.tflite", pixels, "probabilities"),
        Check(
            REPO_DIR / "digits_cnn" / "1" / "model.tflite",
            lambda x: {"image": x.reshape(-1, 8, 8, 1)},
            "probabilities",
        ),
        Check(
            REPO_DIR / "multi" / "1" / "model.tflite",
            lambda x: {"features": x, "bias": np.zeros((len(x), 10), np.int32)},
            "label",
        ),
        Check(REPO_DIR / "fixed" / "1" / "model.tflite", pixels, "probabilities", batch=1),
        Check(
            int8_path,
            lambda x: {"pixels": quantize(x, int8_scale, int8_zero_point)},
            "probabilities",
        ),
        Check(REPO_DIR / "nosig" / "1" / "model.tflite", pixels, "Identity"),
    ]
    accuracies = {rel(c.path): check_model(c, data) for c in checks}

    fixed_failure = check_fixed_resize(REPO_DIR / "fixed" / "1" / "model.tflite")
    print(f"\nfixed model resized to [4, 64]: {fixed_failure}")

    print_multi_signature_info(REPO_DIR / "multi" / "1" / "model.tflite")

    image_rows = np.random.default_rng(SEED).random((2, 224, 224, 3), dtype=np.float32)
    image_out = predict(Interpreter(model_path=str(image_path)), {"image": image_rows})
    print(f"\n{rel(image_path)}: probabilities of 2 random images {image_out}")

    for path in unsafe_paths:
        difference = check_unsafe(path)
        print(f"{rel(path)}: {difference}")
        if difference.endswith(" 0.000"):
            raise SystemExit(f"{rel(path)} answers the same alone and stacked")

    demo_accuracy = accuracies[rel(demo_model)]
    assert demo_accuracy is not None
    if demo_accuracy < 0.95:
        raise SystemExit(f"demo accuracy {demo_accuracy:.4f} < 0.95")
    write_json(
        DEMO_DIR / "digits.json",
        {
            "accuracy": round(demo_accuracy, 4),
            "test_samples": len(data.y_test),
            "train_samples": len(data.y_train),
            "made_by": "scripts/make_models.py",
        },
    )

    print("\nsummary:")
    for name, acc in accuracies.items():
        print(f"  {name:48s} accuracy={'-' if acc is None else f'{acc:.4f}'}")
    print(f"done in {time.monotonic() - start:.1f}s")


if __name__ == "__main__":
    main()
