"""The ``postprocessing`` model's work: token ids in, text out, never splitting a UTF-8 character.

Each streamed response reaches postprocessing alone, so the ``pearl`` model sends the whole output so far
(TOKENS_BATCH, SEQUENCE_LENGTH) plus how many of those tokens earlier responses covered (PREVIOUS_LENGTH)
and whether this is the last response (IS_FINAL); the text delta follows from those statelessly.
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
        tokens = np.asarray(inputs["TOKENS_BATCH"]).reshape(-1)[:length].tolist()
        text = text_delta(self.tokenizer, tokens, int(scalar(inputs, "PREVIOUS_LENGTH", 0)),
                          bool(scalar(inputs, "IS_FINAL", True)), self.skip_special_tokens)
        return {"OUTPUT": np.array([[text.encode("utf-8")]], dtype=object)}
