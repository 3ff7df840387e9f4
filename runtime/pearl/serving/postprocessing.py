"""The ``postprocessing`` model's work: token ids in, text out, never splitting a UTF-8 character.

Each streamed response reaches postprocessing alone, so the ``pearl`` model sends the whole output so far
(TOKENS_BATCH [batch, beam, tokens], SEQUENCE_LENGTH [batch, beam]: TensorRT-LLM's shapes, one beam) plus how
many of those tokens earlier responses covered (PREVIOUS_LENGTH) and whether this is the last response
(IS_FINAL); the text delta follows from those statelessly.
"""
from __future__ import annotations

import numpy as np

from pearl.serving.inputs import scalar
from pearl.text import text_delta


class Postprocessor:
    def __init__(self, tokenizer, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        length = int(scalar(inputs, "SEQUENCE_LENGTH"))
        batch = np.asarray(inputs["TOKENS_BATCH"])
        tokens = batch.reshape(-1, batch.shape[-1])[0, :length].tolist()  # beam 0 of the one request
        text = text_delta(self.tokenizer, tokens, int(scalar(inputs, "PREVIOUS_LENGTH", 0)),
                          bool(scalar(inputs, "IS_FINAL", True)), self.skip_special_tokens)
        return {"OUTPUT": np.array([[text.encode("utf-8")]], dtype=object)}
