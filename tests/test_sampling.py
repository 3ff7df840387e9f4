"""Logits processing, seeded generators and the acceptance rule, checked on explicit distributions."""
import math

import pytest
import torch

from pearl.params import SamplingParams
from pearl.sampling import DRAFT_STREAM, TARGET_STREAM, make_generator, probabilities, sample, verify


def test_top_k_keeps_the_k_most_likely():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    probs = probabilities(logits, SamplingParams(temperature=1.0, top_k=2))
    assert probs[0, 0] == 0 and probs[0, 3] == 0
    assert torch.allclose(probs[0, 1:3], torch.softmax(torch.tensor([4.0, 3.0]), -1))


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs_in = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    probs = probabilities(probs_in.log(), SamplingParams(temperature=1.0, top_p=0.75))
    assert (probs[0, 2:] == 0).all()  # 0.5 + 0.3 already reaches 0.75
    assert torch.allclose(probs[0, :2], torch.tensor([0.625, 0.375]))
    tiny_p = probabilities(probs_in.log(), SamplingParams(temperature=1.0, top_p=0.01))
    assert tiny_p[0, 0] == 1.0  # the most likely token always survives


def test_temperature_sharpens():
    logits = torch.tensor([[1.0, 2.0]])
    cold = probabilities(logits, SamplingParams(temperature=0.5))
    assert math.isclose(cold[0, 1].item(), torch.softmax(logits / 0.5, -1)[0, 1].item(), rel_tol=1e-6)


def test_generators_are_reproducible_and_streams_independent():
    a = torch.rand(4, generator=make_generator(7, TARGET_STREAM))
    b = torch.rand(4, generator=make_generator(7, TARGET_STREAM))
    c = torch.rand(4, generator=make_generator(7, DRAFT_STREAM))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_greedy_verify_stops_at_first_mismatch():
    logits = torch.eye(5)[[1, 2, 3, 4]]  # argmax per row: 1, 2, 3, 4
    greedy = SamplingParams()
    gen = make_generator(0, TARGET_STREAM)
    v = verify(logits[:3], [1, 9, 3], None, greedy, gen)
    assert (v.num_accepted, v.next_token) == (1, 2)
    v = verify(logits[:3], [1, 2, 3], None, greedy, gen)
    assert (v.num_accepted, v.next_token) == (3, -1)
    v = verify(logits, [1, 2, 3], None, greedy, gen, bonus=True)
    assert (v.num_accepted, v.next_token) == (3, 4)


def test_sampling_verify_matches_target_distribution():
    """One-token speculative sampling from q must give tokens distributed as p."""
    p = torch.tensor([0.6, 0.3, 0.1, 0.0])
    q = torch.tensor([0.1, 0.2, 0.3, 0.4])
    params = SamplingParams(temperature=1.0)
    target_gen, draft_gen = make_generator(1, TARGET_STREAM), make_generator(1, DRAFT_STREAM)
    counts = torch.zeros(4)
    n = 20000
    for _ in range(n):
        (x,) = sample(q.unsqueeze(0), draft_gen)
        v = verify(p.log().unsqueeze(0), [x], q.unsqueeze(0), params, target_gen)
        counts[x if v.num_accepted else v.next_token] += 1
    assert torch.allclose(counts / n, p, atol=0.015)


@pytest.mark.parametrize("bad", [dict(temperature=-1.0), dict(temperature=float("nan")), dict(top_p=0.0),
                                 dict(top_p=1.5), dict(top_k=-1), dict(max_tokens=0), dict(stop_token_ids=((),))])
def test_bad_sampling_params_are_refused(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)
