"""Calling the ``ensemble`` model the ways Triton users do: gRPC streaming (tritonclient, also with asyncio)
and HTTP's ``generate`` / ``generate_stream`` (server-sent events). Each call yields ``Chunk``s as they arrive.

Any ensemble input can be passed by name (``max_tokens=64, temperature=0.7, stop_words=["\\n\\n"]``); the
last chunk carries the request's statistics.
"""
from __future__ import annotations

import json
import queue
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import AsyncIterator, Iterator

import numpy as np

from pearl.schema import OUTPUTS, PASSED_INPUTS

MODEL = "ensemble"  # or "pearl_bls": the same pipeline as one model, which honours gRPC cancellation
STATS = tuple(output.name for output in OUTPUTS)  # the statistics outputs, in every final response
VECTOR_STATS = frozenset(output.name for output in OUTPUTS if output.vector)  # lists, not numbers
# Triton datatypes of the ensemble's inputs (triton_repo/ensemble/config.pbtxt: its own, then pearl.schema's)
INPUT_TYPES = {
    "text_input": "BYTES", "max_tokens": "INT32", "bad_words": "BYTES", "stop_words": "BYTES", "end_id": "INT32",
    "pad_id": "INT32", "stream": "BOOL",
    **{i.name: i.triton_type.removeprefix("TYPE_").replace("STRING", "BYTES") for i in PASSED_INPUTS},
}
NUMPY_TYPES = {"BYTES": np.object_, "INT32": np.int32, "BOOL": np.bool_, "FP32": np.float32, "UINT64": np.uint64}


class RequestFailed(RuntimeError):
    """The server answered with an error (bad input, or a failure while generating)."""


@dataclass
class Chunk:
    text: str
    stats: dict[str, float | list[int]] = field(default_factory=dict)  # set on the last chunk
    finish_reason: str = ""  # "stop" or "length" on the last chunk


def to_array(name: str, value) -> np.ndarray:
    """One request's value as a [1, ...] tensor of the input's Triton type."""
    dtype = NUMPY_TYPES[INPUT_TYPES[name]]
    values = value if isinstance(value, (list, tuple)) else [value]
    if dtype is np.object_:
        values = [v.encode("utf-8") if isinstance(v, str) else v for v in values]
    return np.array([values], dtype=dtype)


def grpc_generate(url: str, text: str, stream: bool = True, timeout: float = 600.0, *, model: str = MODEL,
                  **inputs) -> Iterator[Chunk]:
    """Stream over gRPC (``ModelStreamInfer``): one Chunk per response, the last with statistics."""
    import tritonclient.grpc as grpcclient

    tensors = infer_inputs(grpcclient.InferInput, {"text_input": text, "stream": stream, **inputs})
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    try:
        client.start_stream(callback=lambda result, error: responses.put((result, error)))
        client.async_stream_infer(model, tensors, enable_empty_final_response=True)
        while True:
            result, error = responses.get(timeout=timeout)
            if error is not None:
                raise RequestFailed(str(error))
            final = is_final(result.get_response())
            if result.get_response().outputs:
                yield grpc_chunk(result, final)
            if final:
                return
    finally:
        client.stop_stream()
        client.close()


async def grpc_generate_async(client, text: str, *, model: str = "pearl_bls", **inputs) -> AsyncIterator[Chunk]:
    """``ModelStreamInfer`` over ``client`` (a ``tritonclient.grpc.aio.InferenceServerClient``): one Chunk per
    response, the last with statistics. Leaving early (the caller is cancelled, or stops iterating) cancels
    the gRPC call, which stops the generation: pearl_bls hears of it, an ensemble's running step does not."""
    import tritonclient.grpc.aio as aio

    tensors = infer_inputs(aio.InferInput, {"text_input": text, **inputs})

    async def requests():
        yield {"model_name": model, "inputs": tensors}

    responses = client.stream_infer(requests())
    finished = False
    try:
        async for result, error in responses:
            if error is not None:
                finished = True
                raise RequestFailed(str(error))
            response = result.get_response()
            final = is_final(response)
            if response.outputs:
                yield grpc_chunk(result, final)
            if final:
                finished = True
                return
    finally:
        if not finished:
            responses.cancel()


def is_final(response) -> bool:
    """Whether a ModelStreamInfer response is the request's last (a model that is not decoupled answers once,
    and Triton may not mark that answer final)."""
    return ("triton_final_response" not in response.parameters
            or response.parameters["triton_final_response"].bool_param)


def infer_inputs(infer_input, inputs: dict) -> list:
    """tritonclient InferInputs (grpc, grpc.aio or http: ``infer_input`` is its class) for inputs by name."""
    tensors = []
    for name, value in inputs.items():
        array = to_array(name, value)
        tensors.append(infer_input(name, list(array.shape), INPUT_TYPES[name]))
        tensors[-1].set_data_from_numpy(array)
    return tensors


def grpc_chunk(result, final: bool) -> Chunk:
    """One response as a Chunk (its statistics and finish reason only when it is the final one)."""
    def value(name: str):
        array = result.as_numpy(name).reshape(-1)
        return array.tolist() if name in VECTOR_STATS else array[0].item()

    text = result.as_numpy("text_output").reshape(-1)[0].decode("utf-8")
    if not final:
        return Chunk(text)
    return Chunk(text, {name: value(name) for name in STATS},
                 result.as_numpy("finish_reason").reshape(-1)[0].decode("utf-8"))


def http_generate(url: str, text: str, timeout: float = 600.0, *, model: str = MODEL, **inputs) -> Chunk:
    """``POST /v2/models/<model>/generate``: the whole answer in one JSON response."""
    body = _post(url, model, "generate", {"text_input": text, **inputs}, timeout)
    return _http_chunk(json.loads(body.read()), final=True)


def http_generate_stream(url: str, text: str, timeout: float = 600.0, *, model: str = MODEL,
                         **inputs) -> Iterator[Chunk]:
    """``POST /v2/models/<model>/generate_stream``: server-sent events, one per response."""
    events = []
    with _post(url, model, "generate_stream", {"text_input": text, "stream": True, **inputs}, timeout) as body:
        for line in body:
            line = line.decode("utf-8").strip()
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: "):]))
                if "error" in events[-1]:
                    raise RequestFailed(events[-1]["error"])
                if len(events) > 1:  # the last event is known only when the stream ends
                    yield _http_chunk(events[-2], final=False)
    if events:
        yield _http_chunk(events[-1], final=True)


def _post(url: str, model: str, endpoint: str, payload: dict, timeout: float):
    request = urllib.request.Request(f"http://{url}/v2/models/{model}/{endpoint}", method="POST",
                                     data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        raise RequestFailed(f"HTTP {exc.code}: {message}") from None


def _http_chunk(event: dict, final: bool) -> Chunk:
    if not final:
        return Chunk(event["text_output"])
    # Triton's generate JSON writes a one-element tensor as a scalar
    stats = {name: [event[name]] if name in VECTOR_STATS and not isinstance(event[name], list) else event[name]
             for name in STATS}
    return Chunk(event["text_output"], stats, event["finish_reason"])
