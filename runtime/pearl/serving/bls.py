"""The ``pearl_bls`` model's work: the ensemble's steps, read from the ensemble's own config.pbtxt, run as
BLS calls (like TensorRT-LLM's ``tensorrt_llm_bls``), so that a client cancelling its gRPC stream stops the
generation.

Why: tritonserver 2.51 tells a top-level model that its request was cancelled, but checks an ensemble's
cancellation only between steps, never inside the decoupled ``pearl`` step that is running (measured:
``pearl`` generates to the end). This model is top level, so it sees the cancellation, and then stops the
running ``pearl`` request the way TensorRT-LLM stops one: a request with the ``stop`` input and the same
request id.

The Triton calls are injected (``infer``, ``send``, ``fail``, ``cancelled``), so the flow is plain Python.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

STREAMING_MODEL = "pearl"
FINAL_OUTPUT = "is_final"  # the pearl model's flag on its last response
# a stop request: the pearl model's required inputs (values unused) and ``stop``
STOP_INPUTS = {"input_ids": np.zeros((1, 1), np.int32), "input_lengths": np.ones((1, 1), np.int32),
               "request_output_len": np.ones((1, 1), np.int32), "stop": np.ones((1, 1), bool)}


@dataclass(frozen=True)
class EnsembleStep:
    """One model of the pipeline; maps are model tensor name -> pipeline tensor name, as in the ensemble."""

    model: str
    input_map: dict[str, str]
    output_map: dict[str, str]

    def inputs(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: tensors[source] for name, source in self.input_map.items() if source in tensors}

    def outputs(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {self.output_map[name]: value for name, value in outputs.items() if name in self.output_map}


@dataclass(frozen=True)
class Pipeline:
    before: tuple[EnsembleStep, ...]  # run once (preprocessing)
    streaming: EnsembleStep  # the decoupled model (pearl): one response per round
    after: tuple[EnsembleStep, ...]  # run on each of its responses (postprocessing)
    outputs: tuple[str, ...]  # what the client gets

    @classmethod
    def from_ensemble_config(cls, path: str | Path) -> "Pipeline":
        config = read_model_config(path)
        steps = [EnsembleStep(s.model_name, dict(s.input_map), dict(s.output_map)) for s in config.ensemble_scheduling.step]
        position = [s.model for s in steps].index(STREAMING_MODEL)
        return cls(tuple(steps[:position]), steps[position], tuple(steps[position + 1:]),
                   tuple(o.name for o in config.output))


def read_model_config(path: str | Path):
    """A config.pbtxt as Triton's ModelConfig message (the schema ships with tritonclient)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(Path(path).read_text(), model_config_pb2.ModelConfig())


def ensemble_io(path: str | Path) -> tuple[list[dict], list[dict]]:
    """The ensemble's inputs and outputs in the form a Python model's ``auto_complete_config`` adds them, so
    ``pearl_bls`` takes exactly what ``ensemble`` takes without a second copy of the list."""
    from tritonclient.grpc import model_config_pb2

    def tensor(t) -> dict:
        entry = {"name": t.name, "data_type": model_config_pb2.DataType.Name(t.data_type), "dims": list(t.dims)}
        return entry | ({"optional": True} if getattr(t, "optional", False) else {})

    config = read_model_config(path)
    return [tensor(t) for t in config.input], [tensor(t) for t in config.output]


class StepFailed(Exception):
    """A step answered with an error; ``kind`` as the pearl model's error kinds ("invalid", ...)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.message, self.kind = message, kind


# (step, inputs, request id, decoupled) -> the step's outputs, one dict per response; raises StepFailed
Infer = Callable[[EnsembleStep, dict[str, np.ndarray], str, bool], Iterator[dict[str, np.ndarray]]]


def run(pipeline: Pipeline, tensors: dict[str, np.ndarray], request_id: str, infer: Infer,
        send: Callable[[dict[str, np.ndarray], bool], None], fail: Callable[[str, str], None],
        cancelled: Callable[[], bool]) -> None:
    """Serve one client request through the pipeline; every path ends with one final send or one fail."""
    try:
        for step in pipeline.before:
            tensors = tensors | step.outputs(next(iter(infer(step, step.inputs(tensors), request_id, False))))
        stopping = finished = False
        for outputs in infer(pipeline.streaming, pipeline.streaming.inputs(tensors), request_id, True):
            if not stopping and cancelled():
                stopping = True  # the pearl model ends the request after its round; its last responses drain
                for _ in infer(pipeline.streaming, STOP_INPUTS, request_id, True):
                    pass
            if stopping or not outputs:
                continue
            response = tensors | pipeline.streaming.outputs(outputs)
            for step in pipeline.after:
                response |= step.outputs(next(iter(infer(step, step.inputs(response), request_id, False))))
            finished = bool(np.asarray(outputs.get(FINAL_OUTPUT, False)).reshape(-1)[0])
            send({name: response[name] for name in pipeline.outputs if name in response}, finished)
        if stopping:
            fail("the request was cancelled", "cancelled")
        elif not finished:
            fail(f"{pipeline.streaming.model} ended the request without a final response", "error")
    except StepFailed as exc:
        fail(exc.message, "cancelled" if cancelled() else exc.kind)
