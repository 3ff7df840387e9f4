"""The torch backend: a transformers causal LM on CPU or CUDA, and the KV caches of its sequences.

A sequence's cache is its own ``DynamicCache``, or its row of the last batched forward's cache
(``BatchCache``): several sequences go through the model in one forward (``forward`` with more than one), a
ragged batch, see ``_forward_batch``; a long prefill goes on its own rather than padding every decode of the
batch to its length (``_groups``). The batch's cache stays a batch while the same sequences keep coming
back together (every round of a steady batch), so a round does not copy every cache in and out; a sequence
that goes elsewhere, or leaves, takes its rows back first (``_unbatch``).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import DynamicCache

from pearl.backends.base import ModelSpec
from pearl.backends.direct_forward import DirectForward
from pearl.backends.loading import eos_token_ids, load_model
from pearl.engine_files import read_engine_json
from pearl.sequence import Sequence


@dataclass
class BatchCache:
    """The cache of a batched forward, kept for the next one over the same sequences: row i is sequence
    ``request_ids[i]``; ``mask[i]`` marks its real positions (pads and rolled-back tokens are holes, hidden
    by the attention mask), ``lengths[i]`` counts them (the sequence's ``num_cached``)."""

    request_ids: list[int]
    cache: DynamicCache
    mask: torch.Tensor  # [batch, cache length], 1 = a real key
    lengths: list[int]

    def row(self, request_id: int) -> int | None:
        return self.request_ids.index(request_id) if request_id in self.request_ids else None

    @property
    def holes(self) -> int:
        """Cache positions beyond the longest row's real keys (what every row's attention pays for)."""
        return self.mask.shape[1] - max(self.lengths)


class TorchBackend:
    # A forward's pad tokens cost what real ones do, and a prefill-sized group is compute-bound on a CPU: a
    # separate forward costs about one read of the weights, worth some 16 pad tokens' GEMM on the CPUs
    # measured (docs/results/HISTORY.md). Holes in a kept batch cache only lengthen attention, far cheaper.
    PAD_BUDGET_TOKENS = 16
    HOLE_BUDGET_TOKENS = 64

    def __init__(self, model: torch.nn.Module, attention: str = "sdpa", exact_logits: bool = True) -> None:
        self.model = model
        self.attention = attention
        self.exact_logits = exact_logits
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.vocab_size = model.get_output_embeddings().out_features
        self.eos_token_ids = eos_token_ids(model)
        self.max_seq_len = int(model.config.max_position_embeddings)
        self._caches: dict[int, DynamicCache] = {}  # sequences not in the batch cache
        self._batch: BatchCache | None = None

    @classmethod
    def load(cls, spec: ModelSpec) -> "TorchBackend":
        backend = cls(load_model(spec), spec.attention, spec.exact_logits)
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
            if self._batch is not None:
                if sorted(seqs[i].request_id for i in group) == sorted(self._batch.request_ids):
                    group.sort(key=lambda i: self._batch.row(seqs[i].request_id))  # the batch's row order
                if not self._keeps_batch([seqs[i].request_id for i in group]):
                    self._unbatch()
            if len(group) == 1:
                rows = [self._forward_one(seqs[group[0]], num_logits[group[0]])]
            else:
                rows = self._forward_batch([seqs[i] for i in group], [num_logits[i] for i in group])
            for i, row in zip(group, rows):
                logits[i] = row
        return logits

    def _keeps_batch(self, request_ids: list[int]) -> bool:
        """Whether the batch cache may stay as it is for a forward over these sequences: the same batch
        again (unless its holes have grown past ``HOLE_BUDGET_TOKENS``), or a lone sequence not in it. Any other
        batched forward makes a batch cache of its own."""
        if len(request_ids) == 1:
            return self._batch.row(request_ids[0]) is None
        return request_ids == self._batch.request_ids and self._batch.holes <= self.HOLE_BUDGET_TOKENS

    def _groups(self, new_tokens: list[int]) -> list[list[int]]:
        """Indices of the sequences that go through the model together. New tokens are right-padded to the
        group's most, so a long prefill would make every decode in its batch that long: a sequence joins
        the group only while the group's padding stays within ``PAD_BUDGET_TOKENS``."""
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

    @functools.cached_property
    def _direct(self) -> DirectForward | None:
        """The model's direct forward, None where it has none; made on first use, when ``max_seq_len`` (the
        length of its rotary table) is final."""
        return DirectForward.for_model(self.model, self.attention, self.max_seq_len, self.exact_logits)

    def _forward_one(self, seq: Sequence, num_logits: int) -> torch.Tensor:
        """A lone sequence: on the direct forward where the model has one (the same logits, less framework)."""
        cache = self._caches.setdefault(seq.request_id, DynamicCache())
        ids = torch.tensor([seq.tokens[seq.num_cached:]], device=self.device)
        if self._direct is not None and len(seq.tokens) <= self.max_seq_len:
            logits = self._direct(ids, cache, seq.num_cached, num_logits)
        else:
            logits = self.model(input_ids=ids, past_key_values=cache, use_cache=True,
                                logits_to_keep=num_logits).logits[0].float()
        seq.num_cached = len(seq.tokens)
        return logits

    def _forward_batch(self, seqs: list[Sequence], num_logits: list[int]) -> list[torch.Tensor]:
        """One forward for sequences of different cached and new lengths. Row i holds sequence i's cache
        (the kept batch cache, or each sequence's own cache left-padded with zeros to the longest), then its
        new tokens right-padded to the most new tokens (N): the attention mask hides every pad and hole,
        position ids give each token its true position, and no query row is left with nothing to attend to
        (a pad query after real tokens sees them), so no NaN reaches a real row. The result is kept as the
        batch cache."""
        past = [seq.num_cached for seq in seqs]
        new = [seq.tokens[seq.num_cached:] for seq in seqs]
        batch, most_new = len(seqs), max(map(len, new))
        kept = self._batch  # ``forward`` left only a batch cache of exactly these sequences
        if kept is not None:
            assert kept.request_ids == [s.request_id for s in seqs] and kept.lengths == past, \
                "the batch cache and its sequences disagree"
            cache, past_mask = kept.cache, kept.mask
        else:
            cache, past_mask = self._padded_cache(seqs, past)
        ids = torch.zeros(batch, most_new, dtype=torch.long, device=self.device)
        new_mask = torch.zeros(batch, most_new, dtype=torch.long, device=self.device)
        positions = torch.zeros(batch, most_new, dtype=torch.long, device=self.device)
        for i, (cached, tokens) in enumerate(zip(past, new)):
            ids[i, :len(tokens)] = torch.tensor(tokens, device=self.device)
            new_mask[i, :len(tokens)] = 1
            positions[i] = torch.arange(cached, cached + most_new, device=self.device)
        mask = torch.cat([past_mask, new_mask], dim=1)
        # Logits only at the positions some row asks for (a prefill wants its last one): the LM head over
        # every position of a batched prefill would cost as much as a sixth of the forward.
        wanted = sorted({p for tokens, n in zip(new, num_logits) for p in range(len(tokens) - n, len(tokens))})
        out = self.model(input_ids=ids, attention_mask=self._attention_bias(mask, most_new), position_ids=positions,
                         past_key_values=cache, use_cache=True, logits_to_keep=torch.tensor(wanted, device=self.device))
        self._batch = BatchCache([seq.request_id for seq in seqs], cache, mask,
                                 [cached + len(tokens) for cached, tokens in zip(past, new)])
        logits = []
        for i, (seq, tokens, n) in enumerate(zip(seqs, new, num_logits)):
            self._caches.pop(seq.request_id, None)  # its rows are the batch cache's now
            seq.num_cached = len(seq.tokens)
            first = wanted.index(len(tokens) - n)  # a row's positions are consecutive in ``wanted`` too
            logits.append(out.logits[i, first:first + n].float())
        return logits

    def _attention_bias(self, mask: torch.Tensor, num_new: int) -> torch.Tensor:
        """The additive [batch, 1, N, keys] mask transformers builds from a 2D one for eager attention (0 where a
        query sees a key, the dtype's min elsewhere): query i, at column ``keys - N + i``, sees the real keys up
        to its own column. Built here in three ops: transformers' generic builder is a
        visible share of a batched decode step. sdpa takes the same additive form."""
        columns = torch.arange(mask.shape[1], device=self.device)
        query_columns = torch.arange(mask.shape[1] - num_new, mask.shape[1], device=self.device)
        hidden = ~(mask.bool()[:, None, None, :] & (columns <= query_columns[:, None]))
        return torch.zeros(hidden.shape, dtype=self.dtype, device=self.device).masked_fill_(
            hidden, torch.finfo(self.dtype).min)

    def _padded_cache(self, seqs: list[Sequence], past: list[int]) -> tuple[DynamicCache, torch.Tensor]:
        """The batch's cache and mask: each sequence's keys and values right-aligned in zeros of the longest
        length."""
        longest_past = max(past)
        mask = torch.zeros(len(seqs), longest_past, dtype=torch.long, device=self.device)
        for i, cached in enumerate(past):
            mask[i, longest_past - cached:] = 1
        cache = DynamicCache()
        caches = [self._caches.get(seq.request_id) for seq in seqs]
        shaped = next((c for c, n in zip(caches, past) if n), None)
        if shaped is None:
            return cache, mask  # all prefill: the model fills it
        for index, layer in enumerate(shaped.layers):
            _, heads, _, dim = layer.keys.shape
            keys = layer.keys.new_zeros(len(seqs), heads, longest_past, dim)
            values = layer.values.new_zeros(len(seqs), heads, longest_past, dim)
            for i, (own, cached) in enumerate(zip(caches, past)):
                if cached:
                    keys[i, :, longest_past - cached:] = own.layers[index].keys[0, :, :cached]
                    values[i, :, longest_past - cached:] = own.layers[index].values[0, :, :cached]
            cache.update(keys, values, index)
        return cache, mask

    def _unbatch(self) -> None:
        """Give every sequence of the batch cache its own cache again: exactly its real rows."""
        batch, self._batch = self._batch, None
        for i, request_id in enumerate(batch.request_ids):
            real = batch.mask[i].nonzero().squeeze(1)
            own = DynamicCache()
            for index, layer in enumerate(batch.cache.layers):
                own.update(layer.keys[i:i + 1, :, real], layer.values[i:i + 1, :, real], index)
            self._caches[request_id] = own

    def _batch_row(self, seq: Sequence) -> int | None:
        """The sequence's row in the batch cache, None when its cache is its own."""
        return None if self._batch is None else self._batch.row(seq.request_id)

    @torch.inference_mode()  # the batch cache's tensors were made in inference mode
    def truncate(self, seq: Sequence, length: int) -> None:
        row = self._batch_row(seq)
        if row is not None:  # its keys after the first ``length`` become holes
            batch = self._batch
            if length < batch.lengths[row]:
                real = batch.mask[row].nonzero().squeeze(1)
                batch.mask[row, real[length:]] = 0
                batch.lengths[row] = length
        elif (cache := self._caches.get(seq.request_id)) is not None:
            cache.crop(length)
        seq.num_cached = min(seq.num_cached, length)

    @torch.inference_mode()
    def release(self, seq: Sequence) -> None:
        if self._batch_row(seq) is not None:
            self._unbatch()
        self._caches.pop(seq.request_id, None)
        seq.num_cached = 0

    def cache_length(self, seq: Sequence) -> int:
        row = self._batch_row(seq)
        if row is not None:
            return self._batch.lengths[row]
        cache = self._caches.get(seq.request_id)
        return 0 if cache is None else cache.get_seq_length()
