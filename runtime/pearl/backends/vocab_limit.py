"""A draft's LM head over part of the vocabulary: the first ``vocab_limit`` token ids and the end-of-sequence
ones (FR-Spec, arXiv 2502.14856: a draft proposes from its most frequent tokens).

A byte-level BPE vocabulary numbers its tokens in merge order, and a merge is made for the most frequent pair
first, so low ids are the frequent tokens; the end-of-sequence tokens are special ones at the very end. The
head multiplies only those rows: Qwen2.5's 151,936-row head is a quarter of the 0.5B draft's weights, read
at every draft step for tokens it almost never proposes. The logits keep the whole vocabulary's width, the
other columns -inf, so the rest of the runtime is unchanged: the draft never proposes those tokens, and a
target token among them is a rejection. Lossless either way: a draft's tokens and probabilities only
propose, and rejection sampling stays exact for a proposal with zeros (the residual holds those tokens).
"""
from __future__ import annotations

import torch

from pearl.backends.linears import dequantize


class LimitedHead(torch.nn.Module):
    """``head`` (the first ``limit`` rows of the LM head, in whatever kernel holds them) plus the rows of
    ``extra_ids`` (dense), written into logits of the whole vocabulary's width, -inf elsewhere."""

    def __init__(self, head: torch.nn.Module, vocab_size: int, extra_ids: list[int],
                 extra_weight: torch.Tensor, extra_bias: torch.Tensor | None) -> None:
        super().__init__()
        self.head, self.out_features = head, vocab_size
        self.register_buffer("extra_ids", torch.tensor(extra_ids, dtype=torch.long), persistent=False)
        self.register_buffer("extra_weight", extra_weight, persistent=False)
        self.register_buffer("extra_bias", extra_bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(x)
        logits = y.new_full((*y.shape[:-1], self.out_features), float("-inf"))
        logits[..., :y.shape[-1]] = y
        if len(self.extra_ids):
            extra = torch.nn.functional.linear(x.to(self.extra_weight.dtype), self.extra_weight, self.extra_bias)
            logits[..., self.extra_ids] = extra.to(y.dtype)
        return logits


def cut_lm_head(model: torch.nn.Module, limit: int, eos_ids: tuple[int, ...], dtype: torch.dtype,
                state: dict[str, torch.Tensor] | None, quantization: str):
    """Cut the model's LM head to its first ``limit`` rows, before its kernel is made: in a quantized
    engine's ``state`` (its ``lm_head.*`` tensors), else the module itself. Returns ``finish``, which wraps
    the head the kernels made into a ``LimitedHead`` (with the rows of ``eos_ids`` beyond the limit)."""
    vocab_size = model.get_output_embeddings().out_features
    if not 0 < limit < vocab_size:
        raise ValueError(f"vocab_limit must be between 1 and the vocabulary's {vocab_size - 1}, got {limit}")
    extra_ids = sorted(i for i in eos_ids if i >= limit)
    if state is not None:
        parts = {key.removeprefix("lm_head."): value for key, value in state.items() if key.startswith("lm_head.")}
        bias = parts.get("bias")
        extra_weight = dequantize(quantization, {name: value[extra_ids] for name, value in parts.items()
                                                 if name != "bias"})
        for name, value in parts.items():  # the bias too, where the head has one
            state[f"lm_head.{name}"] = value[:limit].clone()
    else:
        head = model.get_output_embeddings()
        bias = head.bias
        extra_weight = head.weight[extra_ids].detach()
        cut = torch.nn.Linear(head.in_features, limit, bias=bias is not None, dtype=head.weight.dtype,
                              device=head.weight.device)
        with torch.no_grad():
            cut.weight.copy_(head.weight[:limit])
            if bias is not None:
                cut.bias.copy_(bias[:limit])
        model.lm_head = cut  # no longer tied to the embedding: the embedding keeps every row
    extra_weight = extra_weight.to(dtype)  # indexing made it a copy: the head's weight is not kept
    extra_bias = None if bias is None else bias[extra_ids].detach().to(dtype)

    def finish() -> None:
        model.lm_head = LimitedHead(model.lm_head, vocab_size, extra_ids, extra_weight, extra_bias)
    return finish
