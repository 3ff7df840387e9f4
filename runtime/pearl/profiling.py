"""Measuring a backend's forward cost: what the pair's profile (and from it every adaptive window) is made of."""
from __future__ import annotations

import statistics
import time

from pearl.backends.base import ModelBackend
from pearl.sequence import Sequence

PROFILE_REQUEST_ID = -1  # and below: never a real request's id
PROFILE_PROMPT_TOKENS = 32  # the context every timed forward follows


def forward_seconds(backend: ModelBackend, max_tokens: int, steps: int = 5,
                    prompt_len: int = PROFILE_PROMPT_TOKENS, batch_size: int = 1, feed: bool = False) -> list[float]:
    """Median seconds of a forward that feeds k new tokens to each of ``batch_size`` sequences after a short
    prefill, for k = 1..max_tokens.

    k = 1 is a decode step; k > 1 is the target verifying a window of k tokens (k rows of logits). With
    several sequences it is one batched forward over all of them, as a batched round would run it.
    ``feed``: only k = max_tokens, with the last token's logits alone (a draft catching up on tokens it
    missed before it drafts).
    """
    seqs = [Sequence(PROFILE_REQUEST_ID - i, [(i + j) % backend.vocab_size for j in range(1, prompt_len + 1)])
            for i in range(batch_size)]
    backend.forward(seqs, [1] * batch_size)
    seconds = []
    for k in ([max_tokens] if feed else range(1, max_tokens + 1)):
        times = []
        for step in range(steps + 1):  # the first call warms up and is not counted
            for seq in seqs:
                seq.tokens.extend((step + j) % backend.vocab_size for j in range(k))
            start = time.perf_counter()
            backend.forward(seqs, [1 if feed else k] * batch_size)
            times.append(time.perf_counter() - start)
            for seq in seqs:
                seq.tokens[prompt_len:] = []
                backend.truncate(seq, prompt_len)
        seconds.append(statistics.median(times[1:]))
    for seq in seqs:
        backend.release(seq)
    return seconds


DEFAULT_ACCEPTANCE = 0.8  # a draft token's chance to be accepted, when the pair config does not say
