"""Greedy PEARL and SD output is token-identical to the target alone (AR), in this process and over MPI."""
from dataclasses import replace

import pytest

from conftest import WORLDS
from pearl.params import SamplingParams
from pearl.speculation import CostRow, SpeculationCosts, catch_up_pays


@pytest.fixture(scope="module", params=WORLDS)
def world(request) -> str:
    """These checks run in both worlds: in this process (fast lane) and over MPI."""
    return request.param


PROMPTS = [[1, 2, 3], [5, 9, 11, 3, 4], [42]]
GAMMAS = [1, 2, 3, 5]
MAX_TOKENS = [1, 7, 40]


def assert_lossless(llm, prompts=PROMPTS, gammas=GAMMAS, max_tokens=MAX_TOKENS):
    """Check every combination; return the speculative runs' stats for further checks."""
    runs = []
    for prompt in prompts:
        for n in max_tokens:
            params = SamplingParams(max_tokens=n)
            ref = llm.generate(prompt, params, mode="ar").collect()
            assert len(ref.token_ids) == n or ref.finish_reason == "stop"
            for mode in ("sd", "pearl"):
                for gamma in gammas:
                    out = llm.generate(prompt, params, mode=mode, gamma=gamma).collect()
                    assert out.token_ids == ref.token_ids, (mode, gamma, prompt, n)
                    assert out.finish_reason == ref.finish_reason
                    assert out.stats.generated_tokens == len(ref.token_ids)
                    assert_acceptance_counts(out.stats, prompt, gamma if mode == "sd" else gamma + 1)
                    runs.append(out.stats)
    return runs


def assert_acceptance_counts(stats, prompt, longest_window) -> None:
    """vLLM's per-request figures agree with ours: one histogram entry per verification, its j-weighted sum
    the accepted tokens; what was checked was drafted; no window is longer than a round can check (SD: gamma,
    PEARL: the pending window and the next one's first token)."""
    histogram = stats.acceptance_histogram
    assert stats.prompt_tokens == len(prompt)
    assert sum(histogram) == stats.drafted_rounds and 1 <= len(histogram) <= longest_window + 1
    assert sum(j * count for j, count in enumerate(histogram)) == stats.accepted_draft_tokens
    assert stats.accepted_draft_tokens <= stats.checked_draft_tokens <= stats.draft_tokens
    assert stats.accepted_per_position == tuple(sum(histogram[i + 1:]) for i in range(len(histogram) - 1))
    assert stats.mean_acceptance_length == pytest.approx(1 + stats.accepted_draft_tokens / stats.drafted_rounds)


# the fast lane: close_draft alone (its rounds reject too); random_draft in make test
@pytest.mark.parametrize("draft", ["close_draft", pytest.param("random_draft", marks=pytest.mark.slow)])
def test_llama_pair(llm_factory, tiny, draft):
    runs = assert_lossless(llm_factory(tiny[draft], tiny["target"]))
    rates = [s.acceptance_rate for s in runs if s.draft_tokens]
    assert min(rates) < 0.5  # rejections happen, so rollback paths are exercised
    if draft == "close_draft":
        assert max(rates) > 0.5  # and long accepted runs too


def test_qwen2_pair(llm_factory, tiny):
    assert_lossless(llm_factory(tiny["qwen_draft"], tiny["qwen_target"]), gammas=[2, 4])


def test_draft_identical_to_target_accepts_everything(llm_factory, tiny):
    llm = llm_factory(tiny["target"], tiny["target"])
    runs = assert_lossless(llm, max_tokens=[40])
    for stats in runs:
        assert stats.accepted_runs <= 1  # no rejection at all: one run from start to end
        assert stats.accepted_draft_tokens >= stats.generated_tokens - stats.rounds
    pearl = llm.generate([1, 2, 3], SamplingParams(max_tokens=40), mode="pearl", gamma=4).collect()
    assert pearl.stats.tokens_per_target_forward > 3  # post-verify keeps the window growing


def test_stop_sequences_and_eos_agree_across_modes(llm_factory, tiny):
    llm = llm_factory(tiny["close_draft"], tiny["target"])
    free = llm.generate([5, 9], SamplingParams(max_tokens=30, ignore_eos=True), mode="ar").collect()
    stop = tuple(free.token_ids[10:12])
    params = SamplingParams(max_tokens=30, stop_token_ids=(stop,), ignore_eos=True)
    outputs = {m: llm.generate([5, 9], params, mode=m, gamma=3).collect() for m in ("ar", "sd", "pearl")}
    first = next(i for i in range(len(free.token_ids)) if tuple(free.token_ids[i:i + 2]) == stop)
    for out in outputs.values():
        assert out.token_ids == free.token_ids[:first + 2] and out.finish_reason == "stop"


# Costs under which drafting pays only above ~0.65 acceptance: weak drafts stop and start again.
SWITCHING_COSTS = SpeculationCosts({1: CostRow(draft_step_s=0.01, verify_s=(0.1,) * 6, alone_step_s=0.06)}, 0.8)


@pytest.mark.parametrize("draft", ["close_draft", "random_draft"])
def test_adaptive_windows_stay_lossless_as_drafting_stops_and_starts(llm_factory, tiny, draft):
    """gamma "auto": each round's window from the sequence's acceptance; when the target alone is faster
    the sequence stops drafting (both ranks drop its pending draft tokens), and probes again later. Greedy
    output stays the target's own throughout."""
    llm = llm_factory(tiny[draft], tiny["target"], costs=SWITCHING_COSTS)
    runs = []
    for prompt in PROMPTS:
        params = SamplingParams(max_tokens=60, ignore_eos=True)
        ref = llm.generate(prompt, params, mode="ar").collect()
        for mode in ("pearl", "sd"):
            out = llm.generate(prompt, params, mode=mode, gamma="auto").collect()
            assert out.token_ids == ref.token_ids, (mode, prompt)
            assert out.stats.gamma is None and 0 < out.stats.mean_gamma <= 6
            runs.append(out.stats)
    assert any(0 < s.drafted_rounds < s.rounds for s in runs)  # drafting stopped and started within requests
    # sampled: its windows follow measured speed too, so a seed repeats a sample only with a fixed gamma
    sampled = SamplingParams(temperature=0.9, max_tokens=60, seed=3, ignore_eos=True)
    out = llm.generate([5, 9], sampled, mode="pearl", gamma="auto").collect()
    assert len(out.token_ids) == 60 and out.stats.generated_tokens == 60


def test_adaptive_windows_grow_with_a_draft_that_is_always_right(llm_factory, tiny):
    llm = llm_factory(tiny["target"], tiny["target"], costs=SWITCHING_COSTS)
    out = llm.generate([1, 2, 3], SamplingParams(max_tokens=60, ignore_eos=True), mode="pearl").collect()
    # every round drafted but the prompt's (the target decodes faster alone under these costs: it runs alone)
    assert out.stats.drafted_rounds == out.stats.rounds - 1 and out.stats.mean_gamma > 4
    assert out.stats.tokens_per_target_forward > 4


# A split CPU whose draft feeds faster on both cores (an SD round's): an adaptive request opens with an SD round
SD_OPENING_COSTS = SpeculationCosts({1: CostRow(draft_step_s=0.01, verify_s=(0.1,) * 6, alone_step_s=0.06,
                                                draft_feed_s=0.004, sd_draft_feed_s=0.002)}, 0.8)


@pytest.mark.parametrize("draft", ["target", "random_draft"])
def test_the_prompts_forward_verifies_the_opening_window(llm_factory, tiny, draft):
    """Where the models take turns on a split CPU, the draft feeds the prompt and drafts a window first, and the
    target's prefill checks that window: with a draft that is always right every round drafts, the prompt's
    included; with one that is mostly wrong the output stays the target's own too."""
    llm = llm_factory(tiny[draft], tiny["target"], costs=SD_OPENING_COSTS)
    params = SamplingParams(max_tokens=40, ignore_eos=True)
    # every adaptive request before the first `ar` one: the target's steps alone, calibrated against these
    # costs, would make drafting look unpaid
    outs = [llm.generate(prompt, params, mode="pearl").collect() for prompt in PROMPTS]
    for prompt, out in zip(PROMPTS, outs):
        assert out.token_ids == llm.generate(prompt, params, mode="ar").collect().token_ids, prompt
        assert out.stats.sd_rounds >= 1  # the opening
        if draft == "target":
            assert out.stats.drafted_rounds == out.stats.rounds == out.stats.target_forwards
            assert out.stats.accepted_draft_tokens == out.stats.checked_draft_tokens > 0


def test_a_catch_up_that_cannot_be_won_back_is_not_started(llm_factory, tiny):
    """The target rank tells each policy how many tokens are left to generate and how many the draft has not
    fed: where the draft feeds a token in a sixth of a target step, a 40-token prompt asking for 4 tokens
    decodes alone throughout; asking for 60, it drafts (and stays the target's own output)."""
    row = replace(SWITCHING_COSTS.at(1), draft_feed_s=0.01)
    assert not catch_up_pays(("pearl", "sd"), 0.8, row, 6, remaining=3, missed=41)
    assert catch_up_pays(("pearl", "sd"), 0.8, row, 6, remaining=59, missed=41)
    llm = llm_factory(tiny["target"], tiny["target"], costs=SpeculationCosts({1: row}, 0.8))
    prompt = list(range(1, 41))
    for max_tokens, drafts in ((4, False), (60, True)):
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
        out = llm.generate(prompt, params, mode="pearl").collect()
        assert (out.stats.drafted_rounds > 0) is drafts, max_tokens
        assert out.token_ids == llm.generate(prompt, params, mode="ar").collect().token_ids


def test_every_mode_matches_the_reference_decoders(llm_factory, tiny):
    """The LLM against the oracle of tests/reference_decoding.py (plain transformers, no cache, no ranks):
    ar is the target's own greedy decode, sd accepts what the reference accepts, and sd, PEARL and adaptive
    windows give the same tokens."""
    from transformers import AutoModelForCausalLM

    from reference_decoding import greedy, speculative_decode

    draft, target = (AutoModelForCausalLM.from_pretrained(tiny[name]).eval() for name in ("close_draft", "target"))
    llm = llm_factory(tiny["close_draft"], tiny["target"])
    for prompt, n in (([1, 2, 3], 24), ([42], 9)):
        expected = greedy(target, prompt, n)
        reference, accepted = speculative_decode(draft, target, prompt, gamma=3, max_tokens=n)
        assert reference == expected  # the oracle agrees with itself
        params = SamplingParams(max_tokens=n, ignore_eos=True)
        for mode, gamma in (("ar", 1), ("sd", 3), ("pearl", 3), ("pearl", "auto")):
            out = llm.generate(prompt, params, mode=mode, gamma=gamma).collect()
            assert out.token_ids == expected, mode
            if mode == "sd":  # the same proposals and verdicts, round by round
                assert out.stats.accepted_draft_tokens == accepted
