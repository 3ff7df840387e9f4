"""Contract check of the TensorRT-LLM backend, without a GPU or TensorRT-LLM: it is driven through PEARL rounds and
a tensor-parallel world's rank roles against a stand-in built from the pinned release's binding declarations
(tests/trtllm_contract). It checks names, keywords, request shapes and length limits; it is not a run: what the
real executor computes stays for a GPU host (scripts/gpu_check.sh)."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pearl.backends import load_backend
from pearl.backends.base import ModelSpec
from pearl.backends.trtllm_backend import TrtllmBackend
from pearl.backends.trtllm_pin import CONTAINER, VERSION, TrtllmVersionError
from pearl.decoding import draft_round, draft_state, target_round, target_state

try:  # per-sequence windows (pearl.speculation): states start with theirs; without it, gamma is the window
    from pearl.decoding import set_window
except ImportError:
    set_window = None
from pearl.ranks.config import WorldConfig
from pearl.ranks.roles import WorldLayout
from pearl.params import GenerationRequest, Mode, SamplingParams
from pearl.sequence import Sequence
from trtllm_contract.standin import Standin, ToyModel

VOCAB, PADDED = 50, 64


def engine_folder(root: Path, name: str, max_seq_len: int = 64, max_input_len: int = 63, max_draft_len: int = 0,
                  shards: int = 1, devices: tuple[int, ...] = (0,)) -> Path:
    """What trtllm-build and make engines leave, as far as the backend reads it."""
    folder = root / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "version": VERSION, "pretrained_config": {"vocab_size": VOCAB, "mapping": {"world_size": shards}},
        "build_config": {"max_seq_len": max_seq_len, "max_input_len": max_input_len, "max_draft_len": max_draft_len}}))
    for shard in range(shards):
        (folder / f"rank{shard}.engine").write_bytes(b"")
    (folder / "engine.json").write_text(json.dumps({"devices": [str(d) for d in devices]}))
    return folder


class Pair:
    """A draft and a target engine folder with their toy models, and the installed stand-in."""

    def __init__(self, root: Path, monkeypatch, version: str = VERSION, target_seq_len: int = 64) -> None:
        self.draft_dir = engine_folder(root, "draft")
        self.target_dir = engine_folder(root, "target", max_seq_len=target_seq_len, max_input_len=target_seq_len - 1,
                                        max_draft_len=4, devices=(1,))
        self.target_model = ToyModel(VOCAB, PADDED, seed=0)
        self.draft_model = ToyModel(VOCAB, PADDED, seed=1, like=self.target_model, noise=3.0)
        self.rank = 0
        models = {str(self.draft_dir): self.draft_model, str(self.target_dir): self.target_model}
        self.standin = Standin(models, lambda: self.rank, version).install(monkeypatch)
        monkeypatch.setattr("pearl.backends.trtllm_backend.world_rank", lambda: self.rank)

    def backends(self) -> tuple[TrtllmBackend, TrtllmBackend]:
        return (TrtllmBackend(ModelSpec(str(self.draft_dir), "cuda:0", "float16", backend="tensorrt_llm"), [0]),
                TrtllmBackend(ModelSpec(str(self.target_dir), "cuda:1", "float16", backend="tensorrt_llm"), [0]))

    def requests(self) -> list:
        return self.standin.requests


@pytest.fixture
def pair(tmp_path, monkeypatch) -> Pair:
    return Pair(tmp_path, monkeypatch)


def test_the_standin_refuses_what_the_pinned_release_does_not_declare(pair):
    trt = pair.standin.module
    with pytest.raises(TypeError, match="max_new_tokens"):
        trt.Request(input_token_ids=[1], max_new_tokens=3)  # the name before 0.13
    with pytest.raises(TypeError, match="positional"):
        trt.Request([1], 1, False)  # streaming is keyword-only
    with pytest.raises(TypeError, match="gather_context_logits"):
        trt.ExecutorConfig(gather_context_logits=True)  # a trtllm-build flag, not an executor setting
    with pytest.raises(TypeError, match="missing"):
        trt.ExternalDraftTokensConfig()
    with pytest.raises(AttributeError, match="OrchestratorMode"):
        trt.OrchestratorMode
    with pytest.raises(AttributeError, match="draft_tokens"):
        trt.Result().draft_tokens
    assert trt.Request([1, 2], 3, streaming=False).max_tokens == 3


def test_a_release_other_than_the_pin_is_refused_naming_the_pin(tmp_path, monkeypatch):
    pair = Pair(tmp_path, monkeypatch, version="0.21.0")
    with pytest.raises(TrtllmVersionError) as caught:
        pair.backends()
    assert f"pinned to TensorRT-LLM {VERSION}" in str(caught.value) and CONTAINER in str(caught.value)
    assert not pair.standin.constructed("Executor")


def test_every_rank_constructs_its_executor_in_leader_mode_with_block_reuse_and_generation_logits(pair):
    pair.backends()
    for executor in pair.standin.constructed("Executor"):
        config = executor["executor_config"]
        assert config.gather_generation_logits is True and config.max_beam_width == 1
        assert config.kv_cache_config.enable_block_reuse is True
        parallel = config.parallel_config
        assert parallel.communication_mode is pair.standin.module.CommunicationMode.LEADER
        assert parallel.participant_ids == [0]
    assert [e["executor_config"].parallel_config.device_ids for e in pair.standin.constructed("Executor")] == [[0], [1]]


def test_a_pearl_round_prefill_draft_window_verify_window_rollback_release(pair):
    draft, target = pair.backends()
    prompt = [3, 14, 15, 9, 2]
    seq_t, seq_d = Sequence(1, prompt), Sequence(1, prompt)

    # prefill: the last prompt token goes as an external draft token, one generation-logits row comes back
    (row,) = target.forward([seq_t], [1])
    request = pair.requests()[-1]
    assert request.input_token_ids == prompt[:-1] and request.external_draft_tokens_config.tokens == prompt[-1:]
    assert request.max_tokens == 1 and request.output_config.return_generation_logits
    assert row.shape == (1, VOCAB) and torch.equal(row[0], pair.target_model.logits(prompt)[:VOCAB])
    assert seq_t.num_cached == target.cache_length(seq_t) == len(prompt)

    # draft window: ONE request for the whole window, greedy, never stopped by an end token
    tokens, rows = draft.draft_windows([seq_d], [4], [SamplingParams()], [7])[0]
    request = pair.requests()[-1]
    assert request.max_tokens == 4 and request.end_id == -1 and request.input_token_ids == prompt
    assert request.sampling_config.top_k == 1 and not request.output_config.return_generation_logits
    assert tokens == pair.draft_model.greedy(prompt, 4) and rows is None and seq_d.tokens == prompt + tokens

    # verify window: 4 rows, the distributions after each of the last 4 tokens
    seq_t.tokens.extend(tokens)
    rows = target.forward([seq_t], [4])[0]
    request = pair.requests()[-1]
    assert request.input_token_ids + request.external_draft_tokens_config.tokens == seq_t.tokens
    assert len(request.external_draft_tokens_config.tokens) == 3
    expected = torch.stack([pair.target_model.logits(seq_t.tokens[:len(prompt) + j + 1])[:VOCAB] for j in range(4)])
    assert torch.equal(rows, expected)

    # rollback: bookkeeping only; the next request resubmits the kept prefix
    target.truncate(seq_t, len(prompt) + 2)
    del seq_t.tokens[len(prompt) + 2:]
    assert target.cache_length(seq_t) == seq_t.num_cached == len(prompt) + 2
    seq_t.tokens.append(11)
    target.forward([seq_t], [1])
    assert pair.requests()[-1].input_token_ids + [11] == seq_t.tokens[:-1] + [11]

    target.release(seq_t)
    draft.release(seq_d)
    assert target.cache_length(seq_t) == 0 and seq_t.num_cached == 0
    assert not pair.standin.silent_cuts


def run_request(draft, target, request: GenerationRequest) -> tuple[list[int], int]:
    """The ranks' rounds in one process (decoding code only, no MPI): tokens out, rounds run."""
    if set_window is None:
        d, t = draft_state(request, draft, VOCAB), target_state(request, target, VOCAB)
    else:
        d, t = draft_state(request, draft, VOCAB, request.gamma), target_state(request, target, VOCAB)
        set_window(t, request.gamma)
    rounds = 0
    while not t.finished:
        drafts = draft_round([d])
        target_round([t], lambda: drafts)
        rounds += 1
        if not t.finished:
            d.apply(t.verdict)
    d.release()
    t.release()
    return t.tracker.output, rounds


@pytest.mark.parametrize("mode", [Mode.PEARL, Mode.SD])
def test_greedy_decoding_over_the_backends_is_the_target_alone_with_one_draft_request_per_round(pair, mode):
    draft, target = pair.backends()
    prompt = [5, 1, 33]
    request = GenerationRequest(1, tuple(prompt), SamplingParams(max_tokens=24), mode=mode, gamma=3)
    output, rounds = run_request(draft, target, request)
    assert output == pair.target_model.greedy(prompt, 24)
    window_requests = [r for r in pair.requests() if r.end_id == -1]
    assert len(window_requests) == rounds  # one window per round, however long
    assert any(r.max_tokens > 1 for r in window_requests)
    assert not pair.standin.silent_cuts


def test_a_sequence_runs_cleanly_to_the_engines_length_limit(tmp_path, monkeypatch):
    pair = Pair(tmp_path, monkeypatch, target_seq_len=40)
    draft, target = pair.backends()
    assert target.max_seq_len == 39 and draft.max_seq_len == 63  # min(max_input_len, max_seq_len - 1)
    prompt = [4, 8, 15, 16, 23]
    max_tokens = target.max_seq_len - len(prompt) - 1  # the longest request our check_fits allows
    request = GenerationRequest(1, tuple(prompt), SamplingParams(max_tokens=max_tokens), gamma=4)
    output, _ = run_request(draft, target, request)
    assert output == pair.target_model.greedy(prompt, max_tokens)
    assert not pair.standin.silent_cuts  # LlmRequest::validate never cut a draft or an output


def test_what_the_engine_would_cut_is_refused_or_capped_never_sent(pair):
    draft, target = pair.backends()
    too_long = Sequence(1, list(range(1, 64)) + [1])  # 64 tokens: prompt + drafts past max_input_len 63
    with pytest.raises(ValueError, match="would cut it silently"):
        target.forward([too_long], [1])
    near_end = Sequence(2, [1] * 62)
    tokens, _ = draft.draft_windows([near_end], [4], [SamplingParams()], [0])[0]
    assert len(tokens) == 2 and pair.requests()[-1].max_tokens == 2  # 62 + 2 = the draft's max_seq_len
    with pytest.raises(ValueError, match="max_draft_len=4"):
        target.forward([Sequence(3, [1] * 10)], [6])
    assert not pair.standin.silent_cuts


def test_sampled_windows_carry_their_logits_and_a_seed_keyed_by_their_first_position(pair):
    draft, target = pair.backends()
    params = SamplingParams(temperature=0.8, top_k=20, seed=3, max_tokens=16)
    output, rounds = run_request(draft, target, GenerationRequest(1, (2, 9), params, gamma=3))
    assert len(output) == 16
    windows = [r for r in pair.requests() if r.end_id == -1]
    assert all(r.output_config.return_generation_logits and r.sampling_config.temperature == 0.8
               and r.sampling_config.top_k == 20 for r in windows)
    assert len(windows) == rounds
    # position-keyed draws (pearl.sampling): a window redrafted at a position gets that position's seed again,
    # so a request resumed as prompt + output continues with the same draws; other positions get fresh ones
    for first, second in itertools.combinations(windows, 2):
        same_start = len(first.input_token_ids) == len(second.input_token_ids)
        assert (first.sampling_config.seed == second.sampling_config.seed) == same_start


def test_a_tensor_parallel_target_gets_its_ranks_and_only_its_leader_enqueues(tmp_path, monkeypatch):
    pair = Pair(tmp_path, monkeypatch)
    target_dir = engine_folder(tmp_path, "target70b", shards=4, devices=(1, 2, 3, 4), max_draft_len=4)
    pair.standin.models[str(target_dir)] = pair.target_model
    layout, world_offset = WorldLayout(draft_ranks=1, target_ranks=4), 1  # under mpiexec: the driver is rank 0
    spec = ModelSpec(str(target_dir), "cuda:1", "bfloat16", backend="tensorrt_llm", tensor_parallel=4)
    backends = {}
    for worker in layout.ranks_of("target"):
        pair.rank = worker + world_offset
        backends[worker] = load_backend(spec, layout.role(worker).participant_ids(world_offset))
    executors = pair.standin.constructed("Executor")
    assert len(executors) == 4  # every rank of the model constructs it
    for executor in executors:
        parallel = executor["executor_config"].parallel_config
        assert parallel.participant_ids == [2, 3, 4, 5] and parallel.device_ids == [1, 2, 3, 4]
        assert parallel.communication_mode is pair.standin.module.CommunicationMode.LEADER
    assert [worker for worker, backend in backends.items() if backend.is_leader] == [1]
    for worker in (2, 3, 4):
        with pytest.raises(RuntimeError, match="only the model's leader"):
            backends[worker].forward([Sequence(1, [1, 2])], [1])
        backends[worker].follow()
    assert pair.standin.calls.count(("Executor.shutdown", {})) == 3
    pair.rank = 2
    assert backends[1].forward([Sequence(1, [1, 2])], [1])[0].shape == (1, VOCAB)
    with pytest.raises(RuntimeError, match="only a follower"):
        backends[1].follow()
    with pytest.raises(ValueError, match="built for 4 ranks"):
        TrtllmBackend(spec, [2, 3, 4])


class FakeDriver:
    """The driver end of a follower's intercommunicator: CONFIG, then OP_SHUTDOWN; records what it is sent."""

    def __init__(self, config: WorldConfig) -> None:
        from pearl.ranks.protocol import CONFIG, CONTROL, OP_SHUTDOWN, text_message
        self.inbox = {CONFIG: [text_message(config.to_json())], CONTROL: [np.array([OP_SHUTDOWN])]}
        self.sent: list[tuple[int, np.ndarray]] = []

    def recv_from(self, source: int, tag: int, timeout=None) -> np.ndarray:
        return self.inbox[tag].pop(0)

    def send(self, array, dest: int, tag: int) -> None:
        self.sent.append((tag, np.asarray(array)))


def test_a_follower_worker_loads_its_shard_reports_ready_and_waits_for_its_leader(tmp_path, monkeypatch):
    from pearl.ranks.protocol import CONTROL, READY
    from pearl.ranks.worker import Worker

    pair = Pair(tmp_path, monkeypatch)
    target_dir = engine_folder(tmp_path, "target70b", shards=4, devices=(1, 2, 3, 4), max_draft_len=4)
    pair.standin.models[str(target_dir)] = pair.target_model
    config = WorldConfig(draft=ModelSpec(str(pair.draft_dir), backend="tensorrt_llm"),
                         target=ModelSpec(str(target_dir), backend="tensorrt_llm", tensor_parallel=4))
    driver = FakeDriver(config)
    pair.rank = 4  # worker 3 under mpiexec
    worker = Worker(driver, peers=None, rank=3, world_offset=1)
    assert (worker.role.model, worker.role.is_leader) == ("target", False)
    assert worker.load() and [tag for tag, _ in driver.sent] == [READY]
    worker.serve()  # follows: shutdown returns once the leader is done, then OP_SHUTDOWN from the driver
    assert ("Executor.shutdown", {}) in pair.standin.calls and not pair.requests()
    assert not driver.inbox[CONTROL]  # the driver's OP_SHUTDOWN was taken
