"""Measuring a backend's decode step, for ``gamma=auto`` (PEARL sets gamma to the target/draft speed ratio)."""
from __future__ import annotations

import statistics
import time

from pearl.backends.base import ModelBackend
from pearl.sequence import Sequence

PROFILE_REQUEST_ID = -1  # never a real request's id


def decode_step_seconds(backend: ModelBackend, steps: int = 8, prompt_len: int = 32) -> float:
    """Median time of one single-token forward after a short prefill."""
    seq = Sequence(PROFILE_REQUEST_ID, [i % backend.vocab_size for i in range(1, prompt_len + 1)])
    backend.forward([seq], [1])
    times = []
    for i in range(steps + 1):  # the first step warms up and is not counted
        seq.tokens.append(i % backend.vocab_size)
        start = time.perf_counter()
        backend.forward([seq], [1])
        times.append(time.perf_counter() - start)
    backend.release(seq)
    return statistics.median(times[1:])


def recommended_gamma(draft_step_s: float, target_step_s: float, max_gamma: int = 16) -> int:
    """PEARL's rule: draft as many tokens as fit in one target forward (at least 1)."""
    return max(1, min(max_gamma, round(target_step_s / draft_step_s)))
