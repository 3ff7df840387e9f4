"""Triton adapter for pearl.serving.bls: runs the ensemble's steps as BLS calls, one thread per request
(so requests reach the pearl model's queue at once, as through the ensemble), and stops the pearl request
when the client cancels."""
import functools
import json
import threading
import uuid
from pathlib import Path

import triton_python_backend_utils as pb_utils

from pearl.serving.bls import Pipeline, StepFailed, ensemble_io, run
from pearl.serving.errors import error_response, kind_of, kind_of_message

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
ENSEMBLE_CONFIG = Path(__file__).resolve().parents[2] / "ensemble" / "config.pbtxt"


def infer(step, inputs, request_id, decoupled, streaming=True):
    """``streaming`` False: this repository's models are not decoupled, so every step answers once."""
    request = pb_utils.InferenceRequest(model_name=step.model, request_id=request_id,
                                        inputs=[pb_utils.Tensor(name, value) for name, value in inputs.items()],
                                        requested_output_names=list(step.output_map))
    for response in request.exec(decoupled=True) if decoupled and streaming else [request.exec()]:
        if response.has_error():
            # the code arrives as INTERNAL whatever it was; our models' messages carry it (pearl.serving.errors)
            kind, message = kind_of_message(response.error().message(), kind_of(pb_utils, response.error().code()))
            raise StepFailed(message, kind)
        yield {tensor.name(): tensor.as_numpy() for tensor in response.output_tensors()}


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        inputs, outputs = ensemble_io(ENSEMBLE_CONFIG)
        for tensor in inputs:
            config.add_input(tensor)
        for tensor in outputs:
            config.add_output(tensor)
        return config

    def initialize(self, args):
        self.pipeline = Pipeline.from_ensemble_config(ENSEMBLE_CONFIG)
        self.streaming = pb_utils.using_decoupled_model_transaction_policy(json.loads(args["model_config"]))
        self.threads = set()

    def execute(self, requests):
        for request in requests:
            thread = threading.Thread(target=self.serve, args=(request,), daemon=True)
            self.threads.add(thread)
            thread.start()
        return None

    def serve(self, request):
        sender = request.get_response_sender()
        try:
            run(self.pipeline, {t.name(): t.as_numpy() for t in request.inputs()},
                f"pearl-bls-{uuid.uuid4().hex}",  # unique: a stop must reach only this request
                functools.partial(infer, streaming=self.streaming),
                send=lambda outputs, final: sender.send(
                    pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in outputs.items()]),
                    flags=FINAL if final else 0),
                fail=lambda message, kind: sender.send(error_response(pb_utils, message, kind), flags=FINAL),
                cancelled=lambda: request.is_cancelled() or sender.is_cancelled())
        except Exception as exc:  # never leave a client without its final response
            sender.send(error_response(pb_utils, f"pearl_bls failed: {exc}"), flags=FINAL)
        finally:
            self.threads.discard(threading.current_thread())

    def finalize(self):
        for thread in list(self.threads):
            thread.join(timeout=30)
