"""The ``preprocessing`` model's work: text and word lists in, token tensors out (TensorRT-LLM's names).

Inputs per request (leading batch dimension 1): QUERY (text_input), REQUEST_OUTPUT_LEN (max_tokens) and the
optional STOP_WORDS_DICT, BAD_WORDS_DICT, END_ID, PAD_ID. Outputs: INPUT_ID, REQUEST_INPUT_LEN,
REQUEST_OUTPUT_LEN, STOP_WORDS_IDS, BAD_WORDS_IDS, OUT_END_ID, OUT_PAD_ID.
"""
from __future__ import annotations

import numpy as np

from pearl.serving import words
from pearl.serving.inputs import RequestError, scalar
from pearl.text import encode_prompt


class Preprocessor:
    def __init__(self, tokenizer, apply_chat_template: bool = False, add_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.apply_chat_template = apply_chat_template
        self.add_special_tokens = add_special_tokens

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        text = self._text(inputs)
        if self.apply_chat_template:
            ids = encode_prompt(self.tokenizer, text, chat=True)
        else:
            ids = self.tokenizer(text, add_special_tokens=self.add_special_tokens).input_ids
        if not ids:
            raise RequestError("text_input encodes to no tokens")
        max_tokens = scalar(inputs, "REQUEST_OUTPUT_LEN")
        if max_tokens is None or max_tokens <= 0:
            raise RequestError(f"max_tokens must be >= 1, got {max_tokens}")
        return {
            "INPUT_ID": np.array([ids], dtype=np.int32),
            "REQUEST_INPUT_LEN": np.array([[len(ids)]], dtype=np.int32),
            "REQUEST_OUTPUT_LEN": np.array([[max_tokens]], dtype=np.int32),
            "STOP_WORDS_IDS": self._word_list(inputs, "STOP_WORDS_DICT"),
            "BAD_WORDS_IDS": self._word_list(inputs, "BAD_WORDS_DICT"),
            "OUT_END_ID": np.array([[scalar(inputs, "END_ID", -1)]], dtype=np.int32),
            "OUT_PAD_ID": np.array([[scalar(inputs, "PAD_ID", -1)]], dtype=np.int32),
        }

    @staticmethod
    def _text(inputs: dict[str, np.ndarray]) -> str:
        query = np.asarray(inputs["QUERY"]).reshape(-1)
        if query.size != 1:
            raise RequestError(f"text_input must be one string per request, got {query.size}")
        raw = query[0]
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        except UnicodeDecodeError as exc:
            raise RequestError(f"text_input is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
        if not text.strip():
            raise RequestError("text_input is empty")
        return text

    def _word_list(self, inputs: dict[str, np.ndarray], name: str) -> np.ndarray:
        texts = []
        for raw in np.asarray(inputs.get(name, np.array([], dtype=object))).reshape(-1):
            try:
                texts.append(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
            except UnicodeDecodeError:
                raise RequestError(f"{name.split('_DICT')[0].lower()} holds bytes that are not UTF-8") from None
        return words.to_tensor(words.words_from_texts(self.tokenizer, texts))[None]
