"""Autoregressive decoding: the target alone, one token per forward. The reference output."""
from __future__ import annotations

import torch

from pearl.decoding.target import TargetState
from pearl.sampling import Verdict, choose


class ArStep:
    uses_draft = False
    waits_for_draft = False

    def rows_before_draft(self, state: TargetState) -> int:
        return 1

    def rows_after_draft(self, state: TargetState) -> int:
        return 0

    def decide(self, state: TargetState, logits: torch.Tensor) -> tuple[Verdict, int]:
        (token,), _ = choose(logits, state.params, state.draws, state.seq.num_verified)
        return Verdict(0, token), 0
