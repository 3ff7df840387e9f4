"""Per-request statistics: the target's counters (``pearl.schema.COUNTERS``) plus the driver's wall time, and
the figures derived from them. No torch, no MPI (the Triton-side modules use it)."""
from __future__ import annotations

from dataclasses import asdict, field, make_dataclass

from pearl.schema import COUNTER_NAMES, COUNTERS


class _Figures:
    """What is derived from the counters (mixed into ``RequestStats``)."""

    @classmethod
    def from_message(cls, values, mode: str, gamma: int | None, wall_s: float) -> "RequestStats":
        """From a STATS message's fields (its numbers after the request id, ``COUNTERS`` order)."""
        counters = {name: kind(value) for (name, kind, _), value in zip(COUNTERS, list(values))}
        return cls(mode=mode, gamma=gamma, wall_s=wall_s, **counters)

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

    @property
    def requests(self) -> int:
        return 1  # what a request adds to a count of requests (pearl_requests_total)

    def to_dict(self) -> dict:
        derived = ("tokens_per_s", "tokens_per_target_forward", "mean_accepted_length", "acceptance_rate",
                   "round_overhead", "mean_batch_size", "mean_gamma")
        return {**asdict(self), **{name: getattr(self, name) for name in derived}}


# mode, the request's fixed window (None: adaptive; see mean_gamma), the driver's wall time from sending the
# request to its last token (model loading excluded), then the target's counters
RequestStats = make_dataclass(
    "RequestStats", [("mode", str), ("gamma", "int | None"), ("wall_s", float),
                     *[(name, kind, field(metadata={"doc": doc})) for name, kind, doc in COUNTERS]],
    bases=(_Figures,), frozen=True)
RequestStats.__module__ = __name__
RequestStats.__doc__ = "One finished request's statistics (fields: mode, gamma, wall_s, then pearl.schema.COUNTERS)."
