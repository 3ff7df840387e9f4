"""LLM metrics for the served ensemble from genai-perf: time to first token, inter-token latency and output
tokens/s, counted with the engine's own (local) tokenizer.

genai-perf lives in its own venv (``make genai-perf``; its pandas/plotly/transformers-5 stack would clash with
the runtime's pins) and drives perf_analyzer, which it looks up on PATH: the 2.51 binary from
:func:`pearl_bench.perf.perf_analyzer` is put first there. It talks to the ensemble with TRT-LLM's tensor
names (``--endpoint-type kserve --backend tensorrtllm``), streamed, fed with the same HumanEval prompts as the
perf_analyzer runs (``--input-file``, one ``{"text": ...}`` per line).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from pearl_bench.perf import PerfError, perf_analyzer
from pearl_bench.prompts import Prompt

# genai-perf's metric name -> (our column, the statistic we keep)
METRICS = {
    "time_to_first_token": ("time_to_first_token_ms", "avg"),
    "inter_token_latency": ("inter_token_latency_ms", "avg"),
    "request_latency": ("request_latency_ms", "avg"),
    "output_token_throughput": ("output_tokens_per_s", "avg"),
    "output_token_throughput_per_user": ("output_tokens_per_s_per_user", "avg"),
    "output_sequence_length": ("output_tokens_mean", "avg"),
    "request_throughput": ("requests_per_s", "avg"),
}


def find_tool(command: str, name: str) -> str:
    """A perf tool's executable (genai-perf, aiperf): a path, or a name on PATH; each has its own venv."""
    found = command if Path(command).is_file() else shutil.which(command)
    if found is None:
        raise PerfError(f"{name} not found at {command!r}: run `make {name}` (its own venv, "
                        f"requirements-{name}.txt) or pass --{name} PATH; --no-{name} skips it")
    return found


def find_genai_perf(command: str) -> str:
    return find_tool(command, "genai-perf")


def write_prompts(artifacts: Path, prompts: list[Prompt]) -> Path:
    """The prompts as the perf tools' --input-file: one {"text": ...} per line."""
    artifacts.mkdir(parents=True, exist_ok=True)
    input_file = artifacts / "prompts.jsonl"
    input_file.write_text("".join(json.dumps({"text": p.text}) + "\n" for p in prompts))
    return input_file


def run_genai_point(genai_perf: str, url: str, tokenizer: Path, out_dir: Path, cache_dir: Path,
                    prompts: list[Prompt], max_tokens: int, concurrency: int, request_count: int,
                    decoding: dict | None = None, model: str = "ensemble") -> dict:
    """One streamed genai-perf measurement at a concurrency; its artifacts stay under out_dir/genai_perf;
    ``decoding``: more of the ensemble's inputs for every request (``num_draft_tokens``)."""
    binary, env = perf_analyzer(cache_dir)
    env["PATH"] = os.pathsep.join([str(Path(binary).parent), os.environ.get("PATH", "")])
    artifacts = out_dir / "genai_perf"
    input_file = write_prompts(artifacts, prompts)
    # no --output-tokens-mean-deterministic: it sends `min_length`, an input TRT-LLM's ensemble renamed
    # to `min_tokens`; generation may end at EOS before max_tokens, and genai-perf counts what came back
    command = [genai_perf, "profile", "-m", model, "--endpoint-type", "kserve", "--backend", "tensorrtllm",
               "--streaming", "-u", url, "--tokenizer", str(tokenizer), "--input-file", str(input_file),
               "--concurrency", str(concurrency), "--request-count", str(request_count),
               "--warmup-request-count", "0", "--output-tokens-mean", str(max_tokens),
               "--artifact-dir", str(artifacts / f"c{concurrency}")]
    for name, value in (decoding or {}).items():
        command += ["--extra-inputs", f"{name}:{value}"]
    result = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True)
    (artifacts / f"genai_perf_c{concurrency}.log").write_text(result.stdout + result.stderr)
    exports = sorted((artifacts / f"c{concurrency}").glob("*/profile_export_genai_perf.json"))
    if result.returncode != 0 or not exports:
        raise PerfError(f"genai-perf failed ({result.returncode}):\n{(result.stdout + result.stderr)[-3000:]}")
    return {"concurrency": concurrency, **parse_export(exports[-1])}


def parse_export(path: Path) -> dict[str, float]:
    """Our columns from genai-perf's profile_export_genai_perf.json (latencies in ms)."""
    data = json.loads(path.read_text())
    missing = [name for name in METRICS if name not in data]
    if missing:
        raise PerfError(f"{path} lacks {missing}: not a genai-perf 0.0.16 export?")
    return {column: float(data[name][statistic]) for name, (column, statistic) in METRICS.items()}
