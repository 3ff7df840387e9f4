"""When a request ends, and which verified tokens are output.

The target rank (the one that decides) owns an ``OutputTracker`` per request. After each verdict it hands
over the newly verified tokens one at a time, in order, so every decoder stops at exactly the same token:
- an EOS token ends the request and is not output (unless ``ignore_eos``);
- a stop sequence ends the request and is output (as TensorRT-LLM's stop_words do);
- ``max_tokens`` output tokens end it with reason "length" (a resumed request's earlier output counts);
- a cancellation from the driver ends it after the current round with reason "cancelled".
"""
from __future__ import annotations

import enum

from pearl.params import SamplingParams
from pearl.sequence import Sequence


class FinishReason(enum.IntEnum):
    NONE = 0
    STOP = 1
    LENGTH = 2
    CANCELLED = 3

    @property
    def label(self) -> str | None:
        return None if self is FinishReason.NONE else self.name.lower()


class OutputTracker:
    def __init__(self, seq: Sequence, params: SamplingParams, eos_token_ids: tuple[int, ...],
                 num_generated: int = 0) -> None:
        """``num_generated``: the prompt's last tokens are output of an earlier world (a resumed request)."""
        self.seq = seq
        self.params = params
        self.eos = frozenset(() if params.ignore_eos else eos_token_ids)
        self.output: list[int] = []  # this world's
        self._all_output = seq.tokens[seq.num_prompt - num_generated:seq.num_prompt]  # earlier worlds' too
        self.finish_reason = FinishReason.NONE
        self._scanned = seq.num_prompt  # tokens[:_scanned] have been looked at

    @property
    def finished(self) -> bool:
        return self.finish_reason is not FinishReason.NONE

    @property
    def remaining(self) -> int:
        """Output tokens the request may still get before ``max_tokens`` (a resumed request's earlier ones count)."""
        return self.params.max_tokens - len(self._all_output)

    def cancel(self) -> None:
        """End the request now (the client went away); what was already verified stays output."""
        if not self.finished:
            self.finish_reason = FinishReason.CANCELLED

    def advance(self) -> list[int]:
        """Scan tokens verified since the last call; return the ones to output (may end the request)."""
        new: list[int] = []
        while not self.finished and self._scanned < self.seq.num_verified:
            token = self.seq.tokens[self._scanned]
            self._scanned += 1
            if token in self.eos:
                self.finish_reason = FinishReason.STOP
                break
            new.append(token)
            self.output.append(token)
            self._all_output.append(token)
            if self._ends_with_stop_sequence():
                self.finish_reason = FinishReason.STOP
            elif len(self._all_output) >= self.params.max_tokens:
                self.finish_reason = FinishReason.LENGTH
        return new

    def _ends_with_stop_sequence(self) -> bool:
        tail = self._all_output  # a stop sequence may begin in an earlier world's output
        return any(len(tail) >= len(s) and tuple(tail[-len(s):]) == s for s in self.params.stop_token_ids)
