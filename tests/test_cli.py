"""`python -m pearl generate` as a user runs it: real SmolLM2 weights, JSON and text output, bad arguments."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SMOLLM2_DRAFT_LAYERS

pytestmark = pytest.mark.mpi


def pearl(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "pearl", "generate", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smol_args(smollm2):
    return ["--draft", smollm2, "--draft-layers", SMOLLM2_DRAFT_LAYERS, "--target", smollm2]


def test_json_output_is_lossless_and_complete(smol_args, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "def fibonacci(n):"}) + "\n")
    runs = {}
    for mode in ("ar", "pearl"):
        result = pearl(*smol_args, "--mode", mode, "--gamma", 3, "--max-tokens", 24, "--json",
                       "--prompt", "The capital of France is", "--prompts-file", prompts)
        assert result.returncode == 0, result.stderr
        runs[mode] = [json.loads(line) for line in result.stdout.splitlines()]  # nothing but JSON
    assert [r["prompt"] for r in runs["pearl"]] == ["The capital of France is", "def fibonacci(n):"]
    for ar, pl in zip(runs["ar"], runs["pearl"]):
        assert pl["token_ids"] == ar["token_ids"] and pl["text"] == ar["text"] and pl["text"]
        stats = pl["stats"]
        assert stats["generated_tokens"] == len(pl["token_ids"]) and stats["wall_s"] > 0
        for key in ("tokens_per_s", "target_forwards", "draft_forwards", "tokens_per_target_forward",
                    "mean_accepted_length", "acceptance_rate"):
            assert key in stats
        assert 0 < stats["acceptance_rate"] < 1


def test_text_mode_streams_then_prints_statistics(smol_args):
    result = pearl(*smol_args, "--max-tokens", 16, "--chat", "--verbose", "--prompt", "Say hi")
    assert result.returncode == 0, result.stderr
    assert "tokens/s" in result.stdout and "mean accepted length" in result.stdout
    assert "round overhead" in result.stdout


def test_workers_launched_by_mpiexec(smollm2_engines):
    mpiexec = Path(sys.executable).parent / "mpiexec"  # MPICH's, installed in the venv
    command = [str(mpiexec), "-n", "1", sys.executable, "-m", "pearl", "generate", "--engines", str(smollm2_engines),
               "--max-tokens", "8", "--json", "--prompt", "Hello", ":", "-n", "2", sys.executable, "-m",
               "pearl.ranks.worker"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["stats"]["generated_tokens"] == 8


@pytest.mark.parametrize("args, message", [
    (["--mode", "beam"], "invalid choice: 'beam'"),
    (["--gamma", "0"], "must be >= 1"),
    (["--max-tokens", "0"], "must be >= 1"),
    (["--top-p", "1.5"], "top_p must be in (0, 1]"),
    (["--temperature", "-1"], "temperature must be >= 0"),
])
def test_bad_arguments_give_a_clear_message(tiny, args, message):
    result = pearl("--draft", tiny["target"], "--target", tiny["target"], "--prompt", "x", *args)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_model_path(tiny, tmp_path):
    result = pearl("--draft", tmp_path / "missing", "--target", tiny["target"], "--prompt", "x")
    assert result.returncode == 2 and "model path does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_mismatched_vocabularies(tiny):
    result = pearl("--draft", tiny["target"], "--target", tiny["other_vocab"], "--prompt", "x")
    assert result.returncode == 2 and "vocabularies must be equal" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("extra, message", [
    (["--draft", "x"], "--engines already names the models"),
    (["--device", "cpu"], "drop --device/--dtype"),
])
def test_engines_conflicts(smollm2_engines, extra, message):
    result = pearl("--engines", smollm2_engines, "--prompt", "x", *extra)
    assert result.returncode == 2 and message in result.stderr


def test_engines_that_are_not_a_pair(tmp_path):
    result = pearl("--engines", tmp_path, "--prompt", "x")
    assert result.returncode == 2 and "is not a pair's engine directory" in result.stderr
    assert "make engines" in result.stderr and "Traceback" not in result.stderr


def test_neither_engines_nor_models():
    result = pearl("--prompt", "x")
    assert result.returncode == 2 and "give --engines DIR, or both --draft and --target" in result.stderr
