"""Per-request statistics: the target's counters plus the driver's wall time, and the figures derived."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pearl.dist.protocol import STATS_FIELDS


@dataclass(frozen=True)
class RequestStats:
    mode: str
    gamma: int | None  # the request's fixed window; None: adaptive (see mean_gamma)
    wall_s: float  # on the driver: from sending the request to the last token (model loading excluded)
    generated_tokens: int
    target_forwards: int
    draft_forwards: int
    draft_tokens: int
    accepted_draft_tokens: int
    accepted_runs: int
    rounds: int
    drafted_rounds: int
    batched_sequences: int
    target_forward_s: float
    target_wait_s: float
    target_busy_s: float

    @classmethod
    def from_message(cls, message: np.ndarray, mode: str, gamma: int | None, wall_s: float) -> "RequestStats":
        values = dict(zip(STATS_FIELDS, message.tolist()))
        ints = {k: int(v) for k, v in values.items() if not k.endswith("_s")}
        floats = {k: v for k, v in values.items() if k.endswith("_s")}
        return cls(mode=mode, gamma=gamma, wall_s=wall_s, **ints, **floats)

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def tokens_per_target_forward(self) -> float:
        return self.generated_tokens / self.target_forwards if self.target_forwards else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """PEARL's metric: mean number of accepted draft tokens between two rejections."""
        return self.accepted_draft_tokens / self.accepted_runs if self.accepted_runs else 0.0

    @property
    def mean_batch_size(self) -> float:
        """Sequences per round of this request (1: it ran alone)."""
        return self.batched_sequences / self.rounds if self.rounds else 0.0

    @property
    def mean_gamma(self) -> float:
        """Draft tokens per round that drafted: the window it used on average."""
        return self.draft_tokens / self.drafted_rounds if self.drafted_rounds else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_draft_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def round_overhead(self) -> float:
        """Share of the target's time spent neither in forwards nor waiting for the draft."""
        other = self.target_busy_s - self.target_forward_s - self.target_wait_s
        return max(0.0, other) / self.target_busy_s if self.target_busy_s > 0 else 0.0

    def to_dict(self) -> dict:
        derived = ("tokens_per_s", "tokens_per_target_forward", "mean_accepted_length", "acceptance_rate",
                   "round_overhead", "mean_batch_size", "mean_gamma")
        return {**asdict(self), **{name: getattr(self, name) for name in derived}}
