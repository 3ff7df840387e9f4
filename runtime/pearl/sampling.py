"""Token selection: logits processing, position-keyed random draws and the lossless acceptance rule.

Randomness is keyed by token position, never by how far a generator has been advanced: draw ``k`` of the
token at sequence position ``i`` is a uniform hashed from (request seed, stream, i, k) (``Draws``). Each
position's token is decided once from its own draws and the prefix before it, so every position gets fresh
randomness independent of the prefix (the output stays distributed exactly as the target's sampling), and a
request resent as prompt + its accepted tokens (``pearl.serving.world_process``: a resume after a rank died)
continues with the same draws. The target rank alone decides acceptance (``verify``); the draft rank only
samples its proposals.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import torch

from pearl.params import SamplingParams

# Independent random streams per request: the draft's proposals must not share draws with the
# target's acceptance tests, or the acceptance rule would no longer be unbiased.
TARGET_STREAM, DRAFT_STREAM = 0, 1
# The draws of one position on the target stream: the acceptance test, then the token it samples (a
# correction after a rejection); a token sampled straight from the target's distribution uses the first.
CHECK, CORRECTION = 0, 1


@dataclass(frozen=True)
class Draws:
    """One request's random numbers on one stream, by token position (seed: the request's)."""

    seed: int
    stream: int

    def bits(self, position: int, index: int = 0) -> int:
        """64 random bits of draw ``index`` at ``position`` (blake2b of the key: independent across keys)."""
        key = struct.pack("<4Q", self.seed, self.stream, position, index)
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")

    def uniform(self, position: int, index: int = 0) -> float:
        """A uniform in [0, 1) with 53 random bits."""
        return (self.bits(position, index) >> 11) * 2.0**-53


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


def sample(probs: torch.Tensor, u: float) -> int:
    """The token of one row of (unnormalised) probabilities at uniform ``u``, by inverse CDF: token i owns
    [cdf[i-1], cdf[i]), so a token of probability 0 is never picked."""
    cdf = probs.double().cumsum(-1)
    index = int(torch.searchsorted(cdf, cdf.new_tensor([u * cdf[-1].item()]), right=True))
    if index >= cdf.numel():  # u * total rounded up to the total: the last token that has mass
        index = int(torch.nonzero(probs > 0)[-1])
    return index


def choose(logits: torch.Tensor, params: SamplingParams, draws: Draws, position: int
           ) -> tuple[list[int], torch.Tensor | None]:
    """Pick one token per row, row j being the token at ``position + j``; also return the rows'
    probabilities when sampling (None when greedy)."""
    if params.greedy:
        return logits.argmax(-1).tolist(), None
    probs = probabilities(logits, params)
    return [sample(row, draws.uniform(position + j)) for j, row in enumerate(probs)], probs


def top_probability(logits: torch.Tensor, probs: torch.Tensor | None) -> float:
    """How sure a draft is of one position: the largest probability of the distribution it drew from (``probs``,
    its row when sampling), or of its softmax when greedy (``probs`` None)."""
    if probs is not None:
        return float(probs.max())
    return float((logits.max() - torch.logsumexp(logits.float(), -1)).exp())


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
           params: SamplingParams, draws: Draws, position: int, bonus: bool = False) -> Verdict:
    """Check draft tokens against the target, in order, stopping at the first rejection.

    draft_tokens[i] is the token at sequence position ``position + i``; target_logits[i] is the target's
    distribution for it; with ``bonus`` there is one more row, sampled when every token is accepted.
    draft_probs[i] is the distribution the draft sampled draft_tokens[i] from (None when greedy).

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
    for i in range(n):
        if draws.uniform(position + i, CHECK) >= ratio[i]:
            residual = (p[i] - q[i]).clamp_min(0.0)
            residual = residual if residual.sum() > 0 else p[i]
            return Verdict(i, sample(residual, draws.uniform(position + i, CORRECTION)))
    return Verdict(n, sample(p[n], draws.uniform(position + n, CHECK)) if bonus else -1)
