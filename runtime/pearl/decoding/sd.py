"""Vanilla speculative decoding: the draft proposes gamma tokens, then the target verifies them, serially.

The target's forward covers its uncached tokens plus the draft window, giving one row per draft token and
a bonus row: all accepted means the bonus token is sampled from the last row. It checks every pending token,
so an adaptive PEARL request can switch to an SD round with a window still pending from a PEARL round
(``pearl.speculation``); with SD alone nothing is pending but the new window.
"""
from __future__ import annotations

import torch

from pearl.decoding.target import TargetState
from pearl.sampling import Verdict, verify


class SdStep:
    uses_draft = True
    waits_for_draft = True

    def rows_before_draft(self, state: TargetState) -> int:
        return 0  # the target idles while the draft drafts

    def rows_after_draft(self, state: TargetState) -> int:
        return len(state.seq.pending) + 1  # the window has arrived: it is pending too

    def decide(self, state: TargetState, logits: torch.Tensor) -> tuple[Verdict, int]:
        checks, probs = state.seq.pending, state.draft.probs
        q = None if probs is None else state.probs_of_pending(probs)
        state.pending_probs = None  # a verdict with a next token (a correction or the bonus): nothing stays pending
        return verify(logits, checks, q, state.params, state.draws, state.seq.num_verified, bonus=True), len(checks)
