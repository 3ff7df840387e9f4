"""A lone sequence's forward through a Llama-family decoder (Llama, Qwen2) without transformers' per-call
framework: the torch backend's path for one sequence (``TorchBackend._forward_one``).

The same ops as transformers' forward with the ``grouped`` attention (``pearl.backends.attention``), in the same
order and shapes, on the same ``DynamicCache``, so the logits are bit-identical (tests/test_torch_backend.py).
What it leaves out is everything around the ops: argument checks and decorators, the mask factory, position
and cache bookkeeping, rotary embeddings recomputed every call (here a table, made once by the model's own
rotary module), output objects, and the wrapper calls of each CPU linear. On two threads every small op pays a
fork and a join, so that framework cost a sixth of the default pair's int4 draft step: measured interleaved,
the draft stepped 1.21x faster on 2 threads (1.12x on 1), its bfloat16 target 1.07x (1.06x).

Batched forwards (several sequences, padded) keep transformers' path: there the framework is a small share of
a larger forward.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache

from pearl.backends import attention
from pearl.backends.linears import _FlatLinear, concatenated, fused_multiply

MODEL_TYPES = ("llama", "qwen2")


def _linear(module: torch.nn.Module, dtype: torch.dtype):
    """The module's multiply over [1, n, in] activations: a CPU kernel of ours called on its rows directly
    (what its ``forward`` does, less the reshapes and no-op casts), anything else as a module."""
    if isinstance(module, _FlatLinear) and module.compute_dtype == dtype:
        out_features, multiply = module.out_features, module.multiply
        return lambda x: multiply(x.view(-1, x.shape[-1])).view(1, -1, out_features)
    return module


class DirectForward:
    """Feeds one sequence's new tokens through ``model`` and returns its last logits rows (float32)."""

    def __init__(self, model: torch.nn.Module, max_positions: int) -> None:
        config, decoder = model.config, model.model
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scaling = self.head_dim ** -0.5
        self.embed, self.final_norm, self.lm_head = decoder.embed_tokens, decoder.norm, model.lm_head
        self.dtype = self.embed.weight.dtype
        self.layers = [self._layer(layer) for layer in decoder.layers]
        with torch.inference_mode():
            positions = torch.arange(max_positions, device=self.embed.weight.device)[None]
            cos, sin = decoder.rotary_emb(self.embed.weight[:1], positions)  # transformers' own rotary values
        self.cos, self.sin = cos[0], sin[0]  # [position, head_dim]

    @classmethod
    def for_model(cls, model: torch.nn.Module, attention_name: str, max_positions: int,
                  exact: bool = True) -> "DirectForward | None":
        """A direct forward where it reproduces the model's own exactly: a Llama-family decoder with full
        attention in every layer, default rotary embeddings, SiLU MLPs and the ``grouped`` attention; None
        elsewhere (the backend keeps transformers' forward). Not ``exact``: the ``FusedForward`` there."""
        config = model.config
        if attention_name != attention.NAME or config.model_type not in MODEL_TYPES or model.training:
            return None
        if getattr(model.model.rotary_emb, "rope_type", "default") != "default" or config.hidden_act != "silu":
            return None
        if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()):
            return None
        return (DirectForward if exact else FusedForward)(model, max_positions)

    def _layer(self, layer: torch.nn.Module) -> tuple:
        attn, mlp = layer.self_attn, layer.mlp
        linears = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
        return (layer.input_layernorm, layer.post_attention_layernorm, attn,
                *(_linear(module, self.dtype) for module in linears))

    @staticmethod
    def _norm(norm: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """``norm``'s RMSNorm (Llama's and Qwen2's are the same ops), without its module call."""
        x = hidden.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        return norm.weight * x.to(hidden.dtype)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor, cache: DynamicCache, start: int, num_logits: int) -> torch.Tensor:
        """``ids`` [1, n] at positions ``start``..``start + n - 1`` after the ``start`` positions in ``cache`` (which
        grows by n); returns float32 logits [num_logits, vocab] of the last ``num_logits`` positions."""
        n = ids.shape[1]
        hidden = self.embed(ids)
        cos, sin = self.cos[start:start + n], self.sin[start:start + n]
        mask = None  # a single query sees every key: no mask (transformers adds zeros)
        if n > 1:  # query i sees the keys up to position start + i; eager's additive [1, 1, n, keys] form
            mask = torch.full((n, start + n), torch.finfo(self.dtype).min, dtype=self.dtype, device=ids.device)
            mask = mask.triu_(start + 1)[None, None]
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        for index, (norm_in, norm_post, attn, q_proj, k_proj, v_proj, o_proj, gate, up, down) in \
                enumerate(self.layers):
            x = self._norm(norm_in, hidden)
            query = self._rotate(q_proj(x).view(1, n, heads, dim).transpose(1, 2), cos, sin)
            key = self._rotate(k_proj(x).view(1, n, kv_heads, dim).transpose(1, 2), cos, sin)
            value = v_proj(x).view(1, n, kv_heads, dim).transpose(1, 2)
            key, value = cache.update(key, value, index)
            out, _ = attention.grouped_attention(attn, query, key, value, mask, self.scaling)
            hidden = hidden + o_proj(out.reshape(1, n, heads * dim).contiguous())
            x = self._norm(norm_post, hidden)
            hidden = hidden + down(torch.nn.functional.silu(gate(x)) * up(x))
        return self.lm_head(self._norm(self.final_norm, hidden[:, -num_logits:]))[0].float()


class FusedForward(DirectForward):
    """A draft's direct forward: fewer, larger ops, for logits that may differ from transformers' in the last
    bits (only the target's logits decide the output; a draft's only how much of its window is accepted).
    A layer's q, k and v projections are one kernel call, as are its gate and up ones (``fused_multiply``);
    RMSNorm is torch's fused kernel; the rotary embedding turns q and k together; attention is torch's
    ``scaled_dot_product_attention`` over the grouped heads, in float32 (its bfloat16 kernel took 3x as long:
    a decode step's attention over 170 keys, 138 against 42 microseconds on two threads, the casts included)."""

    def __init__(self, model: torch.nn.Module, max_positions: int) -> None:
        super().__init__(model, max_positions)
        half = self.head_dim // 2
        # rotate_half(x) = roll(x, half) with its first half negated: the sign goes into the sine table
        sign = torch.cat([-torch.ones(half), torch.ones(half)]).to(self.sin)
        self.signed_sin = self.sin * sign
        self.eps = model.model.norm.variance_epsilon

    def _layer(self, layer: torch.nn.Module) -> tuple:
        attn, mlp = layer.self_attn, layer.mlp
        qkv, gate_up = (fused_multiply(modules, self.dtype) or concatenated(modules)
                        for modules in ([attn.q_proj, attn.k_proj, attn.v_proj], [mlp.gate_proj, mlp.up_proj]))
        return (layer.input_layernorm.weight, layer.post_attention_layernorm.weight, qkv,
                _linear(attn.o_proj, self.dtype), gate_up, _linear(mlp.down_proj, self.dtype),
                mlp.gate_proj.out_features)

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor, cache: DynamicCache, start: int, num_logits: int) -> torch.Tensor:
        n = ids.shape[1]
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        hidden = self.embed(ids)
        size = (hidden.shape[-1],)
        cos, sin = self.cos[start:start + n, None], self.signed_sin[start:start + n, None]  # [n, 1, dim]
        mask = None
        if n > 1:
            mask = torch.ones(n, start + n, dtype=torch.bool, device=ids.device).tril_(start)
        rms_norm, silu = torch.nn.functional.rms_norm, torch.nn.functional.silu
        attend = torch.nn.functional.scaled_dot_product_attention
        for index, (norm_in, norm_post, qkv, o_proj, gate_up, down, inner) in enumerate(self.layers):
            x = rms_norm(hidden, size, norm_in, self.eps).view(n, -1)
            projected = qkv(x).view(n, heads + 2 * kv_heads, dim)
            qk = projected[:, :heads + kv_heads]
            qk = qk * cos + qk.roll(dim // 2, -1) * sin
            query = qk[:, :heads].transpose(0, 1)[None]
            key, value = (t.transpose(0, 1)[None] for t in (qk[:, heads:], projected[:, heads + kv_heads:]))
            key, value = cache.update(key, value, index)
            out = attend(query.float(), key.float(), value.float(), attn_mask=mask, scale=self.scaling,
                         enable_gqa=True).to(self.dtype)
            hidden = hidden + o_proj(out.transpose(1, 2).reshape(1, n, heads * dim))
            x = rms_norm(hidden, size, norm_post, self.eps).view(n, -1)
            projected = gate_up(x)
            hidden = hidden + down((silu(projected[:, :inner]) * projected[:, inner:])[None])
        return self.lm_head(rms_norm(hidden[:, -num_logits:], size, self.final_norm.weight, self.eps))[0].float()
