"""What ``make bench`` compares, and how each method runs one prompt.

Methods: ``ar`` (target alone), ``sd`` (our vanilla speculative decoding), ``pearl`` (gamma from the
engine's profile, or a fixed one), all on the MPI ranks through an Engine; and ``assisted``: transformers'
assisted generation (``generate(assistant_model=...)``) on the same engines in one process, what a CPU
user would pick instead. Everything is greedy with the same max_tokens; EOS ends a request and is not output.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from pearl.engine import Engine
from pearl.params import SamplingParams

SETTINGS = {
    # setting -> torch threads for the methods that run one model at a time (PEARL always runs 1 + 1)
    "one-core-per-model": 1,
    "equal-cores": 2,
}


@dataclass(frozen=True)
class Method:
    name: str  # ar | sd | pearl | assisted
    gamma: int | str | None = None  # sd/pearl: a window length or "auto"

    @property
    def label(self) -> str:
        return self.name if self.gamma is None else f"{self.name}(gamma={self.gamma})"

    def threads(self, setting: str) -> int:
        return 1 if self.name == "pearl" else SETTINGS[setting]


def run_on_engine(engine: Engine, method: Method, prompt_ids: list[int], max_tokens: int) -> dict:
    stream = engine.generate(prompt_ids, SamplingParams(max_tokens=max_tokens), method.name,
                             method.gamma if method.gamma is not None else "auto")
    round_tokens = [len(chunk) for chunk in stream]  # tokens verified per round, as they were streamed
    s = stream.stats
    return {"tokens": stream.token_ids, "wall_s": s.wall_s, "generated_tokens": s.generated_tokens,
            "tokens_per_s": s.tokens_per_s, "target_forwards": s.target_forwards, "draft_forwards": s.draft_forwards,
            "draft_tokens": s.draft_tokens, "accepted_draft_tokens": s.accepted_draft_tokens,
            "mean_accepted_length": s.mean_accepted_length, "acceptance_rate": s.acceptance_rate,
            "round_overhead": s.round_overhead, "round_tokens": round_tokens, "gamma_used": s.mean_gamma,
            "drafted_rounds": s.drafted_rounds, "rounds": s.rounds}


class AssistedGeneration:
    """transformers' assisted generation with the pair's draft as assistant, in this process."""

    def __init__(self, target, draft, eos_token_ids: tuple[int, ...]) -> None:
        self.target, self.draft, self.eos = target, draft, set(eos_token_ids)

    @torch.inference_mode()
    def run(self, prompt_ids: list[int], max_tokens: int) -> dict:
        ids = torch.tensor([prompt_ids])
        start = time.perf_counter()
        out = self.target.generate(ids, attention_mask=torch.ones_like(ids), assistant_model=self.draft,
                                   max_new_tokens=max_tokens, do_sample=False, pad_token_id=min(self.eos))
        wall = time.perf_counter() - start
        tokens = []
        for token in out[0, len(prompt_ids):].tolist():
            if token in self.eos:
                break
            tokens.append(token)
        return {"tokens": tokens, "wall_s": wall, "generated_tokens": len(tokens),
                "tokens_per_s": len(tokens) / wall if wall > 0 else 0.0}
