"""WorldProcess on the SmolLM2 pair: the world host serves the same tokens as the ranks do in-process; a killed
rank's requests resume in a new world with exactly the output they have without the kill (greedy, and sampled
with a seed), counted across both worlds, at most max_resumes times in a row without a token between (then, or
with max_resumes 0, the request fails within seconds), and nothing of the dead world is left behind (processes,
MPICH's /dev/shm segments); a spare world takes over from a dead one; cancelling ends a request after a round;
a bad engine directory fails the start with the reason."""
from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import mpich_shared_memory
from pearl.params import GenerationRequest, Mode, SamplingParams
from pearl.processes import process_alive
from pearl.serving.world_process import Flight, WorldDied, WorldProcess, WorldStartError

pytestmark = pytest.mark.mpi

PROMPT = [504, 3458, 314, 4798, 30]  # any ids inside the vocabulary
REQUEST_IDS = itertools.count(1)


class Collected:
    """One request's callbacks gathered the way GenerationService uses them; ``on_chunk(collected)`` runs after
    each chunk (in the world's reader thread)."""

    def __init__(self, request_id: int, on_chunk=None) -> None:
        self.request_id, self.token_ids, self.chunks, self.on_chunk = request_id, [], 0, on_chunk
        self.finish_reason = self.stats = self.error = self.ended_at = None
        self.done = threading.Event()

    def on_tokens(self, tokens):
        self.token_ids += tokens
        self.chunks += 1
        if self.on_chunk is not None:
            self.on_chunk(self)

    def on_done(self, finish_reason, stats):
        self.finish_reason, self.stats, self.ended_at = finish_reason, stats, time.monotonic()
        self.done.set()

    def on_error(self, error):
        self.error, self.ended_at = error, time.monotonic()
        self.done.set()

    def wait(self, timeout: float = 300) -> "Collected":
        assert self.done.wait(timeout), "the request did not end"
        if self.error is not None:
            raise self.error
        return self


def generate(world, prompt, sampling, mode="pearl", gamma=None, on_chunk=None) -> Collected:
    """Submit a request as the edge does (validated against the pair's limits); gamma None: adaptive."""
    request = GenerationRequest(next(REQUEST_IDS), tuple(prompt), sampling, Mode.parse(mode), gamma)
    world.limits.check(request)
    collected = Collected(request.request_id, on_chunk)
    world.submit(request, collected.on_tokens, collected.on_done, collected.on_error)
    return collected


def kill_rank_at(world, role: str, chunk: int, killed: list):
    """An on_chunk that SIGKILLs the current world's ``role`` rank after the request's ``chunk``-th chunk."""
    pid = world.rank_pids[role]

    def on_chunk(collected):
        if collected.chunks == chunk:
            os.kill(pid, signal.SIGKILL)
            killed.append(time.monotonic())
    return on_chunk


def leftovers(ready: dict) -> tuple[list[int], list[str]]:
    """The processes and shared-memory files of a host's world that still exist."""
    pids = [pid for pid in [*ready["helpers"], *ready["ranks"].values()] if process_alive(pid)]
    return pids, [path for path in ready["shm"] if Path(path).exists()]


@pytest.fixture(scope="module")
def world(smollm2_engines):
    with WorldProcess(smollm2_engines) as world:
        yield world


def test_pearl_through_the_host_equals_ar(world):
    """A fixed window: whether an adaptive request drafts at all is the profile's call (on this self-draft pair
    PEARL at the prior acceptance is near the target alone, and a short request may not win back the catch-up)."""
    sampling = SamplingParams(max_tokens=24, ignore_eos=True)
    pearl = generate(world, PROMPT, sampling, "pearl", gamma=3).wait()
    ar = generate(world, PROMPT, sampling, "ar").wait()
    assert pearl.token_ids == ar.token_ids and len(ar.token_ids) == 24
    assert pearl.finish_reason == "length" and pearl.stats.generated_tokens == 24
    assert pearl.stats.draft_tokens > 0 and ar.stats.draft_tokens == 0 and pearl.stats.resumed == 0


def test_concurrent_requests_share_rounds_and_keep_their_output(world):
    """The host runs requests side by side; the ranks batch them (the pair's max_batch_size is 4)."""
    assert world.limits.max_batch_size == 4
    prompts = [PROMPT, PROMPT[:2], [504, 28, 9, 1000, 2, 77, 30], PROMPT[::-1], [12]]  # one waits for a slot
    sampling = SamplingParams(max_tokens=20, ignore_eos=True)
    alone = [generate(world, p, sampling, "ar").wait().token_ids for p in prompts]
    together = [generate(world, p, sampling, "pearl") for p in prompts]
    assert [c.wait().token_ids for c in together] == alone
    assert max(c.stats.mean_batch_size for c in together) > 2
    assert all(c.stats.mean_batch_size <= 4 for c in together)


def test_a_killed_rank_resumes_the_request_in_the_new_world(world):
    sampling = SamplingParams(max_tokens=120, ignore_eos=True)
    reference = generate(world, PROMPT, sampling).wait()
    old, restarts, killed = world._host.ready, world.restarts, []
    resumed = generate(world, PROMPT, sampling, on_chunk=kill_rank_at(world, "target", 2, killed)).wait()
    assert killed and resumed.token_ids == reference.token_ids and resumed.finish_reason == "length"
    stats = resumed.stats
    assert stats.resumed == 1 and stats.generated_tokens == 120  # counted across both worlds
    assert stats.rounds >= 2 and stats.target_forwards >= 2
    assert world.restarts == restarts + 1 and world.rank_pids != old["ranks"]
    assert leftovers(old) == ([], [])


def test_a_seeded_sampled_request_gives_the_same_text_across_a_kill(world):
    """Draws keyed by token position (pearl.sampling): the new world continues with the same randomness."""
    sampling = SamplingParams(temperature=1.0, top_p=0.95, seed=1234, max_tokens=80, ignore_eos=True)
    reference = generate(world, PROMPT, sampling, "pearl", gamma=3).wait()
    killed = []
    resumed = generate(world, PROMPT, sampling, "pearl", gamma=3,
                       on_chunk=kill_rank_at(world, "draft", 3, killed)).wait()
    assert killed and resumed.stats.resumed == 1
    assert resumed.token_ids == reference.token_ids
    other = generate(world, PROMPT, SamplingParams(temperature=1.0, top_p=0.95, seed=99, max_tokens=80,
                                                   ignore_eos=True), "pearl", gamma=3).wait()
    assert other.token_ids != reference.token_ids  # the seed matters


def test_a_request_past_its_resumes_fails_and_the_world_restarts(world):
    """max_resumes 0 (a template value): what every request did before resuming existed."""
    reference = generate(world, PROMPT, SamplingParams(max_tokens=16, ignore_eos=True)).wait().token_ids
    old, killed = world._host.ready, []
    world.max_resumes = 0
    try:
        failed = generate(world, PROMPT, SamplingParams(max_tokens=500, ignore_eos=True),
                          on_chunk=kill_rank_at(world, "target", 2, killed))
        with pytest.raises(WorldDied, match="worker rank died"):
            failed.wait()
    finally:
        world.max_resumes = 2
    assert failed.ended_at - killed[0] < 5
    assert generate(world, PROMPT, SamplingParams(max_tokens=16, ignore_eos=True)).wait().token_ids == reference
    assert world.rank_pids != old["ranks"] and leftovers(old) == ([], [])


def test_deaths_with_tokens_between_them_do_not_use_up_the_resumes(world):
    """max_resumes counts resumes in a row with no token streamed between: a request that makes progress in
    each world is not what kills them, so two deaths apart still finish it with max_resumes 1."""
    sampling = SamplingParams(max_tokens=120, ignore_eos=True)
    reference = generate(world, PROMPT, sampling).wait()
    killed = []

    def kill_twice(collected):  # the second kill only once chunks come from the new world
        pid = world.rank_pids["target"]
        if (not killed and collected.chunks == 2) or (len(killed) == 1 and collected.chunks >= 6 and pid != killed[0]):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    world.max_resumes = 1
    try:
        result = generate(world, PROMPT, sampling, on_chunk=kill_twice).wait()
    finally:
        world.max_resumes = 2
    assert len(killed) == 2 and result.stats.resumed == 2 and result.token_ids == reference.token_ids


def test_the_resume_budget_counts_deaths_in_a_row_without_a_token():
    flight = Flight(GenerationRequest(1, (5,), SamplingParams()), None, None, None)
    assert flight.resume(2) and flight.resume(2) and not flight.resume(2)  # three deaths, nothing streamed
    flight.output += [7]
    assert flight.resume(2) and flight.resumes == 3 and flight.fruitless_resumes == 1
    assert not Flight(GenerationRequest(2, (5,), SamplingParams()), None, None, None).resume(0)


def test_a_spare_world_takes_over_when_the_serving_one_dies(smollm2_engines):
    with WorldProcess(smollm2_engines, spare_world=True) as world:
        spare = world.wait_for_spare()
        assert spare and set(spare.values()).isdisjoint(world.rank_pids.values())
        sampling = SamplingParams(max_tokens=60, ignore_eos=True)
        reference = generate(world, PROMPT, sampling).wait()
        old, killed = world._host.ready, []
        resumed = generate(world, PROMPT, sampling, on_chunk=kill_rank_at(world, "target", 2, killed)).wait()
        assert killed and resumed.token_ids == reference.token_ids and resumed.stats.resumed == 1
        assert world.rank_pids == spare and world.restarts == 1  # the spare serves now
        assert leftovers(old) == ([], [])
        next_spare = world.wait_for_spare()  # and another one loaded behind it
        assert next_spare and set(next_spare.values()).isdisjoint(spare.values())
        worlds = [world._host.ready, world._spare.ready]
    assert [leftovers(ready) for ready in worlds] == [([], []), ([], [])]  # closing ends both


def test_a_rank_killed_between_requests_is_replaced_before_the_next(world):
    old = world._host.ready
    os.kill(world.rank_pids["draft"], signal.SIGKILL)
    result = generate(world, PROMPT, SamplingParams(max_tokens=8, ignore_eos=True)).wait()
    assert len(result.token_ids) == 8 and world.rank_pids != old["ranks"]
    assert leftovers(old) == ([], [])


def test_cancel_ends_the_request_after_a_round(world):
    collected = generate(world, PROMPT, SamplingParams(max_tokens=400, ignore_eos=True),
                         on_chunk=lambda collected: world.cancel(collected.request_id)).wait()
    assert collected.finish_reason == "cancelled" and len(collected.token_ids) < 400
    assert len(generate(world, PROMPT, SamplingParams(max_tokens=4, ignore_eos=True)).wait().token_ids) == 4


def test_closing_leaves_nothing(smollm2_engines):
    world = WorldProcess(smollm2_engines)
    ready, host = world._host.ready, world._host.process
    world.close()
    assert host.poll() is not None
    deadline = time.monotonic() + 10
    while leftovers(ready) != ([], []) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftovers(ready) == ([], [])


def test_when_its_owner_dies_the_host_shuts_the_world_down(smollm2_engines):
    """A Triton stub killed outright: the host sees its pipe close and ends the world by itself."""
    shared_memory = mpich_shared_memory()
    owner = subprocess.Popen([sys.executable, "-c", (
        "import json, time\nfrom pearl.serving.world_process import WorldProcess\n"
        f"world = WorldProcess({str(smollm2_engines)!r})\n"
        "print(json.dumps({**world._host.ready, 'host': world._host.process.pid}), flush=True)\n"
        "time.sleep(600)")], stdout=subprocess.PIPE, text=True)
    ready = json.loads(owner.stdout.readline())
    owner.kill()
    owner.wait()
    deadline = time.monotonic() + 60
    while (process_alive(ready["host"]) or leftovers(ready)[0]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not process_alive(ready["host"]) and leftovers(ready)[0] == []
    assert mpich_shared_memory() - shared_memory == set()


def test_a_bad_engine_directory_fails_the_start_with_the_reason(tmp_path):
    shared_memory = mpich_shared_memory()
    with pytest.raises(WorldStartError, match="not a pair's engine directory"):
        WorldProcess(tmp_path)
    assert mpich_shared_memory() - shared_memory == set()  # the host exited by itself, MPI cleaned up
