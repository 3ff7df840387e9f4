"""The target rank's round over every active sequence, shared by all decoders: the target decides, so it
owns the output.

Each sequence has a ``Step`` of its decoder (``ar``, ``sd``, ``pearl``) that says how many logits rows it needs
from the forward BEFORE the draft windows arrive (PEARL: overlapped with the drafting; AR: no draft at
all) or AFTER (SD), and turns those rows into the round's verdict. A round is at most two batched
forwards: one over the sequences that verify early, one over those that verify late. Then each sequence
applies its verdict, counts it and scans its newly verified tokens for the end of the request; what to
send where is the scheduler's (``pearl.ranks.target_rank``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Protocol

import numpy as np
import torch

from pearl.decoding.common import Draft, RankState, forward_batch
from pearl.ranks.protocol import STATS_FIELDS
from pearl.sampling import Verdict
from pearl.speculation import WindowPolicy
from pearl.stopping import OutputTracker


class Step(Protocol):
    uses_draft: bool
    # the target computes only while the draft is idle (vanilla SD: draft, then verify), so a round of such
    # steps alone may give the target the draft's cores too
    waits_for_draft: bool

    def rows_before_draft(self, state: "TargetState") -> int: ...
    def rows_after_draft(self, state: "TargetState") -> int: ...
    def decide(self, state: "TargetState", logits: torch.Tensor) -> tuple[Verdict, int]:
        """The round's verdict and how many draft tokens it checked."""


@dataclass
class TargetState(RankState):
    """The target's view of a request: its decoder step, its window policy (adaptive requests), output
    tracker, this round's draft and verdict, and the counters that become the request's statistics."""

    step: Step | None = None
    policy: WindowPolicy | None = None
    tracker: OutputTracker = field(init=False)
    draft: Draft | None = None  # this round's window
    draft_wait_s: float = 0.0  # how long this round waited for it
    pending_probs: torch.Tensor | None = None  # the draft's rows of the pending tokens a round left (sampling)
    verdict: Verdict | None = None  # this round's decision
    new_tokens: list[int] = field(default_factory=list)  # output this round
    checked: int = 0  # draft tokens this round checked
    # this round's draft first fed the tokens it missed while the target decoded alone (the first round after
    # a round that did not draft): its time is no draft step's
    draft_was_behind: bool = False
    draft_seen: int = 0  # verified tokens after the last round the draft ran with this sequence (0: none yet)
    started: float = field(default_factory=time.perf_counter)
    wait_s: float = 0.0
    draft_forwards: int = 0
    draft_tokens: int = 0
    accepted_draft_tokens: int = 0
    accepted_runs: int = 0
    current_run: int = 0
    rounds: int = 0
    drafted_rounds: int = 0
    sd_rounds: int = 0
    checked_draft_tokens: int = 0
    acceptance_histogram: list[int] = field(default_factory=lambda: [0])  # verifications by tokens accepted
    batched_sequences: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.tracker = OutputTracker(self.seq, self.params, self.backend.eos_token_ids,
                                     self.request.num_generated)

    @property
    def finished(self) -> bool:
        return self.tracker.finished

    @property
    def draft_missed(self) -> int:
        """Tokens the draft would first have to feed if it drafted next round: the prompt's and those decoded
        alone since it last ran with this sequence."""
        return max(0, self.seq.num_verified - self.draft_seen)

    def take_draft(self, draft: Draft, waited_s: float) -> None:
        """The draft's window arrived (after ``waited_s`` of waiting): append it as pending tokens."""
        if self.policy is not None:  # fewer than asked (its window, cut at the request's end): the draft stopped
            self.policy.observe_window(len(draft.tokens), self.num_to_draft())
        self.draft, self.draft_wait_s = draft, waited_s
        self.wait_s += waited_s
        self.draft_forwards = draft.forwards
        self.seq.tokens.extend(draft.tokens)
        self.draft_tokens += len(draft.tokens)

    def probs_of_pending(self, new_rows: torch.Tensor) -> torch.Tensor:
        """The draft's rows for the tokens a round checks: those of the pending tokens an earlier round left,
        then ``new_rows`` of this round's window."""
        return new_rows if self.pending_probs is None else torch.cat([self.pending_probs, new_rows])

    def record(self, verdict: Verdict, num_checked: int, batch_size: int) -> None:
        """Count one round. A run is the accepted draft tokens between two rejections (PEARL's metric); a round
        that checked draft tokens is one verification (vLLM's "draft") in the acceptance histogram."""
        self.rounds += 1
        self.draft_was_behind = num_checked > 0 and not self.checked
        if self.step.uses_draft:
            self.draft_seen = self.seq.num_verified
        self.checked = num_checked
        self.batched_sequences += batch_size
        if num_checked > 0:
            self.drafted_rounds += 1
            self.sd_rounds += self.step.waits_for_draft
            self.checked_draft_tokens += num_checked
            self.acceptance_histogram.extend([0] * (num_checked + 1 - len(self.acceptance_histogram)))
            self.acceptance_histogram[verdict.num_accepted] += 1
        if self.policy is not None:
            self.policy.observe(num_checked, verdict.num_accepted)
        self.accepted_draft_tokens += verdict.num_accepted
        self.current_run += verdict.num_accepted
        if verdict.num_accepted < num_checked:  # a rejection closes the current run
            self.accepted_runs += 1
            self.current_run = 0

    def stats(self) -> np.ndarray:
        """The request's statistics so far, ``STATS_FIELDS`` order, then its acceptance histogram (final once it
        is finished: the target sends them after every TOKENS)."""
        values = dict(generated_tokens=len(self.tracker.output), target_forwards=self.forwards,
                      prompt_tokens=len(self.request.prompt_ids) - self.request.num_generated,
                      target_forward_s=self.forward_s, target_wait_s=self.wait_s,
                      target_busy_s=time.perf_counter() - self.started,
                      accepted_runs=self.accepted_runs + (1 if self.current_run else 0))
        values.update({name: getattr(self, name) for name in
                       ("draft_forwards", "draft_tokens", "accepted_draft_tokens", "rounds", "drafted_rounds",
                        "batched_sequences", "checked_draft_tokens", "sd_rounds")})
        return np.array([*(values[name] for name in STATS_FIELDS), *self.acceptance_histogram], dtype=np.float64)


class RoundThreads(NamedTuple):
    target: int
    draft: int


def round_threads(states: list[TargetState], drafting_threads: int, alone_threads: int) -> RoundThreads:
    """Each rank's threads for a round. The draft computes beside the target in a round where a sequence drafts
    and not every sequence waits for its window (PEARL verifies while the draft drafts; an AR sequence decodes
    while the others' windows are drafted): each keeps its own (``drafting_threads``). Where every sequence's
    round is vanilla SD, the two take turns, each on all the pair's cores (``alone_threads``). Where nothing
    drafts, the target takes them all and the draft keeps its own."""
    drafts = any(s.step.uses_draft for s in states)
    if drafts and not all(s.step.waits_for_draft for s in states):
        return RoundThreads(target=drafting_threads, draft=drafting_threads)
    return RoundThreads(target=alone_threads, draft=alone_threads if drafts else drafting_threads)


def _forward(states: list[TargetState], rows: Callable[[TargetState], int]) -> dict[int, torch.Tensor]:
    wanted = [(state, rows(state)) for state in states]
    batch = [(state, n) for state, n in wanted if n]
    logits = forward_batch([state for state, _ in batch], [n for _, n in batch])
    return {state.request_id: rows for (state, _), rows in zip(batch, logits)}


def target_round(states: list[TargetState], receive_drafts: Callable[[], dict[int, Draft]]) -> None:
    """One round for every active sequence: verdicts applied, counted and scanned (``new_tokens``)."""
    logits = _forward(states, lambda state: state.step.rows_before_draft(state))
    drafting = [state for state in states if state.step.uses_draft]
    if drafting:
        start = time.perf_counter()
        drafts = receive_drafts()
        waited = time.perf_counter() - start
        for state in drafting:
            state.take_draft(drafts[state.request_id], waited)
    logits.update(_forward(states, lambda state: state.step.rows_after_draft(state)))
    for state in states:
        verdict, num_checked = state.step.decide(state, logits[state.request_id])
        state.apply(verdict)
        state.record(verdict, num_checked, len(states))
        state.verdict = verdict
        state.new_tokens = state.tracker.advance()
