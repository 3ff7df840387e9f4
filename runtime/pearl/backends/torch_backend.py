"""The torch backend: a transformers causal LM on CPU or CUDA, one ``DynamicCache`` per sequence."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import DynamicCache

from pearl.backends.base import ModelSpec
from pearl.backends.loading import load_model
from pearl.engine_files import read_engine_json
from pearl.sequence import Sequence


def eos_token_ids(model) -> tuple[int, ...]:
    """Every EOS id the model's config and generation config name."""
    ids: set[int] = set()
    for source in (model.config, getattr(model, "generation_config", None)):
        value = getattr(source, "eos_token_id", None)
        if value is not None:
            ids.update([value] if isinstance(value, int) else value)
    return tuple(sorted(ids))


class TorchBackend:
    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        self.eos_token_ids = eos_token_ids(model)
        self.max_seq_len = int(model.config.max_position_embeddings)
        self._caches: dict[int, DynamicCache] = {}

    @classmethod
    def load(cls, spec: ModelSpec) -> "TorchBackend":
        backend = cls(load_model(spec))
        info = read_engine_json(spec.path) if Path(spec.path).is_dir() else None
        if info is not None:  # an engine built for shorter sequences than the model's positions allow
            backend.max_seq_len = min(backend.max_seq_len, int(info["max_seq_len"]))
        return backend

    @torch.inference_mode()
    def forward(self, seqs: list[Sequence], num_logits: list[int]) -> list[torch.Tensor]:
        return [self._forward_one(seq, n) for seq, n in zip(seqs, num_logits)]

    def _forward_one(self, seq: Sequence, num_logits: int) -> torch.Tensor:
        if not 1 <= num_logits <= seq.num_uncached:
            raise ValueError(f"asked for {num_logits} logits rows but {seq.num_uncached} tokens are uncached")
        cache = self._caches.setdefault(seq.request_id, DynamicCache())
        ids = torch.tensor([seq.tokens[seq.num_cached:]], device=self.device)
        out = self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=num_logits)
        seq.num_cached = len(seq.tokens)
        return out.logits[0].float()

    def truncate(self, seq: Sequence, length: int) -> None:
        cache = self._caches.get(seq.request_id)
        if cache is not None:
            cache.crop(length)
        seq.num_cached = min(seq.num_cached, length)

    def release(self, seq: Sequence) -> None:
        self._caches.pop(seq.request_id, None)
        seq.num_cached = 0

    def cache_length(self, seq: Sequence) -> int:
        cache = self._caches.get(seq.request_id)
        return 0 if cache is None else cache.get_seq_length()

