"""The gamma rule: the window with the most expected tokens per second of a PEARL round."""
import pytest

from pearl.profiling import recommended_gamma

# The default pair's measured profile on a 2-core CPU (engine.json): a draft step, and the target's cost to
# verify k = 1..8 tokens per sequence for a lone sequence and for 16 sequences in one batched round.
LONE_DRAFT, LONE_VERIFY = 0.147, [0.364, 0.537, 0.619, 0.606, 0.621, 0.674, 0.693, 0.698]
BATCH16_DRAFT, BATCH16_VERIFY = 0.366, [0.984, 1.476, 2.136, 2.615, 3.023, 3.488, 3.987, 4.344]


@pytest.mark.parametrize("draft_step, target_step, gamma", [(0.1, 0.35, 4), (0.1, 0.6, 6), (0.2, 0.21, 1)])
def test_a_flat_verify_cost_gives_pearls_speed_ratio(draft_step, target_step, gamma):
    """On a GPU a verify costs the same for any window: the draft fills one verify, gamma ~ the speed ratio."""
    assert recommended_gamma(draft_step, [target_step] * 8) == gamma


def test_a_lone_sequence_on_a_cpu_balances_draft_and_verify():
    assert recommended_gamma(LONE_DRAFT, LONE_VERIFY) == 4  # 4 draft steps 0.59 s, a verify of 4 0.61 s


def test_a_verify_cost_that_grows_with_the_window_shortens_it():
    """At 16 sequences a verify grows faster than the draft does, so no window balances the two; a round of
    1 token (PEARL keeps no bonus token) is the worst choice there, and higher acceptance pays for longer."""
    low, high = (recommended_gamma(BATCH16_DRAFT, BATCH16_VERIFY, acceptance) for acceptance in (0.8, 0.95))
    assert 1 < low < high


def test_acceptance_must_be_a_probability():
    with pytest.raises(ValueError, match="acceptance must be in"):
        recommended_gamma(0.1, [0.3] * 4, acceptance=1.0)
