"""The target rank's loop, shared by all decoders: the target decides, so it owns the output.

Each decoder supplies one ``step`` (``ar``, ``sd``, ``pearl``) that runs the target's forward, receives the
draft's tokens if it uses a draft, and returns the round's verdict. This loop then applies the verdict,
tells the draft, scans the newly verified tokens for the end of the request and streams them out.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from pearl.decoding.common import RankState, TargetLink
from pearl.dist.protocol import STATS_FIELDS
from pearl.sampling import Verdict
from pearl.stopping import OutputTracker


@dataclass
class TargetState(RankState):
    """The target's view of a request, with the counters that become the request's statistics."""

    wait_s: float = 0.0
    draft_forwards: int = 0
    draft_tokens: int = 0
    accepted_draft_tokens: int = 0
    accepted_runs: int = 0
    current_run: int = 0
    rounds: int = 0

    def receive_draft(self, link: TargetLink) -> tuple[list[int], torch.Tensor | None]:
        """Wait for the draft's tokens (timed) and append them to the sequence as pending."""
        start = time.perf_counter()
        tokens, probs, self.draft_forwards = link.recv_draft()
        self.wait_s += time.perf_counter() - start
        self.seq.tokens.extend(tokens)
        self.draft_tokens += len(tokens)
        return tokens, probs

    def record(self, verdict: Verdict, num_checked: int) -> None:
        """Count one round. A run is the accepted draft tokens between two rejections (PEARL's metric)."""
        self.rounds += 1
        self.accepted_draft_tokens += verdict.num_accepted
        self.current_run += verdict.num_accepted
        if verdict.num_accepted < num_checked:  # a rejection closes the current run
            self.accepted_runs += 1
            self.current_run = 0


# A decoder's target step: run one round and return (verdict, number of draft tokens it checked).
Step = Callable[[TargetState, TargetLink], tuple[Verdict, int]]


def serve_target(state: TargetState, link: TargetLink, step: Step, uses_draft: bool) -> np.ndarray:
    """Run rounds until the request ends; return its statistics (``STATS_FIELDS`` order)."""
    start = time.perf_counter()
    tracker = OutputTracker(state.seq, state.params, state.backend.eos_token_ids)
    while not tracker.finished:
        verdict, num_checked = step(state, link)
        state.apply(verdict)
        state.record(verdict, num_checked)
        new_tokens = tracker.advance()
        if not tracker.finished and link.cancelled():  # after the round, so draft and target stay in step
            tracker.cancel()
        if uses_draft:
            link.send_verdict(verdict, tracker.finished)
        if new_tokens or tracker.finished:
            link.emit(new_tokens, int(tracker.finish_reason))
    if state.current_run:
        state.accepted_runs += 1
    values = dict(generated_tokens=len(tracker.output), target_forwards=state.forwards,
                  target_forward_s=state.forward_s, target_wait_s=state.wait_s,
                  target_busy_s=time.perf_counter() - start)
    values.update({name: getattr(state, name) for name in
                   ("draft_forwards", "draft_tokens", "accepted_draft_tokens", "accepted_runs", "rounds")})
    return np.array([values[name] for name in STATS_FIELDS], dtype=np.float64)
