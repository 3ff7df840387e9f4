"""What each rank holds per sequence while serving it, and the one batched forward every decoder goes through.

Decoders never touch MPI: the target's round receives the draft's windows through a callable (implemented
over MPI in ``pearl.ranks``), so the same decoding code can run over any transport.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from pearl.backends.base import ModelBackend
from pearl.params import GenerationRequest
from pearl.sampling import Draws, Verdict
from pearl.sequence import Sequence


@dataclass
class Draft:
    """One sequence's draft window of a round: its tokens, the rows they were sampled from (None when
    greedy), the draft's forward count for the sequence so far (for the statistics), and how long the
    round's drafting took."""

    tokens: list[int]
    probs: torch.Tensor | None
    forwards: int
    seconds: float = 0.0


@dataclass
class RankState:
    """One request on one rank: its sequence, the backend that runs it, its random draws, its counters."""

    request: GenerationRequest
    backend: ModelBackend
    vocab_size: int  # logits columns both models share; the rest (padding) is cut off
    stream: int  # sampling.TARGET_STREAM or DRAFT_STREAM
    seq: Sequence = field(init=False)
    draws: Draws = field(init=False)  # by token position (pearl.sampling)
    forwards: int = 0  # batched forwards this sequence took part in
    forward_s: float = 0.0  # their wall time (a sequence waits for the whole batch)
    window: int = 0  # this round's draft window; 0: the draft sits this round out

    def __post_init__(self) -> None:
        self.seq = Sequence(self.request.request_id, list(self.request.prompt_ids))
        self.draws = Draws(self.request.sampling.seed, self.stream)

    @property
    def request_id(self) -> int:
        return self.request.request_id

    @property
    def params(self):
        return self.request.sampling

    def apply(self, verdict: Verdict) -> None:
        """Apply a verdict to the sequence and roll the KV cache back to what is still valid."""
        keep = self.seq.apply_verdict(verdict)
        if self.seq.num_cached > keep:
            self.backend.truncate(self.seq, keep)
            # Rollback invariant: after a rejection the cache holds exactly the accepted tokens.
            assert self.backend.cache_length(self.seq) == self.seq.num_cached == keep

    def set_window(self, window: int) -> None:
        """Next round's window. Both ranks set the same one at the same boundary; at 0 both drop the draft
        tokens not yet checked, so the target's next tokens are its own decode's."""
        if window == 0 and self.window:
            keep = self.seq.drop_pending()
            if self.seq.num_cached > keep:
                self.backend.truncate(self.seq, keep)
        self.window = window

    def num_to_draft(self) -> int:
        return self.seq.num_to_draft(self.window, self.request.max_total_tokens)

    def release(self) -> None:
        self.backend.release(self.seq)


def forward_batch(states: list[RankState], num_logits: list[int]) -> list[torch.Tensor]:
    """ONE backend forward over every state's uncached tokens; each gets logits for its last
    ``num_logits`` positions, cut to the shared vocabulary."""
    if not states:
        return []
    start = time.perf_counter()
    logits = states[0].backend.forward([s.seq for s in states], num_logits)
    elapsed = time.perf_counter() - start
    for state in states:
        state.forwards += 1
        state.forward_s += elapsed
    return [rows[:, :state.vocab_size] for rows, state in zip(logits, states)]
