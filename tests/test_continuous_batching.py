"""Continuous batching on the ranks (pearl.ranks.target_rank / draft_rank): requests that share rounds,
join and leave mid-generation, each with its own mode, gamma, length and sampling, give exactly the output
each gives alone (and greedy ones the target's own, AR)."""
import random
import threading
import time

import pytest

from conftest import WORLDS
from pearl.params import SamplingParams


@pytest.fixture(scope="module", params=WORLDS)
def world(request) -> str:
    """These checks run in both worlds: in this process (fast lane) and over MPI."""
    return request.param


# (prompt, mode, gamma, SamplingParams): prompt lengths 1-23, lengths 2-48, all three modes, greedy and sampled
REQUESTS = [
    ([1, 2, 3], "pearl", 3, SamplingParams(max_tokens=40)),
    ([7], "pearl", 5, SamplingParams(max_tokens=2)),
    (list(range(10, 33)), "sd", 2, SamplingParams(max_tokens=25)),
    ([5, 9, 11, 3, 4], "ar", 1, SamplingParams(max_tokens=17)),
    ([42, 43], "pearl", 1, SamplingParams(max_tokens=48)),
    ([8, 8, 8, 8], "pearl", 4, SamplingParams(temperature=0.8, top_p=0.9, seed=11, max_tokens=30)),
    ([3, 1, 4, 1, 5, 9, 2, 6], "sd", 4, SamplingParams(temperature=1.2, top_k=20, seed=5, max_tokens=20)),
    ([50, 20, 30], "pearl", 2, SamplingParams(max_tokens=33, stop_token_ids=((1, 2),))),
    ([60] * 12, "pearl", 6, SamplingParams(max_tokens=9)),
    ([2, 7, 1, 8], "pearl", "auto", SamplingParams(max_tokens=35)),  # adaptive windows, by batch size too
    ([9, 4], "sd", "auto", SamplingParams(max_tokens=20)),
]


def run_concurrently(llm, requests, stagger_s: float, seed: int = 0):
    """Start each request on its own thread after a random delay; return the finished streams in order."""
    rng = random.Random(seed)
    delays = [rng.uniform(0, stagger_s) for _ in requests]
    streams = [None] * len(requests)

    def run(i, prompt, mode, gamma, params):
        time.sleep(delays[i])
        streams[i] = llm.generate(prompt, params, mode=mode, gamma=gamma).collect()

    threads = [threading.Thread(target=run, args=(i, *request)) for i, request in enumerate(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert all(stream is not None for stream in streams), "a request did not finish"
    return streams


@pytest.fixture(scope="module")
def llm(llm_factory, tiny):
    return llm_factory(tiny["close_draft"], tiny["target"], max_batch_size=8)


@pytest.fixture(scope="module")
def alone(llm):
    """Each request served alone, and greedy ones' AR reference."""
    outputs = [llm.generate(prompt, params, mode=mode, gamma=gamma).collect()
               for prompt, mode, gamma, params in REQUESTS]
    for out in outputs:
        assert out.stats.mean_batch_size == 1.0
    for (prompt, _, _, params), out in zip(REQUESTS, outputs):
        if params.greedy:
            assert out.token_ids == llm.generate(prompt, params, mode="ar").collect().token_ids
    return outputs


@pytest.mark.parametrize("stagger_s", [0.0, 0.5])
def test_mixed_batch_gives_each_request_its_own_output(llm, alone, stagger_s):
    together = run_concurrently(llm, REQUESTS, stagger_s)
    for request, one, out in zip(REQUESTS, alone, together):
        assert out.token_ids == one.token_ids, request
        assert out.finish_reason == one.finish_reason
        assert out.stats.generated_tokens == len(one.token_ids)
    assert max(out.stats.mean_batch_size for out in together) > 3  # they really shared rounds


def test_requests_beyond_max_batch_size_wait_for_a_slot(llm_factory, tiny, alone):
    llm = llm_factory(tiny["close_draft"], tiny["target"], max_batch_size=2)
    together = run_concurrently(llm, REQUESTS, 0.0)
    for one, out in zip(alone, together):
        assert out.token_ids == one.token_ids
    batch_sizes = [out.stats.mean_batch_size for out in together]
    assert max(batch_sizes) <= 2 and max(batch_sizes) > 1


def test_cancelling_one_request_leaves_the_others_untouched(llm, alone):
    long_request = ([9, 9], "pearl", 3, SamplingParams(max_tokens=400, ignore_eos=True))
    stream = llm.generate(*long_request[:1], long_request[3], mode="pearl", gamma=3)
    chunks = iter(stream)
    next(chunks)  # running
    others = []
    thread = threading.Thread(target=lambda: others.extend(run_concurrently(llm, REQUESTS, 0.2)))
    thread.start()
    time.sleep(0.5)
    stream.cancel()
    for _ in chunks:
        pass
    thread.join()
    assert stream.finish_reason == "cancelled" and len(stream.token_ids) < 400
    for one, out in zip(alone, others):
        assert out.token_ids == one.token_ids


def test_the_draft_drops_out_of_a_large_batch_and_greedy_outputs_stay_the_targets(llm_factory, tiny, alone):
    """draft_off_batch_size 3: while a round holds 3 sequences, the target decodes every one of them alone from
    its verified tokens (pending draft tokens dropped on both ranks, window 0); the draft serves requests
    again once the batch is small."""
    llm = llm_factory(tiny["close_draft"], tiny["target"], max_batch_size=8, draft_off_batch_size=3,
                      target_alone_threads=2)
    together = run_concurrently(llm, REQUESTS, 0.3)
    speculative_greedy = [i for i, (_, mode, _, params) in enumerate(REQUESTS) if mode != "ar" and params.greedy]
    for i, (request, one, out) in enumerate(zip(REQUESTS, alone, together)):
        assert out.finish_reason == one.finish_reason or not request[3].greedy, request
        if request[3].greedy:
            assert out.token_ids == one.token_ids, request
    drafted_together = sum(together[i].stats.draft_tokens for i in speculative_greedy)
    drafted_alone = sum(alone[i].stats.draft_tokens for i in speculative_greedy)
    assert drafted_together < drafted_alone / 2  # the draft really dropped out of the large rounds
    # alone again: the draft rank kept no stale request and drafts as before
    prompt, mode, gamma, params = REQUESTS[0]
    again = llm.generate(prompt, params, mode=mode, gamma=gamma).collect()
    assert again.token_ids == alone[0].token_ids and again.stats.draft_tokens == alone[0].stats.draft_tokens
