"""The llama.cpp backend: a GGUF model run by llama.cpp (through llama-cpp-python's C API) on the CPU.

Its point is speed on CPUs without fast float kernels: llama.cpp multiplies its 4-bit weights by 8-bit
activations with integer SIMD, where torch's weight-only kernels convert every weight to float first. A cheap
draft for a torch target, or both models of a pair whose users accept the GGUF's own quantized output.
The sequences share one llama.cpp context; each holds one of its sequence slots (``seq_id``) while it lives,
and its KV entries are that slot's (``llama_memory_seq_rm`` rolls them back).
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import torch

from pearl.backends.base import ModelSpec
from pearl.engine_files import gguf_model_file, read_engine_json
from pearl.sequence import Sequence

MAX_SEQUENCES = 16  # slots of the context; a pair's max_batch_size is at most this
BATCH_TOKENS = 512  # tokens of one llama_decode call; a longer prefill goes in several
DEFAULT_MAX_SEQ_LEN = 4096  # a bare .gguf file's (an engine folder's engine.json gives its own)


class LlamaCppBackend:
    def __init__(self, path: Path, max_seq_len: int, threads: int) -> None:
        import llama_cpp as ll

        self._ll = ll
        ll.llama_backend_init()
        ll.llama_log_set(_quiet_logs(ll), ctypes.c_void_p(0))
        model_params = ll.llama_model_default_params()
        self._model = ll.llama_model_load_from_file(str(path).encode(), model_params)
        if not self._model:
            raise ValueError(f"llama.cpp could not load {path}")
        vocab = ll.llama_model_get_vocab(self._model)
        self.vocab_size = int(ll.llama_vocab_n_tokens(vocab))
        # llama.cpp's end-of-generation tokens (eos, eot, and what the GGUF's metadata adds, e.g. Qwen's
        # <|endoftext|> beside <|im_end|>): where a llama_cpp target stops, as llama.cpp's own tools do
        self.eos_token_ids = tuple(t for t in range(self.vocab_size) if ll.llama_vocab_is_eog(vocab, t))
        self.max_seq_len = min(max_seq_len, int(ll.llama_model_n_ctx_train(self._model)))
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        context_params = ll.llama_context_default_params()
        context_params.n_seq_max = MAX_SEQUENCES
        context_params.kv_unified = True  # one buffer shared by the slots: a slot takes only what it holds
        # every slot may hold a whole sequence: ~12 KB a position for Qwen2.5-0.5B (805 MB at 16 x 4096)
        context_params.n_ctx = self.max_seq_len * MAX_SEQUENCES
        context_params.n_batch = context_params.n_ubatch = BATCH_TOKENS
        context_params.n_threads = context_params.n_threads_batch = threads
        context_params.no_perf = True
        self._ctx = ll.llama_init_from_model(self._model, context_params)
        if not self._ctx:
            raise ValueError(f"llama.cpp could not make a context for {path}")
        self._memory = ll.llama_get_memory(self._ctx)
        self._batch = ll.llama_batch_init(BATCH_TOKENS, 0, 1)
        self._threads = threads
        self._slots: dict[int, int] = {}  # request_id -> seq_id
        self._free = list(range(MAX_SEQUENCES - 1, -1, -1))
        self._lengths: dict[int, int] = {}

    @classmethod
    def load(cls, spec: ModelSpec) -> "LlamaCppBackend":
        if spec.device != "cpu":
            raise ValueError(f"the llama_cpp backend runs on the CPU, not {spec.device}")
        info = read_engine_json(spec.path) if Path(spec.path).is_dir() else None
        max_seq_len = int(info["max_seq_len"]) if info else DEFAULT_MAX_SEQ_LEN
        return cls(gguf_model_file(spec.path), max_seq_len=max_seq_len, threads=torch.get_num_threads())

    def forward(self, seqs: list[Sequence], num_logits: list[int]) -> list[torch.Tensor]:
        if torch.get_num_threads() != self._threads:  # the rank gives its model more cores at times
            self._threads = torch.get_num_threads()
            self._ll.llama_set_n_threads(self._ctx, self._threads, self._threads)
        items = []  # (sequence index, position, token, wants logits)
        for index, (seq, count) in enumerate(zip(seqs, num_logits)):
            if not 1 <= count <= seq.num_uncached:
                raise ValueError(f"{count} logits asked of a sequence with {seq.num_uncached} uncached tokens")
            self._slot(seq)
            first = len(seq.tokens) - count
            items += [(index, pos, seq.tokens[pos], pos >= first) for pos in range(seq.num_cached, len(seq.tokens))]
        rows: list[list[np.ndarray]] = [[] for _ in seqs]
        for start in range(0, len(items), BATCH_TOKENS):
            self._decode(seqs, items[start:start + BATCH_TOKENS], rows)
        for seq in seqs:
            seq.num_cached = self._lengths[seq.request_id] = len(seq.tokens)
        return [torch.from_numpy(np.concatenate(r)) for r in rows]

    def truncate(self, seq: Sequence, length: int) -> None:
        if seq.request_id in self._slots:
            if not self._ll.llama_memory_seq_rm(self._memory, self._slots[seq.request_id], length, -1):
                raise RuntimeError(f"llama.cpp could not roll sequence {seq.request_id} back to {length} tokens")
            self._lengths[seq.request_id] = length
        seq.num_cached = length

    def release(self, seq: Sequence) -> None:
        slot = self._slots.pop(seq.request_id, None)
        if slot is not None:
            self._ll.llama_memory_seq_rm(self._memory, slot, -1, -1)
            self._free.append(slot)
            del self._lengths[seq.request_id]

    def cache_length(self, seq: Sequence) -> int:
        return self._lengths.get(seq.request_id, 0)

    def _slot(self, seq: Sequence) -> int:
        if seq.request_id not in self._slots:
            if not self._free:
                raise RuntimeError(f"llama.cpp backend: more than {MAX_SEQUENCES} sequences at once")
            self._slots[seq.request_id] = self._free.pop()
            self._lengths[seq.request_id] = 0
        return self._slots[seq.request_id]

    def _decode(self, seqs, items, rows) -> None:
        batch = self._batch
        for i, (index, pos, token, wants) in enumerate(items):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = self._slots[seqs[index].request_id]
            batch.logits[i] = wants
        batch.n_tokens = len(items)
        status = self._ll.llama_decode(self._ctx, batch)
        if status != 0:  # 1: no room left in the KV cache (n_ctx); < 0: an error
            raise RuntimeError(f"llama_decode failed ({status}) on {len(items)} tokens")
        for i, (index, _, _, wants) in enumerate(items):
            if wants:
                pointer = self._ll.llama_get_logits_ith(self._ctx, i)
                rows[index].append(np.ctypeslib.as_array(pointer, shape=(self.vocab_size,)).copy()[None])

    def __del__(self) -> None:
        ll = getattr(self, "_ll", None)
        if ll is None:
            return
        if getattr(self, "_batch", None) is not None:
            ll.llama_batch_free(self._batch)
        if getattr(self, "_ctx", None):
            ll.llama_free(self._ctx)
        if getattr(self, "_model", None):
            ll.llama_model_free(self._model)


_QUIET_LOGS = []  # the C callback must outlive every call into llama.cpp


def _quiet_logs(ll):
    """A log callback that drops llama.cpp's messages (its load report would fill every rank's stderr)."""
    if not _QUIET_LOGS:
        _QUIET_LOGS.append(ll.llama_log_callback(lambda level, text, user_data: None))
    return _QUIET_LOGS[0]
