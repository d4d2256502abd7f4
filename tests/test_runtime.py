"""The TFLite backend on real models: signatures, buckets, padding, fixed-batch models."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import MODELS, digits_rows, direct_predict, model_path
from servekit.errors import BadInput
from servekit.runtime import TFLiteModel, read_model_bytes
from servekit.runtime.runner import padding_plan


def load(name: str) -> TFLiteModel:
    return TFLiteModel(read_model_bytes(model_path(name)))


def test_signature_names_dtypes_and_batch_dim() -> None:
    m = load("multi")
    sig = m.signature
    assert sig.signature_key == "serving_default"
    assert [(s.name, s.dtype.name, s.shape) for s in sig.inputs] == [
        ("bias", "int32", (-1, 10)),
        ("features", "float32", (-1, 64)),
    ]
    assert [(s.name, s.dtype.name) for s in sig.outputs] == [
        ("label", "int64"),
        ("logits", "float32"),
    ]
    assert sig.native_batch is None


def test_quantized_io_reports_scale_and_zero_point() -> None:
    sig = load("digits_int8").signature
    (inp,), (out,) = sig.inputs, sig.outputs
    assert inp.dtype == np.int8 and out.dtype == np.int8
    assert inp.quantization is not None and inp.quantization.scale > 0
    assert out.quantization is not None and out.quantization.scale > 0


def test_model_without_signature_uses_tensor_names() -> None:
    sig = load("nosig").signature
    assert sig.signature_key is None
    assert len(sig.inputs) == 1 and sig.inputs[0].name
    assert sig.inputs[0].shape[1:] == (64,)


@pytest.mark.parametrize("rows", [1, 3, 8, 13, 32, 45])
def test_padding_to_bucket_matches_direct_interpreter(rows: int) -> None:
    m = load("digits")
    assert m.prepare([1, 2, 4, 8, 16, 32])
    x = digits_rows(rows)
    got = m.run({"pixels": x})["probabilities"]
    want = direct_predict("digits", {"pixels": x})["probabilities"]
    assert got.shape == (rows, 10)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_padding_plan_pads_when_batches_cost_the_same() -> None:
    # Memory-bound: a batch of 8 costs what a batch of 1 does, so every count is padded.
    plan = padding_plan({1: 1.0, 2: 1.0, 4: 1.05, 8: 1.1})
    assert plan[3] == ((3, 4),) and plan[5] == ((5, 8),) and plan[8] == ((8, 8),)


def test_padding_plan_splits_when_compute_grows_with_rows() -> None:
    # Compute-bound: cost per row; padding 3 rows to 4 wastes a row, 5 to 8 three.
    plan = padding_plan({1: 1.0, 2: 2.0, 4: 4.0, 8: 8.0})
    assert plan[3] == ((2, 2), (1, 1))
    assert plan[5] == ((4, 4), (1, 1))
    assert plan[7] == ((4, 4), (2, 2), (1, 1))
    assert all(sum(n for n, _ in p) == rows for rows, p in plan.items())
    # A split that is not clearly cheaper (within timing noise) is not taken.
    assert padding_plan({1: 1.0, 2: 1.0, 4: 2.1})[3] == ((3, 4),)


def test_split_plan_matches_direct_interpreter() -> None:
    m = load("digits")
    assert m.prepare([1, 2, 4, 8])
    m._plan = padding_plan({1: 1.0, 2: 2.0, 4: 4.0, 8: 8.0})  # as a conv net would time
    for rows in (3, 7):
        x = digits_rows(rows)
        got = m.run({"pixels": x})["probabilities"]
        want = direct_predict("digits", {"pixels": x})["probabilities"]
        assert got.shape == (rows, 10)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_conv_model_batches() -> None:
    m = load("digits_cnn")
    assert m.prepare([1, 4, 8])
    x = digits_rows(6).reshape(6, 8, 8, 1)
    got = m.run({"image": x})["probabilities"]
    want = direct_predict("digits_cnn", {"image": x})["probabilities"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_fixed_batch_model_is_detected_and_runs_row_by_row() -> None:
    m = load("fixed")
    assert m.signature.native_batch == 1
    assert not m.prepare([1, 2, 4, 8])
    assert not m.batchable and m.chunk == 1
    x = digits_rows(5)
    got = m.run({"pixels": x})["probabilities"]
    want = np.concatenate(
        [direct_predict("fixed", {"pixels": x[i : i + 1]})["probabilities"] for i in range(5)]
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_not_a_model_is_refused(tmp_path: object) -> None:
    bad = MODELS / "digits_sample.npz"
    with pytest.raises(BadInput, match="not a TFLite model"):
        read_model_bytes(bad)
