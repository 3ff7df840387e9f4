"""pearl.serving.bls without Triton: the pipeline read from the ensemble's own config, and the flow of one
request through it with the models' calls faked: streamed responses, cancellation (a stop request with the
same id), a step's error, a stream that never ends properly."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import REPO
from pearl.serving.bls import STOP_INPUTS, Pipeline, StepFailed, ensemble_io, run
from pearl.serving.repository import DEFAULTS, fill_text


@pytest.fixture(scope="module")
def ensemble_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("ensemble") / "config.pbtxt"
    path.write_text(fill_text((REPO / "triton_repo" / "ensemble" / "config.pbtxt").read_text(), DEFAULTS, "ensemble"))
    return path


@pytest.fixture(scope="module")
def pipeline(ensemble_config):
    return Pipeline.from_ensemble_config(ensemble_config)


class FakeModels:
    """preprocessing -> ids, pearl -> ``rounds`` responses (the last final), postprocessing -> text."""

    def __init__(self, rounds: int = 3, pearl_error: str | None = None) -> None:
        self.rounds, self.pearl_error = rounds, pearl_error
        self.calls: list[tuple[str, dict, str]] = []

    def infer(self, step, inputs, request_id, decoupled):
        self.calls.append((step.model, inputs, request_id))
        if step.model == "preprocessing":
            yield {"INPUT_ID": np.array([[5, 6]]), "REQUEST_INPUT_LEN": np.array([[2]]),
                   "REQUEST_OUTPUT_LEN": inputs["REQUEST_OUTPUT_LEN"]}
        elif step.model == "postprocessing":
            yield {"OUTPUT": np.array([f"text{int(inputs['SEQUENCE_LENGTH'][0, 0])}".encode()], dtype=object)}
        elif "stop" in inputs:
            yield {}
        else:
            assert decoupled and inputs["input_ids"].tolist() == [[5, 6]]
            for i in range(self.rounds):
                if self.pearl_error and i == 1:
                    raise StepFailed(self.pearl_error, "invalid")
                yield {"output_ids": np.array([[[1] * (i + 1)]]), "sequence_length": np.array([[i + 1]]),
                       "previous_length": np.array([[i]]), "is_final": np.array([[i == self.rounds - 1]]),
                       "target_forwards": np.array([[i + 1]], dtype=np.int32)}


class Client:
    def __init__(self, cancel_after: int | None = None) -> None:
        self.sent, self.failed, self.cancel_after = [], [], cancel_after

    def send(self, outputs, final):
        self.sent.append((outputs, final))

    def fail(self, message, kind):
        self.failed.append((message, kind))

    def cancelled(self):
        return self.cancel_after is not None and len(self.sent) >= self.cancel_after


REQUEST = {"text_input": np.array([[b"hi"]], dtype=object), "max_tokens": np.array([[8]], dtype=np.int32)}


def serve(pipeline, models: FakeModels, client: Client) -> None:
    run(pipeline, dict(REQUEST), "req-1", models.infer, client.send, client.fail, client.cancelled)


def test_the_pipeline_is_the_ensembles(pipeline, ensemble_config):
    assert [s.model for s in pipeline.before] == ["preprocessing"] and pipeline.streaming.model == "pearl"
    assert [s.model for s in pipeline.after] == ["postprocessing"]
    assert pipeline.outputs[0] == "text_output" and "target_forwards" in pipeline.outputs
    inputs, outputs = ensemble_io(ensemble_config)
    assert inputs[0] == {"name": "text_input", "data_type": "TYPE_STRING", "dims": [1]}
    assert {"name": "stream", "data_type": "TYPE_BOOL", "dims": [1], "optional": True} in inputs
    assert [o["name"] for o in outputs] == list(pipeline.outputs)


def test_each_round_is_postprocessed_and_sent_the_last_one_final(pipeline):
    models, client = FakeModels(rounds=3), Client()
    serve(pipeline, models, client)
    assert [final for _, final in client.sent] == [False, False, True] and not client.failed
    assert [o["text_output"][0] for o, _ in client.sent] == [b"text1", b"text2", b"text3"]
    assert set(client.sent[-1][0]) == {"text_output", "target_forwards"}  # only the ensemble's outputs
    assert {request_id for _, _, request_id in models.calls} == {"req-1"}


def test_a_cancelled_client_stops_the_pearl_request_by_its_id(pipeline):
    models, client = FakeModels(rounds=5), Client(cancel_after=1)
    serve(pipeline, models, client)
    stops = [(inputs, request_id) for model, inputs, request_id in models.calls if "stop" in inputs]
    assert stops == [(STOP_INPUTS, "req-1")]
    assert len(client.sent) == 1 and client.failed == [("the request was cancelled", "cancelled")]


def test_a_step_error_reaches_the_client_with_its_kind(pipeline):
    client = Client()
    serve(pipeline, FakeModels(rounds=3, pearl_error="max_tokens must be >= 1"), client)
    assert client.failed == [("max_tokens must be >= 1", "invalid")] and len(client.sent) == 1


def test_a_stream_without_a_final_response_is_an_error(pipeline):
    class Unfinished(FakeModels):
        def infer(self, step, inputs, request_id, decoupled):
            for outputs in super().infer(step, inputs, request_id, decoupled):
                if "is_final" in outputs:
                    outputs["is_final"] = np.array([[False]])
                yield outputs

    client = Client()
    serve(pipeline, Unfinished(rounds=2), client)
    assert client.failed and client.failed[0][1] == "error" and "without a final response" in client.failed[0][0]
