"""Engine problems at load time on a real server: the pearl model fails to load with a message that says
what is wrong and how to fix it, and the server is not ready."""
from __future__ import annotations

import shutil

import pytest

from conftest import CACHE_DIR, REPO, free_port
from pearl.engine_files import read_engine_json, write_engine_json
from pearl_build.artifacts import file_manifest
from pearl_build.config import parse_pair
from pearl_build.pipeline import build_pair
from pearl.serving.repository import build_repository, values_for_engines
from pearl.serving.server import ServerError, TritonServer
from tiny_models import make_tiny_model, save_tiny_tokenizer

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


def test_mismatched_tokenizers_fail_the_load(tiny_engines, tmp_path):
    engines = tmp_path / "engines"
    shutil.copytree(tiny_engines, engines)
    save_tiny_tokenizer(engines / "draft", [f"x{i}" for i in range(60)])
    info = read_engine_json(engines / "draft")  # as if built from a draft with another tokenizer
    write_engine_json(engines / "draft", info | {"files": file_manifest(engines / "draft")})
    server = start(engines, tmp_path)
    with pytest.raises(ServerError, match="tokenizers differ"):
        server.start(timeout=300)
