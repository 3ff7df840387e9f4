"""What a world of worker ranks runs: the draft and target model specs, the threads per rank, the batch limit."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from pearl.backends.base import ModelSpec


@dataclass(frozen=True)
class WorldConfig:
    draft: ModelSpec
    target: ModelSpec
    threads_per_rank: int = 1  # torch threads in each rank; 1 each on a 2-core machine
    startup_timeout_s: float = 600.0  # loading a GGUF dequantizes for a while
    max_batch_size: int = 8  # requests that share a round; more wait on the target rank for a free slot
    # From this many sequences in a round on, the target decodes them alone: the draft drops out of them
    # (vLLM's speculative_disable_by_batch_size, applied per round). None: the draft always drafts.
    draft_off_batch_size: int | None = None
    target_alone_threads: int | None = None  # torch threads of the target while no sequence uses the draft
    # An adaptive request's draft window ends after a token the draft gave a top probability below this
    # (pearl.decoding.draft); 0: windows are drafted whole
    draft_stop_confidence: float = 0.0

    def __post_init__(self) -> None:
        if self.threads_per_rank < 1:
            raise ValueError(f"threads_per_rank must be >= 1, got {self.threads_per_rank}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if not 0 <= self.draft_stop_confidence < 1:
            raise ValueError(f"draft_stop_confidence must be in [0, 1), got {self.draft_stop_confidence}")
        for name in ("draft_off_batch_size", "target_alone_threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {getattr(self, name)}")

    @property
    def alone_threads(self) -> int:
        return self.target_alone_threads or self.threads_per_rank

    def spec_for(self, model: str) -> ModelSpec:
        """The spec of "draft" or "target" (a rank's model: pearl.ranks.roles)."""
        return self.draft if model == "draft" else self.target

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "WorldConfig":
        data = json.loads(text)
        return cls(draft=ModelSpec(**data.pop("draft")), target=ModelSpec(**data.pop("target")), **data)
