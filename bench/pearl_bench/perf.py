"""Load-testing the running server with Triton's own tool: perf_analyzer against the ``ensemble`` over
gRPC (the ensemble is decoupled, so always gRPC streaming), with the ``stream`` input on and off, at a set
of concurrencies, fed with prompts from HumanEval and a fixed ``max_tokens``.

perf_analyzer: on PATH (Triton's SDK container on GPU hosts), else the 2.51 binary the ``tritonclient``
wheel installs into this venv. That one needs ``libb64.so.0d`` and ``libcudart.so.12``, which the
``nvidia-pytriton`` wheel ships under hashed names: they are linked under the expected names.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pearl_bench.prompts import Prompt

LIBRARY_NAMES = {"libb64.so.0d": "libb64-", "libcudart.so.12": "libcudart-"}


class PerfError(RuntimeError):
    """perf_analyzer could not be found or failed."""


def perf_analyzer(cache_dir: Path) -> tuple[str, dict[str, str]]:
    """(binary, extra environment) for perf_analyzer on this host."""
    venv_binary = Path(sys.executable).parent / "perf_analyzer"
    binary = str(venv_binary) if venv_binary.exists() else shutil.which("perf_analyzer")
    if binary is None:
        raise PerfError("perf_analyzer not found: run `make setup` (tritonclient==2.51.0 ships it)")
    if binary != str(venv_binary):
        return binary, {}
    spec = importlib.util.find_spec("pytriton")
    if spec is None:
        raise PerfError("the venv's perf_analyzer needs libraries from nvidia-pytriton; run `make setup`")
    bundled = Path(spec.submodule_search_locations[0]).parent / "nvidia_pytriton.libs"
    links = cache_dir / "perf_analyzer_libs"
    links.mkdir(parents=True, exist_ok=True)
    for name, prefix in LIBRARY_NAMES.items():
        matches = sorted(bundled.glob(f"{prefix}*"))
        if not matches:
            raise PerfError(f"{bundled} has no {prefix}* to provide {name}")
        link = links / name
        if not link.exists():
            link.symlink_to(matches[0])
    path = os.pathsep.join(filter(None, [str(links), os.environ.get("LD_LIBRARY_PATH")]))
    return binary, {"LD_LIBRARY_PATH": path}


def input_data(prompts: list[Prompt], max_tokens: int, stream: bool, decoding: dict | None = None) -> dict:
    """perf_analyzer's --input-data JSON: one entry per prompt, cycled through by the load; ``decoding``: more
    of the ensemble's inputs for every request (``num_draft_tokens``)."""
    extra = {name: [value] for name, value in (decoding or {}).items()}
    return {"data": [{"text_input": [p.text], "max_tokens": [max_tokens], "stream": [stream],
                      "exclude_input_in_output": [True], **extra} for p in prompts]}


@dataclass(frozen=True)
class PerfPoint:
    stream: bool
    concurrency: int
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    avg_ms: float

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def run_point(url: str, out_dir: Path, cache_dir: Path, prompts: list[Prompt], max_tokens: int, stream: bool,
              concurrency: int, requests_per_point: int, model: str = "ensemble",
              decoding: dict | None = None) -> PerfPoint:
    """One perf_analyzer measurement; raw CSV and profile export are kept in out_dir."""
    binary, env = perf_analyzer(cache_dir)
    tag = f"{'stream' if stream else 'nostream'}_c{concurrency}"
    data_file = out_dir / f"input_{'stream' if stream else 'nostream'}.json"
    data_file.write_text(json.dumps(input_data(prompts, max_tokens, stream, decoding)))
    csv_file, profile_file = out_dir / f"perf_{tag}.csv", out_dir / f"profile_{tag}.json"
    profile_file.unlink(missing_ok=True)  # a run before left it: perf_analyzer refuses to overwrite it
    command = [binary, "-m", model, "-u", url, "-i", "grpc", "--streaming", "--input-data", str(data_file),
               "--concurrency-range", str(concurrency), "--request-count", str(requests_per_point),
               "-f", str(csv_file), "--profile-export-file", str(profile_file)]
    result = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True)
    (out_dir / f"perf_{tag}.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0 or not csv_file.exists():
        raise PerfError(f"perf_analyzer failed ({result.returncode}):\n{(result.stdout + result.stderr)[-3000:]}")
    return parse_csv(csv_file, stream, concurrency)


def parse_csv(path: Path, stream: bool, concurrency: int) -> PerfPoint:
    with open(path) as f:
        row = next(csv.DictReader(f))
    us = lambda key: float(row[key]) / 1000.0  # noqa: E731  (perf_analyzer reports microseconds)
    return PerfPoint(stream, concurrency, float(row["Inferences/Second"]), us("p50 latency"), us("p90 latency"),
                     us("p99 latency"), us("Avg latency") if "Avg latency" in row else us("p50 latency"))


def token_latencies(profile_file: Path) -> dict[str, float]:
    """Mean time to first response and between responses (ms) over a streamed run's requests, from
    perf_analyzer's profile export (each response of a streamed request carries one round's tokens)."""
    data = json.loads(profile_file.read_text())
    first, gaps = [], []
    for experiment in data.get("experiments", []):
        for request in experiment.get("requests", []):
            times = [request["timestamp"], *request.get("response_timestamps", [])]
            if len(times) > 1:
                first.append((times[1] - times[0]) / 1e6)
                gaps += [(b - a) / 1e6 for a, b in zip(times[1:], times[2:])]
    return {"time_to_first_token_ms": statistics.mean(first) if first else None,
            "inter_token_latency_ms": statistics.mean(gaps) if gaps else None}


def chart(points: list[dict], path: Path) -> None:
    """p50 latency against requests/s, one line per stream setting, points labelled by concurrency."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for stream in (False, True):
        series = [p for p in points if p["stream"] == stream]
        ax.plot([p["requests_per_s"] for p in series], [p["p50_ms"] / 1000 for p in series], marker="o",
                label=f"stream={stream}")
        for p in series:
            ax.annotate(f"c={p['concurrency']}", (p["requests_per_s"], p["p50_ms"] / 1000), fontsize=7)
    ax.set_xlabel("requests/s")
    ax.set_ylabel("p50 latency (s)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(summary: dict, out: Path, title: str) -> None:
    """summary.json, summary.md (a table) and latency_throughput.png."""
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    window = summary.get("num_draft_tokens") or "adaptive"
    lines = [f"# {title}", "", f"perf_analyzer: ensemble over gRPC, {summary['prompts']} HumanEval prompts, "
             f"max_tokens {summary['max_tokens']}, draft window {window} (every tool's requests); TTFT and ITL "
             "here are per response (one PEARL round)", "",
             "| stream | concurrency | requests/s | p50 ms | p90 ms | p99 ms | TTFT ms | ITL ms |",
             "|---|---|---|---|---|---|---|---|"]
    for p in summary["points"]:
        ttft, itl = p.get("time_to_first_token_ms"), p.get("inter_token_latency_ms")
        lines.append(f"| {p['stream']} | {p['concurrency']} | {p['requests_per_s']:.3f} | {p['p50_ms']:.0f} | "
                     f"{p['p90_ms']:.0f} | {p['p99_ms']:.0f} | {'' if ttft is None else f'{ttft:.0f}'} | "
                     f"{'' if itl is None else f'{itl:.0f}'} |")
    if summary.get("genai_perf"):
        lines += ["", "genai-perf (streamed, tokens counted with the target's tokenizer; averages)", "",
                  "| concurrency | TTFT ms | ITL ms | request latency ms | output tokens/s | output tokens/s/user "
                  "| output tokens/request |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {g['concurrency']} | {g['time_to_first_token_ms']:.0f} | {g['inter_token_latency_ms']:.0f} | "
                  f"{g['request_latency_ms']:.0f} | {g['output_tokens_per_s']:.2f} | "
                  f"{g['output_tokens_per_s_per_user']:.2f} | {g['output_tokens_mean']:.1f} |"
                  for g in summary["genai_perf"]]
    if summary.get("aiperf"):
        lines += ["", "AIPerf (OpenAI chat endpoint, streamed, temperature 0, tokens counted with the target's "
                  "tokenizer; averages; acceptance from the responses' `metrics.speculative_decoding`)", "",
                  "| concurrency | TTFT ms | ITL ms | request latency ms | output tokens/s | output tokens/s/user "
                  "| output tokens/request | mean acceptance length | draft acceptance % |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {a['concurrency']} | {a['time_to_first_token_ms']:.0f} | {a['inter_token_latency_ms']:.0f} | "
                  f"{a['request_latency_ms']:.0f} | {a['output_tokens_per_s']:.2f} | "
                  f"{a['output_tokens_per_s_per_user']:.2f} | {a['output_tokens_mean']:.1f} | "
                  f"{a.get('mean_acceptance_length', float('nan')):.2f} | "
                  f"{a.get('draft_acceptance_rate_pct', float('nan')):.1f} |" for a in summary["aiperf"]]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    chart(summary["points"], out / "latency_throughput.png")
