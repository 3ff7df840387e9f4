"""An adaptive PEARL request switching between PEARL and SD rounds (pearl.speculation's round kinds) stays
lossless: an SD round checks the tokens a PEARL round left pending along with its new window, greedy output is
the target's own and sampled output has the target's distribution.

The rounds are scripted by replacing the policy's choice, so these run in this process's world (the target
rank's thread sees the replacement) only; the choice itself is tested in test_speculation.py.
"""
import itertools

import numpy as np
import pytest
import torch

from pearl.params import SamplingParams
from pearl.ranks import draft_rank
from pearl.decoding.sd import SdStep
from pearl.speculation import WindowPolicy
from test_lossless import PROMPTS, SWITCHING_COSTS
from test_sampling_distribution import NUM_SAMPLES, POSITIONS, PROMPT, assert_matches, exact_marginals

# (kind, window) round after round: PEARL windows left pending, then checked by SD rounds, and back
SCRIPT = [("pearl", 3), ("sd", 2), ("pearl", 2), ("pearl", 4), ("sd", 1), ("sd", 3), ("pearl", 1), ("sd", 4)]


@pytest.fixture(scope="module")
def world() -> str:
    return "local"


@pytest.fixture
def scripted_rounds(monkeypatch) -> list[int]:
    """Every adaptive request's policy follows SCRIPT from its first round, cyclically. Returns, growing as
    SD rounds run, how many tokens each SD round checked that an earlier (PEARL) round had left pending."""
    scripts: dict[int, itertools.cycle] = {}
    left_pending: list[int] = []

    def next_window(policy: WindowPolicy, row, *costs) -> int:
        policy.kind, policy.window = next(scripts.setdefault(id(policy), itertools.cycle(SCRIPT)))
        return policy.window

    def decide(step, state, logits):
        left_pending.append(len(state.seq.pending) - len(state.draft.tokens))
        return sd_decide(step, state, logits)

    sd_decide = SdStep.decide
    monkeypatch.setattr(WindowPolicy, "next_window", next_window)
    monkeypatch.setattr(SdStep, "decide", decide)
    return left_pending


@pytest.mark.parametrize("draft", ["close_draft", "random_draft"])
def test_switching_kinds_keeps_greedy_output_the_targets(llm_factory, tiny, scripted_rounds, draft):
    llm = llm_factory(tiny[draft], tiny["target"], costs=SWITCHING_COSTS)
    for prompt in PROMPTS:
        params = SamplingParams(max_tokens=40, ignore_eos=True)
        ref = llm.generate(prompt, params, mode="ar").collect()
        out = llm.generate(prompt, params, mode="pearl", gamma="auto").collect()
        assert out.token_ids == ref.token_ids, prompt
        stats = out.stats
        assert 0 < stats.sd_rounds < stats.drafted_rounds == stats.rounds
        assert stats.accepted_draft_tokens <= stats.checked_draft_tokens <= stats.draft_tokens
    if draft == "close_draft":
        assert max(scripted_rounds) > 0  # SD rounds checked PEARL's pending tokens


def test_switching_kinds_samples_the_targets_distribution(llm_factory, tiny, scripted_rounds):
    llm = llm_factory(tiny["small_draft"], tiny["small_target"], costs=SWITCHING_COSTS)
    counts = np.zeros((POSITIONS, llm.vocab_size))
    for seed in range(NUM_SAMPLES):
        params = SamplingParams(temperature=1.0, max_tokens=POSITIONS + 3, seed=seed, ignore_eos=True)
        out = llm.generate(PROMPT, params, mode="pearl", gamma="auto").collect()
        assert out.stats.sd_rounds > 0
        for k in range(POSITIONS):
            counts[k, out.token_ids[k]] += 1
    # the draft's rows of pending tokens were used by SD rounds (a PEARL pre-verify accepted, then SD)
    assert sum(n > 0 for n in scripted_rounds) > NUM_SAMPLES // 10
    for k, expected in enumerate(exact_marginals(tiny["small_target"], SamplingParams(temperature=1.0))):
        assert_matches(counts[k], expected)


def test_the_draft_drafts_sd_rounds_on_every_core(llm_factory, tiny, scripted_rounds, monkeypatch):
    """An SD round's target waits for the window: the PLAN lends the draft the pair's cores for it
    (target_alone_threads), a PEARL round's draft keeps its own (the target verifies beside it)."""
    drafted_on = []  # the draft's torch threads as it drafted each round

    def drafting(states, *args):
        drafted_on.append(torch.get_num_threads())
        return draft_round(states, *args)

    draft_round = draft_rank.draft_round
    monkeypatch.setattr(draft_rank, "draft_round", drafting)
    llm = llm_factory(tiny["close_draft"], tiny["target"], costs=SWITCHING_COSTS, target_alone_threads=2)
    params = SamplingParams(max_tokens=40, ignore_eos=True)
    out = llm.generate(PROMPTS[0], params, mode="pearl", gamma="auto").collect()
    assert out.token_ids == llm.generate(PROMPTS[0], params, mode="ar").collect().token_ids
    assert drafted_on[:len(SCRIPT)] == [2 if kind == "sd" else 1 for kind, _ in SCRIPT]
