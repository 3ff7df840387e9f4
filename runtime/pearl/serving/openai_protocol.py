"""OpenAI's API in our terms: the request bodies of ``/v1/completions`` and ``/v1/chat/completions`` (checked
once, here) -> the ensemble's inputs, and the ensemble's final outputs -> OpenAI's response bodies, chunks,
``usage`` and errors. No FastAPI, no Triton: the app (``openai_app``) wires these to both.

Beyond OpenAI's fields a request may name the ensemble's decoding inputs (``num_draft_tokens``: a fixed window,
0 or absent adaptive; ``decoding_mode``: pearl, sd or ar), as vLLM takes its own extensions (``top_k``), and
every final body (and the trailing usage chunk of a stream) has ``metrics``:
``speculative_decoding`` in vLLM's per-request shape (what AIPerf reads) and ``pearl``, the ensemble's own
statistics outputs (``pearl.schema.OUTPUTS``).
"""
from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pearl.schema import OUTPUTS

# vLLM's metrics.speculative_decoding field -> the ensemble output it is (docs/clients.md has the meanings)
SPEC_DECODE_FIELDS = {
    "mean_acceptance_length": "mean_acceptance_length",
    "draft_acceptance_rate": "draft_acceptance_rate",
    "acceptance_histogram": "acceptance_histogram",
    "num_spec_steps": "drafted_rounds",
    "num_accepted_draft_tokens": "total_accepted_draft_tokens",
    "num_draft_tokens": "checked_draft_tokens",
}
# an error kind (pearl.serving.errors) -> (HTTP status, OpenAI's error type)
ERROR_STATUS = {"invalid": (400, "invalid_request_error"), "not_found": (404, "invalid_request_error"),
                "unavailable": (503, "server_error"), "timeout": (503, "server_error"),
                "cancelled": (503, "server_error"), "overloaded": (503, "server_error"),
                "error": (500, "server_error")}


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """What both endpoints take. Unknown fields are ignored (as vLLM does); fields PEARL cannot honour are
    refused, by the ensemble where it has the input (penalties) and here where it has not."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = None
    temperature: float = 1.0  # OpenAI's default: sampled
    top_p: float | None = None
    top_k: int | None = None  # vLLM's extension
    seed: int | None = Field(None, ge=0, lt=2**64)
    stop: str | list[str] | None = Field(None, validate_default=True)  # always a list once checked
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    num_draft_tokens: int | None = None  # the ensemble's inputs (TensorRT-LLM's names), checked there
    decoding_mode: str | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("n must be 1: PEARL serves one sequence per request")
        return n

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop):
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > 4:
            raise ValueError("stop takes at most 4 sequences")
        return stops

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def ensemble_inputs(self, text: str, default_max_tokens: int) -> dict:
        """The ensemble's inputs (by name, as pearl.serving.client takes them) for a prompt text."""
        # 0 goes through: the ensemble refuses it with its own message
        max_tokens = default_max_tokens if self.max_tokens is None else self.max_tokens
        inputs = {"text_input": text, "max_tokens": max_tokens, "stream": self.stream,
                  "exclude_input_in_output": True, "temperature": self.temperature}
        optional = {"top_p": self.top_p, "top_k": self.top_k, "seed": self.seed,
                    "presence_penalty": self.presence_penalty, "frequency_penalty": self.frequency_penalty,
                    "num_draft_tokens": self.num_draft_tokens, "decoding_mode": self.decoding_mode}
        inputs.update({name: value for name, value in optional.items() if value is not None})
        if self.stop:
            inputs["stop_words"] = self.stop
        return inputs


class CompletionRequest(SamplingRequest):
    prompt: str | list[str]
    max_tokens: int | None = 16  # OpenAI's default for completions
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt):
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if len(prompts) != 1:
            raise ValueError("send one prompt per request (concurrent requests are served together)")
        return prompts[0]

    @field_validator("echo", "suffix", "logprobs")
    @classmethod
    def _unsupported(cls, value, info):
        if value:
            raise ValueError(f"{info.field_name} is not supported by the pearl model")
        return value


class ContentPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def as_template_message(self) -> dict:
        """What a chat template takes: role and text ("developer" is OpenAI's newer name for "system")."""
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class ChatRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None  # OpenAI's newer name for max_tokens
    logprobs: bool = False

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value):
        if value:
            raise ValueError("logprobs is not supported by the pearl model")
        return value

    def ensemble_inputs(self, text: str, default_max_tokens: int) -> dict:
        if self.max_tokens is None and self.max_completion_tokens is not None:
            return self.model_copy(update={"max_tokens": self.max_completion_tokens}).ensemble_inputs(
                text, default_max_tokens)
        return super().ensemble_inputs(text, default_max_tokens)


def new_id(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"


class Responses:
    """The bodies of one request's response: chunks while streaming, then a final body or usage chunk."""

    def __init__(self, chat: bool, model: str) -> None:
        self.chat, self.model = chat, model
        self.id, self.created = new_id(chat), int(time.time())

    def _envelope(self, choices: list[dict], chunk: bool) -> dict:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    def _choice(self, text: str, finish_reason: str | None, chunk: bool, first: bool = False) -> dict:
        if not self.chat:
            return {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
        if chunk:
            delta = {"role": "assistant", "content": text} if first else {"content": text}
            return {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason,
                "logprobs": None}

    def chunk(self, text: str, first: bool = False) -> dict:
        return self._envelope([self._choice(text, None, True, first)], True)

    def last_chunk(self, text: str, finish_reason: str, stats: dict, include_usage: bool) -> list[dict]:
        """The chunk with the finish reason (and metrics); then, when asked for, the usage chunk."""
        last = self._envelope([self._choice(text, finish_reason, True)], True) | {"metrics": metrics(stats)}
        if not include_usage:
            return [last]
        return [last, self._envelope([], True) | {"usage": usage(stats), "metrics": metrics(stats)}]

    def body(self, text: str, finish_reason: str, stats: dict) -> dict:
        return self._envelope([self._choice(text, finish_reason, False)], False) | {
            "usage": usage(stats), "metrics": metrics(stats)}


def usage(stats: dict) -> dict:
    prompt, completion = int(stats["prompt_tokens"]), int(stats["generated_tokens"])
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def metrics(stats: dict) -> dict:
    """vLLM's per-request speculative-decoding figures, and PEARL's statistics as the ensemble outputs them."""
    def number(value):
        return round(value, 6) if isinstance(value, float) else value

    pearl = {output.name: number(stats[output.name]) for output in OUTPUTS}
    return {"speculative_decoding": {name: pearl[output] for name, output in SPEC_DECODE_FIELDS.items()},
            "pearl": pearl}


def error_body(message: str, kind: str, param: str | None = None) -> tuple[int, dict]:
    """(HTTP status, OpenAI's error object) for an error kind."""
    status, error_type = ERROR_STATUS.get(kind, ERROR_STATUS["error"])
    code = "model_not_found" if kind == "not_found" else None
    return status, {"error": {"message": message, "type": error_type, "param": param, "code": code}}


class StopText:
    """OpenAI leaves a stop sequence out of the text; the pearl model (like TensorRT-LLM) ends the output with
    it. While streaming, a tail that may be the start of a stop sequence is held back until the next piece
    shows whether it is one; the final piece drops a stop sequence that ends the output."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [stop for stop in stops if stop]
        self.held = ""

    def feed(self, text: str) -> str:
        text, self.held = self.held + text, ""
        keep = max((k for stop in self.stops for k in range(1, len(stop) + 1) if text.endswith(stop[:k])), default=0)
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def finish(self, text: str, finish_reason: str) -> str:
        text, self.held = self.held + text, ""
        if finish_reason == "stop":
            for stop in self.stops:
                if text.endswith(stop):
                    return text[:-len(stop)]
        return text
