"""The draft rank's round, the same for vanilla SD and PEARL: one window per active sequence.

Each sequence proposes up to its gamma tokens from everything it holds (verified and pending tokens); step j
of the round is ONE batched forward over the sequences whose window is longer than j. What differs between
SD and PEARL is only when the target runs its forward: SD after the windows arrive, PEARL meanwhile.
"""
from __future__ import annotations

import torch

from pearl.decoding.common import Draft, RankState, forward_batch
from pearl.sampling import choose


def draft_round(states: list[RankState]) -> dict[int, Draft]:
    """Draft every sequence's window, appending the tokens to its sequence as pending tokens."""
    lengths = {state.request_id: state.num_to_draft() for state in states}
    windows = {state.request_id: ([], []) for state in states}
    for step in range(max(lengths.values(), default=0)):
        drafting = [state for state in states if lengths[state.request_id] > step]
        for state, logits in zip(drafting, forward_batch(drafting, [1] * len(drafting))):
            (token,), probs = choose(logits, state.params, state.generator)
            state.seq.tokens.append(token)
            tokens, rows = windows[state.request_id]
            tokens.append(token)
            rows.append(probs)
    return {state.request_id: Draft(tokens, None if state.params.greedy else torch.cat(rows), state.forwards)
            for state in states for tokens, rows in [windows[state.request_id]]}
