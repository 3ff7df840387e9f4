"""A repository filled with ``decoupled_mode`` false: the ensemble answers each request once, so the plain
``infer`` calls work on it (``tritonclient.http`` and gRPC unary), equal to the runtime's greedy `ar` text;
the ``stream`` input is refused with a clear error."""
from __future__ import annotations

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conftest import CACHE_DIR, REPO, ar_records, free_port
from pearl.serving.client import RequestFailed, grpc_generate, infer_inputs
from pearl.serving.repository import build_repository, values_for_engines
from pearl.serving.server import TritonServer

pytestmark = [pytest.mark.mpi, pytest.mark.triton]

PROMPT = "The capital of France is"
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def server(smollm2_engines, tmp_path_factory):
    values = values_for_engines(smollm2_engines, decoupled_mode="false")
    repository = build_repository(REPO / "triton_repo", tmp_path_factory.mktemp("triton") / "repo", values)
    with TritonServer(repository, CACHE_DIR, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                      log_file=tmp_path_factory.mktemp("log") / "server.log") as server:
        yield server


@pytest.fixture(scope="module")
def expected(smollm2_engines) -> str:
    return ar_records(smollm2_engines, [PROMPT], MAX_TOKENS)[PROMPT]["text"]


INPUTS = {"text_input": PROMPT, "max_tokens": MAX_TOKENS, "exclude_input_in_output": True}


@pytest.mark.parametrize("model", ["ensemble", "pearl_bls"])
def test_http_infer_answers_once_with_the_runtime_text(server, expected, model):
    client = httpclient.InferenceServerClient(server.http_url)
    result = client.infer(model, infer_inputs(httpclient.InferInput, INPUTS))
    assert result.as_numpy("text_output").reshape(-1)[0].decode() == expected
    assert result.as_numpy("finish_reason").reshape(-1)[0].decode() == "length"
    assert result.as_numpy("generated_tokens").reshape(-1)[0] == MAX_TOKENS


def test_grpc_unary_infer_answers_once_with_the_runtime_text(server, expected):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    # a fixed window, so that the draft's statistics have something to count (an adaptive request on this pair
    # may decode alone: test_triton_server's check_stats)
    result = client.infer("ensemble", infer_inputs(grpcclient.InferInput, {**INPUTS, "num_draft_tokens": 3}))
    assert result.as_numpy("text_output").reshape(-1)[0].decode() == expected
    assert result.as_numpy("total_draft_tokens").reshape(-1)[0] > 0


def test_the_stream_input_is_refused(server):
    with pytest.raises(RequestFailed, match="streaming needs a decoupled deployment"):
        list(grpc_generate(server.grpc_url, PROMPT, stream=True, max_tokens=4))
    assert list(grpc_generate(server.grpc_url, PROMPT, stream=False, max_tokens=4))[-1].stats  # still serving
