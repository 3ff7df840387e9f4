"""Stop/bad word lists in TensorRT-LLM's tensor layout, so our models exchange what its models exchange.

A list of word token sequences is an INT32 array ``[2, N]``: row 0 holds all ids back to back (padded
with 0), row 1 the cumulative end offset of each sequence (padded with -1). An empty list is ``[[0], [-1]]``.
"""
from __future__ import annotations

import numpy as np


def words_from_texts(tokenizer, texts: list[str]) -> list[tuple[int, ...]]:
    """Token sequences of the non-empty texts (clients send "" to mean none)."""
    out = []
    for text in texts:
        if text:
            ids = tuple(tokenizer.encode(text, add_special_tokens=False))
            if ids:
                out.append(ids)
    return out


def to_tensor(words: list[tuple[int, ...]]) -> np.ndarray:
    if not words:
        return np.array([[0], [-1]], dtype=np.int32)
    ids = [t for word in words for t in word]
    offsets = np.cumsum([len(word) for word in words])
    padded_offsets = np.full(len(ids), -1, dtype=np.int32)
    padded_offsets[:len(offsets)] = offsets
    return np.stack([np.array(ids, dtype=np.int32), padded_offsets])


def from_tensor(tensor: np.ndarray) -> tuple[tuple[int, ...], ...]:
    tensor = np.asarray(tensor).reshape(2, -1)
    ids, offsets = tensor[0].tolist(), [int(o) for o in tensor[1] if o >= 0]
    words, start = [], 0
    for end in offsets:
        if not 0 <= start < end <= len(ids):
            raise ValueError(f"malformed word list: offsets {offsets} for {len(ids)} ids")
        words.append(tuple(ids[start:end]))
        start = end
    return tuple(words)
