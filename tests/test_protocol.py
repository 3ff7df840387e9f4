"""Request messages survive the trip to the ranks unchanged."""
from dataclasses import replace

import pytest

from pearl.ranks.protocol import decode_request, encode_request
from pearl.params import GenerationRequest, Mode, SamplingParams


def test_request_round_trip():
    sampling = SamplingParams(temperature=0.7, top_k=5, top_p=0.9, seed=2**40 + 3, max_tokens=17,
                              stop_token_ids=((4, 5), (9,)), ignore_eos=True)
    for gamma in (6, None):  # None: adaptive
        request = GenerationRequest(42, (1, 2, 3, 150000), sampling, Mode.SD, gamma=gamma)
        ints, floats = encode_request(request)
        assert decode_request(ints, floats) == request
    resumed = GenerationRequest(42, (1, 2, 3), sampling).resumed([7, 8])  # its output so far travels in the prompt
    assert decode_request(*encode_request(resumed)) == resumed and resumed.num_generated == 2


def test_the_world_hosts_pipe_carries_the_request_unchanged():
    """The request validated at the edge reaches the world host as it is (JSON over its pipe)."""
    import json

    from pearl.serving.host_protocol import decode_request as from_pipe, encode, encode_request as to_pipe

    sampling = SamplingParams(temperature=0.5, top_p=0.8, seed=9, max_tokens=12, stop_token_ids=((4, 5),))
    for request in (GenerationRequest(3, (1, 2), sampling, Mode.AR, gamma=None),
                    GenerationRequest(4, (1, 2), sampling, Mode.PEARL, gamma=3).resumed([6])):
        assert from_pipe(json.loads(encode({"request": to_pipe(request)}))["request"]) == request


def test_costs_round_trip():
    from pearl.speculation import CostRow, SpeculationCosts

    costs = SpeculationCosts({1: CostRow(0.05, (0.3, 0.32, 0.4), 0.2, (0.2, 0.21, 0.25)),
                              4: CostRow(0.09, (0.5, 0.7, 0.9), 0.3, (0.3, 0.4, 0.5), 0.06, draft_feed_s=0.013,
                                         sd_draft_feed_s=0.007)}, 0.7)
    sent = SpeculationCosts.from_message(costs.to_message())
    assert sent.rows[4] == costs.rows[4]
    assert sent.rows[1] == replace(costs.rows[1], sd_draft_step_s=0.05, sd_draft_feed_s=0.0)
    assert sent.at(4).sd_draft_step == 0.06 and sent.at(1).sd_draft_step == 0.05  # unprofiled: the step beside
    assert sent.at(4).sd_draft_feed == 0.007 and sent.at(1).sd_draft_feed == 0.0  # unprofiled: the feed beside
    # a profile from before the verify on all threads was measured: the estimate crosses
    unprofiled = SpeculationCosts({1: CostRow(0.05, (0.3, 0.6), 0.2)}, 0.7)
    assert SpeculationCosts.from_message(unprofiled.to_message()).at(1).alone_verify_s == pytest.approx((0.2, 0.4))


def test_plan_and_draft_messages_round_trip():
    from pearl.ranks.protocol import decode_drafts, decode_plan, encode_drafts, encode_plan
    from pearl.sampling import Verdict

    verdicts = {7: (Verdict(2, 15), False, 4), 9: (Verdict(3), True, 0), 11: (Verdict(0, 4), False, 0)}
    assert decode_plan(encode_plan(verdicts, {12: 3, 13: 0}, draft_threads=1)) == (verdicts, {12: 3, 13: 0}, 1)
    assert decode_plan(encode_plan({}, {5: 1}, draft_threads=2)) == ({}, {5: 1}, 2)
    windows = [(7, 30, [1, 2, 3]), (9, 4, [8]), (11, 12, [])]
    assert decode_drafts(encode_drafts(0.125, windows)) == (0.125, windows)


def test_a_resumed_requests_statistics_add_up_over_its_worlds():
    """STATS fields of two worlds as one: counters summed, histograms of different lengths summed entry by entry,
    the prompt counted once (the second world's prompt carries the first one's output)."""
    from pearl.schema import COUNTERS
    from pearl.stats import RequestStats, add_counters

    names = [name for name, _, _ in COUNTERS]

    def fields(prompt_tokens, generated, histogram):
        values = [1.0] * len(COUNTERS)
        values[names.index("prompt_tokens")], values[names.index("generated_tokens")] = prompt_tokens, generated
        return values + histogram

    first, second = fields(5, 7, [0, 2, 1]), fields(12, 3, [1, 1])
    stats = RequestStats.from_message(add_counters(add_counters([0.0] * len(COUNTERS), first), second),
                                      "pearl", None, 1.0, resumed=1)
    assert (stats.prompt_tokens, stats.generated_tokens, stats.rounds) == (5, 10, 2)
    assert stats.acceptance_histogram == (1, 3, 1) and stats.resumed == 1
