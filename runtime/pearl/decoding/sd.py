"""Vanilla speculative decoding: the draft proposes gamma tokens, then the target verifies them, serially.

The target's forward covers its uncached tokens plus the draft window, giving one row per draft token and
a bonus row: all accepted means the bonus token is sampled from the last row.
"""
from __future__ import annotations

from pearl.decoding.target import TargetState
from pearl.sampling import Verdict, verify


def sd_step(state: TargetState, link) -> tuple[Verdict, int]:
    tokens, probs = state.receive_draft(link)  # the target idles while the draft drafts
    logits = state.forward(len(tokens) + 1)
    return verify(logits, tokens, probs, state.params, state.generator, bonus=True), len(tokens)
