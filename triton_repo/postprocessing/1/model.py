"""Triton adapter for pearl.serving.postprocessing: token ids -> text, never splitting a UTF-8 character."""
import triton_python_backend_utils as pb_utils

from pearl.serving.postprocessing import Postprocessor
from pearl.serving.repository import model_parameter
from pearl.tokenizers import load_tokenizer


class TritonPythonModel:
    def initialize(self, args):
        self.postprocess = Postprocessor(load_tokenizer(model_parameter(args, "tokenizer_dir")),
                                         skip_special_tokens=model_parameter(args, "skip_special_tokens") == "true")

    def execute(self, requests):
        responses = []
        for request in requests:
            outputs = self.postprocess({t.name(): t.as_numpy() for t in request.inputs()})
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor(name, value) for name, value in outputs.items()]))
        return responses
