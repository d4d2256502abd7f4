"""Triton's own HTTP client against servekit: model configuration and statistics
(perf_analyzer, over HTTP and gRPC, is in test_grpc_kserve.py)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from conftest import ServerProcess, digits_rows, direct_predict


@pytest.fixture()
def tc(repo_server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(repo_server.url.removeprefix("http://"))
    yield client
    client.close()


def test_get_model_config(tc: triton.InferenceServerClient) -> None:
    config = tc.get_model_config("multi")
    assert config["name"] == "multi"
    assert config["platform"] == "tensorflow_lite"
    assert config["max_batch_size"] == 32
    assert config["input"] == [
        {"name": "bias", "data_type": "TYPE_INT32", "dims": [10]},
        {"name": "features", "data_type": "TYPE_FP32", "dims": [64]},
    ]
    assert "dynamic_batching" in config
    assert tc.get_model_config("multi", "1") == config
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        tc.get_model_config("nope")
    with pytest.raises(InferenceServerException, match="no version 7"):
        tc.get_model_config("multi", "7")


def test_get_inference_statistics_follow_traffic(tc: triton.InferenceServerClient) -> None:
    def stats() -> dict[str, object]:
        (entry,) = tc.get_inference_statistics("digits", "1")["model_stats"]
        return entry

    before = stats()
    x = digits_rows(3)
    inp = triton.InferInput("pixels", [3, 64], "FP32")
    inp.set_data_from_numpy(x)
    for _ in range(4):
        got = tc.infer("digits", [inp]).as_numpy("probabilities")
        want = direct_predict("digits", {"pixels": x})["probabilities"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    after = stats()
    assert after["name"] == "digits" and after["version"] == "1"
    assert after["inference_count"] - before["inference_count"] == 12
    success = after["inference_stats"]["success"]["count"]
    assert success - before["inference_stats"]["success"]["count"] == 4
    assert after["inference_stats"]["compute_infer"]["ns"] > 0
    everything = tc.get_inference_statistics()["model_stats"]
    assert {(s["name"], s["version"]) for s in everything} >= {("digits", "1"), ("multi", "1")}
    with pytest.raises(InferenceServerException, match="unknown model"):
        tc.get_inference_statistics("nope")


def test_server_metadata_lists_the_extensions(tc: triton.InferenceServerClient) -> None:
    extensions = tc.get_server_metadata()["extensions"]
    assert {"model_configuration", "statistics", "binary_tensor_data"} <= set(extensions)
