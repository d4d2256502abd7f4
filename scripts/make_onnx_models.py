"""Make the ONNX test models under ``tests/models/onnx/<name>/1/model.onnx``.

Offline data only: scikit-learn's bundled ``load_digits`` (the split of
``scripts/make_models.py``: 8x8 digits, 64 features in [0, 1], stratified 80/20,
``random_state=0``) and the weights of the committed TFLite demo model. Seeds are fixed
and TensorFlow's op determinism is on, so a rerun writes byte-identical files (the script
says if it does not). Every file is checked with onnxruntime after it is written.

    model            made with   inputs -> outputs
    digits           tf2onnx     pixels f32[N,64] -> probabilities f32[N,10]; the weights
                                 of src/servekit/demo/digits.tflite (same answers)
    cnn_dynamic      tf2onnx     image f32[N,H,W,1] -> probabilities f32[N,10]; trained
                                 Conv-Pool-Conv-GlobalMaxPool-Dense: any image size (a
                                 digit framed in 16x16 or larger answers the same)
    dense_helper     onnx.helper pixels u8[N,64] (raw 0..16) -> probabilities f32[N,10],
                                 label i64[N]; a graph input with a default
                                 (``temperature``, an initializer too)
    sklearn_text     skl2onnx    pixels f32[N,64] -> label string[N] ("zero".."nine"),
                                 probabilities f32[N,10] (zipmap off)
    sklearn_int      skl2onnx    pixels f32[N,64] -> output_label i64[N],
                                 output_probability seq(map(int64, float)) (the default
                                 ZipMap: not a tensor)
    words            onnx.helper word string[N] -> digit i64[N] (ai.onnx.ml LabelEncoder,
                                 "zero".."nine" -> 0..9, else -1), echo string[N]
    fixed_batch      onnx.helper pixels f32[1,64] -> probabilities f32[1,10]: batch 1 baked
                                 in (the digits weights)
    future_opset     onnx.helper a Relu stamped with opset 99 of ai.onnx: newer than any
                                 released onnxruntime supports, so loading fails
    unknown_op       onnx.helper a node of op Frobnicate in domain com.example: no runtime
                                 has it, so loading fails
    garbage          -           text bytes named model.onnx: not a protobuf ModelProto

Run with the dev and optimize extras installed (TensorFlow, tf2onnx, skl2onnx, onnx,
onnxruntime, ai-edge-litert; ~20 s)::

    .venv/bin/python scripts/make_onnx_models.py
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import hashlib
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import onnx
import onnxruntime as ort
import tensorflow as tf
import tf2onnx
from ai_edge_litert.interpreter import Interpreter
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_models import SEED, Data, Weights, load_data

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "models" / "onnx"
DEMO = ROOT / "src" / "servekit" / "demo" / "digits.tflite"
MAX_FILE_BYTES = 1_000_000
OPSET = 17  # ai.onnx: supported by every onnxruntime the lock allows (1.23 and up)
IR_VERSION = 8
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def model_path(name: str) -> Path:
    return OUT / name / "1" / "model.onnx"


# -- weights --------------------------------------------------------------------------


def demo_weights() -> Weights:
    """[W1 (64x64), b1, W2 (64x10), b2] of the TFLite demo model (FULLY_CONNECTED keeps
    its weights as [out, in]: transposed back here)."""
    interp = Interpreter(model_path=str(DEMO))
    interp.allocate_tensors()
    by_name = {d["name"]: d["index"] for d in interp.get_tensor_details()}
    w1 = interp.get_tensor(by_name["MatMul"]).T
    b1 = interp.get_tensor(by_name["Relu;add"])
    w2 = interp.get_tensor(by_name["MatMul_1"]).T
    b2 = interp.get_tensor(by_name["add_1"])
    return [np.ascontiguousarray(w, dtype=np.float32) for w in (w1, b1, w2, b2)]


def train_cnn(data: Data) -> Weights:
    """Conv(8, 3, same, relu) -> MaxPool(2, same) -> Conv(16, 3, same, relu) ->
    GlobalMaxPool -> Dense(10, softmax): no layer fixes the image size. Trained on each
    digit framed in a 16x16 blank canvas (``framed``); the convolutions have no bias, so
    more blank canvas adds nothing: a digit framed in a larger image gets the same
    answer."""
    model = keras.Sequential(
        [
            keras.Input((None, None, 1)),
            keras.layers.Conv2D(8, 3, activation="relu", padding="same", use_bias=False),
            keras.layers.MaxPooling2D(2, padding="same"),
            keras.layers.Conv2D(16, 3, activation="relu", padding="same", use_bias=False),
            keras.layers.GlobalMaxPooling2D(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(),
    )
    model.fit(framed(data.x_train), data.y_train, epochs=40, batch_size=32, verbose=0)
    return [np.asarray(w, dtype=np.float32) for w in model.get_weights()]


# -- tf2onnx --------------------------------------------------------------------------


def from_tf(serve: Callable[..., dict[str, tf.Tensor]], specs: list[tf.TensorSpec]) -> bytes:
    """A ``tf.function`` (weights as constants made inside it: captured tensors would
    become graph inputs) converted with tf2onnx."""
    fn = tf.function(serve, input_signature=specs)
    model, _ = tf2onnx.convert.from_function(fn, input_signature=specs, opset=OPSET)
    return bytes(model.SerializeToString())


def export_digits(w: Weights) -> bytes:
    def serve(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        w1, b1, w2, b2 = (tf.constant(a) for a in w)
        hidden = tf.nn.relu(tf.matmul(pixels, w1) + b1)
        return {"probabilities": tf.nn.softmax(tf.matmul(hidden, w2) + b2)}

    return from_tf(serve, [tf.TensorSpec([None, 64], tf.float32, name="pixels")])


def export_cnn(w: Weights) -> bytes:
    def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
        k1, k2, w_out, b_out = (tf.constant(a) for a in w)
        h = tf.nn.relu(tf.nn.conv2d(image, k1, strides=1, padding="SAME"))
        h = tf.nn.max_pool2d(h, ksize=2, strides=2, padding="SAME")
        h = tf.nn.relu(tf.nn.conv2d(h, k2, strides=1, padding="SAME"))
        h = tf.reduce_max(h, axis=[1, 2])
        return {"probabilities": tf.nn.softmax(tf.matmul(h, w_out) + b_out)}

    return from_tf(serve, [tf.TensorSpec([None, None, None, 1], tf.float32, name="image")])


# -- onnx.helper ----------------------------------------------------------------------


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
    opsets: dict[str, int] | None = None,
    check: bool = True,
) -> bytes:
    graph = helper.make_graph(nodes, "servekit_test", inputs, outputs, list(initializers))
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in (opsets or {"": OPSET}).items()],
        ir_version=IR_VERSION,
        producer_name="servekit scripts/make_onnx_models.py",
    )
    if check:
        onnx.checker.check_model(model, full_check=True)
    return bytes(model.SerializeToString())


def tensor(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


def export_dense_helper(w: Weights) -> bytes:
    """Raw digit pixels (uint8 0..16) -> the demo's dense net, with the softmax over
    logits / temperature: ``temperature`` is a graph input with a default (1.0)."""
    w1, b1, w2, b2 = w
    nodes = [
        helper.make_node("Cast", ["pixels"], ["x_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x_f", "sixteenth"], ["x"]),
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h_pre"]),
        helper.make_node("Relu", ["h_pre"], ["h"]),
        helper.make_node("Gemm", ["h", "w2", "b2"], ["logits"]),
        helper.make_node("Div", ["logits", "temperature"], ["scaled"]),
        helper.make_node("Softmax", ["scaled"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    return make_model(
        nodes,
        [
            helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["N", 64]),
            helper.make_tensor_value_info("temperature", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
        ],
        [
            tensor("sixteenth", np.array(1 / 16, np.float32)),
            tensor("w1", w1),
            tensor("b1", b1),
            tensor("w2", w2),
            tensor("b2", b2),
            tensor("temperature", np.array(1.0, np.float32)),
        ],
    )


def export_words() -> bytes:
    nodes = [
        helper.make_node(
            "LabelEncoder",
            ["word"],
            ["digit"],
            domain="ai.onnx.ml",
            keys_strings=list(NAMES),
            values_int64s=list(range(10)),
            default_int64=-1,
        ),
        helper.make_node("Identity", ["word"], ["echo"]),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("word", TensorProto.STRING, ["N"])],
        [
            helper.make_tensor_value_info("digit", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("echo", TensorProto.STRING, ["N"]),
        ],
        opsets={"": OPSET, "ai.onnx.ml": 2},
    )


def export_fixed(w: Weights) -> bytes:
    w1, b1, w2, b2 = w
    nodes = [
        helper.make_node("Gemm", ["pixels", "w1", "b1"], ["h_pre"]),
        helper.make_node("Relu", ["h_pre"], ["h"]),
        helper.make_node("Gemm", ["h", "w2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 10])],
        [tensor("w1", w1), tensor("b1", b1), tensor("w2", w2), tensor("b2", b2)],
    )


def relu_graph(opsets: dict[str, int], op: str = "Relu", domain: str = "") -> bytes:
    return make_model(
        [helper.make_node(op, ["x"], ["y"], domain=domain)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        opsets=opsets,
        check=False,  # the checker refuses both, as the runtime will
    )


# -- scikit-learn ---------------------------------------------------------------------


def export_sklearn(data: Data, *, text_labels: bool) -> bytes:
    y = np.array(NAMES)[data.y_train] if text_labels else data.y_train
    clf = LogisticRegression(max_iter=500, random_state=SEED).fit(data.x_train, y)
    model = to_onnx(
        clf,
        initial_types=[("pixels", FloatTensorType([None, 64]))],
        options={id(clf): {"zipmap": False}} if text_labels else None,
        target_opset={"": OPSET, "ai.onnx.ml": 1},
    )
    graph = model.graph
    if text_labels:
        rename = {"output_label": "label", "output_probability": "probabilities"}
        for out in graph.output:
            out.name = rename.get(out.name, out.name)
        for node in graph.node:
            node.output[:] = [rename.get(n, n) for n in node.output]
    onnx.checker.check_model(model, full_check=True)
    return bytes(model.SerializeToString())


# -- writing and checking -------------------------------------------------------------


def write(name: str, content: bytes) -> Path:
    path = model_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(content) >= MAX_FILE_BYTES:
        raise SystemExit(f"{name}: {len(content)} bytes (limit {MAX_FILE_BYTES})")
    before = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
    path.write_bytes(content)
    after = hashlib.sha256(content).hexdigest()
    same = "new" if before is None else ("unchanged" if before == after else "CHANGED")
    print(f"wrote {path.relative_to(ROOT)} ({len(content)} bytes, {same})")
    return path


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def describe(sess: ort.InferenceSession) -> None:
    for kind, args in (("input ", sess.get_inputs()), ("output", sess.get_outputs())):
        for a in args:
            print(f"  {kind} {a.name}: {a.type} {a.shape}")
    defaults = [a.name for a in sess.get_overridable_initializers()]
    if defaults:
        print(f"  inputs with a default: {defaults}")


def framed(x: np.ndarray, height: int = 16, width: int = 16) -> np.ndarray:
    """Digits rows as images: each 8x8 digit on a blank (zero) canvas, four pixels from
    the top left. 16x16 holds everything the digit reaches through both convolutions
    and the pooling between them; an even offset keeps the pooling grid aligned."""
    out = np.zeros((len(x), height, width, 1), np.float32)
    out[:, 4:12, 4:12, 0] = x.reshape(-1, 8, 8)
    return out


def accuracy(predicted: Any, data: Data) -> float:
    return float(np.mean(np.asarray(predicted) == data.y_test))


def main() -> None:
    start = time.monotonic()
    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    data = load_data()
    dense = demo_weights()

    paths = {
        "digits": write("digits", export_digits(dense)),
        "cnn_dynamic": write("cnn_dynamic", export_cnn(train_cnn(data))),
        "dense_helper": write("dense_helper", export_dense_helper(dense)),
        "sklearn_text": write("sklearn_text", export_sklearn(data, text_labels=True)),
        "sklearn_int": write("sklearn_int", export_sklearn(data, text_labels=False)),
        "words": write("words", export_words()),
        "fixed_batch": write("fixed_batch", export_fixed(dense)),
        "future_opset": write("future_opset", relu_graph({"": 99})),
        "unknown_op": write(
            "unknown_op", relu_graph({"": OPSET, "com.example": 1}, "Frobnicate", "com.example")
        ),
        "garbage": write("garbage", b"this is not an ONNX model, only text named model.onnx\n"),
    }
    x = data.x_test
    raw = np.round(x * 16).astype(np.uint8)

    print("\n== checks with onnxruntime", ort.__version__)
    tflite = Interpreter(model_path=str(DEMO)).get_signature_runner("serving_default")
    want = tflite(pixels=x)["probabilities"]
    for name in ("digits", "cnn_dynamic", "dense_helper", "sklearn_text", "sklearn_int"):
        print(f"{name}:")
        describe(sess := session(paths[name]))
        if name == "digits":
            (got,) = sess.run(None, {"pixels": x})
            print(f"  max |onnx - tflite demo| = {float(np.abs(got - want).max()):.2e}")
            if not np.allclose(got, want, atol=1e-5):
                raise SystemExit("digits.onnx does not answer as the TFLite demo does")
            print(f"  accuracy {accuracy(got.argmax(1), data):.4f}")
        elif name == "cnn_dynamic":
            (got,) = sess.run(None, {"image": framed(x)})
            (larger,) = sess.run(None, {"image": framed(x, 20, 26)})
            print(
                f"  accuracy 16x16 {accuracy(got.argmax(1), data):.4f}, 20x26 "
                f"{accuracy(larger.argmax(1), data):.4f}, max |16x16 - 20x26| "
                f"{float(np.abs(got - larger).max()):.2e}"
            )
        elif name == "dense_helper":
            probs, label = sess.run(None, {"pixels": raw})
            print(f"  accuracy {accuracy(label, data):.4f}")
            hot = sess.run(None, {"pixels": raw[:1], "temperature": np.array(5.0, np.float32)})
            print(f"  temperature 5: max probability {hot[0].max():.3f} (1: {probs[0].max():.3f})")
        else:
            label, probs = sess.run(None, {"pixels": x})
            if name == "sklearn_text":
                label = [NAMES.index(v) for v in label]
                print(f"  labels {sess.run(None, {'pixels': x[:3]})[0].tolist()}")
            print(f"  accuracy {accuracy(label, data):.4f}")

    words = session(paths["words"])
    print("words:")
    describe(words)
    print(f"  {words.run(None, {'word': np.array(['seven', 'zero', 'eleven'], object)})}")

    fixed = session(paths["fixed_batch"])
    (one,) = fixed.run(None, {"pixels": x[:1]})
    if not np.allclose(one, want[:1], atol=1e-5):
        raise SystemExit("fixed_batch does not answer as the demo does")
    try:
        fixed.run(None, {"pixels": x[:2]})
        raise SystemExit("fixed_batch ran a batch of 2")
    except ort.capi.onnxruntime_pybind11_state.InvalidArgument as e:
        print(f"fixed_batch at batch 2: {str(e).splitlines()[0]}")

    for name in ("future_opset", "unknown_op", "garbage"):
        try:
            session(paths[name])
        except Exception as e:
            print(f"{name}: fails to load: {type(e).__name__}: {str(e)[:160]}")
        else:
            raise SystemExit(f"{name} loaded")
    print(f"done in {time.monotonic() - start:.1f}s")


if __name__ == "__main__":
    main()
