"""The draft rank's round, the same for vanilla SD and PEARL: one window per active sequence.

Each sequence proposes up to its gamma tokens from everything it holds (verified and pending tokens); step j
of the round is ONE batched forward over the sequences whose window is longer than j. What differs between
SD and PEARL is only when the target runs its forward: SD after the windows arrive, PEARL meanwhile.

An adaptive request's window (gamma "auto") ends early after a token the draft was unsure of: its top
probability below ``stop_below`` (``WorldConfig.draft_stop_confidence``). The tokens after such a one are the
likeliest to be rejected, and each costs a draft step; a fixed gamma is drafted whole. The stop depends on
the draft's own distribution only, so the acceptance rule stays exact.

A backend that drafts whole windows itself (``draft_windows``: TensorRT-LLM, one request per window as its own
draft-target examples do) samples with its own sampler; the rows it returns are turned into the draft
probabilities with ``sampling.probabilities``, so the acceptance rule stays exact only where that sampler
draws from those same probabilities (greedy: always).
"""
from __future__ import annotations

import time

import torch

from pearl.decoding.common import Draft, RankState, forward_batch
from pearl.sampling import choose, probabilities, top_probability


def draft_round(states: list[RankState], stop_below: float = 0.0) -> dict[int, Draft]:
    """Draft every sequence's window, appending the tokens to its sequence as pending tokens; an adaptive
    request's window ends after a token of top probability below ``stop_below``."""
    if states and hasattr(states[0].backend, "draft_windows"):
        return _draft_windows(states)
    lengths = {state.request_id: state.num_to_draft() for state in states}
    may_stop = {state.request_id for state in states if stop_below > 0 and state.request.gamma is None}
    windows = {state.request_id: ([], []) for state in states}
    for step in range(max(lengths.values(), default=0)):
        drafting = [state for state in states if lengths[state.request_id] > step]
        for state, logits in zip(drafting, forward_batch(drafting, [1] * len(drafting))):
            (token,), probs = choose(logits, state.params, state.draws, len(state.seq.tokens))
            state.seq.tokens.append(token)
            tokens, rows = windows[state.request_id]
            tokens.append(token)
            rows.append(probs)
            if state.request_id in may_stop and top_probability(logits[-1], probs) < stop_below:
                lengths[state.request_id] = step + 1
    return {state.request_id: Draft(tokens, None if state.params.greedy else torch.cat(rows), state.forwards)
            for state in states for tokens, rows in [windows[state.request_id]]}


def _draft_windows(states: list[RankState]) -> dict[int, Draft]:
    backend = states[0].backend
    # the executor's seed for a window: the draft stream's draw at the window's first position
    seeds = [state.draws.bits(len(state.seq.tokens)) >> 1 for state in states]
    start = time.perf_counter()
    windows = backend.draft_windows([state.seq for state in states], [state.num_to_draft() for state in states],
                                    [state.params for state in states], seeds)
    elapsed = time.perf_counter() - start
    drafts = {}
    for state, (tokens, rows) in zip(states, windows):
        state.forwards += len(tokens)  # the executor ran one decode step per drafted token
        state.forward_s += elapsed
        probs = None if state.params.greedy else probabilities(rows[:, :state.vocab_size], state.params)
        drafts[state.request_id] = Draft(tokens, probs, state.forwards)
    return drafts
