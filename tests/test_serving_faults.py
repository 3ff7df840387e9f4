"""Faults on a real server. Engine problems at load time: the pearl model fails to load with a message that
says what is wrong and how to fix it, and the server is not ready. A worker rank killed mid-request: the
request ends with a clear error within 5 s, the MPI world restarts by itself, the next request succeeds,
and nothing of either world is left once the server stops."""
from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from conftest import CACHE_DIR, REPO, free_port, mpich_shared_memory
from pearl.engine_files import read_engine_json, write_engine_json
from pearl_build.artifacts import file_manifest
from pearl_build.config import parse_pair
from pearl_build.pipeline import build_pair
from pearl.processes import process_alive, process_tree
from pearl.serving.client import RequestFailed, grpc_generate, http_generate
from pearl.serving.repository import build_repository, values_for_engines
from pearl.serving.server import ServerError, TritonServer
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


def start(engines, tmp_path):
    repository = build_repository(REPO / "triton_repo", tmp_path / "repo", values_for_engines(engines))
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
    assert "model.safetensors has" in message and "make engines" in message
    assert server.process.poll() is not None  # stopped again


def test_an_engine_file_changed_in_place_fails_the_load_by_its_hash(tiny_engines, tmp_path):
    engines = tmp_path / "engines"
    shutil.copytree(tiny_engines, engines)
    weights = engines / "target" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-64:] = bytes(64)  # same size, other weights: only the sha256 can tell
    weights.write_bytes(bytes(data))
    server = start(engines, tmp_path)
    with pytest.raises(ServerError) as error:
        server.start(timeout=300)
    assert "model.safetensors does not have the sha256 the build recorded" in str(error.value)
    assert "FORCE=1" in str(error.value)


def test_mismatched_tokenizers_fail_the_load(tiny_engines, tmp_path):
    engines = tmp_path / "engines"
    shutil.copytree(tiny_engines, engines)
    save_tiny_tokenizer(engines / "draft", [f"x{i}" for i in range(60)])
    info = read_engine_json(engines / "draft")  # as if built from a draft with another tokenizer
    write_engine_json(engines / "draft", info | {"files": file_manifest(engines / "draft")})
    server = start(engines, tmp_path)
    with pytest.raises(ServerError, match="tokenizers differ"):
        server.start(timeout=300)


def worker_ranks(server) -> list[int]:
    return sorted(pid for pid in process_tree(server.process.pid)
                  if b"pearl.ranks.worker" in Path(f"/proc/{pid}/cmdline").read_bytes())


def test_a_killed_rank_fails_its_request_and_the_world_restarts(smollm2_engines, tmp_path):
    shared_memory = mpich_shared_memory()
    with start(smollm2_engines, tmp_path) as server:
        old_ranks = worker_ranks(server)
        assert len(old_ranks) == 2
        killed_at, outcome = [], {}

        def long_request():
            try:
                for i, _ in enumerate(grpc_generate(server.grpc_url, "def fibonacci(n):", max_tokens=400,
                                                    exclude_input_in_output=True, stream=True)):
                    if i == 1:
                        os.kill(old_ranks[1], signal.SIGKILL)
                        killed_at.append(time.monotonic())
                outcome["done"] = True
            except RequestFailed as exc:
                outcome["error"], outcome["at"] = str(exc), time.monotonic()

        client = threading.Thread(target=long_request)
        client.start()
        client.join(timeout=120)
        assert killed_at and "worker rank died" in outcome.get("error", ""), outcome
        assert outcome["at"] - killed_at[0] < 5
        assert http_generate(server.http_url, "Hello", max_tokens=4).text  # waits for the new world
        new_ranks = worker_ranks(server)
        assert len(new_ranks) == 2 and not set(new_ranks) & set(old_ranks)
        assert not any(process_alive(pid) for pid in old_ranks)
        processes = process_tree(server.process.pid)
    deadline = time.monotonic() + 15
    while any(process_alive(pid) for pid in processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [pid for pid in processes if process_alive(pid)] == []
    assert mpich_shared_memory() - shared_memory == set()
