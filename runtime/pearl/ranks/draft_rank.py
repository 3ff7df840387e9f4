"""The draft rank's side of continuous batching: it holds the same batch as the target, which it learns
from the target's PLAN messages (verdicts to apply, each sequence's next window, who leaves, who joins), and
answers each PLAN with one DRAFT carrying a window per sequence whose window is not 0 (protocol in
``pearl.ranks.protocol``). A sequence at window 0 stays, following the target's tokens without a forward
until it drafts again; its first window then feeds the draft everything it missed.

Requests arrive from the driver (OP_GENERATE) on their own schedule and wait here until a PLAN lets them
join; a PLAN naming one that has not arrived yet waits for it.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from pearl.decoding import RankState, draft_round, draft_state
from pearl.ranks.protocol import DRAFT, DRAFT_PROBS, PLAN, TARGET_RANK, ProtocolError, decode_plan, encode_drafts
from pearl.ranks.transport import Endpoint
from pearl.params import GenerationRequest


class DraftRank:
    def __init__(self, backend, peers: Endpoint, await_driver: Callable[[], None], stop_below: float = 0.0) -> None:
        """``await_driver`` handles the driver's next message, waiting for it (a request not yet here);
        ``stop_below``: ``WorldConfig.draft_stop_confidence``."""
        self.backend, self.peers, self.await_driver = backend, peers, await_driver
        self.stop_below = stop_below
        self.vocab_size = 0  # set by OP_START
        self.active: dict[int, RankState] = {}
        self.arrived: dict[int, GenerationRequest] = {}  # not yet joined
        self.dropped: set[int] = set()  # cancelled before they joined, and before they arrived here

    def add(self, request: GenerationRequest) -> None:
        if request.request_id in self.dropped:
            self.dropped.discard(request.request_id)
        else:
            self.arrived[request.request_id] = request

    def ready(self) -> bool:
        return self.peers.has(TARGET_RANK, PLAN)

    @property
    def busy(self) -> bool:
        """A sequence drafts: the next PLAN is due within a round (idle probing would slow the target, which
        has the cores to itself while no sequence drafts)."""
        return any(state.window for state in self.active.values())

    def step(self) -> None:
        verdicts, joins, threads = decode_plan(self.peers.recv_from(TARGET_RANK, PLAN))
        if missing := set(self.active) - set(verdicts):
            raise ProtocolError(f"the plan has no verdict for requests {sorted(missing)} of the batch")
        for request_id, (verdict, finished, window) in verdicts.items():
            state = self.active.pop(request_id, None)
            if state is None:  # cancelled while waiting to join
                if self.arrived.pop(request_id, None) is None:
                    self.dropped.add(request_id)
            elif finished:
                state.release()
            else:
                state.apply(verdict)
                state.set_window(window)
                self.active[request_id] = state
        for request_id, window in joins.items():
            while request_id not in self.arrived:
                self.await_driver()
            self.active[request_id] = draft_state(self.arrived.pop(request_id), self.backend, self.vocab_size,
                                                  window)
        drafting = [state for state in self.active.values() if state.window]
        if drafting:
            if torch.get_num_threads() != threads:  # the pair's cores where the target waits (SD rounds only)
                torch.set_num_threads(threads)
            start = time.perf_counter()
            drafts = draft_round(drafting, self.stop_below)
            self._send(time.perf_counter() - start, drafts)

    def _send(self, seconds: float, drafts) -> None:
        windows = [(request_id, draft.forwards, draft.tokens) for request_id, draft in drafts.items()]
        self.peers.send(encode_drafts(seconds, windows), TARGET_RANK, DRAFT)
        rows = [draft.probs for draft in drafts.values() if draft.probs is not None]
        if rows:
            self.peers.send(torch.cat(rows).detach().float().cpu().numpy().ravel(), TARGET_RANK, DRAFT_PROBS)
