"""LLM metrics for the OpenAI-compatible API from AIPerf (genai-perf's successor): time to first token,
inter-token latency, request latency and output tokens/s, counted with the engine's own (local) tokenizer,
and AIPerf's speculative-decoding figures, which it reads from our responses' ``metrics.speculative_decoding``
(vLLM's per-request shape).

AIPerf lives in its own venv (``make aiperf``, requirements-aiperf.txt) and talks to the frontend that
``pearl serve`` starts (``pearl.serving.openai_app``): ``/v1/chat/completions``, streamed, fed with the same
HumanEval prompts as the perf_analyzer runs (``--input-file``, one ``{"text": ...}`` per line) and the same
max tokens (``max_completion_tokens``), at temperature 0. Nothing is fetched: the tokenizer is the target's
folder, and server metrics and GPU telemetry scraping are off.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from pearl_bench.genai_perf import METRICS, find_tool, write_prompts
from pearl_bench.perf import PerfError
from pearl_bench.prompts import Prompt

# AIPerf keeps genai-perf's metric tags, so their columns are ours too (genai_perf.METRICS)
# its speculative-decoding figures, present when the responses carried them
SPEC_DECODE = {
    "spec_decode_acceptance_length": ("mean_acceptance_length", "avg"),  # per request, averaged
    "spec_decode_overall_draft_acceptance_rate": ("draft_acceptance_rate_pct", "avg"),  # pooled accepted / drafted
}
# greedy; no usage chunk: AIPerf keeps a request's speculative-decoding figures only when one chunk carries
# them, and with include_usage our last chunk and the usage chunk both do (tokens are counted with the tokenizer)
EXTRA_INPUTS = {"temperature": 0, "stream_options": {"include_usage": False}}


def find_aiperf(command: str) -> str:
    return find_tool(command, "aiperf")


def run_aiperf_point(aiperf: str, url: str, model: str, tokenizer: Path, out_dir: Path, prompts: list[Prompt],
                     max_tokens: int, concurrency: int, request_count: int, decoding: dict | None = None) -> dict:
    """One streamed AIPerf measurement of the chat endpoint at ``url`` (http://host:port, no /v1) at a
    concurrency; its artifacts stay under out_dir/aiperf; ``decoding``: more of the ensemble's inputs for every
    request (``num_draft_tokens``), as body fields (pearl.serving.openai_protocol)."""
    artifacts = out_dir / "aiperf"
    input_file = write_prompts(artifacts, prompts)
    run_dir = artifacts / f"c{concurrency}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a run before left its exports
    extra_inputs = json.dumps({**EXTRA_INPUTS, **(decoding or {})})
    command = [aiperf, "profile", "-m", model, "--endpoint-type", "chat", "--streaming", "-u", url,
               "--tokenizer", str(tokenizer.resolve()), "--input-file", str(input_file.resolve()),
               "--custom-dataset-type", "single_turn", "--dataset-sampling-strategy", "sequential",
               "--concurrency", str(concurrency), "--request-count", str(request_count),
               "--output-tokens-mean", str(max_tokens), "--extra-inputs", extra_inputs, "--no-server-metrics",
               "--no-gpu-telemetry", "--ui-type", "none", "--artifact-dir", str(run_dir.resolve())]
    # no HF_HUB_OFFLINE: AIPerf 0.13 then looks a tokenizer up in the hub's cache only, where a folder is not;
    # an absolute folder is loaded from disk without a hub lookup
    result = subprocess.run(command, capture_output=True, text=True)
    (artifacts / f"aiperf_c{concurrency}.log").write_text(result.stdout + result.stderr)
    exports = sorted(run_dir.rglob("profile_export_aiperf.json"))
    if result.returncode != 0 or not exports:
        raise PerfError(f"aiperf failed ({result.returncode}):\n{(result.stdout + result.stderr)[-3000:]}")
    return {"concurrency": concurrency, **parse_export(exports[-1])}


def parse_export(path: Path) -> dict[str, float]:
    """Our columns from AIPerf's profile_export_aiperf.json (latencies in ms; rates in percent)."""
    metrics = json.loads(path.read_text())  # the summary's metrics, by tag
    missing = [name for name in METRICS if name not in metrics]
    if missing:
        raise PerfError(f"{path} lacks {missing}: not an AIPerf 0.13 export, or no request succeeded?")
    row = {column: float(metrics[name][statistic]) for name, (column, statistic) in METRICS.items()}
    row.update({column: float(metrics[name][statistic]) for name, (column, statistic) in SPEC_DECODE.items()
                if name in metrics})
    return row
