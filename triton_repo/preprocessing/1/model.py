"""Triton adapter for pearl.serving.preprocessing: text_input -> token ids with the engine's tokenizer."""
import numpy as np
import triton_python_backend_utils as pb_utils

from pearl.serving.errors import error_response
from pearl.serving.inputs import RequestError
from pearl.serving.preprocessing import Preprocessor
from pearl.serving.repository import model_parameter
from pearl.tokenizers import load_tokenizer


class TritonPythonModel:
    def initialize(self, args):
        self.preprocess = Preprocessor(load_tokenizer(model_parameter(args, "tokenizer_dir")),
                                       apply_chat_template=model_parameter(args, "apply_chat_template") == "true",
                                       add_special_tokens=model_parameter(args, "add_special_tokens") == "true")

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                outputs = self.preprocess({t.name(): t.as_numpy() for t in request.inputs()})
                responses.append(pb_utils.InferenceResponse(
                    [pb_utils.Tensor(name, np.ascontiguousarray(value)) for name, value in outputs.items()]))
            except RequestError as exc:
                responses.append(error_response(pb_utils, str(exc), "invalid"))
        return responses
