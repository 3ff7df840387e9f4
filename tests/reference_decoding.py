"""The oracle for the decoders: greedy decoding and speculative decoding written out in full, in the style of
gpt-fast's ``speculative_decode``, straight on transformers models in this process. No cache, no batching,
no ranks: every step re-reads the whole sequence, so there is nothing to roll back and nothing to get wrong.
Slow, and only for tiny models."""
from __future__ import annotations

import torch


@torch.no_grad()
def next_token(model, ids: list[int]) -> int:
    return int(model(torch.tensor([ids])).logits[0, -1].argmax())


@torch.no_grad()
def greedy(model, prompt: list[int], max_tokens: int) -> list[int]:
    """The target alone: ``max_tokens`` argmax tokens (EOS not special)."""
    ids = list(prompt)
    for _ in range(max_tokens):
        ids.append(next_token(model, ids))
    return ids[len(prompt):]


@torch.no_grad()
def speculative_decode(draft, target, prompt: list[int], gamma: int, max_tokens: int) -> tuple[list[int], int]:
    """Greedy speculative decoding: the draft proposes ``gamma`` tokens, one target forward checks them all,
    the longest agreeing prefix is kept plus the target's own next token. Returns (output, accepted draft
    tokens); the output is ``greedy(target, ...)``'s by construction of the rule."""
    ids, accepted = list(prompt), 0
    while len(ids) - len(prompt) < max_tokens:
        proposal = list(ids)
        for _ in range(gamma):
            proposal.append(next_token(draft, proposal))
        choices = target(torch.tensor([proposal])).logits[0, len(ids) - 1:].argmax(-1).tolist()  # gamma + 1
        n = 0
        while n < gamma and proposal[len(ids) + n] == choices[n]:
            n += 1
        ids += proposal[len(ids):len(ids) + n] + [choices[n]]
        accepted += n
    return ids[len(prompt):len(prompt) + max_tokens], accepted
