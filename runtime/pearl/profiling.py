"""Measuring a backend's forward cost, and PEARL's gamma from it (the window with the most tokens per second)."""
from __future__ import annotations

import statistics
import time

from pearl.backends.base import ModelBackend
from pearl.sequence import Sequence

PROFILE_REQUEST_ID = -1  # and below: never a real request's id


def forward_seconds(backend: ModelBackend, max_tokens: int, steps: int = 5, prompt_len: int = 32,
                    batch_size: int = 1) -> list[float]:
    """Median seconds of a forward that feeds k new tokens to each of ``batch_size`` sequences after a short
    prefill, for k = 1..max_tokens.

    k = 1 is a decode step; k > 1 is the target verifying a window of k tokens (k rows of logits). With
    several sequences it is one batched forward over all of them, as a batched round would run it.
    """
    seqs = [Sequence(PROFILE_REQUEST_ID - i, [(i + j) % backend.vocab_size for j in range(1, prompt_len + 1)])
            for i in range(batch_size)]
    backend.forward(seqs, [1] * batch_size)
    seconds = []
    for k in range(1, max_tokens + 1):
        times = []
        for step in range(steps + 1):  # the first call warms up and is not counted
            for seq in seqs:
                seq.tokens.extend((step + j) % backend.vocab_size for j in range(k))
            start = time.perf_counter()
            backend.forward(seqs, [k] * batch_size)
            times.append(time.perf_counter() - start)
            for seq in seqs:
                seq.tokens[prompt_len:] = []
                backend.truncate(seq, prompt_len)
        seconds.append(statistics.median(times[1:]))
    for seq in seqs:
        backend.release(seq)
    return seconds


DEFAULT_ACCEPTANCE = 0.8  # a draft token's chance to be accepted, when the pair config does not say


def recommended_gamma(draft_step_s: float, target_verify_s: list[float],
                      acceptance: float = DEFAULT_ACCEPTANCE) -> int:
    """The window k in 1..len(target_verify_s) with the most expected tokens per second of a round.

    ``target_verify_s[k-1]`` is the target's cost for k tokens. Draft and target run at once, so a round
    takes max(k draft steps, one verify of k tokens); in post-verify it keeps the window's accepted prefix,
    1 + a + ... + a^(k-1) tokens expected for a per-token acceptance a (the token the target corrects ends
    the window; PEARL takes no bonus token there). With a flat verify cost (decode on a GPU) the best k is
    where the draft fills one verify, PEARL's gamma = speed ratio. Where a verify costs more the more tokens
    it takes (a CPU, a large batch), a longer window buys tokens at a price and the best k is shorter than
    the one that balances the two sides.
    """
    if not 0 < acceptance < 1:
        raise ValueError(f"acceptance must be in (0, 1), got {acceptance}")

    def tokens_per_s(k: int) -> float:
        expected_tokens = (1 - acceptance ** k) / (1 - acceptance)
        return expected_tokens / max(k * draft_step_s, target_verify_s[k - 1])

    return max(range(1, len(target_verify_s) + 1), key=tokens_per_s)


def speed_ratio(draft_step_s: float, target_step_s: float) -> float:
    return target_step_s / draft_step_s
