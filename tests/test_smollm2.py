"""Real weights: SmolLM2-135M-Instruct as target, its first layers as a weak but real draft."""
import pytest

from conftest import SMOLLM2_DRAFT_LAYERS
from pearl.params import SamplingParams

PROMPTS = ["def quicksort(arr):", "The three primary colors are"]


@pytest.fixture(scope="module")
def llm(llm_factory, smollm2):
    return llm_factory(smollm2, smollm2, draft_layers=SMOLLM2_DRAFT_LAYERS)


def test_greedy_pearl_and_sd_match_ar(llm):
    runs = []
    for text in PROMPTS:
        prompt = llm.tokenizer(text).input_ids
        params = SamplingParams(max_tokens=32)
        ref = llm.generate(prompt, params, mode="ar").collect()
        for mode, gamma in (("sd", 3), ("pearl", 2), ("pearl", 4)):
            out = llm.generate(prompt, params, mode=mode, gamma=gamma).collect()
            assert out.token_ids == ref.token_ids, (text, mode, gamma)
            runs.append(out.stats)
    # A real but weak draft: some of its tokens are accepted, most are rejected (rollbacks happen).
    accepted = sum(s.accepted_draft_tokens for s in runs)
    assert 0 < accepted < sum(s.draft_tokens for s in runs)


def test_sampling_runs_and_is_reproducible(llm):
    prompt = llm.tokenizer(PROMPTS[0]).input_ids
    params = SamplingParams(temperature=0.8, top_p=0.95, top_k=50, max_tokens=16, seed=5)
    a, b = (llm.generate(prompt, params, mode="pearl", gamma=3).collect() for _ in range(2))
    assert a.token_ids == b.token_ids and len(a.token_ids) == 16
