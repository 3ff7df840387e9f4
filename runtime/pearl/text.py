"""Text in and out: prompt encoding (optionally with the chat template) and incremental detokenisation."""
from __future__ import annotations

REPLACEMENT = "\ufffd"


def encode_prompt(tokenizer, text: str, chat: bool = False) -> list[int]:
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("--chat needs a tokenizer with a chat template; this model has none")
        return list(tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                  add_generation_prompt=True, tokenize=True))
    return tokenizer(text).input_ids


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text pieces without ever splitting a UTF-8 character.

    Tokens can end inside a multi-byte character; such a tail decodes to U+FFFD and is held back until
    the following token completes it. Decoding the whole output each time keeps spacing exact.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.token_ids: list[int] = []
        self.emitted = 0  # characters of the decoded text already returned

    def add(self, token_ids: list[int]) -> str:
        self.token_ids.extend(token_ids)
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        stable = len(text.rstrip(REPLACEMENT))
        piece = text[self.emitted:stable]
        self.emitted = max(self.emitted, stable)
        return piece

    def flush(self) -> str:
        """Whatever is left at the end, incomplete characters included."""
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        piece, self.emitted = text[self.emitted:], len(text)
        return piece
