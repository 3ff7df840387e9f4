"""The decoders' links (``DraftLink``, ``TargetLink``) carried over MPI with the protocol's messages."""
from __future__ import annotations

import numpy as np
import torch

from pearl.dist.protocol import (CANCEL, DRAFT, DRAFT_PROBS, DRAFT_RANK, DRIVER_RANK, TARGET_RANK, TOKENS,
                                 VERDICT)
from pearl.dist.transport import Endpoint
from pearl.sampling import Verdict


class ProtocolError(RuntimeError):
    """A message that does not belong to the request being served."""


def _check(request_id: int, message: np.ndarray, what: str) -> None:
    if int(message[0]) != request_id:
        raise ProtocolError(f"{what} for request {int(message[0])} while serving request {request_id}")


class MpiDraftLink:
    def __init__(self, peers: Endpoint, request_id: int) -> None:
        self.peers, self.request_id = peers, request_id

    def send_draft(self, tokens: list[int], probs: torch.Tensor | None, forwards: int) -> None:
        self.peers.send(np.array([self.request_id, forwards, *tokens]), TARGET_RANK, DRAFT)
        if probs is not None:
            self.peers.send(probs.detach().float().cpu().numpy().ravel(), TARGET_RANK, DRAFT_PROBS)

    def recv_verdict(self) -> tuple[Verdict, bool]:
        message = self.peers.recv_from(TARGET_RANK, VERDICT)
        _check(self.request_id, message, "verdict")
        _, num_accepted, next_token, finished = message.tolist()
        return Verdict(num_accepted, next_token), bool(finished)


class MpiTargetLink:
    def __init__(self, peers: Endpoint, driver: Endpoint, request_id: int, greedy: bool,
                 device: torch.device) -> None:
        self.peers, self.driver, self.request_id = peers, driver, request_id
        self.greedy, self.device = greedy, device

    def recv_draft(self) -> tuple[list[int], torch.Tensor | None, int]:
        message = self.peers.recv_from(DRAFT_RANK, DRAFT)
        _check(self.request_id, message, "draft tokens")
        tokens = message[2:].tolist()
        probs = None
        if not self.greedy:
            rows = self.peers.recv_from(DRAFT_RANK, DRAFT_PROBS).reshape(len(tokens), -1)
            probs = torch.from_numpy(rows).to(self.device)
        return tokens, probs, int(message[1])

    def send_verdict(self, verdict: Verdict, finished: bool) -> None:
        message = np.array([self.request_id, verdict.num_accepted, verdict.next_token, int(finished)])
        self.peers.send(message, DRAFT_RANK, VERDICT)

    def cancelled(self) -> bool:
        """Whether the driver cancelled this request (stale cancellations of earlier requests are dropped)."""
        found = False
        while (message := self.driver.poll(DRIVER_RANK, CANCEL)) is not None:
            found = found or int(message[0]) == self.request_id
        return found

    def emit(self, tokens: list[int], finish_reason: int) -> None:
        self.driver.send(np.array([self.request_id, finish_reason, *tokens]), DRIVER_RANK, TOKENS)
