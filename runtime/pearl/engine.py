"""The public API: an ``Engine`` owns a world of worker ranks and turns prompt ids into streamed tokens.

    with Engine(WorldConfig(draft=ModelSpec(path), target=ModelSpec(path))) as engine:
        stream = engine.generate(prompt_ids, SamplingParams(max_tokens=64), mode="pearl", gamma=4)
        for chunk in stream:      # lists of token ids, as they are accepted
            ...
        stream.stats              # RequestStats once the stream is exhausted

Requests from many threads run at once: the ranks batch them (continuous batching, up to the world's
``max_batch_size``; more wait on the target rank for a free slot). Each request's output is the same as if it
ran alone.
"""
from __future__ import annotations

import itertools
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from pearl.backends import check_model_path
from pearl.backends.loading import load_tokenizer
from pearl.engine_files import gamma_table, load_pair
from pearl.dist.config import WorldConfig
from pearl.dist.protocol import DRAFT_RANK, TARGET_RANK
from pearl.dist.world import World
from pearl.params import GenerationRequest, Mode, SamplingParams
from pearl.profiling import recommended_gamma
from pearl.stats import RequestStats
from pearl.stopping import FinishReason
from pearl.streams import GenerationStream, check_fits

MAX_AUTO_GAMMA = 16


class VocabularyMismatch(ValueError):
    """Draft and target do not share token ids, so the draft's tokens mean nothing to the target."""


def check_tokenizers(draft_tokenizer, target_tokenizer) -> None:
    """Refuse a pair whose tokenizers map text to different ids (None: no tokenizer to compare)."""
    if draft_tokenizer is None or target_tokenizer is None:
        return
    if draft_tokenizer.get_vocab() != target_tokenizer.get_vocab():
        raise VocabularyMismatch("draft and target tokenizers differ; speculative decoding needs a draft "
                                 "that uses the target's vocabulary")


def shared_vocab_size(target_tokenizer, draft_logits: int, target_logits: int) -> int:
    """Logits columns both models agree on. Padded vocabularies (Qwen) are cut to the shorter one.

    With a tokenizer (already checked to be the draft's too) the ids beyond it are padding; without one
    the two models must have the same number of logits.
    """
    if target_tokenizer is None:
        if draft_logits != target_logits:
            raise VocabularyMismatch(f"draft has {draft_logits} logits and target {target_logits}; without "
                                     f"tokenizers to show they share ids, the vocabularies must be equal")
        return target_logits
    size = min(draft_logits, target_logits)
    if len(target_tokenizer) > size:
        raise VocabularyMismatch(f"the tokenizer has {len(target_tokenizer)} tokens but a model has only "
                                 f"{size} logits")
    return size


class Engine:
    """``recommended_gamma``: what ``gamma="auto"`` means; None measures the speed ratio at first use."""

    def __init__(self, config: WorldConfig, recommended_gamma: int | None = None,
                 gamma_by_batch_size: dict[int, int] | None = None) -> None:
        for spec in (config.draft, config.target):
            check_model_path(spec)  # a missing path fails here, before any process starts
        self.config = config
        self.tokenizer = load_tokenizer(config.target.path)
        draft_tokenizer = (self.tokenizer if config.draft.path == config.target.path
                           else load_tokenizer(config.draft.path))
        check_tokenizers(draft_tokenizer, self.tokenizer)
        self.world = World.start(config)
        try:
            draft, target = self.world.ranks[DRAFT_RANK], self.world.ranks[TARGET_RANK]
            self.vocab_size = shared_vocab_size(self.tokenizer, draft.vocab_size, target.vocab_size)
        except BaseException:
            self.world.close()
            raise
        self.eos_token_ids = target.eos_token_ids
        self.max_seq_len = min(draft.max_seq_len, target.max_seq_len)
        self.world.begin(self.vocab_size)
        self._profile_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._auto_gamma = recommended_gamma
        self._gamma_by_batch_size = dict(gamma_by_batch_size or {})

    @classmethod
    def from_engine_dir(cls, folder: str | Path, threads_per_rank: int | None = None,
                        check_hashes: bool = False) -> "Engine":
        """An engine over a pair built by ``make engines``; its measured gamma is ``gamma="auto"``.
        ``threads_per_rank`` overrides the pair's setting (the gamma was profiled with the pair's);
        ``check_hashes`` verifies every engine file's sha256 against the build's manifest first."""
        config, gamma = load_pair(folder, check_hashes=check_hashes)
        if threads_per_rank is not None:
            config = replace(config, threads_per_rank=threads_per_rank)
        return cls(config, recommended_gamma=gamma, gamma_by_batch_size=gamma_table(folder))

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.world.close()

    @property
    def max_batch_size(self) -> int:
        return self.config.max_batch_size

    def auto_gamma(self, batch_size: int = 1) -> int:
        """PEARL's gamma: from the engine directory's profile (its table's largest batch size not above
        ``batch_size``), else the target/draft decode time ratio measured once on the ranks (a verify then
        counts as costing one decode step)."""
        profiled = [size for size in self._gamma_by_batch_size if size <= batch_size]
        if profiled:
            return self._gamma_by_batch_size[max(profiled)]
        with self._profile_lock:
            if self._auto_gamma is None:
                seconds = self.world.profile({"draft": 1, "target": 1})
                draft_step, target_step = seconds["draft"][0], seconds["target"][0]
                self._auto_gamma = recommended_gamma(draft_step, [target_step] * MAX_AUTO_GAMMA)
        return self._auto_gamma

    def generate(self, prompt_ids: list[int], sampling: SamplingParams = SamplingParams(),
                 mode: Mode | str = Mode.PEARL, gamma: int | str = 4) -> GenerationStream:
        """Stream one request; ``gamma="auto"`` takes the profiled gamma for the batch it is likely to join
        (the requests in flight and this one, up to max_batch_size)."""
        mode = Mode.parse(mode) if isinstance(mode, str) else mode
        if gamma == "auto":
            gamma = self.auto_gamma(min(self.world.in_flight + 1, self.max_batch_size))
        gamma = int(gamma)
        request = GenerationRequest(next(self._ids), tuple(int(t) for t in prompt_ids), sampling, mode, gamma)
        check_fits(request, self.vocab_size, self.max_seq_len)
        return GenerationStream(lambda stream: self._serve(request, stream),
                                cancel=lambda: self.world.cancel(request.request_id))

    def _serve(self, request: GenerationRequest, stream: GenerationStream) -> Iterator[list[int]]:
        start = time.perf_counter()
        for item in self.world.submit(request):
            if isinstance(item, tuple):
                tokens, reason = item
                if reason:
                    stream.finish_reason = FinishReason(reason).label
                if tokens:
                    yield tokens
            else:
                stream.stats = RequestStats.from_message(item, request.mode.name.lower(), request.gamma,
                                                         time.perf_counter() - start)
