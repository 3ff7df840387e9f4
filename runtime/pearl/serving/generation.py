"""The ``pearl`` model's work: it owns the engine (an EngineProcess in the server, so the MPI world lives in a
child process that is restarted if a rank dies), runs accepted requests in arrival order on as many worker
threads as the engine serves at once (its ``max_batch_size``: the ranks batch them, continuous batching),
and streams each one's output through callbacks.

A service that does not stream (a model that is not decoupled) refuses the ``streaming`` input.

Limits: at most ``max_queue`` requests wait (more are refused at once); a request that is not finished
``timeout_s`` after it arrived ends with an error (0: no limit). A cancelled request (the client went
away) stops after the ranks' current round, and so does one named by a stop request: a request with the
``stop`` input set ends the queued or running requests that carry the same Triton request id (TensorRT-LLM's
way to stop an in-flight request; the ``pearl_bls`` model uses it when its client cancels). Closing the
service ends every queued request with an error and lets the running ones finish.

Every response carries the whole output so far (postprocessing detokenizes statelessly, see
postprocessing.py) and the statistics outputs; those are zero until the final response, which has the
request's totals.
"""
from __future__ import annotations

import queue
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from pearl.params import Mode, SamplingParams
from pearl.serving.engine_process import EngineDied, EngineStartError
from pearl.serving.inputs import RequestError, ServingRequest, parse_request, scalar
from pearl.schema import OUTPUTS
from pearl.stats import RequestStats
from pearl.streams import GenerationStream

Send = Callable[[dict[str, np.ndarray], bool], None]  # (outputs, final)
Fail = Callable[[str, str], None]  # (message, kind): "error", "cancelled", "timeout", "unavailable"


class ServingEngine(Protocol):
    """What the service needs: pearl.engine.Engine, or pearl.serving.engine_process.EngineProcess."""

    @property
    def eos_token_ids(self) -> tuple[int, ...]: ...

    @property
    def max_batch_size(self) -> int: ...

    def generate(self, prompt_ids: list[int], sampling: SamplingParams, mode: Mode | str,
                 gamma: int | str) -> GenerationStream: ...

    def close(self) -> None: ...


class QueueFull(RequestError):
    """More requests are waiting than the service accepts; the client should retry later."""


@dataclass(eq=False)  # identity: a job is found and removed by itself
class Job:
    request: ServingRequest
    stream: GenerationStream
    send: Send
    fail: Fail
    cancelled: Callable[[], bool]
    deadline: float | None  # time.monotonic() by which it must be done
    request_id: str = ""  # Triton's request id: a stop request with the same id ends this one
    stopped: bool = False


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
    def __init__(self, engine: ServingEngine, on_finished: Callable[[RequestStats], None] | None = None,
                 on_failed: Callable[[str], None] | None = None,
                 max_queue: int = 64, timeout_s: float = 0.0, streaming: bool = True) -> None:
        self.engine = engine
        self.streaming = streaming  # False: a model that answers each request once (not decoupled)
        self.on_finished, self.on_failed = on_finished, on_failed  # on_failed(kind) for every failed request
        self.max_queue, self.timeout_s = max_queue, timeout_s
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._by_id: dict[str, list[Job]] = {}  # queued or running jobs that have a request id
        self._by_id_lock = threading.Lock()
        self._closing = False
        self._workers = [threading.Thread(target=self._run, name=f"pearl-generation-{i}", daemon=True)
                         for i in range(engine.max_batch_size)]
        for worker in self._workers:
            worker.start()

    def submit(self, inputs: dict[str, np.ndarray], send: Send, fail: Fail,
               cancelled: Callable[[], bool] = lambda: False, request_id: str = "") -> None:
        """Validate and queue a request; a bad one raises RequestError before anything is queued. A stop
        request (``stop`` input true) ends the requests with its id and is answered at once, empty."""
        if bool(scalar(inputs, "stop", False)):
            if not request_id:
                raise RequestError("a stop request needs the request id of the request to stop")
            self.stop(request_id)
            send({}, True)
            return
        if self._closing:
            raise QueueFull("the server is shutting down")
        if self._jobs.qsize() >= self.max_queue:
            raise QueueFull(f"{self._jobs.qsize()} requests are already waiting (max_queue_size "
                            f"{self.max_queue}); retry later")
        request = parse_request(inputs, self.engine.eos_token_ids)
        if request.stream and not self.streaming:
            raise RequestError("streaming needs a decoupled deployment (template value decoupled_mode true); this "
                               "one answers each request once: send stream false")
        try:
            stream = self.engine.generate(request.prompt_ids, request.sampling, request.mode, request.gamma)
        except ValueError as exc:  # too long for the engine, ids outside the vocabulary, ...
            raise RequestError(str(exc)) from None
        deadline = time.monotonic() + self.timeout_s if self.timeout_s > 0 else None
        job = Job(request, stream, send, fail, cancelled, deadline, request_id)
        if request_id:
            with self._by_id_lock:
                self._by_id.setdefault(request_id, []).append(job)
        self._jobs.put(job)

    def stop(self, request_id: str) -> int:
        """End the queued or running requests with this id after the ranks' current round; how many."""
        with self._by_id_lock:
            jobs = list(self._by_id.get(request_id, ()))
        for job in jobs:
            job.stopped = True
        return len(jobs)

    def close(self) -> None:
        """Refuse new requests, end the queued ones with an error, finish the running ones, stop the world."""
        self._closing = True
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._fail(job, "the server is shutting down; the request was not started", "error")
        for worker in self._workers:
            self._jobs.put(None)
        for worker in self._workers:
            worker.join()
        self.engine.close()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                self._serve(job)
            except (EngineDied, EngineStartError) as exc:  # the world died mid-request; a new one is starting
                self._fail(job, f"generation failed: {exc}", "unavailable")
            except Exception as exc:  # the client gets the error; the worker keeps serving the queue
                self._fail(job, f"generation failed: {exc}\n{traceback.format_exc(limit=3)}", "error")
            finally:
                self._forget(job)

    def _fail(self, job: Job, message: str, kind: str) -> None:
        job.fail(message, kind)
        if self.on_failed is not None:
            self.on_failed(kind)

    def _forget(self, job: Job) -> None:
        if job.request_id:
            with self._by_id_lock:
                jobs = self._by_id.get(job.request_id, [])
                if job in jobs:
                    jobs.remove(job)
                if not jobs:
                    self._by_id.pop(job.request_id, None)

    def _ended(self, job: Job) -> tuple[str, str] | None:
        """(message, kind) when the request must stop early: cancelled by the client, or out of time."""
        if job.cancelled() or job.stopped:
            return "the request was cancelled", "cancelled"
        if job.deadline is not None and time.monotonic() > job.deadline:
            return f"the request did not finish within {self.timeout_s:g} s (request_timeout_s)", "timeout"
        return None

    def _serve(self, job: Job) -> None:
        if (ended := self._ended(job)) is not None:  # still queued: never reaches the ranks
            self._fail(job, *ended)
            return
        prefix = [] if job.request.exclude_input or job.request.stream else list(job.request.prompt_ids)
        emitted, ended = 0, None
        for _ in job.stream:
            if ended is None and (ended := self._ended(job)) is not None:
                job.stream.cancel()  # the ranks stop after this round; the loop drains what is left
            if ended is not None:
                continue
            if job.request.stream:
                tokens = job.stream.token_ids
                job.send(response_tensors(tokens, emitted, False, None), False)
                emitted = len(tokens)
        if ended is not None:
            self._fail(job, *ended)
            return
        stats = job.stream.stats
        job.send(response_tensors(prefix + job.stream.token_ids, emitted if job.request.stream else 0, True, stats,
                                  job.stream.finish_reason), True)
        if self.on_finished is not None:
            self.on_finished(stats)
