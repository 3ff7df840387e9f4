"""The MPI world: starts, serves requests in a row, refuses bad input and pairs, shuts down cleanly."""
import pytest

from conftest import start_llm
from pearl.tokenizers import ModelPathError
from pearl.ranks.world import WorldError
from pearl.llm import VocabularyMismatch
from pearl.processes import process_alive
from pearl.params import SamplingParams

pytestmark = pytest.mark.mpi


def test_serves_many_requests_then_leaves_no_process(tiny):
    llm = start_llm(tiny["close_draft"], tiny["target"])
    pids = [info.pid for info in llm.world.ranks.values()]
    assert len(pids) == 2 and all(process_alive(p) for p in pids)
    outputs = [llm.generate([i + 1, 2], SamplingParams(max_tokens=5), mode=m).collect().token_ids
               for i in range(4) for m in ("ar", "sd", "pearl")]
    assert all(len(o) == 5 or o for o in outputs)
    assert llm.costs.max_window >= 1  # measured for the adaptive (default) requests
    llm.close()
    assert not any(process_alive(p) for p in pids)
    with pytest.raises(WorldError, match="shut down"):
        llm.generate([1, 2], SamplingParams(max_tokens=2)).collect()


def test_the_ranks_time_their_forwards_one_at_a_time_or_together_and_serve_after(llm_factory, tiny):
    llm = llm_factory(tiny["close_draft"], tiny["target"])
    lone = llm.world.profile({"draft": 1, "target": 3}, steps=2)
    together = llm.world.profile({"draft": 1, "target": 3}, steps={"draft": 30, "target": 2}, together=True)
    for seconds in (lone, together):
        assert [len(seconds["draft"]), len(seconds["target"])] == [1, 3]
        assert all(s > 0 for s in seconds["draft"] + seconds["target"])
    assert len(llm.generate([1, 2], SamplingParams(max_tokens=4)).collect().token_ids) == 4


def test_bad_requests_get_clear_errors_and_the_llm_keeps_serving(llm_factory, tiny):
    llm = llm_factory(tiny["close_draft"], tiny["target"])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        llm.generate([1, 10_000], SamplingParams(max_tokens=4))
    with pytest.raises(ValueError, match="exceeds the models' limit"):
        llm.generate([1] * 500, SamplingParams(max_tokens=100))
    with pytest.raises(ValueError, match="gamma must be >= 1"):
        llm.generate([1, 2], SamplingParams(max_tokens=4), gamma=0)
    with pytest.raises(ValueError, match="unknown mode"):
        llm.generate([1, 2], SamplingParams(max_tokens=4), mode="beam")
    with pytest.raises(ValueError, match="prompt is empty"):
        llm.generate([], SamplingParams(max_tokens=4))
    assert len(llm.generate([1, 2], SamplingParams(max_tokens=4)).collect().token_ids) == 4


def test_abandoned_stream_does_not_disturb_the_next_request(llm_factory, tiny):
    llm = llm_factory(tiny["close_draft"], tiny["target"])
    expected = llm.generate([3, 4], SamplingParams(max_tokens=20), mode="ar").collect().token_ids
    stream = iter(llm.generate([5, 6], SamplingParams(max_tokens=20), mode="pearl"))
    next(stream)
    stream.close()  # the consumer walks away mid-request
    assert llm.generate([3, 4], SamplingParams(max_tokens=20), mode="pearl").collect().token_ids == expected


def test_missing_model_is_refused_before_starting_ranks(tiny, tmp_path):
    with pytest.raises(ModelPathError, match="does not exist"):
        start_llm(tmp_path / "nope", tiny["target"])


def test_mismatched_vocabularies_are_refused(tiny):
    with pytest.raises(VocabularyMismatch, match="draft has 64 logits and target 80"):
        start_llm(tiny["target"], tiny["other_vocab"])


@pytest.mark.parametrize("mode", ["ar", "sd", "pearl"])
def test_cancel_ends_the_request_after_a_round_and_the_next_one_is_unaffected(llm_factory, tiny, mode):
    llm = llm_factory(tiny["close_draft"], tiny["target"])
    stream = llm.generate([1, 2, 3], SamplingParams(max_tokens=400, ignore_eos=True), mode=mode, gamma=3)
    for i, _ in enumerate(stream):
        if i == 1:
            stream.cancel()
    assert stream.finish_reason == "cancelled" and len(stream.token_ids) < 60 and stream.stats is not None
    sampling = SamplingParams(max_tokens=20, ignore_eos=True)
    after = llm.generate([4, 5, 6], sampling, mode=mode, gamma=3).collect()
    assert after.token_ids == llm.generate([4, 5, 6], sampling, mode="ar").collect().token_ids
    assert after.finish_reason == "length"
