"""Logits processing, position-keyed draws, inverse-CDF sampling and the acceptance rule, checked on explicit
distributions."""
import math

import pytest
import torch

from pearl.params import SamplingParams
from pearl.sampling import DRAFT_STREAM, TARGET_STREAM, Draws, probabilities, sample, verify


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


def test_draws_are_reproducible_and_streams_independent():
    a = [Draws(7, TARGET_STREAM).uniform(i) for i in range(4)]
    b = [Draws(7, TARGET_STREAM).uniform(i) for i in range(4)]
    c = [Draws(7, DRAFT_STREAM).uniform(i) for i in range(4)]
    assert a == b and a != c


def test_draws_depend_on_the_position_and_the_draw_alone():
    """Keyed by (seed, stream, position, index): no state, so a draw is the same whenever it is asked for."""
    draws = Draws(7, TARGET_STREAM)
    late = draws.uniform(50, 1)
    assert [draws.uniform(p) for p in range(60)] and draws.uniform(50, 1) == late
    values = [draws.uniform(p, k) for p in range(500) for k in (0, 1)] + [Draws(8, TARGET_STREAM).uniform(0)]
    assert len(set(values)) == len(values) and all(0 <= v < 1 for v in values)
    assert abs(sum(values) / len(values) - 0.5) < 0.05


def test_inverse_cdf_sampling_never_picks_a_token_without_mass():
    probs = torch.tensor([0.0, 0.25, 0.0, 0.75, 0.0])
    assert [sample(probs, u) for u in (0.0, 0.2499, 0.25, 0.9999, 1 - 2**-53)] == [1, 1, 3, 3, 3]
    assert sample(torch.tensor([0.0, 2.0, 2.0]), 0.5) == 2  # unnormalised rows (a residual) work too


def test_greedy_verify_stops_at_first_mismatch():
    logits = torch.eye(5)[[1, 2, 3, 4]]  # argmax per row: 1, 2, 3, 4
    greedy = SamplingParams()
    draws = Draws(0, TARGET_STREAM)
    v = verify(logits[:3], [1, 9, 3], None, greedy, draws, 0)
    assert (v.num_accepted, v.next_token) == (1, 2)
    v = verify(logits[:3], [1, 2, 3], None, greedy, draws, 0)
    assert (v.num_accepted, v.next_token) == (3, -1)
    v = verify(logits, [1, 2, 3], None, greedy, draws, 0, bonus=True)
    assert (v.num_accepted, v.next_token) == (3, 4)


def test_sampling_verify_matches_target_distribution():
    """One-token speculative sampling from q must give tokens distributed as p (one position per trial)."""
    p = torch.tensor([0.6, 0.3, 0.1, 0.0])
    q = torch.tensor([0.1, 0.2, 0.3, 0.4])
    params = SamplingParams(temperature=1.0)
    target_draws, draft_draws = Draws(1, TARGET_STREAM), Draws(1, DRAFT_STREAM)
    counts = torch.zeros(4)
    n = 20000
    for position in range(n):
        x = sample(q, draft_draws.uniform(position))
        v = verify(p.log().unsqueeze(0), [x], q.unsqueeze(0), params, target_draws, position)
        counts[x if v.num_accepted else v.next_token] += 1
    assert torch.allclose(counts / n, p, atol=0.015)


@pytest.mark.parametrize("bad", [dict(temperature=-1.0), dict(temperature=float("nan")), dict(top_p=0.0),
                                 dict(top_p=1.5), dict(top_k=-1), dict(max_tokens=0), dict(stop_token_ids=((),))])
def test_bad_sampling_params_are_refused(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)
