"""At temperature > 0, PEARL and SD sample exactly the target's distribution (chi-square over seeds)."""
import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from transformers import AutoModelForCausalLM

from conftest import WORLDS
from pearl.params import SamplingParams
from pearl.sampling import probabilities


@pytest.fixture(scope="module", params=WORLDS)
def world(request) -> str:
    """These checks run in both worlds: in this process (fast lane) and over MPI."""
    return request.param


PROMPT = [3, 1, 4]
NUM_SAMPLES = 400
POSITIONS = 2  # check the marginals of the first two output tokens


def exact_marginals(model_path, params: SamplingParams) -> list[np.ndarray]:
    """P(token at output position k) under the target's own sampling, by enumerating the earlier tokens."""
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    vocab = model.config.vocab_size
    with torch.no_grad():
        first = probabilities(model(torch.tensor([PROMPT])).logits[:, -1], params)[0]
        batch = torch.tensor([PROMPT + [t] for t in range(vocab)])
        second = probabilities(model(batch).logits[:, -1], params)
    return [first.numpy(), (first[:, None] * second).sum(0).numpy()]


def assert_matches(observed: np.ndarray, expected: np.ndarray) -> None:
    expected = expected.astype(np.float64) / expected.sum() * observed.sum()
    keep = expected >= 5  # merge rare tokens into one bin so the chi-square approximation holds
    obs = np.append(observed[keep], observed[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    if exp[-1] == 0:
        assert obs[-1] == 0
        obs, exp = obs[:-1], exp[:-1]
    exp = exp * obs.sum() / exp.sum()  # exact totals, as chisquare demands
    assert chisquare(obs, exp).pvalue > 1e-3, (obs, exp)


@pytest.fixture(scope="module")
def llm(llm_factory, tiny):
    return llm_factory(tiny["small_draft"], tiny["small_target"])


@pytest.mark.parametrize("mode", ["pearl", pytest.param("sd", marks=pytest.mark.slow)])  # sd: make test
@pytest.mark.parametrize("filters", [
    pytest.param(dict(temperature=1.0), id="t1"),
    pytest.param(dict(temperature=1.0, top_k=4), id="topk4", marks=pytest.mark.slow),  # the fast lane: t1 only
    pytest.param(dict(temperature=0.8, top_p=0.8), id="topp0.8", marks=pytest.mark.slow)])
def test_output_distribution_is_the_targets(llm, tiny, mode, filters):
    check_distribution(llm, tiny, mode, filters)


def test_a_draft_of_part_of_the_vocabulary_samples_the_targets_distribution(llm_factory, tiny):
    """A draft head cut to the first 6 of 12 ids (pearl.backends.vocab_limit) proposes with zeros beyond them:
    the target's tokens there come from the residual."""
    llm = llm_factory(tiny["small_draft"], tiny["small_target"], draft_vocab_limit=6)
    check_distribution(llm, tiny, "pearl", dict(temperature=1.0))


def check_distribution(llm, tiny, mode: str, filters: dict) -> None:
    """NUM_SAMPLES seeds of ``mode`` with window 2: the first POSITIONS tokens' marginals are the target's."""
    counts = np.zeros((POSITIONS, llm.vocab_size))
    rejections = 0
    for seed in range(NUM_SAMPLES):
        params = SamplingParams(max_tokens=POSITIONS + 1, seed=seed, ignore_eos=True, **filters)
        out = llm.generate(PROMPT, params, mode=mode, gamma=2).collect()
        for k in range(POSITIONS):
            counts[k, out.token_ids[k]] += 1
        rejections += out.stats.accepted_draft_tokens < out.stats.draft_tokens
    assert rejections > NUM_SAMPLES // 10  # the draft differs, so the residual path is exercised
    for k, expected in enumerate(exact_marginals(tiny["small_target"], SamplingParams(**filters))):
        assert_matches(counts[k], expected)


def test_same_seed_same_output(llm):
    params = SamplingParams(temperature=1.0, max_tokens=12, seed=11)
    a, b = (llm.generate(PROMPT, params, mode="pearl", gamma=3).collect() for _ in range(2))
    assert a.token_ids == b.token_ids
    others = {tuple(llm.generate(PROMPT, SamplingParams(temperature=1.0, max_tokens=12, seed=s),
                                 mode="pearl").collect().token_ids) for s in range(5)}
    assert len(others) > 1

