"""The ``pearl`` Triton model's request tensors -> the request's final ``GenerationRequest``, validated here and
nowhere again (the edge: the world host and the ranks take it as it is), or a clear error.

Tensor names are those of TensorRT-LLM's ``tensorrt_llm`` model (all_models/inflight_batcher_llm), so the
ensemble routes them the same way. Every tensor arrives with a leading batch dimension of 1. Inputs that
TensorRT-LLM accepts but PEARL cannot honour (beam search, LoRA, logits outputs, penalties) are refused
by name unless they hold their neutral value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pearl.params import GenerationRequest, Mode, SamplingParams
from pearl.serving import words
from pearl.streams import PairLimits

# input name -> the value that means "not used" (anything else is refused)
NEUTRAL_INPUTS = {
    "beam_width": 1, "num_return_sequences": 1, "return_log_probs": False, "return_context_logits": False,
    "return_generation_logits": False, "repetition_penalty": 1.0, "presence_penalty": 0.0,
    "frequency_penalty": 0.0, "min_tokens": 0, "prompt_vocab_size": 0,
}
UNSUPPORTED_INPUTS = ("lora_task_id", "lora_weights", "lora_config", "prompt_embedding_table", "embedding_bias",
                      "guided_decoding_guide_type", "guided_decoding_guide")


class RequestError(ValueError):
    """A request the server refuses; the message goes back to the client as an INVALID_ARG error."""


@dataclass(frozen=True)
class ServingRequest:
    generation: GenerationRequest  # gamma None: adaptive windows (num_draft_tokens 0 or absent)
    stream: bool
    exclude_input: bool


def scalar(inputs: dict[str, np.ndarray], name: str, default=None):
    """One value from a [1, 1] (or [1]) tensor; ``default`` when the optional input is absent."""
    if name not in inputs:
        return default
    values = np.asarray(inputs[name]).reshape(-1)
    if values.size != 1:
        raise RequestError(f"input {name!r} must hold exactly one value per request, got shape "
                           f"{list(np.shape(inputs[name]))}")
    value = values[0]
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value.item()


def parse_request(inputs: dict[str, np.ndarray], limits: PairLimits, request_id: int) -> ServingRequest:
    """The request, checked against the pair's ``limits`` (vocabulary, length, end token)."""
    check_batch_of_one(inputs)
    refuse_unsupported(inputs)
    prompt = np.asarray(inputs["input_ids"]).reshape(-1)
    length = scalar(inputs, "input_lengths", prompt.size)
    if not 0 < length <= prompt.size:
        raise RequestError(f"input_lengths {length} does not fit input_ids of {prompt.size} tokens")
    temperature = float(scalar(inputs, "temperature", 0.0))
    if not math.isfinite(temperature) or temperature < 0:
        raise RequestError(f"temperature must be a finite number >= 0, got {temperature}")
    end_id = scalar(inputs, "end_id")
    if end_id is not None and end_id >= 0 and int(end_id) not in limits.eos_token_ids:
        raise RequestError(f"end_id {end_id} is not this pair's end token (ids {list(limits.eos_token_ids)}); "
                           f"leave it out to use the model's")
    bad_words = words.from_tensor(inputs["bad_words_list"]) if "bad_words_list" in inputs else ()
    if bad_words:
        raise RequestError("bad_words is not supported by the pearl model (it would change the target's "
                           "distribution); send an empty list")
    stops = words.from_tensor(inputs["stop_words_list"]) if "stop_words_list" in inputs else ()
    try:
        sampling = SamplingParams(temperature=temperature, top_k=int(scalar(inputs, "runtime_top_k", 0)),
                                  top_p=float(scalar(inputs, "runtime_top_p", 1.0)),
                                  seed=int(scalar(inputs, "seed", 0)),
                                  max_tokens=int(scalar(inputs, "request_output_len", 0)), stop_token_ids=stops)
        mode = Mode.parse(str(scalar(inputs, "decoding_mode", "pearl")))
    except ValueError as exc:
        raise RequestError(str(exc)) from None
    gamma = scalar(inputs, "num_draft_tokens", 0)
    if gamma < 0:
        raise RequestError(f"num_draft_tokens must be >= 1 (or 0 for adaptive windows), got {gamma}")
    try:
        request = GenerationRequest(request_id, tuple(int(t) for t in prompt[:length]), sampling, mode,
                                    int(gamma) or None)
        limits.check(request)
    except ValueError as exc:  # too long for the pair, ids outside the vocabulary, ...
        raise RequestError(str(exc)) from None
    return ServingRequest(request, stream=bool(scalar(inputs, "streaming", False)),
                          exclude_input=bool(scalar(inputs, "exclude_input_in_output", False)))


def check_batch_of_one(inputs: dict[str, np.ndarray]) -> None:
    if "input_ids" not in inputs:
        raise RequestError("missing input_ids")
    for name, value in inputs.items():
        if np.ndim(value) == 0 or np.shape(value)[0] != 1:
            raise RequestError(f"input {name!r} has batch size {np.shape(value)[:1]}; send one prompt per request "
                               f"(concurrent requests are served together)")


def refuse_unsupported(inputs: dict[str, np.ndarray]) -> None:
    for name in UNSUPPORTED_INPUTS:
        if name in inputs and np.size(inputs[name]) and np.any(np.asarray(inputs[name]) != 0):
            raise RequestError(f"input {name!r} is not supported by the pearl model")
    for name, neutral in NEUTRAL_INPUTS.items():
        value = scalar(inputs, name)
        if value is not None and value != neutral:
            raise RequestError(f"input {name!r}={value} is not supported by the pearl model (only {neutral!r}); "
                               f"PEARL serves one greedy or sampled sequence per request")
