"""What each rank holds while serving one request, and the links the decoders talk through.

Decoders never touch MPI: they call a ``DraftLink`` or ``TargetLink`` (implemented in ``pearl.dist``), so
the same decoding code can run over any transport.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import torch

from pearl.backends.base import ModelBackend
from pearl.params import GenerationRequest
from pearl.sampling import Verdict, make_generator
from pearl.sequence import Sequence


class DraftLink(Protocol):
    def send_draft(self, tokens: list[int], probs: torch.Tensor | None, forwards: int) -> None: ...
    def recv_verdict(self) -> tuple[Verdict, bool]: ...


class TargetLink(Protocol):
    def recv_draft(self) -> tuple[list[int], torch.Tensor | None, int]: ...
    def send_verdict(self, verdict: Verdict, finished: bool) -> None: ...
    def emit(self, tokens: list[int], finish_reason: int) -> None: ...
    def cancelled(self) -> bool: ...


@dataclass
class RankState:
    """One request on one rank: its sequence, the backend that runs it, its random stream, its counters."""

    request: GenerationRequest
    backend: ModelBackend
    vocab_size: int  # logits columns both models share; the rest (padding) is cut off
    stream: int  # sampling.TARGET_STREAM or DRAFT_STREAM
    seq: Sequence = field(init=False)
    generator: torch.Generator = field(init=False)
    forwards: int = 0
    forward_s: float = 0.0

    def __post_init__(self) -> None:
        self.seq = Sequence(self.request.request_id, list(self.request.prompt_ids))
        self.generator = make_generator(self.request.sampling.seed, self.stream, self.backend.device)

    @property
    def params(self):
        return self.request.sampling

    def forward(self, num_logits: int) -> torch.Tensor:
        """Run the model over the uncached tokens; logits for the last ``num_logits`` positions."""
        start = time.perf_counter()
        logits = self.backend.forward([self.seq], [num_logits])[0][:, :self.vocab_size]
        self.forward_s += time.perf_counter() - start
        self.forwards += 1
        return logits

    def apply(self, verdict: Verdict) -> None:
        """Apply a verdict to the sequence and roll the KV cache back to what is still valid."""
        keep = self.seq.apply_verdict(verdict)
        if self.seq.num_cached > keep:
            self.backend.truncate(self.seq, keep)
            # Rollback invariant: after a rejection the cache holds exactly the accepted tokens.
            assert self.backend.cache_length(self.seq) == self.seq.num_cached == keep

    def num_to_draft(self) -> int:
        return self.seq.num_to_draft(self.request.gamma, self.request.max_total_tokens)

    def release(self) -> None:
        self.backend.release(self.seq)
