"""Sequence bookkeeping (verdicts, draft length) and the output/stop rules."""
import pytest

from pearl.params import GenerationRequest, SamplingParams
from pearl.sampling import Verdict
from pearl.sequence import Sequence
from pearl.stopping import FinishReason, OutputTracker


def seq_with_pending(pending):
    seq = Sequence(1, [10, 11, 12])
    seq.tokens += pending
    return seq


def test_correction_drops_the_rest_and_appends_the_target_token():
    seq = seq_with_pending([20, 21, 22])
    keep = seq.apply_verdict(Verdict(1, 99))
    assert keep == 4 and seq.tokens == [10, 11, 12, 20, 99] and seq.num_verified == 5 and seq.pending == []


def test_all_accepted_without_next_token_keeps_the_window_pending():
    seq = seq_with_pending([20, 21, 22])
    keep = seq.apply_verdict(Verdict(1))
    assert keep == 6 and seq.num_verified == 4 and seq.pending == [21, 22]


def test_sd_bonus_token_follows_the_accepted_window():
    seq = seq_with_pending([20, 21])
    seq.apply_verdict(Verdict(2, 30))
    assert seq.tokens == [10, 11, 12, 20, 21, 30] and seq.pending == []


def test_dropping_pending_keeps_the_last_verified_token_uncached():
    seq = seq_with_pending([20, 21, 22])
    seq.apply_verdict(Verdict(1))  # 20 verified, 21 and 22 pending
    seq.num_cached = 6  # the target rank had cached the whole window
    assert seq.drop_pending() == 3 and seq.tokens == [10, 11, 12, 20] and seq.pending == []
    seq.num_cached = 2
    assert seq.drop_pending() == 2  # a cache already shorter keeps what it has


def test_verdict_accepting_more_than_pending_is_refused():
    with pytest.raises(ValueError):
        seq_with_pending([20]).apply_verdict(Verdict(2, 5))


def test_draft_length_is_cut_near_the_end_but_never_zero():
    seq = Sequence(1, [1, 2, 3])
    assert seq.num_to_draft(gamma=4, max_total=20) == 4
    assert seq.num_to_draft(gamma=4, max_total=6) == 2
    assert seq.num_to_draft(gamma=4, max_total=3) == 1


def track(tokens, **params):
    seq = Sequence(1, [1, 2])
    tracker = OutputTracker(seq, SamplingParams(**params), eos_token_ids=(0,))
    seq.tokens += tokens
    seq.num_verified = len(seq.tokens)
    return tracker.advance(), tracker.finish_reason


def test_eos_ends_and_is_not_output():
    assert track([5, 6, 0, 7]) == ([5, 6], FinishReason.STOP)
    assert track([5, 0, 7], ignore_eos=True, max_tokens=3) == ([5, 0, 7], FinishReason.LENGTH)


def test_stop_sequence_ends_and_is_output():
    assert track([5, 6, 7, 8], stop_token_ids=((6, 7),)) == ([5, 6, 7], FinishReason.STOP)


def test_max_tokens_cuts_the_output():
    assert track([5, 6, 7, 8], max_tokens=2) == ([5, 6], FinishReason.LENGTH)
    assert track([5, 6], max_tokens=5) == ([5, 6], FinishReason.NONE)


def test_a_resumed_request_counts_its_earlier_output():
    """Resumed as prompt + output so far: max_tokens and stop sequences see the earlier world's output too."""
    original = GenerationRequest(1, (1, 2), SamplingParams(max_tokens=5, stop_token_ids=((6, 7),)))
    resumed = original.resumed([5, 6])
    assert resumed.prompt_ids == (1, 2, 5, 6) and resumed.num_generated == 2
    assert resumed.max_total_tokens == original.max_total_tokens and resumed.resumed([8]).num_generated == 3

    def track_resumed(tokens):
        seq = Sequence(1, list(resumed.prompt_ids))
        tracker = OutputTracker(seq, resumed.sampling, eos_token_ids=(0,), num_generated=resumed.num_generated)
        seq.tokens += tokens
        seq.num_verified = len(seq.tokens)
        return tracker.advance(), tracker.finish_reason, tracker.output

    assert track_resumed([7, 9]) == ([7], FinishReason.STOP, [7])  # the stop sequence began before the resume
    assert track_resumed([8, 9, 10, 11]) == ([8, 9, 10], FinishReason.LENGTH, [8, 9, 10])  # 2 + 3 = max_tokens
    with pytest.raises(ValueError, match="num_generated must be below"):
        original.resumed([5, 6, 8, 9, 10])  # nothing left to generate: a finished request is not resumed
