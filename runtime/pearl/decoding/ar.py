"""Autoregressive decoding: the target alone, one token per forward. The reference output."""
from __future__ import annotations

from pearl.decoding.target import TargetState
from pearl.sampling import Verdict, choose


def ar_step(state: TargetState, link) -> tuple[Verdict, int]:
    (token,), _ = choose(state.forward(1), state.params, state.generator)
    return Verdict(0, token), 0
