"""The OpenAI-compatible HTTP API in front of the Triton deployment: ``GET /v1/models``, ``POST
/v1/completions`` and ``POST /v1/chat/completions``, streamed (server-sent events ending ``data: [DONE]``)
and not. A FastAPI app (``create_app``) and a uvicorn server on a thread (``OpenAIServer``), which
``pearl serve`` starts next to Triton.

Triton stays the server: every request is one gRPC stream to ``pearl_bls`` (the ensemble's pipeline as one
model, which hears of cancellation), so a client that closes its connection cancels the generation. Request
bodies and response shapes live in ``openai_protocol``; this module only moves them between HTTP and Triton.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException
from tritonclient.utils import InferenceServerException

from pearl.engine_files import read_engine_json
from pearl.serving.client import Chunk, RequestFailed, grpc_generate_async
from pearl.serving.errors import kind_of_message
from pearl.serving.openai_protocol import (ChatRequest, CompletionRequest, Responses, SamplingRequest, StopText,
                                           error_body)
from pearl.text import chat_prompt_text


@dataclass(frozen=True)
class FrontendConfig:
    """What the frontend needs of the deployment behind it."""

    grpc_url: str  # Triton's gRPC address, host:port
    model: str  # the name clients ask for (the pair's)
    tokenizer_dir: str  # the target's tokenizer: chat template, prompt length
    max_seq_len: int  # prompt + output tokens the models take (an absent max_tokens fills the rest)
    add_special_tokens: bool = True  # what the preprocessing model's tokenizer call does
    triton_model: str = "pearl_bls"

    @classmethod
    def for_repository(cls, grpc_url: str, values: dict[str, str]) -> "FrontendConfig":
        """For a repository filled with ``values`` (pearl.serving.repository.values_for_engines)."""
        if values["apply_chat_template"] == "true":
            raise ValueError("the OpenAI frontend applies the chat template itself; fill the repository with "
                             "apply_chat_template=false")
        engine_dir = Path(values["engine_dir"])
        return cls(grpc_url, engine_dir.name, values["tokenizer_dir"],
                   read_engine_json(engine_dir)["config"]["max_seq_len"], values["add_special_tokens"] == "true")


class ApiError(Exception):
    """A request refused or failed, with the error kind it maps to (openai_protocol.ERROR_STATUS)."""

    def __init__(self, message: str, kind: str = "invalid", param: str | None = None) -> None:
        super().__init__(message)
        self.kind, self.param = kind, param


def create_app(config: FrontendConfig) -> FastAPI:
    import tritonclient.grpc.aio as aio

    from pearl.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(config.tokenizer_dir)
    app = FastAPI(title="pearl-serve OpenAI-compatible API")
    clients: dict[asyncio.AbstractEventLoop, object] = {}

    def triton():
        # a grpc.aio channel belongs to the event loop that made it
        loop = asyncio.get_running_loop()
        if loop not in clients:
            clients[loop] = aio.InferenceServerClient(config.grpc_url)
        return clients[loop]

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(str(exc), exc.kind, exc.param)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
        return error_response(f"{param + ': ' if param else ''}{first.get('msg', 'invalid request')}", "invalid",
                              param)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        status, body = error_body(str(exc.detail), "not_found" if exc.status_code == 404 else "invalid")
        body["error"]["code"] = None
        return JSONResponse(body, status_code=exc.status_code)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": config.model, "object": "model", "created": int(time.time()),
                                             "owned_by": "pearl-serve"}]}

    @app.get("/health")
    async def health():
        ready = await triton().is_server_ready()
        return JSONResponse({"triton_ready": ready}, status_code=200 if ready else 503)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await respond(body, body.prompt, chat=False, request=request)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        try:
            text = chat_prompt_text(tokenizer, [m.as_template_message() for m in body.messages],
                                    config.add_special_tokens)
        except ValueError as exc:
            raise ApiError(str(exc), param="messages") from None
        return await respond(body, text, chat=True, request=request)

    async def respond(body: SamplingRequest, text: str, chat: bool, request: Request):
        if body.model != config.model:
            raise ApiError(f"The model `{body.model}` does not exist; this server has `{config.model}`",
                           "not_found", "model")
        prompt_tokens = len(tokenizer(text, add_special_tokens=config.add_special_tokens).input_ids)
        inputs = body.ensemble_inputs(text, max(1, config.max_seq_len - prompt_tokens))
        chunks = generate(triton(), config.triton_model, inputs)
        first = await first_chunk(chunks)  # refusals come before any output: answered with their status
        responses, stops = Responses(chat, config.model), StopText(body.stop)
        if body.stream:
            return StreamingResponse(events(first, chunks, responses, stops, body.include_usage, request),
                                     media_type="text/event-stream")
        await chunks.aclose()
        if not first.stats:
            raise ApiError("Triton sent more than one response to a request that does not stream", "error")
        return responses.body(stops.finish(first.text, first.finish_reason), first.finish_reason, first.stats)

    return app


async def generate(client, model: str, inputs: dict) -> AsyncIterator[Chunk]:
    """The request's Chunks from Triton, with its failures as ApiErrors of their kind."""
    inputs = dict(inputs)
    try:
        # aclosing: leaving early closes the gRPC generator now (which cancels its call), not when collected
        async with aclosing(grpc_generate_async(client, inputs.pop("text_input"), model=model, **inputs)) as stream:
            async for chunk in stream:
                yield chunk
    except RequestFailed as exc:
        kind, message = kind_of_message(str(exc))
        raise ApiError(message, kind) from None
    except (InferenceServerException, grpc.aio.AioRpcError) as exc:  # Triton unreachable, or the stream broke
        raise ApiError(f"the Triton server did not answer: {exc}", "unavailable") from None


async def first_chunk(chunks: AsyncIterator[Chunk]) -> Chunk:
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        raise ApiError("Triton ended the request without a response", "error") from None


async def events(first: Chunk, chunks: AsyncIterator[Chunk], responses: Responses, stops: StopText,
                 include_usage: bool, request: Request) -> AsyncIterator[str]:
    """Server-sent events: a chunk per Triton response, the finish reason (and usage), ``[DONE]``. A client
    gone between responses ends the loop, and closing ``chunks`` cancels the gRPC stream."""
    chunk = first
    try:
        if responses.chat:  # the assistant's role first, as OpenAI's streams do
            yield sse(responses.chunk("", first=True))
        while True:
            if chunk.stats:  # the final response
                for body in responses.last_chunk(stops.finish(chunk.text, chunk.finish_reason),
                                                 chunk.finish_reason, chunk.stats, include_usage):
                    yield sse(body)
                break
            text = stops.feed(chunk.text)
            if text:
                yield sse(responses.chunk(text))
            if await request.is_disconnected():
                return
            chunk = await anext(chunks)
    except ApiError as exc:  # after the response started: the error is the stream's last event
        yield sse(error_body(str(exc), exc.kind, exc.param)[1])
    finally:
        await chunks.aclose()
    yield "data: [DONE]\n\n"


def sse(body: dict) -> str:
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"


def error_response(message: str, kind: str, param: str | None = None) -> JSONResponse:
    status, body = error_body(message, kind, param)
    return JSONResponse(body, status_code=status)


class OpenAIServer:
    """The app under uvicorn on a thread of this process; use as a context manager or call start()/stop()."""

    def __init__(self, config: FrontendConfig, host: str, port: int) -> None:
        import uvicorn

        self.host, self.port = host, port
        self.server = uvicorn.Server(uvicorn.Config(create_app(config), host=host, port=port, log_level="warning",
                                                    access_log=False, timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, name="openai-frontend", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout: float = 30.0) -> "OpenAIServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the OpenAI frontend did not start on {self.host}:{self.port}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def __enter__(self) -> "OpenAIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
