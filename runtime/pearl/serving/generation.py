"""The ``pearl`` model's work: it owns the world (a WorldProcess: the MPI world lives in a child process
that is restarted, and its requests resumed, if a rank dies), starts accepted requests in arrival order while
fewer than the pair's ``max_batch_size`` run (the ranks batch them, continuous batching), and streams each
one's output through the world's callbacks. No thread of its own: requests arrive from Triton's ``execute``,
their events from the world's reader thread.

A service that does not stream (a model that is not decoupled) refuses the ``streaming`` input.

Limits: at most ``max_queue`` requests wait (more are refused at once: ``QueueFull``); a request that is not
finished ``timeout_s`` after it arrived ends with an error (0: no limit). A cancelled request (the client
went away) stops after the ranks' current round, and so does one named by a stop request: a request with the
``stop`` input set ends the queued or running requests that carry the same Triton request id (TensorRT-LLM's
way to stop an in-flight request; the ``pearl_bls`` model uses it when its client cancels). Closing the
service ends every queued request with an error and lets the running ones finish.

Every response carries the whole output so far (postprocessing detokenizes statelessly, see
postprocessing.py) and the statistics outputs; those are zero until the final response, which has the
request's totals.
"""
from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from pearl.params import GenerationRequest
from pearl.serving.inputs import RequestError, ServingRequest, parse_request, scalar
from pearl.serving.world_process import OnDone, OnError, OnTokens, WorldDied, WorldStartError
from pearl.schema import OUTPUTS
from pearl.stats import RequestStats
from pearl.streams import PairLimits

Send = Callable[[dict[str, np.ndarray], bool], None]  # (outputs, final)
# (message, kind): "error", "cancelled", "timeout", "unavailable", "invalid", "overloaded" (pearl.serving.errors)
Fail = Callable[[str, str], None]


class ServingWorld(Protocol):
    """What the service needs: pearl.serving.world_process.WorldProcess."""

    limits: PairLimits

    def submit(self, request: GenerationRequest, on_tokens: OnTokens, on_done: OnDone, on_error: OnError) -> None: ...
    def cancel(self, request_id: int) -> None: ...
    def close(self) -> None: ...


class QueueFull(RequestError):
    """More requests are waiting than the service accepts ("overloaded"), or it is shutting down
    ("unavailable"): a refusal the client should retry later, unlike a bad request."""

    def __init__(self, message: str, kind: str = "overloaded") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(eq=False)  # identity: a job is found and removed by itself
class Job:
    request: ServingRequest
    send: Send
    fail: Fail
    cancelled: Callable[[], bool]
    deadline: float | None  # time.monotonic() by which it must be done
    request_id: str = ""  # Triton's request id: a stop request with the same id ends this one
    stopped: bool = False
    tokens: list[int] = field(default_factory=list)
    emitted: int = 0  # tokens already in a streamed response
    ended: tuple[str, str] | None = None  # (message, kind) once it must stop early

    @property
    def generation_id(self) -> int:
        return self.request.generation.request_id


def response_tensors(tokens: list[int], previous: int, final: bool, stats: RequestStats | None,
                     finish_reason: str | None = None) -> dict:
    """TensorRT-LLM's ``tensorrt_llm`` model shapes, so its clients read them unchanged: ``output_ids``
    [batch, beam, tokens] and ``sequence_length`` [batch, beam], with one beam. ``finish_reason`` ("stop",
    "length"; empty before the final response) is OpenAI's."""
    outputs = {
        "output_ids": np.array(tokens, dtype=np.int32).reshape(1, 1, -1),
        "sequence_length": np.array([[len(tokens)]], dtype=np.int32),
        "previous_length": np.array([[previous]], dtype=np.int32),
        "is_final": np.array([[final]], dtype=bool),
        "finish_reason": np.array([[(finish_reason or "").encode()]], dtype=object),
    }
    for output in OUTPUTS:
        value = getattr(stats, output.stat) if stats is not None else (0,) if output.vector else 0
        outputs[output.name] = np.array([value if output.vector else [value]], dtype=output.numpy_type)
    return outputs


class GenerationService:
    def __init__(self, world: ServingWorld, on_finished: Callable[[RequestStats], None] | None = None,
                 on_failed: Callable[[str], None] | None = None,
                 max_queue: int = 64, timeout_s: float = 0.0, streaming: bool = True) -> None:
        self.world = world
        self.streaming = streaming  # False: a model that answers each request once (not decoupled)
        self.on_finished, self.on_failed = on_finished, on_failed  # on_failed(kind) for every failed request
        self.max_queue, self.timeout_s = max_queue, timeout_s
        self._ids = itertools.count(1)  # the ids of the GenerationRequests sent to the world
        self._waiting: deque[Job] = deque()
        self._running: dict[int, Job] = {}  # by generation_id
        self._by_id: dict[str, list[Job]] = {}  # queued or running jobs that have a Triton request id
        self._lock = threading.Lock()  # never held while calling into the world or a client
        self._closing = False

    def submit(self, inputs: dict[str, np.ndarray], send: Send, fail: Fail,
               cancelled: Callable[[], bool] = lambda: False, request_id: str = "") -> None:
        """Validate and queue a request; a bad one raises RequestError (a full queue QueueFull) before anything
        is queued. A stop request (``stop`` input true) ends the requests with its id and is answered at once,
        empty."""
        if bool(scalar(inputs, "stop", False)):
            if not request_id:
                raise RequestError("a stop request needs the request id of the request to stop")
            self.stop(request_id)
            send({}, True)
            return
        if self._closing:
            raise QueueFull("the server is shutting down", kind="unavailable")
        request = parse_request(inputs, self.world.limits, next(self._ids))
        if request.stream and not self.streaming:
            raise RequestError("streaming needs a decoupled deployment (template value decoupled_mode true); this "
                               "one answers each request once: send stream false")
        deadline = time.monotonic() + self.timeout_s if self.timeout_s > 0 else None
        job = Job(request, send, fail, cancelled, deadline, request_id)
        with self._lock:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting (max_queue_size "
                                f"{self.max_queue}); retry later")
            if request_id:
                self._by_id.setdefault(request_id, []).append(job)
            self._waiting.append(job)
        self._start_waiting()

    def stop(self, request_id: str) -> int:
        """End the queued (now) or running (after the ranks' current round) requests with this id; how many."""
        with self._lock:
            jobs = list(self._by_id.get(request_id, ()))
            queued = [job for job in jobs if job in self._waiting]
            for job in queued:
                self._waiting.remove(job)
        for job in jobs:
            job.stopped = True
        for job in queued:
            self._forget(job)
            self._fail(job, "the request was cancelled", "cancelled")
        for job in jobs:
            if job not in queued:
                self._end(job)
        return len(jobs)

    def close(self) -> None:
        """Refuse new requests, end the queued ones with an error, finish the running ones, stop the world."""
        self._closing = True
        with self._lock:
            queued, self._waiting = list(self._waiting), deque()
        for job in queued:
            self._forget(job)
            self._fail(job, "the server is shutting down; the request was not started", "error")
        self.world.close()

    # -- a request's life -------------------------------------------------------------------------------
    def _start_waiting(self) -> None:
        """Start queued requests while the world has room; one that ended while it waited fails instead."""
        while True:
            with self._lock:
                if self._closing or not self._waiting or len(self._running) >= self.world.limits.max_batch_size:
                    return
                job = self._waiting.popleft()
                ended = self._ended(job)
                if ended is None:
                    self._running[job.generation_id] = job
            if ended is not None:  # still queued: never reaches the ranks
                self._forget(job)
                self._fail(job, *ended)
                continue
            try:
                self.world.submit(job.request.generation, lambda tokens, job=job: self._on_tokens(job, tokens),
                                  lambda reason, stats, job=job: self._on_done(job, reason, stats),
                                  lambda exc, job=job: self._on_error(job, exc))
            except Exception as exc:  # the world is shut down
                self._on_error(job, exc)

    def _on_tokens(self, job: Job, tokens: list[int]) -> None:
        job.tokens.extend(tokens)
        self._end(job)
        if job.ended is None and job.request.stream:
            job.send(response_tensors(job.tokens, job.emitted, False, None), False)
            job.emitted = len(job.tokens)

    def _on_done(self, job: Job, finish_reason: str | None, stats: RequestStats) -> None:
        self._finish(job)
        if job.ended is not None:
            self._fail(job, *job.ended)
            return
        request = job.request
        prefix = [] if request.exclude_input or request.stream else list(request.generation.prompt_ids)
        job.send(response_tensors(prefix + job.tokens, job.emitted if request.stream else 0, True, stats, finish_reason),
                 True)
        if self.on_finished is not None:
            self.on_finished(stats)

    def _on_error(self, job: Job, exc: Exception) -> None:
        self._finish(job)
        # the world died and the request could not be resumed: retrying later can succeed
        kind = "unavailable" if isinstance(exc, (WorldDied, WorldStartError)) else "error"
        self._fail(job, f"generation failed: {exc}", kind)

    def _end(self, job: Job) -> None:
        """Ask the world to stop a running request that was cancelled or ran out of time (once)."""
        if job.ended is None and (ended := self._ended(job)) is not None:
            job.ended = ended
            self.world.cancel(job.generation_id)  # the ranks stop after this round; its last events still come

    def _finish(self, job: Job) -> None:
        with self._lock:
            self._running.pop(job.generation_id, None)
        self._forget(job)
        self._start_waiting()

    def _ended(self, job: Job) -> tuple[str, str] | None:
        """(message, kind) when the request must stop early: cancelled by the client, or out of time."""
        if job.cancelled() or job.stopped:
            return "the request was cancelled", "cancelled"
        if job.deadline is not None and time.monotonic() > job.deadline:
            return f"the request did not finish within {self.timeout_s:g} s (request_timeout_s)", "timeout"
        return None

    def _fail(self, job: Job, message: str, kind: str) -> None:
        job.fail(message, kind)
        if self.on_failed is not None:
            self.on_failed(kind)

    def _forget(self, job: Job) -> None:
        if job.request_id:
            with self._lock:
                jobs = self._by_id.get(job.request_id, [])
                if job in jobs:
                    jobs.remove(job)
                if not jobs:
                    self._by_id.pop(job.request_id, None)
