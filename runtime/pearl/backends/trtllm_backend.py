"""The TensorRT-LLM backend: a built engine folder (TRT-LLM ``config.json`` + ``rank*.engine``) run by TRT-LLM's
C++ executor. It owns the executor and, per sequence, only a count of what was fed; TRT-LLM owns the KV cache.

Requests are stateless, as in NVIDIA's draft-target example (examples/prompt_lookup/run_dtm_pld.py resubmits
the whole prefix every round): each ``forward`` sends the full sequence and paged-KV block reuse makes the part
seen before cheap, so ``truncate`` and ``release`` are bookkeeping only. The last ``k`` logits rows come back as
*generation* logits: the sequence goes in as prompt ``tokens[:-(k-1)]`` plus the last ``k-1`` tokens as external
draft tokens, and with ``max_tokens=1`` the executor returns ``[1, k, vocab_padded]``: the logits of the last
prompt token and of each draft token, all computed in that one step (never served from reused blocks, unlike
context logits). ``k > 1`` therefore needs a target built with ``--speculative_decoding_mode
draft_tokens_external --max_draft_len >= k-1``; build/pearl_build/trtllm.py builds it so.
"""
from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import torch

from pearl.backends.base import DTYPES, ModelSpec
from pearl.engine_files import read_engine_json
from pearl.sequence import Sequence

INSTALL_HINT = ("the tensorrt_llm backend needs TensorRT-LLM: `pip install tensorrt-llm` on a Linux host with an "
                "NVIDIA GPU and CUDA (with mpi4py built against the same MPI as TensorRT-LLM); "
                "or build the pair with `backend: torch`")
RESPONSE_TIMEOUT = timedelta(minutes=10)  # one forward; a hung executor must not hang the rank forever


def _eos_ids(folder: Path) -> tuple[int, ...]:
    """EOS ids from the HF files copied beside the engine (its config.json is TRT-LLM's, not HF's)."""
    ids: set[int] = set()
    gen = folder / "generation_config.json"
    value = json.loads(gen.read_text()).get("eos_token_id") if gen.exists() else None
    if value is not None:
        ids.update([value] if isinstance(value, int) else value)
    try:  # the tokenizer may not load without an HF config.json beside it; generation_config then suffices
        from pearl.backends.loading import load_tokenizer
        tok = load_tokenizer(str(folder))
        if tok is not None and tok.eos_token_id is not None:
            ids.add(int(tok.eos_token_id))
    except (OSError, ValueError, KeyError):
        pass
    return tuple(sorted(ids))


class TrtllmBackend:
    def __init__(self, spec: ModelSpec) -> None:
        try:  # lazy: this module must import on hosts without TensorRT-LLM
            import tensorrt_llm
            from tensorrt_llm.bindings import executor as trt  # as tensorrt_llm/runtime/model_runner_cpp.py does
        except ImportError as exc:
            raise ImportError(INSTALL_HINT) from exc
        self._trt, folder = trt, Path(spec.path)
        # Engine config.json = EngineConfig.to_dict() (tensorrt_llm/builder.py):
        # {version, pretrained_config, build_config}
        config = json.loads((folder / "config.json").read_text())
        pretrained, build = config["pretrained_config"], config["build_config"]
        self.vocab_size = int(pretrained["vocab_size"])  # PretrainedConfig.vocab_size (models/modeling_utils.py)
        self.max_seq_len = int(build["max_seq_len"])  # BuildConfig.max_seq_len (builder.py)
        self.max_draft_len = int(build.get("max_draft_len", 0))  # BuildConfig.max_draft_len (--max_draft_len)
        # Mapping.to_dict() (tensorrt_llm/mapping.py), fixed at checkpoint conversion: world_size = tp * pp * cp
        world = int(pretrained["mapping"]["world_size"])
        self.eos_token_ids = _eos_ids(folder)
        self.device = torch.device("cpu")  # the executor hands logits back as host tensors; sample there
        self.dtype = DTYPES[spec.dtype]
        info = read_engine_json(folder) or {}  # ours: which GPUs this model was built for
        first = torch.device(spec.device).index or 0
        devices = [int(d) for d in info.get("devices", [])] or list(range(first, first + world))

        # KvCacheConfig / ExecutorConfig / ParallelConfig / OrchestratorConfig: cpp/tensorrt_llm/pybind/executor/
        # executorConfig.cpp. Block reuse is what makes resubmitting the prefix cheap (its default differs by version).
        cfg = trt.ExecutorConfig(max_beam_width=1, kv_cache_config=trt.KvCacheConfig(enable_block_reuse=True),
                                 parallel_config=self._parallel_config(tensorrt_llm, devices, world))
        if hasattr(cfg, "gather_generation_logits"):  # newer versions gate generation logits at runtime too
            cfg.gather_generation_logits = True
        # Executor(model_path, model_type, executor_config): cpp/tensorrt_llm/pybind/executor/executor.cpp
        # ModelType: cpp/tensorrt_llm/pybind/executor/bindings.cpp
        self._executor = trt.Executor(folder, trt.ModelType.DECODER_ONLY, cfg)
        self._cached: dict[int, int] = {}

    @classmethod
    def load(cls, spec: ModelSpec) -> "TrtllmBackend":
        return cls(spec)

    def _parallel_config(self, tensorrt_llm, devices: list[int], world: int):
        trt = self._trt
        from mpi4py import MPI
        if world == 1:
            # LEADER mode insists MPI world size == tp*pp*cp unless participant ids are given
            # (cpp/tensorrt_llm/executor/executorImpl.cpp, initializeWorkers); PEARL's two ranks share one world,
            # so this rank alone is the model's only participant.
            return trt.ParallelConfig(trt.CommunicationType.MPI, trt.CommunicationMode.LEADER, device_ids=devices,
                                      participant_ids=[MPI.COMM_WORLD.Get_rank()])
        if MPI.COMM_WORLD.Get_size() != 1:  # executorImpl.cpp initializeOrchestrator checks exactly this
            raise RuntimeError(f"a tensor-parallel engine ({world} ranks) runs in TensorRT-LLM's orchestrator mode, "
                               f"which spawns its workers and needs this process alone in its MPI world; "
                               f"this rank shares a world of {MPI.COMM_WORLD.Get_size()}")
        # The worker binary ModelRunnerCpp.from_dir passes in orchestrator mode
        # (tensorrt_llm/runtime/model_runner_cpp.py)
        worker = str(Path(tensorrt_llm.__file__).parent / "bin" / "executorWorker")
        return trt.ParallelConfig(trt.CommunicationType.MPI, trt.CommunicationMode.ORCHESTRATOR, device_ids=devices,
                                  orchestrator_config=trt.OrchestratorConfig(True, worker))

    def forward(self, seqs: list[Sequence], num_logits: list[int]) -> list[torch.Tensor]:
        ids = [self._enqueue(seq, n) for seq, n in zip(seqs, num_logits)]  # all in flight before waiting: one batch
        return [self._collect(seq, n, rid) for seq, n, rid in zip(seqs, num_logits, ids)]

    def _enqueue(self, seq: Sequence, num_logits: int) -> int:
        trt = self._trt
        if not 1 <= num_logits <= seq.num_uncached:
            raise ValueError(f"asked for {num_logits} logits rows but {seq.num_uncached} tokens are uncached")
        if num_logits - 1 > self.max_draft_len:
            raise ValueError(f"{num_logits} logits rows need an engine verifying {num_logits - 1} draft tokens; "
                             f"this one was built with max_draft_len={self.max_draft_len} (trtllm-build "
                             f"--speculative_decoding_mode "
                             f"draft_tokens_external --max_draft_len N)")
        split = len(seq.tokens) - num_logits + 1
        drafts = seq.tokens[split:]
        # Request / OutputConfig / ExternalDraftTokensConfig: cpp/tensorrt_llm/pybind/executor/request.cpp
        request = trt.Request(
            input_token_ids=seq.tokens[:split], max_tokens=1, streaming=False,  # max_tokens: max_new_tokens before 0.13
            output_config=trt.OutputConfig(return_generation_logits=True, exclude_input_from_output=True),
            external_draft_tokens_config=trt.ExternalDraftTokensConfig(drafts) if drafts else None)
        return self._executor.enqueue_request(request)  # executor.cpp: enqueue_request(request) -> request id

    def _collect(self, seq: Sequence, num_logits: int, rid: int) -> torch.Tensor:
        # executor.cpp: the await_responses(id, timeout) overload
        responses = self._executor.await_responses(id=rid, timeout=RESPONSE_TIMEOUT)
        if not responses:
            self._executor.cancel_request(rid)  # executor.cpp: cancel_request(id)
            raise TimeoutError(f"TensorRT-LLM gave no response in {RESPONSE_TIMEOUT} (request {seq.request_id})")
        response = responses[-1]  # non-streaming: one final response
        if response.has_error():  # Response.has_error / error_msg / result: request.cpp
            raise RuntimeError(f"TensorRT-LLM request failed: {response.error_msg}")
        logits = response.result.generation_logits  # Result.generation_logits, [1, k, vocab_padded] (torch, host)
        if logits is None or logits.shape[-2] != num_logits:
            got = None if logits is None else tuple(logits.shape)
            raise RuntimeError(f"expected {num_logits} generation-logits rows, got {got}: build with "
                               f"--gather_generation_logits, and --max_input_len >= max_seq_len - 1 so draft tokens "
                               f"are never cut")
        seq.num_cached = self._cached[seq.request_id] = len(seq.tokens)
        return logits[0, :, :self.vocab_size].float()

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
        self._executor.shutdown()  # executor.cpp: shutdown()
