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


def text_delta(tokenizer, token_ids: list[int], num_previous: int, final: bool,
               skip_special_tokens: bool = True) -> str:
    """The text that ``token_ids`` adds to what ``token_ids[:num_previous]`` already produced, statelessly.

    For servers whose postprocessing sees each streamed response alone: earlier responses emitted the
    stable text of their prefix (decoded text minus a trailing incomplete character); this one emits the
    rest of its own stable text, or everything when it is the final response.
    """
    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    before = decode(token_ids[:num_previous]).rstrip(REPLACEMENT) if num_previous else ""
    now = decode(token_ids)
    return now[len(before):] if final else now.rstrip(REPLACEMENT)[len(before):]


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
