"""The draft rank's loop, the same for vanilla SD and PEARL.

Each round the draft proposes up to gamma tokens from everything it holds (verified and pending tokens),
sends them, waits for the target's verdict and applies it. What differs between SD and PEARL is only
when the target runs its forward: SD after the draft arrives, PEARL at the same time as the drafting.
"""
from __future__ import annotations

import torch

from pearl.decoding.common import DraftLink, RankState
from pearl.sampling import choose


def propose(state: RankState, count: int) -> tuple[list[int], torch.Tensor | None]:
    """Draft ``count`` tokens one forward each, appending them to the sequence as pending tokens."""
    tokens, rows = [], []
    for _ in range(count):
        (token,), probs = choose(state.forward(1), state.params, state.generator)
        state.seq.tokens.append(token)
        tokens.append(token)
        rows.append(probs)
    return tokens, None if state.params.greedy else torch.cat(rows)


def serve_draft(state: RankState, link: DraftLink) -> None:
    while True:
        tokens, probs = propose(state, state.num_to_draft())
        link.send_draft(tokens, probs, state.forwards)
        verdict, finished = link.recv_verdict()
        state.apply(verdict)
        if finished:
            return
