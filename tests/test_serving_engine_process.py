"""EngineProcess on the SmolLM2 pair: the engine host serves the same tokens as the ranks do in-process, a
killed rank fails the running request within seconds and the world comes back by itself, leaving nothing of
the dead one behind (processes, MPICH's /dev/shm segments); cancelling ends a request after a round; a bad
engine directory fails the start with the reason."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import mpich_shared_memory
from pearl.params import SamplingParams
from pearl.processes import process_alive
from pearl.serving.engine_process import EngineDied, EngineProcess, EngineStartError

pytestmark = pytest.mark.mpi

PROMPT = [504, 3458, 314, 4798, 30]  # any ids inside the vocabulary


def leftovers(ready: dict) -> tuple[list[int], list[str]]:
    """The processes and shared-memory files of a host's world that still exist."""
    pids = [pid for pid in [*ready["helpers"], *ready["ranks"].values()] if process_alive(pid)]
    return pids, [path for path in ready["shm"] if Path(path).exists()]


@pytest.fixture(scope="module")
def engine(smollm2_engines):
    with EngineProcess(smollm2_engines) as engine:
        yield engine


def test_pearl_through_the_host_equals_ar(engine):
    sampling = SamplingParams(max_tokens=24, ignore_eos=True)
    pearl = engine.generate(PROMPT, sampling, "pearl", "auto").collect()
    ar = engine.generate(PROMPT, sampling, "ar").collect()
    assert pearl.token_ids == ar.token_ids and len(ar.token_ids) == 24
    assert pearl.finish_reason == "length" and pearl.stats.generated_tokens == 24
    assert pearl.stats.draft_tokens > 0 and ar.stats.draft_tokens == 0


def test_concurrent_requests_share_rounds_and_keep_their_output(engine):
    """The host runs requests side by side; the ranks batch them (the pair's max_batch_size is 4)."""
    assert engine.max_batch_size == 4
    prompts = [PROMPT, PROMPT[:2], [504, 28, 9, 1000, 2, 77, 30], PROMPT[::-1], [12]]  # one waits for a slot
    sampling = SamplingParams(max_tokens=20, ignore_eos=True)
    alone = [engine.generate(p, sampling, "ar").collect().token_ids for p in prompts]
    streams = [engine.generate(p, sampling, "pearl", "auto") for p in prompts]
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(lambda stream: stream.collect(), streams))
    assert [s.token_ids for s in together] == alone
    assert max(s.stats.mean_batch_size for s in together) > 2
    assert all(s.stats.mean_batch_size <= 4 for s in together)


def test_a_killed_rank_fails_the_request_and_the_world_restarts(engine):
    reference = engine.generate(PROMPT, SamplingParams(max_tokens=16, ignore_eos=True)).collect().token_ids
    old = engine._host.ready
    stream = engine.generate(PROMPT, SamplingParams(max_tokens=500, ignore_eos=True))
    killed = None
    with pytest.raises(EngineDied, match="worker rank died"):
        for i, _ in enumerate(stream):
            if i == 1:
                os.kill(engine.rank_pids["target"], signal.SIGKILL)
                killed = time.monotonic()
    assert time.monotonic() - killed < 5
    assert engine.generate(PROMPT, SamplingParams(max_tokens=16, ignore_eos=True)).collect().token_ids == reference
    assert engine.restarts == 1 and engine.rank_pids != old["ranks"]
    assert leftovers(old) == ([], [])


def test_a_rank_killed_between_requests_is_replaced_before_the_next(engine):
    old = engine._host.ready
    os.kill(engine.rank_pids["draft"], signal.SIGKILL)
    result = engine.generate(PROMPT, SamplingParams(max_tokens=8, ignore_eos=True)).collect()
    assert len(result.token_ids) == 8 and engine.rank_pids != old["ranks"]
    assert leftovers(old) == ([], [])


def test_cancel_ends_the_request_after_a_round(engine):
    stream = engine.generate(PROMPT, SamplingParams(max_tokens=400, ignore_eos=True))
    for _ in stream:
        stream.cancel()
    assert stream.finish_reason == "cancelled" and len(stream.token_ids) < 400
    assert len(engine.generate(PROMPT, SamplingParams(max_tokens=4, ignore_eos=True)).collect().token_ids) == 4


def test_closing_leaves_nothing(smollm2_engines):
    engine = EngineProcess(smollm2_engines)
    ready, host = engine._host.ready, engine._host.process
    engine.close()
    assert host.poll() is not None
    deadline = time.monotonic() + 10
    while leftovers(ready) != ([], []) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftovers(ready) == ([], [])


def test_when_its_owner_dies_the_host_shuts_the_world_down(smollm2_engines):
    """A Triton stub killed outright: the host sees its pipe close and ends the world by itself."""
    shared_memory = mpich_shared_memory()
    owner = subprocess.Popen([sys.executable, "-c", (
        "import json, time\nfrom pearl.serving.engine_process import EngineProcess\n"
        f"engine = EngineProcess({str(smollm2_engines)!r})\n"
        "print(json.dumps({**engine._host.ready, 'host': engine._host.process.pid}), flush=True)\n"
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
    with pytest.raises(EngineStartError, match="not a pair's engine directory"):
        EngineProcess(tmp_path)
    assert mpich_shared_memory() - shared_memory == set()  # the host exited by itself, MPI cleaned up
