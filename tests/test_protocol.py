"""Request messages survive the trip to the ranks unchanged."""
from pearl.dist.protocol import decode_request, encode_request
from pearl.params import GenerationRequest, Mode, SamplingParams


def test_request_round_trip():
    sampling = SamplingParams(temperature=0.7, top_k=5, top_p=0.9, seed=2**40 + 3, max_tokens=17,
                              stop_token_ids=((4, 5), (9,)), ignore_eos=True)
    request = GenerationRequest(42, (1, 2, 3, 150000), sampling, Mode.SD, gamma=6)
    ints, floats = encode_request(request)
    assert decode_request(ints, floats) == request


def test_plan_and_draft_messages_round_trip():
    from pearl.dist.protocol import decode_drafts, decode_plan, encode_drafts, encode_plan
    from pearl.sampling import Verdict

    verdicts = {7: (Verdict(2, 15), False), 9: (Verdict(3), True), 11: (Verdict(0, 4), False)}
    assert decode_plan(encode_plan(verdicts, [12, 13])) == (verdicts, [12, 13])
    assert decode_plan(encode_plan({}, [5])) == ({}, [5])
    windows = [(7, 30, [1, 2, 3]), (9, 4, [8]), (11, 12, [])]
    assert decode_drafts(encode_drafts(windows)) == windows
