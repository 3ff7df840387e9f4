"""The public API: an ``LLM`` owns a world of worker ranks and turns prompt ids into streamed tokens.

    with LLM(WorldConfig(draft=ModelSpec(path), target=ModelSpec(path))) as llm:
        stream = llm.generate(prompt_ids, SamplingParams(max_tokens=64), mode="pearl", gamma="auto")
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
from pearl.tokenizers import load_tokenizer
from pearl.ranks.config import WorldConfig
from pearl.ranks.protocol import DRAFT_RANK, TARGET_RANK
from pearl.ranks.router import Router
from pearl.ranks.world import World
from pearl.engine_files import load_pair
from pearl.params import GenerationRequest, Mode, SamplingParams
from pearl.profiling import DEFAULT_ACCEPTANCE
from pearl.speculation import CostRow, SpeculationCosts
from pearl.stats import RequestStats
from pearl.stopping import FinishReason
from pearl.streams import GenerationStream, PairLimits, check_fits

MAX_UNPROFILED_WINDOW = 16  # adaptive windows of a pair measured at start-up only (its verify taken as flat)


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


class LLM:
    """``costs``: the pair's measured costs (``make engines`` profiles them), from which ``gamma="auto"``
    requests get their windows round by round; None measures a draft and a target step at the first one."""

    def __init__(self, config: WorldConfig, costs: SpeculationCosts | None = None, local: bool = False) -> None:
        """``local``: the ranks on threads of this process instead of MPI processes (tests, debugging)."""
        for spec in (config.draft, config.target):
            check_model_path(spec)  # a missing path fails here, before any process starts
        self.config = config
        self.tokenizer = load_tokenizer(config.target.path)
        draft_tokenizer = (self.tokenizer if config.draft.path == config.target.path
                           else load_tokenizer(config.draft.path))
        check_tokenizers(draft_tokenizer, self.tokenizer)
        self.world = World.local(config) if local else World.start(config)
        try:
            draft, target = self.world.ranks[DRAFT_RANK], self.world.ranks[TARGET_RANK]
            self.vocab_size = shared_vocab_size(self.tokenizer, draft.vocab_size, target.vocab_size)
        except BaseException:
            self.world.close()
            raise
        self.eos_token_ids = target.eos_token_ids
        self.max_seq_len = min(draft.max_seq_len, target.max_seq_len)
        self.world.begin(self.vocab_size)
        self._costs_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._router: Router | None = None  # started by the first generate (the world host polls its world itself)
        self._router_lock = threading.Lock()
        self.costs = costs
        if costs is not None:
            self.world.send_costs(costs)

    @classmethod
    def from_engine_dir(cls, folder: str | Path, threads_per_rank: int | None = None,
                        check_hashes: bool = False) -> "LLM":
        """An LLM over a pair built by ``make engines``, with the costs its build measured.
        ``threads_per_rank`` overrides the pair's setting (the costs were measured with the pair's);
        ``check_hashes`` verifies every engine file's sha256 against the build's manifest first."""
        config, costs = load_pair(folder, check_hashes=check_hashes)
        if threads_per_rank is not None:
            config = replace(config, threads_per_rank=threads_per_rank)
        return cls(config, costs)

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._router is not None:
            self._router.close()
        self.world.close()

    @property
    def max_batch_size(self) -> int:
        return self.config.max_batch_size

    @property
    def limits(self) -> PairLimits:
        return PairLimits(self.vocab_size, self.max_seq_len, self.max_batch_size, tuple(self.eos_token_ids))

    def ensure_costs(self) -> None:
        """Costs for adaptive windows: without a profile, one draft step and one target step measured on the
        ranks now (a verify then counts as costing one target step; the target's threads stay its own)."""
        with self._costs_lock:
            if self.costs is None:
                seconds = self.world.profile({"draft": 1, "target": 1})
                step = seconds["target"][0]
                row = CostRow(seconds["draft"][0], (step,) * MAX_UNPROFILED_WINDOW, step)
                self.costs = SpeculationCosts({1: row}, DEFAULT_ACCEPTANCE)
                self.world.send_costs(self.costs)

    def generate(self, prompt_ids: list[int], sampling: SamplingParams = SamplingParams(),
                 mode: Mode | str = Mode.PEARL, gamma: int | str = "auto") -> GenerationStream:
        """Stream one request. ``gamma="auto"``: adaptive, each round's window (none at all when the target
        alone is faster) from the sequence's acceptance so far and the pair's costs (``pearl.speculation``)."""
        mode = Mode.parse(mode) if isinstance(mode, str) else mode
        gamma = None if gamma == "auto" else int(gamma)
        if gamma is None and mode is not Mode.AR:
            self.ensure_costs()
        request = GenerationRequest(next(self._ids), tuple(int(t) for t in prompt_ids), sampling, mode, gamma)
        check_fits(request, self.vocab_size, self.max_seq_len)
        return GenerationStream(lambda stream: self._serve(request, stream),
                                cancel=lambda: self.world.cancel(request.request_id))

    def _serve(self, request: GenerationRequest, stream: GenerationStream) -> Iterator[list[int]]:
        start = time.perf_counter()
        with self._router_lock:
            if self._router is None:
                self._router = Router(self.world)
        for report in self._router.submit(request):
            if report.finished:
                stream.finish_reason = FinishReason(report.finish_reason).label
                stream.stats = RequestStats.from_message(report.counters, request.mode.name.lower(), request.gamma,
                                                         time.perf_counter() - start)
            if report.tokens:
                yield report.tokens
