"""What ``make bench`` compares, and how each method runs one prompt, all greedy with the same max_tokens on the
same cores (the pair's: one core per model for PEARL's two ranks, so two on the default pair):

- ``ar``: the target alone, on all the cores (a rank with that many threads);
- ``sd(gamma=g)``: our vanilla speculative decoding, draft then verify, each rank on all the cores in turn;
- ``pearl(gamma=auto)`` (adaptive windows) and ``pearl(gamma=g)``: the pair as built, one core per model, the
  target on all the cores while no sequence drafts;
- ``assisted``: transformers' assisted generation (the pair's draft as assistant) in one process, all cores;
- ``llama.cpp(t=1)``, ``llama.cpp(t=2)``: llama.cpp decoding the target's GGUF source alone on 1 and on all
  the cores; ``llama.cpp-spec``: its draft-model speculative decoding, draft and target taking turns on all
  the cores (``-t`` and ``-td``), on the pair's GGUF sources.
EOS ends a request and is not output.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from pearl.llm import LLM
from pearl.params import SamplingParams

LLM_METHODS = ("ar", "sd", "pearl")
LLAMA_CPP_METHODS = ("llama.cpp", "llama.cpp-spec")


@dataclass(frozen=True)
class Method:
    name: str  # ar | sd | pearl | assisted | llama.cpp | llama.cpp-spec
    gamma: int | str | None = None  # sd / pearl: a window, or "auto"; llama.cpp-spec: its --spec-draft-n-max
    threads: int | None = None  # llama.cpp: its -t (None: all the cores)

    @property
    def label(self) -> str:
        if self.name == "llama.cpp":
            return f"llama.cpp(t={self.threads})"
        return self.name if self.gamma is None else f"{self.name}(gamma={self.gamma})"

    @property
    def serial(self) -> bool:
        """Runs one model at a time on every core (ar, sd), rather than one core per model (pearl)."""
        return self.name in ("ar", "sd")


def run_on_llm(llm: LLM, method: Method, prompt_ids: list[int], max_tokens: int) -> dict:
    stream = llm.generate(prompt_ids, SamplingParams(max_tokens=max_tokens), method.name,
                          method.gamma if method.gamma is not None else "auto")
    round_tokens = [len(chunk) for chunk in stream]  # tokens verified per round, as they were streamed
    stats = {k: v for k, v in stream.stats.to_dict().items() if k not in ("mode", "gamma")}  # the method's own
    return {"tokens": stream.token_ids, "round_tokens": round_tokens, **stats}


class AssistedGeneration:
    """transformers' assisted generation with the pair's draft as assistant, in this process."""

    def __init__(self, target, draft, eos_token_ids: tuple[int, ...]) -> None:
        self.target, self.draft, self.eos = target, draft, set(eos_token_ids)

    @torch.inference_mode()
    def run(self, prompt_ids: list[int], max_tokens: int) -> dict:
        ids = torch.tensor([prompt_ids])
        start = time.perf_counter()
        out = self.target.generate(ids, attention_mask=torch.ones_like(ids), assistant_model=self.draft,
                                   max_new_tokens=max_tokens, do_sample=False, pad_token_id=min(self.eos),
                                   eos_token_id=sorted(self.eos))  # ends where our methods end
        wall = time.perf_counter() - start
        tokens = []
        for token in out[0, len(prompt_ids):].tolist():
            if token in self.eos:
                break
            tokens.append(token)
        return {"tokens": tokens, "wall_s": wall, "generated_tokens": len(tokens),
                "tokens_per_s": len(tokens) / wall if wall > 0 else 0.0}
