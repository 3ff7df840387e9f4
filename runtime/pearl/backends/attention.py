"""Grouped-query attention without copies: the ``grouped`` attention implementation of the torch backend.

transformers' eager attention copies every key/value head once per query head of its group (``repeat_kv``)
before two matmuls; sdpa on a CPU does the same for a batch with a mask. Qwen2.5-1.5B has 6 query heads a
key/value head, so a batched decode step moved six copies of the whole cache per layer. Here each
key/value head multiplies its query heads in one matmul instead, with eager's mask and float32 softmax
(what it saved: docs/results/HISTORY.md).

Registered under ``NAME`` with transformers' attention and mask interfaces (the supported way to add an
implementation); ``register()`` runs before any model loads with ``attn_implementation=NAME``.
"""
from __future__ import annotations

import torch

NAME = "grouped"


def grouped_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                      **kwargs) -> tuple[torch.Tensor, None]:
    """query [batch, heads, q, dim]; key, value [batch, kv_heads, k, dim]; mask [batch, 1, q, k] additive
    (eager's). Query head h reads key/value head h // group, as ``repeat_kv`` lays them out. Returns
    [batch, q, heads, dim] like every transformers attention function (no weights: not kept)."""
    if dropout and module.training:
        raise ValueError("grouped attention is for inference only (dropout > 0 in training)")
    batch, heads, q_len, dim = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    group = heads // kv_heads
    grouped = query.reshape(batch, kv_heads, group * q_len, dim)  # rows: (head in group, query position)
    weights = torch.matmul(grouped, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights.view(batch, kv_heads, group, q_len, k_len) + attention_mask[:, :, None, :, :k_len]
        weights = weights.view(batch, kv_heads, group * q_len, k_len)
    weights = torch.nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(weights, value).view(batch, heads, q_len, dim)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make ``attn_implementation=NAME`` load: the function above, with eager's additive float mask."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(NAME, grouped_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, eager_mask)
