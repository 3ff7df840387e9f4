"""Faults on a real server. Bad engines at load time: the pearl model fails to load with a message that
says what is wrong and how to fix it, and the server is not ready (one case through a server, the others
where the pearl model's load runs them, a WorldProcess). A worker rank killed while four streamed
requests run: the MPI world restarts by itself and every request resumes in it, finishing with exactly the
text it has without the kill (greedy, and sampled with a seed), no request failed, and nothing of either world
is left once the server stops. A full queue: the refused requests say so and count as "overloaded" (not as bad
input); a retry succeeds. The launcher killed with SIGKILL: no process of the
deployment is left and the ports are free within 15 s."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import CACHE_DIR, REPO, free_port, mpich_shared_memory
from pearl.engine_files import read_engine_json, write_engine_json
from pearl_build.artifacts import file_manifest
from pearl_build.config import parse_pair
from pearl_build.pipeline import build_pair
from pearl_bench.soak import worker_ranks
from pearl.processes import process_alive, process_tree
from pearl.serving.client import RequestFailed, grpc_generate, http_generate
from pearl.serving.repository import build_repository, values_for_engines
from pearl.serving.server import ServerError, TritonServer
from pearl.serving.world_process import WorldProcess, WorldStartError
from tiny_models import make_tiny_model, save_tiny_tokenizer

pytestmark = [pytest.mark.mpi, pytest.mark.triton]

WORDS = [f"w{i}" for i in range(60)]


@pytest.fixture(scope="module")
def tiny_engines(tmp_path_factory):
    root = tmp_path_factory.mktemp("faulty")
    target = save_tiny_tokenizer(make_tiny_model(root / "target", seed=0, vocab_size=64), WORDS)
    draft = save_tiny_tokenizer(make_tiny_model(root / "draft", seed=1, vocab_size=64), WORDS)
    pair = parse_pair({"max_seq_len": 128, "draft": {"source": {"path": str(draft)}},
                       "target": {"source": {"path": str(target)}}}, default_name="tiny")
    return build_pair(pair, root / "engines", root / "cache", profile=False)


def start(engines, tmp_path, **values):
    repository = build_repository(REPO / "triton_repo", tmp_path / "repo", {**values_for_engines(engines), **values})
    return TritonServer(repository, CACHE_DIR, http_port=free_port(), grpc_port=free_port(),
                        metrics_port=free_port(), log_file=tmp_path / "server.log")


def test_a_damaged_engine_fails_the_load_with_the_reason(tiny_engines, tmp_path):
    engines = tmp_path / "engines"
    shutil.copytree(tiny_engines, engines)
    with open(engines / "target" / "model.safetensors", "ab") as f:
        f.write(b"garbage")
    server = start(engines, tmp_path)
    with pytest.raises(ServerError) as error:
        server.start(timeout=300)
    message = str(error.value)
    assert "models failed to load" in message and "pearl" in message
    assert "model.safetensors has" in message and "make engines PAIR=<pair> FORCE=1" in message
    assert server.process.poll() is not None  # stopped again


# The other load failures at the WorldProcess level (what the pearl model's load runs), without a server each:
# the test above shows how a load failure reaches the server's caller.
def test_an_engine_file_changed_in_place_fails_the_load_by_its_hash(tiny_engines, tmp_path):
    engines = tmp_path / "engines"
    shutil.copytree(tiny_engines, engines)
    weights = engines / "target" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-64:] = bytes(64)  # same size, other weights: only the sha256 can tell
    weights.write_bytes(bytes(data))
    with pytest.raises(WorldStartError) as error:
        WorldProcess(engines, check_hashes=True)
    assert "model.safetensors does not have the sha256 the build recorded" in str(error.value)


def test_mismatched_tokenizers_fail_the_load(tiny_engines, tmp_path):
    engines = tmp_path / "engines"
    shutil.copytree(tiny_engines, engines)
    save_tiny_tokenizer(engines / "draft", [f"x{i}" for i in range(60)])
    info = read_engine_json(engines / "draft")  # as if built from a draft with another tokenizer
    write_engine_json(engines / "draft", info | {"files": file_manifest(engines / "draft")})
    with pytest.raises(WorldStartError, match="tokenizers differ"):
        WorldProcess(engines, check_hashes=True)


def failed_requests(server) -> dict[str, float]:
    """pearl_requests_failed_total by reason, and pearl_resumed_total under "resumed"."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics").read().decode()
    counts = {}
    for line in text.splitlines():
        if line.startswith("pearl_requests_failed_total{"):
            counts[line.split('reason="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("pearl_resumed_total{"):
            counts["resumed"] = float(line.rsplit(" ", 1)[1])
    return counts


def streamed(server, prompt: str, on_chunk=lambda i: None, **inputs) -> tuple[str, dict]:
    """A gRPC stream's whole text and its final statistics; ``on_chunk(i)`` after the i-th response."""
    text, stats = "", {}
    for i, chunk in enumerate(grpc_generate(server.grpc_url, prompt, exclude_input_in_output=True, **inputs)):
        text, stats = text + chunk.text, chunk.stats or stats
        on_chunk(i)
    return text, stats


KILLED_PROMPTS = {"def fibonacci(n):": 96, "The capital of France is": 40, "import numpy as np\n": 72,
                  "Write a haiku about the sea.": 56}  # prompt -> max_tokens: four lengths
SEEDED = dict(temperature=1.0, top_p=0.95, seed=1234, num_draft_tokens=3)


def test_a_killed_rank_resumes_every_request_with_its_text(smollm2_engines, tmp_path):
    shared_memory = mpich_shared_memory()
    with start(smollm2_engines, tmp_path) as server:
        with ThreadPoolExecutor(4) as pool:  # batched as in the killed run: the same rounds' numerics
            reference = dict(zip(KILLED_PROMPTS, pool.map(lambda p: streamed(server, p, max_tokens=KILLED_PROMPTS[p])[0],
                                                          KILLED_PROMPTS)))
        seeded_reference = streamed(server, "def fibonacci(n):", max_tokens=48, **SEEDED)[0]
        old_ranks = sorted(worker_ranks(server.process.pid))  # by pid, as the kill below expects
        assert len(old_ranks) == 2
        deployment = process_tree(server.process.pid)  # the first world's host too: it dies with the kill
        killed_at = []

        def kill_once(i):
            if i == 2 and not killed_at:
                os.kill(old_ranks[1], signal.SIGKILL)
                killed_at.append(time.monotonic())

        with ThreadPoolExecutor(4) as pool:
            runs = {p: pool.submit(streamed, server, p, kill_once if p == "def fibonacci(n):" else (lambda i: None),
                                   max_tokens=n) for p, n in KILLED_PROMPTS.items()}
            results = {p: run.result(timeout=600) for p, run in runs.items()}
        assert killed_at
        assert {p: text for p, (text, _) in results.items()} == reference  # no token lost, none twice
        assert results["def fibonacci(n):"][1]["resumed"] == 1
        new_ranks = sorted(worker_ranks(server.process.pid))
        assert len(new_ranks) == 2 and not set(new_ranks) & set(old_ranks)
        assert not any(process_alive(pid) for pid in old_ranks)

        # a seeded sampled request: the same draws by token position in the new world, the same text
        killed_at.clear()
        old_ranks = new_ranks
        deployment |= process_tree(server.process.pid)
        seeded = streamed(server, "def fibonacci(n):", kill_once, max_tokens=48, **SEEDED)
        assert killed_at and seeded[1]["resumed"] == 1 and seeded[0] == seeded_reference
        counts = failed_requests(server)
        assert counts["resumed"] >= 2 and all(counts[kind] == 0 for kind in counts if kind != "resumed"), counts
        processes = process_tree(server.process.pid)
    deadline = time.monotonic() + 15
    while any(process_alive(pid) for pid in processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [pid for pid in processes if process_alive(pid)] == []
    # MPICH names a segment after the pid that made it; other test sessions' worlds may come and go meanwhile
    new = mpich_shared_memory() - shared_memory
    assert {name for name in new if int(name.split("_")[2], 16) in deployment | processes} == set()


def test_a_full_queue_is_refused_and_counted_as_overloaded(smollm2_engines, tmp_path):
    """max_batch_size 4 run, 1 waits (max_queue_size 1): of 12 requests at once, the rest are refused. The pearl
    model answers them UNAVAILABLE, but tritonserver 2.51's HTTP generate endpoint reads the status from an error
    it has already freed (docs/serving.md, "Overload") and answers 400, so the code is checked by its tag."""
    with start(smollm2_engines, tmp_path, max_queue_size="1") as server:
        def one(i):
            model = "pearl_bls" if i % 2 else "ensemble"
            try:
                return http_generate(server.http_url, "def fibonacci(n):", max_tokens=64, model=model).text
            except RequestFailed as exc:
                return exc

        with ThreadPoolExecutor(12) as pool:
            outcomes = list(pool.map(one, range(12)))
        refused = [str(o) for o in outcomes if isinstance(o, RequestFailed)]
        assert refused and len(refused) <= 12 - 5, outcomes
        assert all("already waiting (max_queue_size 1); retry later [UNAVAILABLE]" in r for r in refused), refused
        counts = failed_requests(server)
        assert counts["overloaded"] == len(refused) and counts["invalid"] == counts["error"] == 0, counts
        assert http_generate(server.http_url, "def fibonacci(n):", max_tokens=8).text  # a retry is served


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_killing_the_launcher_leaves_no_process_and_frees_the_ports(smollm2_engines, tmp_path):
    ports = [free_port(), free_port(), free_port()]
    launcher = subprocess.Popen([sys.executable, str(REPO / "scripts" / "serve.py"), "--engines", str(smollm2_engines),
                                 "--http-port", str(ports[0]), "--grpc-port", str(ports[1]),
                                 "--metrics-port", str(ports[2]), "--cache-dir", str(tmp_path / "cache")],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not worker_ranks(launcher.pid) and time.monotonic() < deadline:  # the world is up: all started
            assert launcher.poll() is None, "the launcher exited"
            time.sleep(1)
        while not all(listening(port) for port in ports) and time.monotonic() < deadline:
            time.sleep(0.5)
        processes = process_tree(launcher.pid) - {launcher.pid}
        assert len(worker_ranks(launcher.pid)) == 2 and len(processes) >= 5  # server, stub, host, mpiexec, ranks
        launcher.kill()
        launcher.wait()
        deadline = time.monotonic() + 15
        while (any(process_alive(pid) for pid in processes) or any(map(listening, ports))) \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [pid for pid in processes if process_alive(pid)] == []
        assert not any(map(listening, ports))
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
