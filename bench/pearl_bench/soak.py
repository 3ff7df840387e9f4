"""``make soak``: hold the server under perf_analyzer load for a while and watch for errors, throughput drift
and memory growth.

Load runs in windows (perf_analyzer at a fixed concurrency, a fixed number of requests each); between
them the server's Prometheus counters give generated tokens/s, and a sampler thread records the resident
memory of the server's whole process tree (server, python stubs, MPI ranks) every few seconds. Memory
growth compares the last window to the first one after warm-up (target: at most 5%).
"""
from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

from pearl_bench.perf import PerfError, run_point
from pearl_bench.prompts import Prompt
from pearl.processes import process_tree

GROWTH_TARGET = 0.05


def tree_rss_bytes(pid: int) -> int:
    total = 0
    for member in process_tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def generated_tokens(metrics_url: str) -> float:
    text = urllib.request.urlopen(f"http://{metrics_url}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("pearl_generated_tokens_total"))


class MemorySampler(threading.Thread):
    def __init__(self, pid: int, every_s: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.samples: list[tuple[float, int]] = []
        self._halt = threading.Event()  # (Thread has a _stop of its own)

    def run(self) -> None:
        start = time.monotonic()
        while not self._halt.wait(self.every_s if self.samples else 0):
            self.samples.append((time.monotonic() - start, tree_rss_bytes(self.pid)))

    def stop(self) -> None:
        self._halt.set()
        self.join()


def run_soak(server, out: Path, cache_dir: Path, prompts: list[Prompt], max_tokens: int, concurrency: int,
         duration_s: float, requests_per_window: int, warmup_windows: int = 1) -> dict:
    sampler = MemorySampler(server.process.pid)
    sampler.start()
    windows, start = [], time.monotonic()
    metrics_url = f"{server.host}:{server.metrics_port}"
    try:
        while time.monotonic() - start < duration_s or len(windows) <= warmup_windows:
            t0, tokens0 = time.monotonic(), generated_tokens(metrics_url)
            error = None
            window_dir = out / f"window{len(windows):03d}"  # perf_analyzer's raw files, kept per window
            window_dir.mkdir(parents=True, exist_ok=True)
            try:
                point = run_point(server.grpc_url, window_dir, cache_dir, prompts, max_tokens, True, concurrency,
                                  requests_per_window).to_dict()
            except PerfError as exc:
                point, error = {}, str(exc)[-500:]
            elapsed = time.monotonic() - t0
            windows.append({"t_s": round(t0 - start, 1), "window_s": elapsed, "error": error,
                            "tokens_per_s": (generated_tokens(metrics_url) - tokens0) / elapsed, **point,
                            "server_ready": server.ready()})
            print(json.dumps(windows[-1]), flush=True)
    finally:
        sampler.stop()
    return summarize(windows, sampler.samples, warmup_windows)


def summarize(windows: list[dict], memory: list[tuple[float, int]], warmup_windows: int) -> dict:
    warm_from = windows[warmup_windows]["t_s"] if len(windows) > warmup_windows else 0.0
    warm = [rss for t, rss in memory if t >= warm_from]
    window = max(1, len(warm) // 5)  # compare a fifth of the samples at each end
    first, last = (sum(warm[:window]) / window, sum(warm[-window:]) / window) if warm else (0, 0)
    growth = (last - first) / first if first else 0.0
    return {"windows": windows, "memory": [{"t_s": round(t, 1), "rss_bytes": rss} for t, rss in memory],
            "errors": sum(1 for w in windows if w["error"]), "memory_growth": growth,
            "memory_growth_target": GROWTH_TARGET}


def write_report(summary: dict, out: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "soak.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"# {title}", "", f"errors: {summary['errors']} (target 0); memory growth after warm-up: "
             f"{100 * summary['memory_growth']:.1f}% (target <= {100 * GROWTH_TARGET:.0f}%)", "",
             "| t (s) | tokens/s | requests/s | p50 ms | error |", "|---|---|---|---|---|"]
    for w in summary["windows"]:
        lines.append(f"| {w['t_s']} | {w['tokens_per_s']:.2f} | {w.get('requests_per_s', 0):.3f} | "
                     f"{w.get('p50_ms', 0):.0f} | {w['error'] or ''} |")
    (out / "soak.md").write_text("\n".join(lines) + "\n")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.plot([w["t_s"] for w in summary["windows"]], [w["tokens_per_s"] for w in summary["windows"]], marker="o")
    top.set_ylabel("generated tokens/s")
    bottom.plot([m["t_s"] for m in summary["memory"]], [m["rss_bytes"] / 2**30 for m in summary["memory"]])
    bottom.set_ylabel("server tree RSS (GiB)")
    bottom.set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(out / "soak.png", dpi=120)
    plt.close(fig)
