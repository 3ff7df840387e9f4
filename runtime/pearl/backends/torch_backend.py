"""The torch backend: a transformers causal LM on CPU or CUDA, one ``DynamicCache`` per sequence.

Each sequence owns its cache (its length and rollback are its own). Several sequences go through the model
in one batched forward (``forward`` with more than one): a ragged batch, see ``_forward_batch``; a long
prefill goes on its own rather than padding every decode of the batch to its length (``_groups``).
"""
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
    PAD_BUDGET_TOKENS = 64

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
        """Feed each sequence its uncached tokens; return its last ``num_logits`` logits rows."""
        for seq, n in zip(seqs, num_logits, strict=True):
            if not 1 <= n <= seq.num_uncached:
                raise ValueError(f"asked for {n} logits rows but {seq.num_uncached} tokens are uncached")
        logits: list[torch.Tensor | None] = [None] * len(seqs)
        for group in self._groups([seq.num_uncached for seq in seqs]):
            if len(group) == 1:
                rows = [self._forward_one(seqs[group[0]], num_logits[group[0]])]
            else:
                rows = self._forward_batch([seqs[i] for i in group], [num_logits[i] for i in group])
            for i, row in zip(group, rows):
                logits[i] = row
        return logits

    def _groups(self, new_tokens: list[int]) -> list[list[int]]:
        """Indices of the sequences that go through the model together. New tokens are right-padded to the
        group's most, so a long prefill would make every decode in its batch that long: a sequence joins
        the group only while the padding stays within ``PAD_BUDGET_TOKENS`` (a decode step costs about a
        weight load, the padding little until it is that many tokens)."""
        groups: list[list[int]] = []
        longest = 0
        for i in sorted(range(len(new_tokens)), key=lambda i: -new_tokens[i]):
            group = groups[-1] if groups else None
            if group is not None and longest * (len(group) + 1) - sum(new_tokens[j] for j in [*group, i]) \
                    <= self.PAD_BUDGET_TOKENS:
                group.append(i)
            else:
                groups.append([i])
                longest = new_tokens[i]
        return groups

    def _forward_one(self, seq: Sequence, num_logits: int) -> torch.Tensor:
        cache = self._caches.setdefault(seq.request_id, DynamicCache())
        ids = torch.tensor([seq.tokens[seq.num_cached:]], device=self.device)
        out = self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=num_logits)
        seq.num_cached = len(seq.tokens)
        return out.logits[0].float()

    def _forward_batch(self, seqs: list[Sequence], num_logits: list[int]) -> list[torch.Tensor]:
        """One forward for sequences of different cached and new lengths. Row i holds sequence i's cache
        left-padded with zeros to the longest cache (P), then its new tokens right-padded to the most new
        tokens (N): a 2D attention mask hides every pad key, position ids give each token its true position,
        and no query row is left with nothing to attend to (a pad query after real tokens sees them), so no
        NaN reaches a real row. Each sequence's own cache then takes back exactly its real rows."""
        past = [seq.num_cached for seq in seqs]
        new = [seq.tokens[seq.num_cached:] for seq in seqs]
        batch, longest_past, most_new = len(seqs), max(past), max(map(len, new))
        ids = torch.zeros(batch, most_new, dtype=torch.long, device=self.device)
        mask = torch.zeros(batch, longest_past + most_new, dtype=torch.long, device=self.device)
        positions = torch.zeros(batch, most_new, dtype=torch.long, device=self.device)
        for i, (cached, tokens) in enumerate(zip(past, new)):
            ids[i, :len(tokens)] = torch.tensor(tokens, device=self.device)
            mask[i, longest_past - cached:longest_past + len(tokens)] = 1
            positions[i] = torch.arange(cached, cached + most_new, device=self.device)
        cache = self._padded_cache(seqs, past, longest_past)
        # Logits only at the positions some row asks for (a prefill wants its last one): the LM head over
        # every position of a batched prefill would cost as much as a sixth of the forward.
        wanted = sorted({p for tokens, n in zip(new, num_logits) for p in range(len(tokens) - n, len(tokens))})
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                         use_cache=True, logits_to_keep=torch.tensor(wanted, device=self.device))
        logits = []
        for i, (seq, cached, tokens, n) in enumerate(zip(seqs, past, new, num_logits)):
            real = [slice(longest_past - cached, longest_past), slice(longest_past, longest_past + len(tokens))]
            own = DynamicCache()
            for index, layer in enumerate(cache.layers):
                own.update(torch.cat([layer.keys[i:i + 1, :, rows] for rows in real], dim=2),
                           torch.cat([layer.values[i:i + 1, :, rows] for rows in real], dim=2), index)
            self._caches[seq.request_id] = own
            seq.num_cached = len(seq.tokens)
            first = wanted.index(len(tokens) - n)  # a row's positions are consecutive in ``wanted`` too
            logits.append(out.logits[i, first:first + n].float())
        return logits

    def _padded_cache(self, seqs: list[Sequence], past: list[int], longest_past: int) -> DynamicCache:
        """The batch's cache: each sequence's keys and values right-aligned in zeros of the longest length."""
        cache = DynamicCache()
        caches = [self._caches.get(seq.request_id) for seq in seqs]
        shaped = next((c for c, n in zip(caches, past) if n), None)
        if shaped is None:
            return cache  # all prefill: the model fills it
        for index, layer in enumerate(shaped.layers):
            _, heads, _, dim = layer.keys.shape
            keys = layer.keys.new_zeros(len(seqs), heads, longest_past, dim)
            values = layer.values.new_zeros(len(seqs), heads, longest_past, dim)
            for i, (own, cached) in enumerate(zip(caches, past)):
                if cached:
                    keys[i, :, longest_past - cached:] = own.layers[index].keys[0, :, :cached]
                    values[i, :, longest_past - cached:] = own.layers[index].values[0, :, :cached]
            cache.update(keys, values, index)
        return cache

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

