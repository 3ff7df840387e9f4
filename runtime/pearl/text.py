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


def chat_prompt_text(tokenizer, messages: list[dict], add_special_tokens: bool) -> str:
    """``messages`` (OpenAI's role/content dicts) through the chat template, as the text that the preprocessing
    model turns into exactly the template's ids: when its tokenizer call adds the BOS token itself
    (``add_special_tokens``), the template's own leading BOS is left out, so it is not there twice."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this model's tokenizer has no chat template; use /v1/completions")
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    bos = tokenizer.bos_token
    adds_bos = tokenizer("", add_special_tokens=True).input_ids[:1] == [tokenizer.bos_token_id]
    if add_special_tokens and bos and adds_bos and text.startswith(bos):
        text = text[len(bos):]
    return text


# Tokens decoded before the new ones: the context a token's text may depend on (a character split across
# byte tokens, a tokenizer's leading-space rule). Both decodes of a delta start at the same token, so what the
# window's first tokens decode to cancels out, and a stream costs O(length) instead of O(length^2).
CONTEXT_TOKENS = 6


def text_delta(tokenizer, token_ids: list[int], num_previous: int, final: bool,
               skip_special_tokens: bool = True) -> str:
    """The text that ``token_ids`` adds to what ``token_ids[:num_previous]`` already produced, statelessly.

    For servers whose postprocessing sees each streamed response alone: earlier responses emitted the
    stable text of their prefix (decoded text minus a trailing incomplete character); this one emits the
    rest of its own stable text, or everything when it is the final response. Only the new tokens and
    ``CONTEXT_TOKENS`` before them are decoded (vLLM's and TensorRT-LLM's prefix/read offsets).
    """
    start = max(0, num_previous - CONTEXT_TOKENS)

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    before = decode(token_ids[start:num_previous]).rstrip(REPLACEMENT) if num_previous else ""
    now = decode(token_ids[start:])
    return now[len(before):] if final else now.rstrip(REPLACEMENT)[len(before):]


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text pieces without ever splitting a UTF-8 character: a tail
    that ends inside a multi-byte character decodes to U+FFFD and is held back until the next token completes
    it (``text_delta`` over what was already covered)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.token_ids: list[int] = []
        self.covered = 0  # tokens the pieces returned so far came from

    def add(self, token_ids: list[int]) -> str:
        self.token_ids.extend(token_ids)
        piece = text_delta(self.tokenizer, self.token_ids, self.covered, final=False)
        self.covered = len(self.token_ids)
        return piece

    def flush(self) -> str:
        """Whatever is left at the end, incomplete characters included."""
        piece = text_delta(self.tokenizer, self.token_ids, self.covered, final=True)
        self.covered = len(self.token_ids)
        return piece
