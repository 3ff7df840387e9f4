"""What a caller of an LLM holds: the stream of a request's tokens, the pair's limits and the check that a
request fits the models. Free of MPI, so the Triton side (serving.world_process, serving.inputs) uses them
without starting MPI itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

from pearl.params import GenerationRequest
from pearl.stats import RequestStats


@dataclass(frozen=True)
class PairLimits:
    """What a pair takes: requests are checked against it where they enter (``check``), once."""

    vocab_size: int
    max_seq_len: int
    max_batch_size: int  # requests served at once (the ranks batch them)
    eos_token_ids: tuple[int, ...]

    def check(self, request: GenerationRequest) -> None:
        check_fits(request, self.vocab_size, self.max_seq_len)


def check_fits(request: GenerationRequest, vocab_size: int, max_seq_len: int) -> None:
    """Refuse (ValueError) a request whose ids or length the models cannot take."""
    bad = [t for t in request.prompt_ids if t >= vocab_size]
    if bad:
        raise ValueError(f"prompt token id {bad[0]} is outside the vocabulary (size {vocab_size})")
    if request.max_total_tokens > max_seq_len:
        raise ValueError(f"prompt ({len(request.prompt_ids)} tokens) + max_tokens ({request.sampling.max_tokens}) "
                         f"exceeds the models' limit of {max_seq_len - 1} tokens")


class GenerationStream:
    """Iterate for token chunks; afterwards ``token_ids``, ``finish_reason`` and ``stats`` are set."""

    def __init__(self, serve: Callable[["GenerationStream"], Iterator[list[int]]],
                 cancel: Callable[[], None]) -> None:
        self.token_ids: list[int] = []
        self.finish_reason: str | None = None
        self.stats: RequestStats | None = None
        self._chunks = serve(self)  # a generator: nothing runs until the stream is iterated
        self._cancel = cancel
        self.started = False

    def cancel(self) -> None:
        """End the request after the ranks' current round; keep iterating to get the rest and the stats.
        A stream never iterated has not reached the ranks: there is nothing to cancel."""
        if self.started:
            self._cancel()

    def __iter__(self) -> Iterator[list[int]]:
        self.started = True
        try:
            for chunk in self._chunks:
                self.token_ids.extend(chunk)
                yield chunk
        finally:
            self._chunks.close()  # a consumer that stops early still lets the request finish and the lock go

    def collect(self) -> "GenerationStream":
        for _ in self:
            pass
        return self
