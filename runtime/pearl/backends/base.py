"""The one interface every model backend implements, and the spec that says which model to load.

A backend runs one model on one device and owns that model's KV caches. It works on ``Sequence`` objects:
``forward`` feeds each sequence's uncached tokens (the whole prompt the first time, which is the prefill)
and returns logits; ``truncate`` rolls a cache back after a rejection. Calls take lists of sequences so a
batching backend can serve many at once; the first backends simply loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from pearl.backends.linears import CPU_LINEARS
from pearl.sequence import Sequence

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ATTENTIONS = ("sdpa", "eager", "grouped")  # attn_implementation values we allow (grouped: pearl.backends.attention)


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from and how a rank runs it. Travels to the ranks as JSON."""

    path: str  # a folder with HF safetensors weights, or a .gguf file
    device: str = "cpu"
    dtype: str = "float32"
    num_layers: int | None = None  # keep only the first N decoder layers (a self-draft)
    backend: str = "torch"
    cpu_linear: str = "default"  # CPU kernels of the decoder linears and LM head (pearl.backends.linears)
    attention: str = "sdpa"  # "eager": plain matmuls; "grouped": eager without copying kv heads (CPU batches)
    tensor_parallel: int = 1  # ranks (GPUs) the model spans; tensorrt_llm only (pearl.ranks.roles places them)
    # False (a draft: its logits only propose): the torch backend's lone-sequence forward may fuse ops and
    # round differently from transformers' (pearl.backends.direct_forward.FusedForward)
    exact_logits: bool = True
    # A draft only: its LM head computes the logits of the first N token ids and the end-of-sequence ones, the
    # others are -inf (pearl.backends.vocab_limit; torch backend). None: the whole vocabulary
    vocab_limit: int | None = None
    # The token ids that end a generation (the pair's ``eos_tokens``); None: the model's own, as its config and
    # generation config name them. A model built from a GGUF file keeps the GGUF's one EOS id: Qwen2.5's
    # instruct models end a chat turn with <|im_end|> and a plain completion with <|endoftext|>
    eos_token_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.eos_token_ids is not None:  # a list once it has travelled as JSON
            object.__setattr__(self, "eos_token_ids", tuple(int(i) for i in self.eos_token_ids))
            if not self.eos_token_ids or min(self.eos_token_ids) < 0:
                raise ValueError(f"eos_token_ids must be token ids (>= 0), at least one; got {self.eos_token_ids}")
        if self.cpu_linear not in CPU_LINEARS:
            raise ValueError(f"cpu_linear must be one of {CPU_LINEARS}, got {self.cpu_linear!r}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.tensor_parallel < 1 or (self.tensor_parallel > 1 and self.backend != "tensorrt_llm"):
            raise ValueError(f"tensor_parallel must be 1 (or > 1 with the tensorrt_llm backend), got "
                             f"{self.tensor_parallel} with backend {self.backend}")
        if self.num_layers is not None and self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if self.vocab_limit is not None and (self.vocab_limit < 1 or self.backend != "torch"):
            raise ValueError(f"vocab_limit must be >= 1, with the torch backend; got {self.vocab_limit} with "
                             f"backend {self.backend}")


class ModelBackend(Protocol):
    vocab_size: int  # columns of the logits
    eos_token_ids: tuple[int, ...]
    max_seq_len: int
    device: torch.device
    dtype: torch.dtype

    def forward(self, seqs: list[Sequence], num_logits: list[int]) -> list[torch.Tensor]:
        """Feed ``seq.tokens[seq.num_cached:]`` for each sequence and set ``num_cached = len(tokens)``.

        Returns, per sequence, float32 logits ``[num_logits, vocab_size]`` for its last ``num_logits``
        positions: row ``j`` is the distribution of the token after ``tokens[len - num_logits + j]``.
        """

    def truncate(self, seq: Sequence, length: int) -> None:
        """Drop cached positions ``>= length`` (rollback) and set ``num_cached = length``."""

    def release(self, seq: Sequence) -> None:
        """Free the sequence's cache."""

    def cache_length(self, seq: Sequence) -> int:
        """Positions physically held in the sequence's cache (equals ``num_cached``; for checks)."""
