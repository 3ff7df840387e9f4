"""Throughput and latency of the batched LLM at a set of concurrencies (continuous batching), on HumanEval.

Closed loop, as perf_analyzer runs it: at concurrency c, c clients each send a request, wait for its last
token and send the next, until the level's requests are done (every level serves the same prompts, in
order). Per level: output tokens/s over the level's wall time, request latency (mean, p50), time to first
token, and the mean number of sequences per round on the ranks. The issue's target (c8 >= 3x the tokens/s
of c1, latency <= 2x) is printed and recorded, never asserted.
"""
from __future__ import annotations

import json
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pearl.params import SamplingParams


@dataclass(frozen=True)
class Level:
    concurrency: int
    requests: int
    output_tokens: int
    wall_s: float
    tokens_per_s: float
    latency_mean_s: float
    latency_p50_s: float
    ttft_mean_s: float
    mean_batch_size: float


def requests_for(concurrency: int, minimum: int) -> int:
    """A level's requests: at least ``minimum``, and a whole number of rounds of its clients."""
    return concurrency * max(1, -(-minimum // concurrency))


def run_level(llm, prompts: list[list[int]], concurrency: int, requests: int, sampling: SamplingParams,
              mode: str = "pearl", gamma: int | str = "auto") -> Level:
    todo = iter(range(requests))
    lock = threading.Lock()
    done: list[tuple[float, float, int, float]] = []  # latency, ttft, tokens, mean batch size

    def client() -> None:
        while True:
            with lock:
                index = next(todo, None)
            if index is None:
                return
            start = time.perf_counter()
            stream = llm.generate(prompts[index % len(prompts)], sampling, mode=mode, gamma=gamma)
            first = None
            for _ in stream:
                first = first or time.perf_counter() - start
            latency = time.perf_counter() - start
            with lock:
                done.append((latency, first or latency, len(stream.token_ids), stream.stats.mean_batch_size))

    start = time.perf_counter()
    clients = [threading.Thread(target=client, name=f"client-{i}") for i in range(concurrency)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    wall = time.perf_counter() - start
    latencies = [d[0] for d in done]
    tokens = sum(d[2] for d in done)
    return Level(concurrency, len(done), tokens, wall, tokens / wall, statistics.mean(latencies),
                 statistics.median(latencies), statistics.mean(d[1] for d in done),
                 statistics.mean(d[3] for d in done))


def target_check(levels: list[Level], base: int = 1, loaded: int = 8) -> dict | None:
    """The issue's target: at ``loaded`` concurrency >= 3x the tokens/s of ``base``, latency <= 2x."""
    by_c = {level.concurrency: level for level in levels}
    if base not in by_c or loaded not in by_c:
        return None
    throughput = by_c[loaded].tokens_per_s / by_c[base].tokens_per_s
    latency = by_c[loaded].latency_mean_s / by_c[base].latency_mean_s
    return {"throughput_ratio": throughput, "latency_ratio": latency,
            "met": throughput >= 3.0 and latency <= 2.0, "base": base, "loaded": loaded}


def write_report(summary: dict, out: Path, title: str) -> list[Path]:
    """summary.json, summary.md (a table) and concurrency.png (tokens/s and latency against concurrency)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"# {title}", "", f"{summary['mode']} (gamma {summary['gamma']}), {summary['prompts']} HumanEval "
             f"prompts, max_tokens {summary['max_tokens']}, max_batch_size {summary['max_batch_size']}, closed loop",
             "", "| concurrency | requests | output tokens/s | latency mean s | latency p50 s | TTFT s | "
             "sequences per round |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {lv['concurrency']} | {lv['requests']} | {lv['tokens_per_s']:.2f} | {lv['latency_mean_s']:.1f} | "
              f"{lv['latency_p50_s']:.1f} | {lv['ttft_mean_s']:.1f} | {lv['mean_batch_size']:.2f} |"
              for lv in summary["levels"]]
    if (check := summary.get("target")) is not None:
        lines += ["", f"Target (c{check['loaded']} vs c{check['base']}: >= 3x tokens/s, <= 2x latency): "
                  f"{check['throughput_ratio']:.2f}x tokens/s, {check['latency_ratio']:.2f}x latency -> "
                  f"{'met' if check['met'] else 'NOT met'}"]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    chart(summary["levels"], out / "concurrency.png")
    return [out / "summary.json", out / "summary.md", out / "concurrency.png"]


def chart(levels: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, left = plt.subplots(figsize=(6, 4))
    xs = [lv["concurrency"] for lv in levels]
    left.plot(xs, [lv["tokens_per_s"] for lv in levels], marker="o", color="tab:blue")
    left.set_xlabel("concurrency")
    left.set_ylabel("output tokens/s", color="tab:blue")
    left.set_xscale("log", base=2)
    right = left.twinx()
    right.plot(xs, [lv["latency_mean_s"] for lv in levels], marker="s", color="tab:red")
    right.set_ylabel("mean request latency (s)", color="tab:red")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarize(levels: list[Level], **fields) -> dict:
    return {**fields, "levels": [asdict(level) for level in levels], "target": target_check(levels)}
