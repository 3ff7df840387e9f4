"""Token selection: logits processing, seeded sampling and the lossless acceptance rule.

Both ranks build their generators from the request seed (`make_generator`), so a request is reproducible.
The target rank alone decides acceptance (`verify`); the draft rank only samples its proposals.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pearl.params import SamplingParams

# Independent random streams per request: the draft's proposals must not share draws with the
# target's acceptance tests, or the acceptance rule would no longer be unbiased.
TARGET_STREAM, DRAFT_STREAM = 0, 1


def make_generator(seed: int, stream: int, device: torch.device | str = "cpu") -> torch.Generator:
    state = np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) & (2**63 - 1))


def probabilities(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Rows of logits -> rows of probabilities after temperature, top-k and top-p (float32)."""
    logits = logits.float() / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the mass before it already reaches top_p; the most likely token always stays.
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(-1)


def sample(probs: torch.Tensor, generator: torch.Generator) -> list[int]:
    """One draw per row."""
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1).tolist()


def choose(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator
           ) -> tuple[list[int], torch.Tensor | None]:
    """Pick one token per row; also return the rows' probabilities when sampling (None when greedy)."""
    if params.greedy:
        return logits.argmax(-1).tolist(), None
    probs = probabilities(logits, params)
    return sample(probs, generator), probs


@dataclass(frozen=True)
class Verdict:
    """The target's decision on a list of checked draft tokens.

    num_accepted: how many of the checked tokens, from the first, are accepted.
    next_token:   the token that follows the accepted ones when the target chose it (a correction after a
                  rejection, or the bonus token of vanilla SD when all were accepted); -1 when the draft's
                  later tokens stay pending (PEARL post-verify with everything accepted).
    """

    num_accepted: int
    next_token: int = -1

    @property
    def corrected(self) -> bool:
        return self.next_token >= 0


def verify(target_logits: torch.Tensor, draft_tokens: list[int], draft_probs: torch.Tensor | None,
           params: SamplingParams, generator: torch.Generator, bonus: bool = False) -> Verdict:
    """Check draft tokens against the target, in order, stopping at the first rejection.

    target_logits[i] is the target's distribution for draft_tokens[i]; with ``bonus`` there is one more
    row, sampled when every token is accepted. draft_probs[i] is the distribution the draft sampled
    draft_tokens[i] from (None when greedy).

    Greedy: accept while the token is the target's argmax; the correction is the argmax.
    Sampling (Leviathan et al. / Chen et al.): accept token x with probability min(1, p(x) / q(x));
    on rejection draw the correction from max(p - q, 0) renormalised. This keeps the output
    distributed exactly as the target's own sampling.
    """
    n = len(draft_tokens)
    if params.greedy:
        best = target_logits.argmax(-1).tolist()
        for i, token in enumerate(draft_tokens):
            if best[i] != token:
                return Verdict(i, best[i])
        return Verdict(n, best[n] if bonus else -1)

    p = probabilities(target_logits, params)
    q = draft_probs.to(p.device)
    index = torch.arange(n, device=p.device)
    tokens = torch.tensor(draft_tokens, device=p.device)
    ratio = (p[index, tokens] / q[index, tokens]).tolist()
    draws = torch.rand(n, generator=generator, device=generator.device).tolist()
    for i in range(n):
        if draws[i] >= ratio[i]:
            residual = (p[i] - q[i]).clamp_min(0.0)
            total = residual.sum()
            residual = residual / total if total > 0 else p[i]
            return Verdict(i, sample(residual.unsqueeze(0), generator)[0])
    return Verdict(n, sample(p[n:n + 1], generator)[0] if bonus else -1)
