"""Request-level parameters: how to sample, which decoder, how long a draft window is.

Everything here is a frozen dataclass validated in ``__post_init__``, so a bad value is refused with a
clear message where the request is made, never deep inside a rank.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace


class Mode(enum.IntEnum):
    """The three decoders. The integer value travels in the request message."""

    AR = 0  # target alone, one token per forward
    SD = 1  # vanilla speculative decoding: draft gamma tokens, then verify, serially
    PEARL = 2  # draft and verify overlapped (pre-verify / post-verify)

    @classmethod
    def parse(cls, name: str) -> "Mode":
        try:
            return cls[name.upper()]
        except KeyError:
            choices = ", ".join(m.name.lower() for m in cls)
            raise ValueError(f"unknown mode {name!r}; choose one of: {choices}") from None


@dataclass(frozen=True)
class SamplingParams:
    """How tokens are chosen. temperature 0 means greedy (argmax); top_k 0 and top_p 1 mean no filter."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    max_tokens: int = 128
    stop_token_ids: tuple[tuple[int, ...], ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number, got {self.temperature!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not (isinstance(self.top_p, (int, float)) and 0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {self.seed}")
        for stop in self.stop_token_ids:
            if not stop or any(t < 0 for t in stop):
                raise ValueError(f"each stop sequence must be a non-empty list of token ids, got {stop!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class GenerationRequest:
    """One request as the ranks see it: prompt ids, decoder, draft window length and sampling. ``gamma``
    None: adaptive, the target picks each round's window (``pearl.speculation``). ``num_generated``: the
    prompt's last tokens that are this request's own output already (a request resumed in a new world after
    a rank died): they count toward ``max_tokens`` and stop sequences, and are not output again."""

    request_id: int
    prompt_ids: tuple[int, ...]
    sampling: SamplingParams
    mode: Mode = Mode.PEARL
    gamma: int | None = 4
    num_generated: int = 0

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError("the prompt is empty: give at least one token")
        if self.gamma is not None and self.gamma < 1:
            raise ValueError(f"gamma must be >= 1 (or None: adaptive), got {self.gamma}")
        if any(t < 0 for t in self.prompt_ids):
            raise ValueError("prompt token ids must be >= 0")
        if not 0 <= self.num_generated < min(len(self.prompt_ids), self.sampling.max_tokens):
            raise ValueError(f"num_generated must be below the prompt's length and max_tokens (a resumed "
                             f"request has tokens left to generate), got {self.num_generated}")

    def resumed(self, output: list[int]) -> "GenerationRequest":
        """This request continued after ``output``: its prompt, then that output, with the rest of its budget."""
        return replace(self, prompt_ids=self.prompt_ids + tuple(output),
                       num_generated=self.num_generated + len(output))

    @property
    def max_total_tokens(self) -> int:
        """The longest a sequence can get: drafting may run one token past max_tokens (see Sequence)."""
        return len(self.prompt_ids) - self.num_generated + self.sampling.max_tokens + 1
