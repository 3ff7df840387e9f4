"""The draft's round (pearl.decoding.draft): an adaptive request's window ends after the first token the draft
was unsure of, a fixed gamma is drafted whole; greedy output stays the target's and sampled output keeps the
target's distribution."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import WORLDS
from pearl.backends.base import ModelSpec
from pearl.backends.torch_backend import TorchBackend
from pearl.decoding import draft_round, draft_state
from pearl.params import GenerationRequest, Mode, SamplingParams
from pearl.sampling import top_probability
from pearl.speculation import CostRow, SpeculationCosts, WindowPolicy
from test_lossless import PROMPTS
from test_sampling_distribution import NUM_SAMPLES, POSITIONS, PROMPT, assert_matches, exact_marginals

WINDOW = 4
# a draft step nearly free beside a flat verify: every round drafts, whatever the acceptance
DRAFTING_PAYS = SpeculationCosts({1: CostRow(draft_step_s=0.001, verify_s=(0.1,) * 6, alone_step_s=0.1)}, 0.8)


@pytest.fixture(scope="module", params=WORLDS)
def world(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def backend(tiny):
    return TorchBackend.load(ModelSpec(str(tiny["close_draft"])))


def drafted(backend, gamma: int | None, stop_below: float, request_id: int) -> list[int]:
    request = GenerationRequest(request_id, tuple(PROMPTS[0]), SamplingParams(), Mode.PEARL, gamma)
    state = draft_state(request, backend, backend.vocab_size, WINDOW)
    tokens = draft_round([state], stop_below)[request_id].tokens
    state.release()
    return tokens


def test_an_adaptive_window_ends_after_the_first_token_the_draft_was_unsure_of(backend):
    whole = drafted(backend, None, 0.0, 1)
    assert len(whole) == WINDOW
    with torch.inference_mode():  # the draft's top probability at each position of its window
        logits = backend.model(torch.tensor([PROMPTS[0] + whole[:-1]])).logits[0, -WINDOW:].float()
    sure = [top_probability(row, None) for row in logits]
    for stop_below in sorted({*sure, 1.0}):  # at each of them (a token at it is sure enough), and above all
        unsure = [i for i, p in enumerate(sure) if p < stop_below]
        expected = whole[:unsure[0] + 1] if unsure else whole
        assert drafted(backend, None, stop_below, 2) == expected, (stop_below, sure)
    assert drafted(backend, WINDOW, 1.0, 3) == whole  # a fixed gamma wins: drafted whole


@pytest.fixture(scope="module")
def llm(llm_factory, tiny):
    """Every adaptive window stops after its first token whose top probability is under 0.999: each token
    unsure, each window of the tiny drafts is one token."""
    return llm_factory(tiny["small_draft"], tiny["small_target"], costs=DRAFTING_PAYS, draft_stop_confidence=0.999)


def test_windows_stopped_early_keep_greedy_output_the_targets(llm_factory, tiny):
    llm = llm_factory(tiny["close_draft"], tiny["target"], costs=DRAFTING_PAYS, draft_stop_confidence=0.999)
    params = SamplingParams(max_tokens=40, ignore_eos=True)
    for prompt in PROMPTS:
        for mode in ("pearl", "sd"):
            out = llm.generate(prompt, params, mode=mode, gamma="auto").collect()
            assert out.token_ids == llm.generate(prompt, params, mode="ar").collect().token_ids, (prompt, mode)
            assert out.stats.drafted_rounds and out.stats.draft_tokens == out.stats.drafted_rounds
        fixed = llm.generate(prompt, params, mode="sd", gamma=3).collect()
        assert fixed.stats.draft_tokens > fixed.stats.drafted_rounds  # whole windows of 3


def test_windows_stopped_early_sample_the_targets_distribution(llm, tiny):
    counts = np.zeros((POSITIONS, llm.vocab_size))
    for seed in range(NUM_SAMPLES):
        params = SamplingParams(temperature=1.0, max_tokens=POSITIONS + 1, seed=seed, ignore_eos=True)
        out = llm.generate(PROMPT, params, mode="pearl", gamma="auto").collect()
        assert out.stats.draft_tokens == out.stats.drafted_rounds
        for k in range(POSITIONS):
            counts[k, out.token_ids[k]] += 1
    for k, expected in enumerate(exact_marginals(tiny["small_target"], SamplingParams(temperature=1.0))):
        assert_matches(counts[k], expected)


def test_the_target_tells_each_policy_where_its_windows_stopped(llm_factory, tiny, world, monkeypatch):
    """A window shorter than its policy asked (and than the request's end allows) is the draft's stop; the
    policy prices PEARL windows at the length the draft drafts (test_speculation). Each window here stops after
    its first token."""
    if world != "local":
        pytest.skip("the policy is looked at in the target rank's thread: the in-process world only")
    seen: list[tuple[WindowPolicy, int, int]] = []
    observe_window = WindowPolicy.observe_window

    def recording(policy, drafted, planned):
        seen.append((policy, drafted, planned))
        observe_window(policy, drafted, planned)

    monkeypatch.setattr(WindowPolicy, "observe_window", recording)
    llm = llm_factory(tiny["close_draft"], tiny["target"], costs=DRAFTING_PAYS, draft_stop_confidence=0.999)
    llm.generate(PROMPTS[0], SamplingParams(max_tokens=40, ignore_eos=True), mode="pearl").collect()
    assert seen and all(drafted == 1 for _, drafted, _ in seen)
    assert any(planned > 1 for _, _, planned in seen)  # stopped, not cut at the request's end
    assert seen[-1][0].stops.rate > 0.5
