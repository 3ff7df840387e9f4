"""Vanilla speculative decoding: the draft proposes gamma tokens, then the target verifies them, serially.

The target's forward covers its uncached tokens plus the draft window, giving one row per draft token and
a bonus row: all accepted means the bonus token is sampled from the last row.
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
        return len(state.draft.tokens) + 1

    def decide(self, state: TargetState, logits: torch.Tensor) -> tuple[Verdict, int]:
        draft = state.draft
        return (verify(logits, draft.tokens, draft.probs, state.params, state.draws, state.seq.num_verified,
                       bonus=True),
                len(draft.tokens))
