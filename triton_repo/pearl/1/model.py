"""Triton adapter for pearl.serving.generation: the model that owns the PEARL world (decoupled unless the
repository was filled with decoupled_mode false; then each request gets its one response through the same sender).

Loading the model checks the engine directory and starts the world host, a child process that runs the
MPI world (draft and target ranks); a problem fails the load with what is wrong and how to fix it. If a
rank dies, a new world starts by itself (or a spare one takes over, with ``spare_world``) and the requests in
flight resume in it (at most ``max_resumes`` times in a row without a new token). Unloading the model shuts
the world down. Each request streams responses and always ends with Triton's final flag, errors included (a
full queue: UNAVAILABLE, counted as overloaded). Counters go to Triton's metrics endpoint.

Every call into Triton (responses, cancellation checks, metrics) is made by one thread, ``TritonCalls``:
responses come from the world's reader thread and requests from ``execute``, and tritonserver 2.51's python
backend crashes under concurrent calls from several stub threads (SIGSEGV or boost::interprocess::
lock_exception in libtriton_python.so, seen with perf_analyzer at concurrency 8-16). Triton's own vLLM
backend sends from a single response thread for the same reason.
"""
import json
import queue
import sys
import threading
import time
import traceback

import triton_python_backend_utils as pb_utils

from pearl.serving.errors import KIND_CODES, error_response
from pearl.serving.generation import GenerationService, QueueFull
from pearl.serving.inputs import RequestError
from pearl.schema import METRICS
from pearl.serving.repository import model_parameter
from pearl.serving.world_process import WorldProcess

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
CANCEL_POLL_S = 0.2  # how often a quiet request's client is asked whether it went away


class TritonCalls:
    """The one thread that calls into Triton, in the order the calls were queued (so a request's responses
    stay in order). It also asks each live request's client whether it cancelled, after each of its
    responses and every CANCEL_POLL_S however busy it is (a queued request has no responses yet), and keeps
    the answer in a flag the generation workers read."""

    def __init__(self):
        self._calls = queue.Queue()
        self._live = {}  # id(sender) -> (request, sender, cancelled Event); only this thread touches it
        self._thread = threading.Thread(target=self._run, name="pearl-triton-calls", daemon=True)
        self._thread.start()

    def watch(self, request, sender):
        """A request whose client may cancel; returns its cancelled flag (a threading.Event)."""
        cancelled = threading.Event()
        self._calls.put(lambda: self._live.__setitem__(id(sender), (request, sender, cancelled)))
        return cancelled

    def send(self, sender, response, final):
        def call():
            if final:
                self._live.pop(id(sender), None)  # first: a final send that fails still ends the watch
            sender.send(response, flags=FINAL if final else 0)
            if not final and (watched := self._live.get(id(sender))) is not None:
                self._check(*watched)
        self._calls.put(call)

    def call(self, function, *args):
        self._calls.put(lambda: function(*args))

    def close(self):
        """Make the queued calls, then stop."""
        self._calls.put(None)
        self._thread.join()

    @staticmethod
    def _check(request, sender, cancelled):
        if request.is_cancelled() or sender.is_cancelled():
            cancelled.set()

    def _run(self):
        next_poll = time.monotonic() + CANCEL_POLL_S
        while True:
            try:
                call = self._calls.get(timeout=CANCEL_POLL_S)
            except queue.Empty:
                pass  # quiet: only the cancellation poll may be due
            else:
                if call is None:
                    return
                self._guarded(call)
            if time.monotonic() >= next_poll:
                for watched in list(self._live.values()):
                    self._guarded(lambda watched=watched: self._check(*watched))
                next_poll = time.monotonic() + CANCEL_POLL_S

    @staticmethod
    def _guarded(call):
        try:
            call()
        except Exception:  # a client that went away must not stop the responses of the others
            print(f"pearl: a call into Triton failed:\n{traceback.format_exc(limit=3)}", file=sys.stderr)


class Metrics:
    """Custom Prometheus metrics (pb_utils.MetricFamily, ``pearl.schema.METRICS``) on Triton's metrics port."""

    def __init__(self):
        counter, gauge = pb_utils.MetricFamily.COUNTER, pb_utils.MetricFamily.GAUGE
        self.families = {m.name: pb_utils.MetricFamily(m.name, m.help, gauge if m.gauge else counter)
                         for m in METRICS}
        self.metrics = [(m, self.families[m.name].Metric(labels={"model": "pearl"}))
                        for m in METRICS if not m.per_position]
        self.positions = {}  # (metric name, position) -> its counter, made when a request first reaches it
        self.failed_family = pb_utils.MetricFamily("pearl_requests_failed_total",
                                                   "Requests that ended without a result, by reason", counter)
        self.failed = {kind: self.failed_family.Metric(labels={"model": "pearl", "reason": kind})
                       for kind in KIND_CODES}

    def record(self, stats):
        for metric, value in self.metrics:
            (value.set if metric.gauge else value.increment)(getattr(stats, metric.stat))
        for metric in (m for m in METRICS if m.per_position):
            for position, count in enumerate(getattr(stats, metric.stat)):
                self._position(metric.name, position).increment(count)

    def _position(self, name, position):
        if (name, position) not in self.positions:
            self.positions[name, position] = self.families[name].Metric(
                labels={"model": "pearl", "position": str(position)})
        return self.positions[name, position]

    def record_failure(self, kind):
        self.failed[kind].increment(1)


class TritonPythonModel:
    def initialize(self, args):
        engine_dir = model_parameter(args, "engine_dir")
        threads = model_parameter(args, "threads_per_rank")  # empty: the engine directory's setting
        try:
            world = WorldProcess(engine_dir, int(threads) if threads.isdigit() else None,
                                 check_hashes=model_parameter(args, "verify_engine_hashes") == "true",
                                 max_resumes=int(model_parameter(args, "max_resumes")),
                                 spare_world=model_parameter(args, "spare_world") == "true")
        except Exception as exc:  # Triton marks the model UNAVAILABLE with this message as the reason
            raise pb_utils.TritonModelException(
                f"cannot load the PEARL engines in {engine_dir}: {exc}. Fix: rebuild them with "
                f"`make engines PAIR=<pair> FORCE=1` and restart the server") from None
        self.metrics = Metrics()
        self.triton = TritonCalls()
        self.service = GenerationService(world,
                                         on_finished=lambda stats: self.triton.call(self.metrics.record, stats),
                                         on_failed=self.record_failure,
                                         max_queue=int(model_parameter(args, "max_queue_size")),
                                         timeout_s=float(model_parameter(args, "request_timeout_s")),
                                         streaming=pb_utils.using_decoupled_model_transaction_policy(
                                             json.loads(args["model_config"])))

    def record_failure(self, kind):
        self.triton.call(self.metrics.record_failure, kind)

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()

            def send(outputs, final, sender=sender):
                response = pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in outputs.items()])
                self.triton.send(sender, response, final)

            def fail(message, kind, sender=sender):
                self.triton.send(sender, error_response(pb_utils, message, kind), final=True)

            cancelled = self.triton.watch(request, sender)
            try:
                self.service.submit({t.name(): t.as_numpy() for t in request.inputs()}, send, fail,
                                    cancelled=cancelled.is_set, request_id=request.request_id())
            except QueueFull as exc:  # a refusal to retry: counted, unlike a bad request
                fail(str(exc), exc.kind)
                self.record_failure(exc.kind)
            except RequestError as exc:
                fail(str(exc), "invalid")
        return None

    def finalize(self):
        self.service.close()
        self.triton.close()
