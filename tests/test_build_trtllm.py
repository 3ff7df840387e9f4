"""TensorRT-LLM builds on hosts without it: the exact per-GPU plan (`make engines DRY_RUN=1`) for a 2-GPU and a
1+4-GPU pair, and a clear refusal to build or load TRT-LLM engines."""
from __future__ import annotations

import importlib.machinery
import subprocess
import sys
import types
from pathlib import Path

import pytest

from conftest import REPO
from pearl.backends import load_backend, trtllm_pin
from pearl.backends.base import ModelSpec
from pearl.tokenizers import ModelPathError
from pearl_build.__main__ import main as make_engines
from pearl_build.config import available_pairs, load_pair_config
from pearl_build.pipeline import plan_pair

TRTLLM_PAIRS = [name for name in available_pairs() if load_pair_config(name).backend == "tensorrt_llm"]
GPU_PAIRS = [name for name in available_pairs() if load_pair_config(name).target.on_gpu]


def lane_commands(pair_name: str) -> tuple[object, dict[str, list]]:
    pair = load_pair_config(pair_name)
    plan = plan_pair(pair, Path("engines"), Path(".cache/pearl"))
    return plan, {role: [step for step in steps if step.command] for role, steps in plan.lanes.items()}


def flag(command: tuple[str, ...], name: str) -> str:
    return command[command.index(name) + 1]


def test_two_gpu_plan_pins_each_model_to_its_gpu():
    plan, lanes = lane_commands("qwen2.5-coder-0.5b-1.5b-trtllm")
    for role, gpu in (("draft", "0"), ("target", "1")):
        convert, build = lanes[role]
        assert convert.env == build.env == {"CUDA_VISIBLE_DEVICES": gpu}
        assert convert.command[1:4] == ("-m", "pearl_build.trtllm", "convert")
        assert flag(convert.command, "--role") == role
        assert flag(convert.command, "--output-dir") == f"engines/qwen2.5-coder-0.5b-1.5b-trtllm/{role}.checkpoint"
        assert build.command[0] == "trtllm-build"
        assert flag(build.command, "--checkpoint_dir") == flag(convert.command, "--output-dir")
        assert flag(build.command, "--output_dir") == f"engines/qwen2.5-coder-0.5b-1.5b-trtllm/{role}"
        assert flag(build.command, "--kv_cache_type") == "paged"
        assert flag(build.command, "--use_paged_context_fmha") == "enable"
        assert "--gather_generation_logits" in build.command and "--gather_context_logits" not in build.command
        assert flag(build.command, "--max_seq_len") == "8192" and flag(build.command, "--max_input_len") == "8191"
        assert flag(build.command, "--workers") == "1"
    target_build = lanes["target"][1].command
    assert flag(target_build, "--speculative_decoding_mode") == "draft_tokens_external"
    assert flag(target_build, "--max_draft_len") == "16"
    assert "--speculative_decoding_mode" not in lanes["draft"][1].command


def test_one_plus_four_gpu_plan_builds_the_target_tensor_parallel():
    plan, lanes = lane_commands("llama-3.2-1b-3.1-70b")
    assert lanes["draft"][0].env == {"CUDA_VISIBLE_DEVICES": "0"}
    assert lanes["target"][0].env == lanes["target"][1].env == {"CUDA_VISIBLE_DEVICES": "1,2,3,4"}
    assert flag(lanes["target"][1].command, "--workers") == "4"  # one rank per visible GPU, built in parallel
    assert flag(lanes["draft"][1].command, "--workers") == "1"
    text = plan.render()
    assert "## target on GPU 1,2,3,4 (tp_size 4); source hf: meta-llama/Llama-3.1-70B-Instruct" in text
    assert "CUDA_VISIBLE_DEVICES=1,2,3,4 trtllm-build --checkpoint_dir engines/llama-3.2-1b-3.1-70b/target.checkpoint" \
        in text


def test_make_engines_dry_run_prints_the_plan_and_builds_nothing(tmp_path):
    result = subprocess.run(["make", "-s", "engines", "PAIR=llama-3.2-1b-3.1-70b", "DRY_RUN=1",
                             f"ENGINES_DIR={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"CUDA_VISIBLE_DEVICES=0 trtllm-build --checkpoint_dir {tmp_path}/llama-3.2-1b-3.1-70b/draft.checkpoint" \
        in result.stdout
    assert "--speculative_decoding_mode draft_tokens_external --max_draft_len 16" in result.stdout
    assert f"# pinned: TensorRT-LLM {trtllm_pin.VERSION} ({trtllm_pin.GIT_TAG}" in result.stdout
    assert trtllm_pin.CONTAINER in result.stdout
    assert "- 1 driver + 5 workers: draft on workers 0 (leader 0); target on workers 1, 2, 3, 4 (leader 1)" \
        in result.stdout
    assert "participant_ids [2, 3, 4, 5] under mpiexec" in result.stdout
    launch = next(line for line in result.stdout.splitlines() if line.startswith("- launch: "))
    assert launch.startswith(f"- launch: {trtllm_pin.CONTAINER_MPI_HOME}/bin/mpiexec -n 1 ")
    assert " -m pearl generate --engines " in launch and launch.endswith(" : -n 5 " + launch.split()[-3] +
                                                                         " -m pearl.ranks.worker")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("pair_name", GPU_PAIRS)
def test_every_gpu_plan_names_its_world_and_every_trtllm_plan_the_pinned_release(pair_name):
    pair = load_pair_config(pair_name)
    text = plan_pair(pair, Path("engines"), Path(".cache/pearl")).render()
    workers = pair.draft.tp_size + pair.target.tp_size
    assert f"- 1 driver + {workers} workers: " in text and f": -n {workers} " in text
    assert (f"# pinned: TensorRT-LLM {trtllm_pin.VERSION}" in text) == (pair_name in TRTLLM_PAIRS)


def test_building_with_a_tensorrt_llm_other_than_the_pin_fails_naming_the_pin(tmp_path, monkeypatch, capsys):
    other = types.ModuleType("tensorrt_llm")
    other.__version__, other.__spec__ = "1.2.0rc2", importlib.machinery.ModuleSpec("tensorrt_llm", None)
    monkeypatch.setitem(sys.modules, "tensorrt_llm", other)
    assert make_engines(["qwen2.5-coder-0.5b-1.5b-trtllm", "--engines-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "TensorRT-LLM 1.2.0rc2 is installed" in err and f"pinned to TensorRT-LLM {trtllm_pin.VERSION}" in err
    assert not any(tmp_path.iterdir())


def test_building_a_gpu_pair_without_tensorrt_llm_fails_clearly(tmp_path, capsys):
    assert make_engines(["llama-3.2-1b-3.1-70b", "--engines-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "tensorrt_llm is not importable here" in err and "DRY_RUN=1" in err
    assert not any(tmp_path.iterdir())


def test_loading_a_trtllm_engine_without_tensorrt_llm_says_what_to_install(tmp_path):
    with pytest.raises(ModelPathError, match="not a TensorRT-LLM engine folder"):
        load_backend(ModelSpec(str(tmp_path), backend="tensorrt_llm"))
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "rank0.engine").write_bytes(b"")
    with pytest.raises(ImportError, match="needs TensorRT-LLM"):
        load_backend(ModelSpec(str(tmp_path), backend="tensorrt_llm"))


@pytest.mark.parametrize("quantization, algo", [("int8", "W8A16"), ("int4", "W4A16")])
def test_a_quantized_model_converts_with_tensorrt_llms_weight_only_quantization(quantization, algo):
    from dataclasses import replace

    pair = load_pair_config("qwen2.5-coder-0.5b-1.5b-trtllm")
    pair = replace(pair, draft=replace(pair.draft, quantization=quantization))
    plan = plan_pair(pair, Path("engines"), Path(".cache/pearl"))
    draft_convert, target_convert = (plan.lanes[role][0] for role in ("draft", "target"))
    assert draft_convert.what.endswith(f"weight-only {algo}") and "weight-only" not in target_convert.what
