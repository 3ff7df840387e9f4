"""The pearl model's GenerationService without Triton: queue limit, per-request timeout, client cancellation,
stop requests by request id, and shutdown, on a real world host (a WorldProcess) over tiny models that
serve one request at a time."""
from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest

from pearl.serving.generation import GenerationService, QueueFull
from pearl.serving.inputs import RequestError
from pearl.serving.world_process import WorldProcess
from pearl_build.config import parse_pair
from pearl_build.pipeline import build_pair
from tiny_models import save_tiny_tokenizer

pytestmark = pytest.mark.mpi


def inputs(max_tokens: int, **extra) -> dict[str, np.ndarray]:
    tensors = {"input_ids": np.array([[1, 2, 3]], dtype=np.int32),
               "request_output_len": np.array([[max_tokens]], dtype=np.int32)}
    tensors.update({k: np.array([[v]]) for k, v in extra.items()})
    return tensors


class Client:
    """Collects one request's responses the way the Triton adapter's callbacks would deliver them."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.responses, self.error, self.done = [], None, threading.Event()
        self.cancel_after = cancel_after

    def send(self, outputs, final):
        self.responses.append(outputs)
        if final:
            self.done.set()

    def fail(self, message, kind):
        self.error = (message, kind)
        self.done.set()

    def cancelled(self):
        return self.cancel_after is not None and len(self.responses) >= self.cancel_after


@pytest.fixture(scope="module")
def engines(tiny, tmp_path_factory):
    """The tiny pair (its target ends a request with token 7 after ~160 tokens) built as an engine directory;
    max_batch_size 1, so a second request waits in the service's queue."""
    root = tmp_path_factory.mktemp("generation")
    models = {}
    for role, model in (("draft", tiny["close_draft"]), ("target", tiny["target"])):
        models[role] = save_tiny_tokenizer(shutil.copytree(model, root / role), [f"w{i}" for i in range(60)])
    pair = parse_pair({"max_seq_len": 512, "max_batch_size": 1, "draft": {"source": {"path": str(models["draft"])}},
                       "target": {"source": {"path": str(models["target"])}}}, default_name="tiny")
    return build_pair(pair, root / "engines", root / "cache", profile=False)


@pytest.fixture()
def service(engines):
    service = GenerationService(WorldProcess(engines), max_queue=2, timeout_s=3.0)
    yield service
    service.close()


def test_a_request_streams_then_ends_with_statistics(service):
    client = Client()
    service.submit(inputs(12, streaming=True), client.send, client.fail)
    assert client.done.wait(60) and client.error is None
    final = client.responses[-1]
    assert final["output_ids"].shape[:2] == final["sequence_length"].shape == (1, 1)  # a beam axis, as TRT-LLM
    assert final["is_final"][0, 0] and final["sequence_length"][0, 0] == len(final["output_ids"][0, 0])
    assert final["total_draft_tokens"][0, 0] >= final["total_accepted_draft_tokens"][0, 0]


def test_cancelled_request_stops_and_reports_cancelled(service):
    client = Client(cancel_after=2)
    service.submit(inputs(400, streaming=True), client.send, client.fail, cancelled=client.cancelled)
    assert client.done.wait(60)
    assert client.error is not None and client.error[1] == "cancelled"
    assert len(client.responses) < 50  # stopped after a round, not after 400 tokens
    follow = Client()
    service.submit(inputs(5), follow.send, follow.fail)
    assert follow.done.wait(60) and follow.error is None


def test_a_stop_request_ends_the_running_and_queued_requests_with_its_id(engines):
    failures = []
    # one request at a time, so the second "a" waits in the service's queue (with room for more, the ranks
    # admit it in the same round as the first)
    service = GenerationService(WorldProcess(engines), on_failed=failures.append)
    running, queued, other, stop = Client(), Client(), Client(), Client()
    service.submit(inputs(400, streaming=True), running.send, running.fail, request_id="a")
    service.submit(inputs(400, streaming=True), queued.send, queued.fail, request_id="a")
    service.submit(inputs(6), other.send, other.fail, request_id="b")
    while not running.responses:
        running.done.wait(0.01)
    service.submit(inputs(1, stop=True), stop.send, stop.fail, request_id="a")
    assert stop.done.is_set() and stop.responses == [{}]  # answered at once, empty
    assert other.done.wait(60) and other.error is None  # the other id is untouched
    service.close()
    assert running.error[1] == "cancelled" and len(running.responses) < 50
    assert queued.error[1] == "cancelled" and not queued.responses  # never reached the ranks
    assert failures == ["cancelled", "cancelled"] and service.stop("a") == 0  # forgotten once ended
    with pytest.raises(RequestError, match="request id"):
        service.submit(inputs(1, stop=True), Client().send, Client().fail)


def test_a_request_past_its_timeout_ends_with_an_error(engines):
    # the tiny target needs ~0.25 s on a fast CPU core for its ~160 tokens before its end token
    service = GenerationService(WorldProcess(engines), timeout_s=0.05)
    client = Client()
    service.submit(inputs(400, streaming=True), client.send, client.fail)
    assert client.done.wait(60)
    service.close()
    assert client.error is not None and client.error[1] == "timeout" and "within 0.05 s" in client.error[0]


def test_queue_limit_refuses_extra_requests_and_close_fails_the_queued(engines):
    service = GenerationService(WorldProcess(engines), max_queue=1)
    running, queued = Client(), Client()
    service.submit(inputs(300, streaming=True), running.send, running.fail)
    while not running.responses:  # the first one is being served
        running.done.wait(0.01)
    service.submit(inputs(5), queued.send, queued.fail)
    with pytest.raises(QueueFull, match="max_queue_size 1"):
        service.submit(inputs(5), Client().send, Client().fail)
    service.close()
    assert running.done.is_set() and running.error is None  # the running request finished
    assert queued.error is not None and "shutting down" in queued.error[0]
    with pytest.raises(QueueFull, match="shutting down"):
        service.submit(inputs(5), Client().send, Client().fail)
