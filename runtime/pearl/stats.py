"""Per-request statistics: the target's counters (``pearl.schema.COUNTERS``) plus the driver's wall time and how
often the request was resumed in a new world, and the figures derived from them. No torch, no MPI (the
Triton-side modules use it)."""
from __future__ import annotations

from dataclasses import asdict, field, make_dataclass

from pearl.schema import ACCEPTANCE_HISTOGRAM, COUNTERS


class _Figures:
    """What is derived from the counters (mixed into ``RequestStats``)."""

    def __post_init__(self) -> None:
        # a tuple of ints whatever it came as (a JSON list from the world host, floats from the STATS message)
        object.__setattr__(self, ACCEPTANCE_HISTOGRAM, tuple(int(n) for n in getattr(self, ACCEPTANCE_HISTOGRAM)))

    @classmethod
    def from_message(cls, values, mode: str, gamma: int | None, wall_s: float, resumed: int = 0) -> "RequestStats":
        """From a STATS message's fields (its numbers after the request id: ``COUNTERS`` order, then the
        acceptance histogram; a resumed request's summed over its worlds, ``add_counters``)."""
        values = list(values)
        counters = {name: kind(value) for (name, kind, _), value in zip(COUNTERS, values)}
        return cls(mode=mode, gamma=gamma, wall_s=wall_s, **counters,
                   **{ACCEPTANCE_HISTOGRAM: values[len(COUNTERS):]}, resumed=resumed)

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
    def accepted_per_position(self) -> tuple[int, ...]:
        """vLLM's per-position counter: verifications that accepted the draft token at window position i."""
        histogram = self.acceptance_histogram
        return tuple(sum(histogram[i + 1:]) for i in range(len(histogram) - 1))

    @property
    def mean_acceptance_length(self) -> float:
        """vLLM's figure: 1 + accepted draft tokens per verification (1.0 when nothing was verified)."""
        return 1.0 + self.accepted_draft_tokens / self.drafted_rounds if self.drafted_rounds else 1.0

    @property
    def draft_acceptance_rate(self) -> float:
        """vLLM's figure: accepted over checked draft tokens (``acceptance_rate`` divides by all proposed)."""
        return self.accepted_draft_tokens / self.checked_draft_tokens if self.checked_draft_tokens else 0.0

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
                   "round_overhead", "mean_batch_size", "mean_gamma", "mean_acceptance_length", "draft_acceptance_rate")
        return {**asdict(self), **{name: getattr(self, name) for name in derived}}


# mode, the request's fixed window (None: adaptive; see mean_gamma), the driver's wall time from sending the
# request to its last token (model loading excluded), the target's counters, its acceptance histogram, then how
# many times the request was resent to a new world after a rank died (pearl.serving.world_process)
RequestStats = make_dataclass(
    "RequestStats", [("mode", str), ("gamma", "int | None"), ("wall_s", float),
                     *[(name, kind, field(metadata={"doc": doc})) for name, kind, doc in COUNTERS],
                     (ACCEPTANCE_HISTOGRAM, tuple, field(default=(0,))), ("resumed", int, field(default=0))],
    bases=(_Figures,), frozen=True)
RequestStats.__module__ = __name__
RequestStats.__doc__ = ("One finished request's statistics (fields: mode, gamma, wall_s, pearl.schema.COUNTERS, "
                        "the acceptance histogram, resumed).")


def add_counters(earlier: list[float], later: list[float]) -> list[float]:
    """Two worlds' STATS fields of one resumed request as one: counters and histograms summed, except the
    prompt's length, which the later world counts again (its prompt carries the earlier output, not counted)."""
    n = len(COUNTERS)
    summed = [a + b for a, b in zip(earlier[:n], later[:n])]
    prompt = [name for name, _, _ in COUNTERS].index("prompt_tokens")
    summed[prompt] = earlier[prompt] or later[prompt]
    histogram = [0.0] * max(len(earlier) - n, len(later) - n)
    for part in (earlier[n:], later[n:]):
        for i, count in enumerate(part):
            histogram[i] += count
    return summed + histogram
