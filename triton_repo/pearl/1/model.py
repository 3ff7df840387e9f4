"""Triton adapter for pearl.serving.generation: the decoupled model that owns the PEARL engine.

Loading the model checks the engine directory and starts the engine host, a child process that runs the
MPI world (draft and target ranks); a problem fails the load with what is wrong and how to fix it. If a
rank dies, the request it served fails at once and a new world starts by itself. Unloading the model
shuts the world down. Each request streams responses from the generation thread and always ends with
Triton's final flag, errors included. Counters go to Triton's metrics endpoint.
"""
import triton_python_backend_utils as pb_utils

from pearl.serving.engine_process import EngineProcess
from pearl.serving.errors import KIND_CODES, error_response
from pearl.serving.generation import GenerationService, QueueFull
from pearl.serving.inputs import RequestError
from pearl.serving.repository import model_parameter

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class Metrics:
    """Custom Prometheus metrics (pb_utils.MetricFamily), exported on Triton's metrics port."""

    def __init__(self):
        counter, gauge = pb_utils.MetricFamily.COUNTER, pb_utils.MetricFamily.GAUGE
        self.families = [
            pb_utils.MetricFamily("pearl_generated_tokens_total", "Output tokens generated", counter),
            pb_utils.MetricFamily("pearl_draft_tokens_total", "Draft tokens proposed", counter),
            pb_utils.MetricFamily("pearl_accepted_draft_tokens_total", "Draft tokens accepted", counter),
            pb_utils.MetricFamily("pearl_target_forwards_total", "Target model forward passes", counter),
            pb_utils.MetricFamily("pearl_requests_total", "Requests completed", counter),
            pb_utils.MetricFamily("pearl_tokens_per_second", "Output tokens/s of the last request", gauge),
        ]
        self.metrics = [family.Metric(labels={"model": "pearl"}) for family in self.families]
        self.failed_family = pb_utils.MetricFamily("pearl_requests_failed_total",
                                                   "Requests that ended without a result, by reason", counter)
        self.failed = {kind: self.failed_family.Metric(labels={"model": "pearl", "reason": kind})
                       for kind in KIND_CODES}

    def record(self, stats):
        generated, draft, accepted, forwards, requests, rate = self.metrics
        generated.increment(stats.generated_tokens)
        draft.increment(stats.draft_tokens)
        accepted.increment(stats.accepted_draft_tokens)
        forwards.increment(stats.target_forwards)
        requests.increment(1)
        rate.set(stats.tokens_per_s)

    def record_failure(self, kind):
        self.failed[kind].increment(1)


class TritonPythonModel:
    def initialize(self, args):
        engine_dir = model_parameter(args, "engine_dir")
        threads = model_parameter(args, "threads_per_rank")  # empty: the engine directory's setting
        try:
            engine = EngineProcess(engine_dir, int(threads) if threads.isdigit() else None,
                                   check_hashes=model_parameter(args, "verify_engine_hashes") == "true")
        except Exception as exc:  # Triton marks the model UNAVAILABLE with this message as the reason
            raise pb_utils.TritonModelException(
                f"cannot load the PEARL engines in {engine_dir}: {exc}. Fix: rebuild them with "
                f"`make engines PAIR=<pair> FORCE=1` and restart the server") from None
        self.metrics = Metrics()
        self.service = GenerationService(engine, on_finished=self.metrics.record,
                                         on_failed=self.metrics.record_failure,
                                         max_queue=int(model_parameter(args, "max_queue_size")),
                                         timeout_s=float(model_parameter(args, "request_timeout_s")))

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()

            def send(outputs, final, sender=sender):
                response = pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in outputs.items()])
                sender.send(response, flags=FINAL if final else 0)

            def fail(message, kind, sender=sender):
                sender.send(error_response(pb_utils, message, kind), flags=FINAL)

            try:
                self.service.submit({t.name(): t.as_numpy() for t in request.inputs()}, send, fail,
                                    cancelled=lambda request=request, sender=sender:
                                    request.is_cancelled() or sender.is_cancelled(),
                                    request_id=request.request_id())
            except QueueFull as exc:
                sender.send(error_response(pb_utils, str(exc), "unavailable"), flags=FINAL)
            except RequestError as exc:
                sender.send(error_response(pb_utils, str(exc), "invalid"), flags=FINAL)
        return None

    def finalize(self):
        self.service.close()
