"""Adaptive windows (pearl.speculation): the expected-rate model, the acceptance estimate, and the policy that
drafts when drafting pays, decodes alone when it does not, and probes again."""
from dataclasses import replace

import pytest

from pearl.speculation import (MIN_DRAFTED_ROUNDS, MIN_OPENING_ROUNDS, PROBE_AFTER_ROUNDS, AcceptanceEstimate, Calibration, CostRow,
                               SpeculationCosts, StopEstimate, WindowPolicy, best_round, best_window,
                               catch_up_pays, drafted_length, pearl_after_sd_tokens_per_s, pearl_tokens_per_s,
                               sd_tokens_per_s)

# A GPU-like pair: a verify costs the same for any window, the draft 1/4 of the target.
FLAT = CostRow(draft_step_s=0.025, verify_s=(0.1,) * 8, alone_step_s=0.1)
# A 2-core CPU: each model on one core; a verify grows with its window; alone, the target has both cores, and
# the draft feeds faster on both.
CPU = CostRow(draft_step_s=0.07, verify_s=(0.32, 0.35, 0.38, 0.42, 0.48, 0.53, 0.6, 0.66), alone_step_s=0.2,
              alone_verify_s=(0.2, 0.22, 0.24, 0.27, 0.3, 0.33, 0.37, 0.41), draft_feed_s=0.004,
              sd_draft_feed_s=0.0025)
# The same CPU with a llama.cpp draft: a draft step 4x cheaper than the target's step on both cores.
CHEAP_DRAFT = CostRow(draft_step_s=0.036, verify_s=(0.21, 0.23, 0.26, 0.27, 0.33, 0.34, 0.42, 0.45),
                      alone_step_s=0.14, alone_verify_s=(0.14, 0.16, 0.18, 0.2, 0.22, 0.25, 0.28, 0.3))


def test_a_flat_verify_gives_pearls_window_the_speed_ratio():
    """With everything accepted PEARL gains k tokens a round of max(k draft steps, one verify): the best
    window fills the verify with drafting, k = speed ratio (PEARL's gamma)."""
    assert best_window("pearl", 0.999, FLAT, 8)[0] == 4
    assert pearl_tokens_per_s(4, 0.999, FLAT) == pytest.approx(4 / 0.1, rel=0.01)


def test_the_rates_match_their_round_by_round_model():
    a = 0.6
    # SD: 1 + a + a^2 tokens from 2 draft steps and a verify of 3 on all the target's threads
    assert sd_tokens_per_s(2, a, CPU) == pytest.approx((1 + a + a * a) / (2 * 0.07 + 0.24))
    # PEARL, k = 1: every round is 1 draft step beside a 1-token verify, and gains 1 token
    assert pearl_tokens_per_s(1, a, CPU) == pytest.approx(1 / 0.32)
    # PEARL at acceptance 0: every round is a pre-verify round (1 token, max(k draft steps, 1-token verify))
    assert pearl_tokens_per_s(6, 0.0, CPU) == pytest.approx(1 / (6 * 0.07))


def test_low_acceptance_shortens_the_window_and_can_lose_to_the_target_alone():
    high, low = best_window("pearl", 0.9, CPU, 8), best_window("pearl", 0.4, CPU, 8)
    assert high[0] > low[0] and high[1] > 1 / CPU.alone_step_s > low[1]


def test_an_unprofiled_verify_on_all_threads_is_sped_up_as_much_as_a_step():
    old_profile = CostRow(draft_step_s=0.07, verify_s=(0.32, 0.48), alone_step_s=0.2)
    assert old_profile.alone_verify(2) == pytest.approx(0.48 * 0.2 / 0.32)
    assert old_profile.alone_verify(5) == pytest.approx(0.48 * 0.2 / 0.32)  # past the profile: its longest
    assert CPU.alone_verify(3) == 0.24 and CPU.sd_draft_step == CPU.draft_step_s


def test_an_sd_window_verifies_only_as_many_rows_as_were_profiled():
    """An SD window of k verifies k + 1 rows: with 8 verify lengths profiled, 7 is its longest window even where
    the draft is almost always right and a verify costs the same for any length (the 8th row's cost is
    unknown, and no calibration would correct a guess)."""
    tiny_draft = replace(FLAT, draft_step_s=0.01)
    assert best_window("sd", 0.99, tiny_draft, 8)[0] == 7
    assert best_window("pearl", 0.99, tiny_draft, 8)[0] == 8  # a PEARL window of k verifies k rows
    assert best_window("sd", 0.99, replace(tiny_draft, verify_s=(0.1,)), 8)[0] == 1  # one length: one window


def test_a_pearl_window_is_priced_at_what_the_draft_drafts():
    """A PEARL round lasts as long as the verify beside the drafting, so a window the draft ends early gains
    fewer tokens for the same seconds: where the draft stops after 30% of its tokens, PEARL windows of any
    length draft ~3 tokens, and on the CPU at 0.95 SD rounds win, which PEARL ones do without stops. On a flat
    verify PEARL stays ahead, with its longest window (the stop ends it, not the window)."""
    assert [drafted_length(k, 0.3) for k in (1, 2, 4, 8)] == [1, 2, 3, 3] and drafted_length(8, 0.0) == 8
    assert best_round(("pearl", "sd"), 0.95, CPU, 8)[0] == "pearl"
    assert best_round(("pearl", "sd"), 0.95, CPU, 8, stop=0.3)[0] == "sd"
    assert best_window("pearl", 0.95, CPU, 8, stop=0.3)[1] < best_window("pearl", 0.95, CPU, 8)[1]
    assert best_round(("pearl", "sd"), 0.95, FLAT, 8, stop=0.3)[:2] == ("pearl", 8)
    assert best_window("sd", 0.95, CPU, 8, stop=0.3) == best_window("sd", 0.95, CPU, 8)  # SD: as before

    def drafting_pearl_at(acceptance: float) -> WindowPolicy:
        p = WindowPolicy("pearl", acceptance, max_window=8)
        p.prefilled, p.window, p.drafted_rounds, p.kind = True, 4, 3, "pearl"  # drafting PEARL rounds
        return p

    sure, unsure = drafting_pearl_at(0.95), drafting_pearl_at(0.95)
    for _ in range(5):
        sure.observe_window(6, 6)
        unsure.observe_window(2, 6)  # stopped after 2 of 6
    assert sure.next_window(CPU) > 0 and sure.kind == "pearl"
    assert unsure.next_window(CPU) > 0 and unsure.kind == "sd"


def test_the_stop_estimate_counts_stops_over_drafted_tokens():
    estimate = StopEstimate()
    estimate.observe(4, stopped=False)
    assert estimate.rate == 0  # no stop yet (or a draft without draft_stop_confidence)
    for _ in range(10):
        estimate.observe(4, stopped=True)  # a stop after every fourth token
    assert estimate.rate == pytest.approx(0.25, abs=0.02)
    for _ in range(30):
        estimate.observe(4, stopped=False)  # whole windows since: the stops fade
    assert estimate.rate < 0.05


def test_the_round_kind_follows_the_costs():
    """Where a verify is flat, PEARL's overlap wins; where it is compute-bound and the draft cheap, drafting
    first and verifying on every core (SD) does; an SD request has no choice."""
    assert best_round(("pearl", "sd"), 0.8, FLAT, 8)[0] == "pearl"
    kind, window, rate = best_round(("pearl", "sd"), 0.8, CHEAP_DRAFT, 8)
    assert kind == "sd" and window > 1 and rate > 1 / CHEAP_DRAFT.alone_step_s
    assert rate > best_window("pearl", 0.8, CHEAP_DRAFT, 8)[1]
    assert best_round(("sd",), 0.8, FLAT, 8)[0] == "sd"


def test_a_draft_that_cannot_pay_even_when_always_right_never_drafts():
    """llama.cpp's 1.5B on 2 AVX2 cores: a verify grows by a step per token and the 0.5B draft costs most of
    a step, so no window beats decoding alone at any acceptance: no opening, no probes."""
    slow_draft = CostRow(draft_step_s=0.06, verify_s=(0.103, 0.19, 0.256, 0.379), alone_step_s=0.072,
                         alone_verify_s=(0.072, 0.112, 0.162, 0.168))
    p = WindowPolicy("pearl", 0.8, max_window=4)
    assert [p.next_window(slow_draft) for _ in range(3 * PROBE_AFTER_ROUNDS)] == [0] * (3 * PROBE_AFTER_ROUNDS)
    assert p.next_window(CPU) > 0  # other costs (another batch size): it drafts again
    # judged on the profile: calibrated costs under which drafting cannot pay (only the target's steps alone
    # ran, and they ran faster than profiled) do not stop the probes that would calibrate the rest
    calibrated = replace(CPU, alone_step_s=0.01)
    p = policy()
    assert p.next_window(calibrated, CPU) > 0


def test_an_adaptive_pearl_request_picks_its_rounds_kind():
    """The costs pick each round's kind, except that the first round of drafting (the draft feeds what it
    missed first: the prompt, at the opening) is SD's on a split CPU, PEARL's where the feed overlaps the
    target's forward."""
    p = policy()
    assert p.next_window(CPU) > 0 and p.kind == "sd"  # the opening on a split CPU
    assert p.next_window(FLAT) > 0 and p.kind == "pearl"  # then what the costs say: PEARL's overlap
    assert p.next_window(CHEAP_DRAFT) > 0 and p.kind == "sd"  # or vanilla SD
    gpu = WindowPolicy("pearl", 0.8, max_window=8)
    assert gpu.next_window(FLAT) > 0 and gpu.kind == "pearl"  # the opening, each model on its GPU
    assert gpu.next_window(FLAT) > 0 and gpu.kind == "pearl"
    sd = WindowPolicy("sd", 0.8, max_window=8)
    assert sd.next_window(FLAT) > 0 and sd.kind == "sd"  # an SD request opens with SD rounds


def test_the_estimate_weighs_recent_tokens_most():
    estimate = AcceptanceEstimate(prior=0.8)
    assert estimate.rate == pytest.approx(0.8)
    for _ in range(20):
        estimate.observe(4, 1)  # one accepted, then a rejection: about 1 in 2
    assert estimate.rate == pytest.approx(0.5, abs=0.05)
    for _ in range(10):
        estimate.observe(4, 4)  # 40 accepted in a row
    assert estimate.rate > 0.85
    estimate.observe(3, 0)  # a rejection at once counts one checked token, not three
    assert estimate.rate > 0.8


def policy(prior: float = 0.8) -> WindowPolicy:
    """A new request's policy (its first round is the prompt's)."""
    return WindowPolicy("pearl", prior, max_window=8)


def test_on_a_split_cpu_the_models_take_turns_on_the_prompt():
    """On a CPU whose cores the models split, where the draft feeds faster on all of them, the opening is an SD
    round from the first: the draft feeds the prompt and drafts a window on every core, then the target's
    prefill verifies it on every core (no round for the prompt alone). Where that catch-up cannot be won back,
    the prompt runs alone; where the draft feeds no faster on every core, the prompt runs alone and the draft
    catches up next, beside a 1-token verify; where a verify beside the draft costs what a step alone does (a
    GPU), both prefills run at once and PEARL rounds follow."""
    cpu = WindowPolicy("pearl", 0.8, max_window=8)
    assert cpu.next_window(CPU, None, 64, 130) == best_window("sd", 0.8, CPU, 8)[0] > 1 and cpu.kind == "sd"
    # 3 tokens to go do not win back a 2000-token feed: the prompt alone, and no drafting after it
    few_to_go = WindowPolicy("pearl", 0.8, max_window=8)
    assert few_to_go.next_window(CPU, None, 3, 2000) == 0 and few_to_go.next_window(CPU, None, 2, 2001) == 0
    # where the draft feeds no faster in an SD round (this profile has no feed on its threads), it catches up
    # beside a 1-token verify, drafting one token
    same_cores = WindowPolicy("pearl", 0.8, max_window=8)
    assert same_cores.next_window(LLAMACPP) == 0 and same_cores.next_window(LLAMACPP) == 1
    assert same_cores.kind == "pearl"
    gpu = WindowPolicy("pearl", 0.8, max_window=8)
    assert gpu.next_window(FLAT) == best_window("pearl", 0.8, FLAT, 8)[0] > 1 and gpu.kind == "pearl"


def test_a_switch_from_sd_to_pearl_rounds_pays_for_its_pre_verify_round():
    """After an SD round nothing is pending, so PEARL starts with a pre-verify round (one token): a PEARL round
    is chosen there only if it leads SD by more than that round over the run expected before a rejection. On
    the CPU at 0.95 PEARL's stationary rate leads by ~10% and an SD request stays SD, a PEARL one PEARL (no
    alternation); on a flat verify PEARL leads by a third and is chosen after SD too."""
    assert pearl_after_sd_tokens_per_s(6, 0.95, CPU) < pearl_tokens_per_s(6, 0.95, CPU)
    assert pearl_after_sd_tokens_per_s(4, 0.0, FLAT) == pytest.approx(pearl_tokens_per_s(4, 0.0, FLAT))  # all pre
    assert best_round(("pearl", "sd"), 0.95, CPU, 8)[0] == "pearl"
    assert best_round(("pearl", "sd"), 0.95, CPU, 8, after_sd=True)[0] == "sd"
    assert best_round(("pearl", "sd"), 0.95, FLAT, 8, after_sd=True)[0] == "pearl"
    for last_kind in ("sd", "pearl"):
        p = WindowPolicy("pearl", 0.95, max_window=8)
        p.prefilled, p.window, p.drafted_rounds, p.kind = True, 4, 3, last_kind  # drafting, last round of this kind
        p.acceptance = AcceptanceEstimate(0.95)
        assert p.next_window(CPU) > 0 and p.kind == last_kind


def test_the_policy_drafts_while_it_pays_and_decodes_alone_when_it_does_not():
    p = policy()
    assert p.next_window(CPU) > 0 and p.kind == "sd"  # the draft catches up on the prompt on every core
    window = p.next_window(CPU)
    assert window == best_round(("pearl", "sd"), 0.8, CPU, 8)[1] > 1
    while p.next_window(CPU):  # the draft's tokens keep being rejected at once
        p.observe(window, 0)
    assert best_round(("pearl", "sd"), p.acceptance.rate, CPU, 8)[2] < 1 / CPU.alone_step_s  # it stopped when it lost
    # no drafting now, until the probe
    assert [p.next_window(CPU) for _ in range(PROBE_AFTER_ROUNDS - 1)] == [0] * (PROBE_AFTER_ROUNDS - 1)
    assert p.next_window(CPU) > 0 and p.kind == "sd"  # the probe: a catch-up, on every core
    for _ in range(MIN_DRAFTED_ROUNDS - 1):
        p.observe(1, 0)
        assert p.next_window(CPU) > 0  # a probe lasts MIN_DRAFTED_ROUNDS
    assert p.next_window(CPU) == 0 and p.probe_after == 2 * PROBE_AFTER_ROUNDS  # it did not pay: wait longer


def test_every_sequence_starts_drafting_and_a_probe_that_pays_keeps_drafting():
    p = policy(prior=0.2)  # drafting would not pay at this acceptance: the first rounds look anyway
    for _ in range(12):
        assert p.next_window(CPU) > 0
        p.observe(p.window, p.window)  # everything accepted
    assert p.acceptance.rate > 0.9 and not p.probing


def test_the_opening_lasts_a_round_longer_than_a_probe():
    """The opening's first window starts at the answer's first token, which the draft gets wrong more often:
    windows rejected at once stop the opening after MIN_OPENING_ROUNDS rounds, a probe after fewer."""
    assert MIN_OPENING_ROUNDS > MIN_DRAFTED_ROUNDS
    p = policy()
    for _ in range(MIN_OPENING_ROUNDS):
        assert p.next_window(CPU) > 0
        p.observe(p.window, 0)  # rejected at once
    assert p.next_window(CPU) == 0
    assert [p.next_window(CPU) for _ in range(PROBE_AFTER_ROUNDS - 1)] == [0] * (PROBE_AFTER_ROUNDS - 1)
    for _ in range(MIN_DRAFTED_ROUNDS):
        assert p.next_window(CPU) > 0 and p.probing
        p.observe(p.window, 0)
    assert p.next_window(CPU) == 0


def test_an_unlucky_opening_is_looked_at_again_as_soon_as_a_stop_after_paying():
    p = policy(prior=0.2)  # the opening drafts although the prior says it does not pay
    while p.next_window(CPU):
        p.observe(p.window, 0)
    assert p.probe_after == PROBE_AFTER_ROUNDS and not p.probing
    assert [p.next_window(CPU) for _ in range(PROBE_AFTER_ROUNDS - 1)] == [0] * (PROBE_AFTER_ROUNDS - 1)
    assert p.next_window(CPU) > 0 and p.probing  # the first probe, on time
    while p.next_window(CPU):
        p.observe(p.window, 0)
    assert p.probe_after == 2 * PROBE_AFTER_ROUNDS  # a probe that did not pay: the next look waits longer


# The llama.cpp draft pair as profiled on the 2-core VM: the draft feeds a token in 13.6 ms on its core.
LLAMACPP = CostRow(draft_step_s=0.0496, verify_s=(0.271, 0.301, 0.324, 0.341, 0.381, 0.354, 0.552, 0.517),
                   alone_step_s=0.178, alone_verify_s=(0.178, 0.215, 0.217, 0.237, 0.252, 0.334, 0.386, 0.399),
                   draft_feed_s=0.0136)


def test_catching_up_must_be_won_back_over_the_remaining_tokens():
    """Measured: the draft fed a 494-token prompt in 6.7 s and the request, 48 tokens, ran 0.88x the target
    alone. Drafting opens only where the gain at the prior acceptance over the tokens left covers that."""
    kinds = ("pearl", "sd")
    assert not catch_up_pays(kinds, 0.8, LLAMACPP, 8, remaining=48, missed=495)
    assert catch_up_pays(kinds, 0.8, LLAMACPP, 8, remaining=500, missed=495)
    assert catch_up_pays(kinds, 0.8, LLAMACPP, 8, remaining=63, missed=50)  # a chat prompt: worth a look
    assert not catch_up_pays(kinds, 0.8, LLAMACPP, 8, remaining=3, missed=50)
    # a draft that only loses never wins anything back; an unbounded request always may
    assert not catch_up_pays(kinds, 0.2, LLAMACPP, 8, remaining=10_000, missed=50)
    assert catch_up_pays(kinds, 0.8, LLAMACPP, 8, remaining=None, missed=10_000)
    # a GPU each: the feed hides behind the target's forward, and looking costs nothing
    assert catch_up_pays(kinds, 0.2, replace(FLAT, draft_feed_s=0.0001), 8, remaining=5, missed=500)
    # a profile without the feed measured prices only the round on fewer threads
    assert catch_up_pays(kinds, 0.8, replace(LLAMACPP, draft_feed_s=0.0), 8, remaining=48, missed=495)
    # an SD round's catch-up costs the feed on every core: half the time, half the tokens to win it back
    both_cores = replace(LLAMACPP, sd_draft_feed_s=LLAMACPP.draft_feed_s / 2)
    assert not catch_up_pays(kinds, 0.8, LLAMACPP, 8, remaining=130, missed=495, kind="sd")
    assert catch_up_pays(kinds, 0.8, both_cores, 8, remaining=130, missed=495, kind="sd")


def test_a_long_prompt_with_few_tokens_to_go_decodes_alone_throughout():
    p = WindowPolicy("pearl", 0.8, max_window=8)
    windows = [p.next_window(LLAMACPP, None, 48 - i, 495 + i) for i in range(48)]
    assert windows == [0] * 48  # neither the opening nor any probe
    p = WindowPolicy("pearl", 0.8, max_window=8)
    assert p.next_window(LLAMACPP, None, 500, 494) == 0  # the prompt, alone
    assert p.next_window(LLAMACPP, None, 499, 495) == 1  # enough to go: the opening, one token while feeding


def test_a_probe_near_the_end_is_not_worth_its_catch_up():
    p = WindowPolicy("pearl", 0.8, max_window=8)
    assert p.next_window(LLAMACPP, None, 64, 50) == 0 and p.next_window(LLAMACPP, None, 63, 51) == 1
    while p.next_window(LLAMACPP, None, 60, 0):
        p.observe(p.window, 0)  # rejected at once: it stops
    assert [p.next_window(LLAMACPP, None, 40, 1 + i) for i in range(PROBE_AFTER_ROUNDS)].count(0) == \
        PROBE_AFTER_ROUNDS - 1  # a probe with 40 tokens to go
    while p.next_window(LLAMACPP, None, 30, 0):
        p.observe(p.window, 0)
    assert [p.next_window(LLAMACPP, None, 3, 1 + i) for i in range(4 * PROBE_AFTER_ROUNDS)] == \
        [0] * (4 * PROBE_AFTER_ROUNDS)  # none with 3 to go


def test_the_batch_size_picks_its_row_of_costs():
    costs = SpeculationCosts({1: CPU, 4: FLAT})
    assert costs.at(2) == CPU and costs.at(4) == costs.at(16) == FLAT and SpeculationCosts({2: CPU}).at(1) == CPU
    assert costs.max_window == 8


def test_calibration_moves_the_profile_toward_what_rounds_took():
    """Beside the draft the target's verify took 1.5x its profiled time: after a few such rounds the costs
    say so, and drafting that paid on paper may no longer pay."""
    calibration = Calibration()
    assert calibration.apply(CPU) == replace(CPU, sd_draft_step_s=CPU.draft_step_s)  # nothing observed yet
    for _ in range(12):
        for k in range(1, 9):
            calibration.observe("verify", 1.5 * CPU.verify(k), CPU.verify(k), k)
        calibration.observe("alone", CPU.alone_step_s, CPU.alone_step_s)
    row = calibration.apply(CPU)
    assert row.verify(3) == pytest.approx(1.5 * CPU.verify(3), rel=0.02) and row.alone_step_s == CPU.alone_step_s
    assert row.draft_step_s == CPU.draft_step_s
    assert best_window("pearl", 0.75, CPU, 8)[1] > 1 / CPU.alone_step_s > best_window("pearl", 0.75, row, 8)[1]


def test_calibration_of_pearl_rounds_as_a_whole_slows_pearl_alone():
    """PEARL rounds took 1.2x the longer of their parts (a round waits for the later of two drifting parts):
    PEARL's rate falls by as much, SD's stays, and where PEARL led by less the costs now favour SD rounds."""
    calibration = Calibration()
    for _ in range(12):
        calibration.observe("overlap", 1.2 * CHEAP_DRAFT.verify(6), CHEAP_DRAFT.verify(6))
    row = calibration.apply(CHEAP_DRAFT)
    assert row.overlap == pytest.approx(1.2, rel=0.02) and row.draft_step_s == CHEAP_DRAFT.draft_step_s
    assert pearl_tokens_per_s(6, 0.9, row) == pytest.approx(pearl_tokens_per_s(6, 0.9, CHEAP_DRAFT) / row.overlap)
    assert sd_tokens_per_s(4, 0.9, row) == sd_tokens_per_s(4, 0.9, CHEAP_DRAFT)
    assert best_round(("pearl", "sd"), 0.9, CHEAP_DRAFT, 8)[0] == "pearl"
    assert best_round(("pearl", "sd"), 0.9, row, 8)[0] == "sd"


def test_calibration_of_sd_rounds_moves_their_costs_alone():
    """An SD round's 4 draft steps kept the target waiting twice their profile: SD's rounds cost that much more,
    PEARL's do not, and the rate the costs give SD falls with them."""
    calibration = Calibration()
    for _ in range(12):
        calibration.observe("sd_draft", 2 * 4 * CHEAP_DRAFT.draft_step_s, 4 * CHEAP_DRAFT.draft_step_s)
        calibration.observe("sd_verify", CHEAP_DRAFT.alone_verify(5), CHEAP_DRAFT.alone_verify(5), 5)
    row = calibration.apply(CHEAP_DRAFT)
    assert row.sd_round_extra_s == pytest.approx(4 * CHEAP_DRAFT.draft_step_s)
    assert sd_tokens_per_s(4, 0.8, row) == pytest.approx(
        (1 + 0.8 + 0.8 ** 2 + 0.8 ** 3 + 0.8 ** 4) / (8 * CHEAP_DRAFT.draft_step_s + CHEAP_DRAFT.alone_verify(5)))
    assert row.draft_step_s == CHEAP_DRAFT.draft_step_s and row.verify_s == CHEAP_DRAFT.verify_s
    assert row.alone_verify(5) == pytest.approx(CHEAP_DRAFT.alone_verify(5))
    assert best_window("sd", 0.8, row, 8)[1] < best_window("sd", 0.8, CHEAP_DRAFT, 8)[1]


# The int4-target pair's profile on the 2-core avx512 VM (one sequence): a verify that grows with its window
INT4_TARGET = CostRow(draft_step_s=0.033, verify_s=(0.106, 0.13, 0.153, 0.175, 0.173, 0.177, 0.218, 0.235),
                      alone_step_s=0.062, alone_verify_s=(0.062, 0.071, 0.089, 0.095, 0.106, 0.101, 0.125, 0.13),
                      sd_draft_step_s=0.02, draft_feed_s=0.0039, sd_draft_feed_s=0.0023)


def test_what_an_sd_round_pays_beyond_its_steps_is_priced_once_a_round():
    """Served, an SD round of the int4-target pair kept the target waiting 36 ms for a window of 1 and 76 ms for
    one of 3 (a step: 20 ms): the steps as profiled plus 16 ms a round (handoffs, the first forward's extra
    token). After rounds of window 1 a window of 3 is priced at its 3 steps and the same 16 ms (as a ratio to
    the steps it was 108 ms), and at an acceptance of 0.86 drafting still beats the target alone."""
    calibration = Calibration()
    for _ in range(Calibration.WINDOW):  # as served, the verify 1.1x its profile and a step alone 0.96x
        calibration.observe("sd_draft", INT4_TARGET.sd_draft_step + 0.016, INT4_TARGET.sd_draft_step)
        for rows in (2, 4):
            calibration.observe("sd_verify", 1.1 * INT4_TARGET.alone_verify(rows), INT4_TARGET.alone_verify(rows),
                                rows)
        calibration.observe("alone", 0.96 * INT4_TARGET.alone_step_s, INT4_TARGET.alone_step_s)
    row = calibration.apply(INT4_TARGET)
    assert row.sd_round_extra_s == pytest.approx(0.016)
    assert sd_tokens_per_s(3, 0.86, row) == pytest.approx(
        (1 + 0.86 + 0.86 ** 2 + 0.86 ** 3) / (3 * 0.02 + 0.016 + 1.1 * INT4_TARGET.alone_verify(4)))
    assert best_window("sd", 0.86, row, 8)[1] > 1 / row.alone_step_s
    policy = WindowPolicy("sd", 0.86, 8)
    policy.prefilled = True
    policy.window, policy.drafted_rounds = 1, MIN_DRAFTED_ROUNDS  # drafting, past its first rounds
    assert policy.next_window(row, INT4_TARGET) > 0


def test_a_verify_is_calibrated_per_length():
    """The int4 target verifies 5 rows or more on its bfloat16 copy, fewer on its int4 kernel: served, 6 rows
    took 1.4x their profile and 4 rows 1.05x. Each length keeps its own ratio (one for both priced a 4-row verify
    at 1.4x too, and drafting looked unpaid at 0.85), a length not yet observed keeps its profile, and the
    window drafting picks at 0.85 is one whose verify runs on the int4 kernel."""
    calibration = Calibration()
    for _ in range(Calibration.WINDOW):
        calibration.observe("sd_draft", 5 * INT4_TARGET.sd_draft_step + 0.016, 5 * INT4_TARGET.sd_draft_step)
        calibration.observe("sd_verify", 1.4 * INT4_TARGET.alone_verify(6), INT4_TARGET.alone_verify(6), 6)
    for _ in range(3):
        calibration.observe("sd_verify", 1.05 * INT4_TARGET.alone_verify(4), INT4_TARGET.alone_verify(4), 4)
    row = calibration.apply(INT4_TARGET)
    assert row.alone_verify(6) == pytest.approx(1.4 * INT4_TARGET.alone_verify(6))
    assert row.alone_verify(4) == pytest.approx(1.025 * INT4_TARGET.alone_verify(4))  # 3 of 6: the prior's 3 too
    assert row.alone_verify(3) == INT4_TARGET.alone_verify(3)
    window, rate = best_window("sd", 0.85, row, 8)
    assert window + 1 < 5 and rate > 1 / INT4_TARGET.alone_step_s
    with pytest.raises(ValueError, match="rows"):
        calibration.observe("sd_verify", 0.1, 0.1)
    with pytest.raises(ValueError, match="no kind"):
        calibration.observe("sd_verfy", 0.1, 0.1)


def test_one_round_that_took_many_times_its_profile_does_not_swing_the_costs():
    """A stall (a kernel compiled on first use, a rank descheduled) made one SD round's draft wait 80x its
    profile: the costs stay as they were, and SD rounds stay the kind chosen (a mean would have priced them out
    for good: no SD round would run again to correct it). A cost that really moved says so within a few rounds."""
    calibration = Calibration()
    for _ in range(3):
        calibration.observe("sd_draft", 4 * CPU.sd_draft_step, 4 * CPU.sd_draft_step)
    calibration.observe("sd_draft", 80 * 4 * CPU.sd_draft_step, 4 * CPU.sd_draft_step)
    assert calibration.apply(CPU).sd_round_extra_s == 0.0
    assert best_round(("pearl", "sd"), 0.8, calibration.apply(CPU), 8)[0] == best_round(("pearl", "sd"), 0.8, CPU, 8)[0]
    fresh = Calibration()
    fresh.observe("verify", 50 * CPU.verify(2), CPU.verify(2), 2)  # the very first observation: the profile holds
    assert fresh.apply(CPU).verify_s == CPU.verify_s
    for _ in range(4):
        calibration.observe("sd_draft", 1.5 * 4 * CPU.sd_draft_step, 4 * CPU.sd_draft_step)
    assert calibration.apply(CPU).sd_round_extra_s == pytest.approx(0.5 * 4 * CPU.sd_draft_step)
