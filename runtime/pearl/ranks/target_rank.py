"""The target rank's scheduler (continuous batching): which requests share the next round, and where each
round's results go: tokens and statistics to the driver, verdicts and joins to the draft (the PLAN).

Requests wait in arrival order and join at a round boundary while fewer than ``max_batch_size`` are active;
a finished request leaves at once (its last tokens and statistics go out right after its round). A CANCEL
ends a request at the next boundary without another round. The draft learns of joins and leaves only from
the PLAN, so both ranks always hold the same batch (protocol in ``pearl.ranks.protocol``).

At each boundary every sequence that uses the draft gets its window for the next round, sent in the PLAN:
a fixed-gamma request its gamma, an adaptive one (gamma "auto") what its ``WindowPolicy`` picks from its
acceptance so far and the pair's costs (``pearl.speculation``, sent by the driver as COSTS). Window 0: the
sequence keeps its verified tokens and the target decodes it alone this round (``ArStep``), which stays
lossless. While a round holds ``draft_off_batch_size`` sequences, every window is 0: where a batched verify is
compute-bound (a CPU), drafting then costs more than it saves. A round in which the draft does not compute
beside the target (no drafting sequence, or vanilla SD ones only: the draft idles while they are verified)
lets the target take the draft's idle cores too (``target_alone_threads``); a round of vanilla SD sequences
only (the target idles while the windows are drafted) gives the draft those cores for its drafting (the
PLAN's draft threads).
"""
from __future__ import annotations

from collections import deque

import numpy as np
import torch

from pearl.decoding import Draft, TargetState, round_threads, set_window, target_round, target_state
from pearl.ranks.config import WorldConfig
from pearl.ranks.protocol import (DRAFT, DRAFT_PROBS, DRAFT_RANK, DRIVER_RANK, PLAN, STATS, TOKENS, ProtocolError,
                                 decode_drafts, encode_plan)
from pearl.ranks.transport import Endpoint
from pearl.params import GenerationRequest, Mode
from pearl.sampling import Verdict
from pearl.speculation import Calibration, SpeculationCosts, WindowPolicy


class TargetRank:
    def __init__(self, backend, driver: Endpoint, peers: Endpoint, config: WorldConfig) -> None:
        self.backend, self.driver, self.peers = backend, driver, peers
        self.max_batch_size = config.max_batch_size
        self.draft_off_batch_size = config.draft_off_batch_size
        self.drafting_threads, self.alone_threads = config.threads_per_rank, config.alone_threads
        self.vocab_size = 0  # set by OP_START
        self.costs: SpeculationCosts | None = None  # set by COSTS, before the first adaptive request
        self.calibration = Calibration()  # what the profiled costs are worth in this world now
        self.active: dict[int, TargetState] = {}
        self.waiting: deque[GenerationRequest] = deque()
        # the last round's verdicts of the sequences the draft holds, (verdict, finished), for the next PLAN
        self.verdicts: dict[int, tuple[Verdict, bool]] = {}

    def add(self, request: GenerationRequest) -> None:
        self.waiting.append(request)

    def cancel(self, request_id: int) -> None:
        """End the request now (we are between rounds); a request no longer served is ignored."""
        if (state := self.active.get(request_id)) is not None:
            state.tracker.cancel()
            state.new_tokens = []
            if request_id in self.verdicts:
                self.verdicts[request_id] = (self.verdicts[request_id][0], True)
            self._report(state)
            return
        for request in self.waiting:
            if request.request_id == request_id:
                self.waiting.remove(request)
                state = target_state(request, self.backend, self.vocab_size)
                state.tracker.cancel()
                if request.mode is not Mode.AR:  # the draft holds it too, waiting to join: let it go
                    self.verdicts[request_id] = (Verdict(0), True)
                self._report(state)
                return

    def ready(self) -> bool:
        return bool(self.active or self.waiting or self.verdicts)

    @property
    def busy(self) -> bool:
        """What the worker's probing reads (as DraftRank.busy): with work in hand, a round is due at once."""
        return self.ready()

    def step(self) -> None:
        """A round boundary (admit, pick windows, tell the draft), then one round over the batch, then its
        results."""
        joins = []
        while self.waiting and len(self.active) < self.max_batch_size:
            state = self._admit(self.waiting.popleft())
            self.active[state.request_id] = state
            joins.append(state)
        windows = {request_id: self._window(state) for request_id, state in self.active.items()
                   if state.request.mode is not Mode.AR}
        verdicts = {request_id: (verdict, finished, windows.get(request_id, 0))
                    for request_id, (verdict, finished) in self.verdicts.items()}
        drafting_joins = {state.request_id: windows[state.request_id] for state in joins
                          if state.request.mode is not Mode.AR}
        states = list(self.active.values())
        threads = round_threads(states, self.drafting_threads, self.alone_threads)
        if verdicts or drafting_joins:
            self.peers.send(encode_plan(verdicts, drafting_joins, threads.draft), DRAFT_RANK, PLAN)
            self.verdicts = {}
        if not self.active:
            return
        if torch.get_num_threads() != threads.target:
            torch.set_num_threads(threads.target)
        forward_s = states[0].forward_s
        target_round(states, self._receive_drafts)
        if len(states) == 1 and self.costs is not None:
            self._calibrate(states[0], states[0].forward_s - forward_s)
        for state in states:
            if state.request.mode is not Mode.AR:
                self.verdicts[state.request_id] = (state.verdict, state.finished)
            self._report(state)

    def _admit(self, request: GenerationRequest) -> TargetState:
        policy = None
        if request.gamma is None and request.mode is not Mode.AR:
            if self.costs is None:
                raise ProtocolError(f"request {request.request_id} is adaptive but no COSTS came before it")
            policy = WindowPolicy(request.mode.name.lower(), self.costs.prior_acceptance, self.costs.max_window)
        return target_state(request, self.backend, self.vocab_size, policy)

    def _window(self, state: TargetState) -> int:
        """The sequence's window for the next round (set on its state too): 0 in a round of at least
        ``draft_off_batch_size`` sequences, else its policy's or its fixed gamma."""
        kind = None
        if self.draft_off_batch_size is not None and len(self.active) >= self.draft_off_batch_size:
            window = 0
        elif state.policy is not None:
            profiled = self.costs.at(len(self.active))
            window = state.policy.next_window(self.calibration.apply(profiled), profiled,
                                              state.tracker.remaining, state.draft_missed)
            kind = Mode.parse(state.policy.kind)
        else:
            window = state.request.gamma
        set_window(state, window, kind)
        return window

    def _calibrate(self, state: TargetState, forward_s: float) -> None:
        """A lone sequence's round against the profile (not its prefill: the profile has no such forward).
        A PEARL round times the verify beside the drafting, the draft's window, and the round against the
        longer of the two as calibrated; an SD round the target's wait for the window and its verify on all
        its threads; a round alone the target on all its threads. A verify longer than any profiled one (an
        SD round checking a PEARL round's pending tokens with its own window) has nothing to compare with, and
        a draft that first caught up (the opening, a probe) took longer than its window: only the verify of
        such a round counts (every request's opening SD round keeps ``sd_verify`` current)."""
        row = self.costs.at(1)
        if state.rounds < 2:
            return
        drafted = len(state.draft.tokens) if state.step.uses_draft else 0
        verify_profiled = state.checked + state.step.waits_for_draft <= len(row.verify_s)
        drafting_timed = not state.draft_was_behind
        if state.step.waits_for_draft:
            if verify_profiled:
                self.calibration.observe("sd_verify", forward_s, row.alone_verify(state.checked + 1),
                                         state.checked + 1)
            if drafting_timed:
                self.calibration.observe("sd_draft", state.draft_wait_s, drafted * row.sd_draft_step)
        elif state.step.uses_draft:
            if verify_profiled:
                self.calibration.observe("verify", forward_s, row.verify(state.checked), state.checked)
            if drafting_timed:
                self.calibration.observe("draft", state.draft.seconds, drafted * row.draft_step_s)
                parts = self.calibration.apply(row)
                self.calibration.observe("overlap", forward_s + state.draft_wait_s,
                                         max(drafted * parts.draft_step_s, parts.verify(state.checked)))
        else:
            self.calibration.observe("alone", forward_s, row.alone_step_s)

    def _receive_drafts(self) -> dict[int, Draft]:
        seconds, windows = decode_drafts(self.peers.recv_from(DRAFT_RANK, DRAFT))
        drafting = {state.request_id: state for state in self.active.values() if state.step.uses_draft}
        if sorted(request_id for request_id, _, _ in windows) != sorted(drafting):
            raise ProtocolError(f"draft windows for {sorted(w[0] for w in windows)}, the batch is {sorted(drafting)}")
        sampled = [(request_id, len(tokens)) for request_id, _, tokens in windows
                   if not drafting[request_id].params.greedy]
        probs: dict[int, torch.Tensor] = {}
        if sampled:
            rows = torch.from_numpy(self.peers.recv_from(DRAFT_RANK, DRAFT_PROBS).reshape(-1, self.vocab_size))
            rows, start = rows.to(self.backend.device), 0
            for request_id, length in sampled:
                probs[request_id] = rows[start:start + length]
                start += length
        return {request_id: Draft(tokens, probs.get(request_id), forwards, seconds)
                for request_id, forwards, tokens in windows}

    def _report(self, state: TargetState) -> None:
        """Stream the round's new tokens, each time with the statistics so far; a finished request leaves."""
        if state.new_tokens or state.finished:
            reason = int(state.tracker.finish_reason)
            self.driver.send(np.array([state.request_id, reason, *state.new_tokens]), DRIVER_RANK, TOKENS)
            self.driver.send(np.array([state.request_id, *state.stats()]), DRIVER_RANK, STATS)
        if state.finished and self.active.pop(state.request_id, None) is not None:
            state.release()
