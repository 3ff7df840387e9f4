"""The TensorRT-LLM backend: a built engine folder (TRT-LLM ``config.json`` + ``rank*.engine``) run by TRT-LLM's
C++ executor, for the one pinned release (``pearl.backends.trtllm_pin``). It owns the executor and, per
sequence, only a count of what was fed; TRT-LLM owns the KV cache.

Ranks. Every rank of the model (one per tensor-parallel shard) constructs the executor in LEADER mode with
``participant_ids`` = the model's MPI_COMM_WORLD ranks, leader first (``pearl.ranks.roles``); only the leader
enqueues requests, and a follower ``follow``s: it waits in ``shutdown`` until its leader shuts down.

Requests are stateless, as in NVIDIA's draft-target example (examples/prompt_lookup/run_dtm_pld.py resubmits the
whole prefix every round): each request sends the full sequence and paged-KV block reuse makes the part seen
before cheap, so ``truncate`` and ``release`` are bookkeeping only.
- Verify (``forward``, the target): the last ``k`` logits rows come back as *generation* logits. The sequence
  goes in as prompt ``tokens[:-m]`` plus its last ``m = max(k - 1, 1)`` tokens as external draft tokens, with
  ``max_tokens=1``: the executor returns ``[1, m + 1, vocab_padded]``, the logits of the last prompt token and of
  each draft token, all computed in that one step (never served from reused blocks, unlike context logits); the
  last ``k`` rows are kept. At least one draft token always goes in: a request without any is checked against
  the engine's whole ``max_draft_len`` (below). Needs a target built with ``--speculative_decoding_mode
  draft_tokens_external --max_draft_len >= k - 1``; build/pearl_build/trtllm.py builds it so.
- Draft (``draft_windows``): ONE request per sequence and round, ``max_tokens`` = the window, with generation
  logits when the sequence samples (the draft probabilities the acceptance rule needs) and ``end_id=-1`` so a
  window runs past EOS as the torch draft's does (the target decides where the output ends).
- Lengths: ``LlmRequest::validate`` silently cuts external draft tokens past ``max_input_len`` and shrinks
  ``max_tokens`` past ``max_seq_len`` (prompt + max_tokens + drafts, or + the engine's ``max_draft_len`` when a
  request has no drafts). So this backend reports ``max_seq_len = min(max_input_len, max_seq_len - 1)`` (the
  engine refuses longer requests up front), caps a draft window to what fits, and raises instead of
  sending a verify that would be cut.

Checked against TensorRT-LLM's source at the pinned release (names and keywords: the contract tests' stand-in,
tests/trtllm_contract/, is built from the same declarations):
- ``tensorrt_llm/version.py``: ``__version__`` (checked against the pin).
- ``cpp/tensorrt_llm/pybind/executor/bindings.cpp``: ``ModelType``, ``CommunicationType``, ``CommunicationMode``.
- ``cpp/tensorrt_llm/pybind/executor/executor.cpp``: ``Executor(model_path, model_type, executor_config)``,
  ``enqueue_request(request)``, ``await_responses(id, timeout)``, ``cancel_request(id)``,
  ``can_enqueue_requests()``, ``shutdown()``.
- ``cpp/tensorrt_llm/pybind/executor/executorConfig.cpp``: ``ExecutorConfig(max_beam_width, kv_cache_config,
  parallel_config, gather_generation_logits)``, ``KvCacheConfig(enable_block_reuse)``,
  ``ParallelConfig(communication_type, communication_mode, device_ids, participant_ids)``.
- ``cpp/tensorrt_llm/pybind/executor/request.cpp``: ``Request(input_token_ids, max_tokens, *, streaming,
  sampling_config, output_config, end_id, external_draft_tokens_config)``, ``SamplingConfig(beam_width, *,
  top_k, top_p, seed, temperature)``, ``OutputConfig(return_generation_logits, exclude_input_from_output)``,
  ``ExternalDraftTokensConfig(tokens)``, ``Response.has_error() / error_msg / result``,
  ``Result.output_token_ids / generation_logits``.
- the same names in ``cpp/tensorrt_llm/nanobind/executor/{bindings,executor,executorConfig,request}.cpp``.
- behaviour: ``cpp/tensorrt_llm/executor/executorImpl.cpp`` (``initializeWorkers``: participants, leader =
  first; ``shutdown``), ``cpp/tensorrt_llm/batch_manager/llmRequest.cpp`` (``LlmRequest::validate``),
  ``triton_backend/all_models/inflight_batcher_llm/tensorrt_llm/1/model.py`` (a rank that cannot enqueue waits
  in ``shutdown``).
"""
from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import torch

from pearl.backends.base import DTYPES, ModelSpec
from pearl.backends.trtllm_pin import check_version
from pearl.engine_files import read_engine_json
from pearl.params import SamplingParams
from pearl.sequence import Sequence

INSTALL_HINT = ("the tensorrt_llm backend needs TensorRT-LLM (see runtime/pearl/backends/trtllm_pin.py for the "
                "release and its container; `make setup-gpu` there), or build the pair with `backend: torch`")
RESPONSE_TIMEOUT = timedelta(minutes=10)  # one request; a hung executor must not hang the rank forever
NO_END_ID = -1  # LlmRequest::validate accepts -1: no end token, a draft window always runs to its length


def world_rank() -> int:
    from mpi4py import MPI
    return MPI.COMM_WORLD.Get_rank()


def _eos_ids(folder: Path) -> tuple[int, ...]:
    """EOS ids from the HF files copied beside the engine (its config.json is TRT-LLM's, not HF's)."""
    ids: set[int] = set()
    gen = folder / "generation_config.json"
    value = json.loads(gen.read_text()).get("eos_token_id") if gen.exists() else None
    if value is not None:
        ids.update([value] if isinstance(value, int) else value)
    try:  # the tokenizer may not load without an HF config.json beside it; generation_config then suffices
        from pearl.tokenizers import load_tokenizer
        tok = load_tokenizer(str(folder))
        if tok is not None and tok.eos_token_id is not None:
            ids.add(int(tok.eos_token_id))
    except (OSError, ValueError, KeyError):
        pass
    return tuple(sorted(ids))


class TrtllmBackend:
    def __init__(self, spec: ModelSpec, participant_ids: list[int] | None = None) -> None:
        try:  # lazy: this module must import on hosts without TensorRT-LLM
            import tensorrt_llm
            from tensorrt_llm.bindings import executor as trt  # as tensorrt_llm/runtime/model_runner_cpp.py does
        except ImportError as exc:
            raise ImportError(INSTALL_HINT) from exc
        check_version(tensorrt_llm.__version__)
        self._trt, folder = trt, Path(spec.path)
        # Engine config.json = EngineConfig.to_dict() (tensorrt_llm/builder.py): {version, pretrained_config,
        # build_config}; BuildConfig (builder.py) has the lengths, PretrainedConfig (models/modeling_utils.py) the rest
        config = json.loads((folder / "config.json").read_text())
        pretrained, build = config["pretrained_config"], config["build_config"]
        self.vocab_size = int(pretrained["vocab_size"])
        self.engine_max_seq_len, self.max_input_len = int(build["max_seq_len"]), int(build["max_input_len"])
        self.max_draft_len = int(build.get("max_draft_len", 0))
        self.max_seq_len = min(self.max_input_len, self.engine_max_seq_len - 1)  # see the module docstring
        self.eos_token_ids = _eos_ids(folder)
        self.device = torch.device("cpu")  # the executor hands logits back as host tensors; sample there
        self.dtype = DTYPES[spec.dtype]
        # Mapping.to_dict() (tensorrt_llm/mapping.py), fixed at checkpoint conversion: world_size = tp * pp * cp
        shards = int(pretrained["mapping"]["world_size"])
        participants = list(participant_ids) if participant_ids is not None else [world_rank()]
        if len(participants) != shards:
            raise ValueError(f"{folder} was built for {shards} ranks (tensor parallel), but the world gives it "
                             f"{len(participants)}: {participants}; rebuild it or fix the pair's devices")
        if world_rank() not in participants:
            raise ValueError(f"world rank {world_rank()} is not one of this model's ranks {participants}")
        self.is_leader = world_rank() == participants[0]
        info = read_engine_json(folder) or {}  # ours: which GPUs this model was built for
        first = torch.device(spec.device).index or 0
        devices = [int(d) for d in info.get("devices", [])] or list(range(first, first + shards))
        parallel = trt.ParallelConfig(communication_type=trt.CommunicationType.MPI,
                                      communication_mode=trt.CommunicationMode.LEADER,
                                      device_ids=devices, participant_ids=participants)
        # Block reuse is what makes resubmitting the prefix cheap; generation logits are gated at run time too.
        cfg = trt.ExecutorConfig(max_beam_width=1, kv_cache_config=trt.KvCacheConfig(enable_block_reuse=True),
                                 parallel_config=parallel, gather_generation_logits=True)
        self._executor = trt.Executor(str(folder), trt.ModelType.DECODER_ONLY, cfg)  # every participant
        self._cached: dict[int, int] = {}
        self._closed = False

    @classmethod
    def load(cls, spec: ModelSpec, participant_ids: list[int] | None = None) -> "TrtllmBackend":
        return cls(spec, participant_ids)

    def follow(self) -> None:
        """A follower's whole life after loading: its executor runs its shard until the leader shuts down."""
        if self.is_leader:
            raise RuntimeError("the leader serves requests; only a follower waits for it")
        self.close()

    def _check_fits(self, prompt_len: int, num_drafts: int) -> None:
        """Refuse what LlmRequest::validate would cut silently (llmRequest.cpp)."""
        drafts_per_step = num_drafts or self.max_draft_len
        if prompt_len + num_drafts > self.max_input_len or prompt_len + 1 + drafts_per_step > self.engine_max_seq_len:
            raise ValueError(f"a request of {prompt_len} prompt + {num_drafts} draft tokens does not fit the engine "
                             f"(max_input_len {self.max_input_len}, max_seq_len {self.engine_max_seq_len}, "
                             f"max_draft_len {self.max_draft_len}); TensorRT-LLM would cut it silently")

    def _enqueue(self, request) -> int:
        if not self.is_leader:
            raise RuntimeError("a follower rank enqueued a request; only the model's leader may")
        return self._executor.enqueue_request(request)

    def _result(self, rid: int, request_id: int):
        responses = self._executor.await_responses(id=rid, timeout=RESPONSE_TIMEOUT)
        if not responses:
            self._executor.cancel_request(rid)
            raise TimeoutError(f"TensorRT-LLM gave no response in {RESPONSE_TIMEOUT} (request {request_id})")
        response = responses[-1]  # non-streaming: one final response
        if response.has_error():
            raise RuntimeError(f"TensorRT-LLM request failed: {response.error_msg}")
        return response.result

    def forward(self, seqs: list[Sequence], num_logits: list[int]) -> list[torch.Tensor]:
        ids = [self._enqueue_verify(seq, n) for seq, n in zip(seqs, num_logits)]  # all in flight: one batch
        return [self._collect_verify(seq, n, rid) for seq, n, rid in zip(seqs, num_logits, ids)]

    def _enqueue_verify(self, seq: Sequence, num_logits: int) -> int:
        trt = self._trt
        if not 1 <= num_logits <= seq.num_uncached:
            raise ValueError(f"asked for {num_logits} logits rows but {seq.num_uncached} tokens are uncached")
        if num_logits - 1 > self.max_draft_len:
            raise ValueError(f"{num_logits} logits rows need an engine verifying {num_logits - 1} draft tokens; "
                             f"this one was built with max_draft_len={self.max_draft_len} (trtllm-build "
                             f"--speculative_decoding_mode draft_tokens_external --max_draft_len N)")
        num_drafts = min(max(num_logits - 1, 1), len(seq.tokens) - 1) if self.max_draft_len else 0
        split = len(seq.tokens) - num_drafts
        self._check_fits(split, num_drafts)
        drafts = seq.tokens[split:]
        request = trt.Request(
            input_token_ids=seq.tokens[:split], max_tokens=1, streaming=False,
            output_config=trt.OutputConfig(return_generation_logits=True, exclude_input_from_output=True),
            external_draft_tokens_config=trt.ExternalDraftTokensConfig(drafts) if drafts else None)
        return self._enqueue(request)

    def _collect_verify(self, seq: Sequence, num_logits: int, rid: int) -> torch.Tensor:
        logits = self._result(rid, seq.request_id).generation_logits  # [1, drafts + 1, vocab_padded] (host)
        if logits is None or logits.shape[-2] < num_logits:
            got = None if logits is None else tuple(logits.shape)
            raise RuntimeError(f"expected {num_logits} generation-logits rows, got {got}: build with "
                               f"--gather_generation_logits")
        seq.num_cached = self._cached[seq.request_id] = len(seq.tokens)
        return logits[0, -num_logits:, :self.vocab_size].float()

    def draft_windows(self, seqs: list[Sequence], lengths: list[int], sampling: list[SamplingParams],
                      seeds: list[int]) -> list[tuple[list[int], torch.Tensor | None]]:
        """Draft each sequence's window in ONE request (up to ``lengths[i]`` tokens, fewer where the engine's
        max_seq_len ends it) and append it; per sequence (tokens, their logits rows [n, vocab] when sampling)."""
        ids = [self._enqueue_window(*args) for args in zip(seqs, lengths, sampling, seeds)]  # one batch
        return [self._collect_window(seq, params, rid) for seq, params, rid in zip(seqs, sampling, ids)]

    def _enqueue_window(self, seq: Sequence, length: int, params: SamplingParams, seed: int) -> int:
        trt = self._trt
        length = min(length, self.engine_max_seq_len - len(seq.tokens) - self.max_draft_len)
        if length < 1 or len(seq.tokens) > self.max_input_len:
            raise ValueError(f"sequence of {len(seq.tokens)} tokens leaves no room to draft (max_input_len "
                             f"{self.max_input_len}, max_seq_len {self.engine_max_seq_len})")
        sampling = (trt.SamplingConfig(beam_width=1, top_k=1) if params.greedy else
                    trt.SamplingConfig(beam_width=1, top_k=params.top_k or None,
                                       top_p=params.top_p if params.top_p < 1 else None,
                                       temperature=params.temperature, seed=seed))
        request = trt.Request(
            input_token_ids=list(seq.tokens), max_tokens=length, streaming=False, end_id=NO_END_ID,
            sampling_config=sampling,
            output_config=trt.OutputConfig(return_generation_logits=not params.greedy, exclude_input_from_output=True))
        return self._enqueue(request)

    def _collect_window(self, seq: Sequence, params: SamplingParams, rid: int):
        result = self._result(rid, seq.request_id)
        tokens = [int(t) for t in result.output_token_ids[0]]  # beam 0, the new tokens only
        rows = None
        if not params.greedy:
            logits = result.generation_logits  # [1, len(tokens), vocab_padded]
            if logits is None or logits.shape[-2] != len(tokens):
                raise RuntimeError(f"expected {len(tokens)} generation-logits rows for a sampled window, got "
                                   f"{None if logits is None else tuple(logits.shape)}")
            rows = logits[0, :, :self.vocab_size].float()
        seq.tokens.extend(tokens)
        seq.num_cached = self._cached[seq.request_id] = len(seq.tokens)
        return tokens, rows

    def truncate(self, seq: Sequence, length: int) -> None:
        # Nothing to free: the next request resubmits tokens[:length] and block reuse matches it (only the
        # matched prefix is reused, and TRT-LLM always recomputes at least the last prompt token).
        seq.num_cached = self._cached[seq.request_id] = min(seq.num_cached, length)

    def release(self, seq: Sequence) -> None:
        self._cached.pop(seq.request_id, None)  # finished requests hold no blocks; reusable ones age out by LRU
        seq.num_cached = 0

    def cache_length(self, seq: Sequence) -> int:
        return self._cached.get(seq.request_id, 0)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._executor.shutdown()  # a leader's shutdown also ends its followers' executors
