"""``make soak``: hold the server under perf_analyzer load for a while and watch for errors, throughput drift
and memory growth; with ``--kill-every``, also kill a worker rank now and then and count what it cost.

Load runs in windows (perf_analyzer at a fixed concurrency, a fixed number of requests each); between
them the server's Prometheus counters give generated tokens/s and failed requests, and a sampler thread
records the resident memory of the server's whole process tree (server, python stubs, MPI ranks) every few
seconds. Memory growth compares the last window to the first one after warm-up (target: at most 5%).

Kills (``RankKiller``: SIGKILL to one of the world's ranks, target and draft in turn): the requests in flight
should resume in the new world, so none is lost (``pearl_requests_failed_total`` does not move; target 0)
and each streamed request sees a pause: per kill, the longest gap between two responses of a request that
spans the kill, from perf_analyzer's per-response timestamps.
"""
from __future__ import annotations

import json
import os
import signal
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


def metric_total(metrics_url: str, name: str) -> float:
    """A pearl metric summed over its labels."""
    text = urllib.request.urlopen(f"http://{metrics_url}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def worker_ranks(server_pid: int) -> list[int]:
    """The MPI worker ranks below the server, oldest first."""
    ranks = []
    for pid in process_tree(server_pid):
        try:
            if b"pearl.ranks.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                started = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
                ranks.append((started, pid))
        except OSError:
            continue
    return [pid for _, pid in sorted(ranks)]


def serving_ranks(server_pid: int) -> list[int]:
    """The serving world's two ranks, by pid: the oldest ones (a spare world always starts after the world it
    stands in for, so the oldest living world is the one serving)."""
    return sorted(worker_ranks(server_pid)[:2])


class RankKiller(threading.Thread):
    """SIGKILL one of the serving world's ranks every ``every_s`` seconds, target and draft in turn (never a
    spare world's);
    ``kills``: the wall-clock times (time.time()) of the kills."""

    def __init__(self, server_pid: int, every_s: float) -> None:
        super().__init__(daemon=True)
        self.server_pid, self.every_s = server_pid, every_s
        self.kills: list[float] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.every_s):
            ranks = serving_ranks(self.server_pid)
            if len(ranks) < 2:  # a world is starting: the next period kills one of the new one
                continue
            os.kill(ranks[len(self.kills) % len(ranks)], signal.SIGKILL)
            self.kills.append(time.time())
            print(json.dumps({"kill_at_s": round(self.kills[-1], 3)}), flush=True)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def resume_pauses(out: Path, kills: list[float]) -> list[dict]:
    """Per kill: the longest gap (s) between two responses of a streamed request that spans it (None: no
    request was in flight), from every window's perf_analyzer profile export (epoch-ns timestamps)."""
    requests = []
    for profile in sorted(out.glob("window*/profile_*.json")):
        for experiment in json.loads(profile.read_text()).get("experiments", []):
            for request in experiment.get("requests", []):
                times = [request["timestamp"], *request.get("response_timestamps", [])]
                requests.append([t / 1e9 for t in times])
    pauses = []
    for kill in kills:
        gaps = [b - a for times in requests for a, b in zip(times, times[1:]) if a <= kill < b]
        pauses.append({"kill_at": kill, "pause_s": max(gaps) if gaps else None, "requests_in_flight": len(gaps)})
    return pauses


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
             duration_s: float, requests_per_window: int, warmup_windows: int = 1,
             kill_every_s: float | None = None) -> dict:
    sampler = MemorySampler(server.process.pid)
    sampler.start()
    killer = RankKiller(server.process.pid, kill_every_s) if kill_every_s else None
    windows, start = [], time.monotonic()
    metrics_url = f"{server.host}:{server.metrics_port}"
    if killer is not None:
        killer.start()
    try:
        while time.monotonic() - start < duration_s or len(windows) <= warmup_windows:
            t0, tokens0 = time.monotonic(), metric_total(metrics_url, "pearl_generated_tokens_total")
            failed0 = metric_total(metrics_url, "pearl_requests_failed_total")
            error = None
            window_dir = out / f"window{len(windows):03d}"  # perf_analyzer's raw files, kept per window
            window_dir.mkdir(parents=True, exist_ok=True)
            try:
                point = run_point(server.grpc_url, window_dir, cache_dir, prompts, max_tokens, True, concurrency,
                                  requests_per_window).to_dict()
            except PerfError as exc:
                point, error = {}, str(exc)[-500:]
            elapsed = time.monotonic() - t0
            tokens = metric_total(metrics_url, "pearl_generated_tokens_total") - tokens0
            windows.append({"t_s": round(t0 - start, 1), "window_s": elapsed, "error": error,
                            "tokens_per_s": tokens / elapsed, **point, "server_ready": server.ready(),
                            "failed": metric_total(metrics_url, "pearl_requests_failed_total") - failed0})
            print(json.dumps(windows[-1]), flush=True)
    finally:
        if killer is not None:
            killer.stop()
        sampler.stop()
    summary = summarize(windows, sampler.samples, warmup_windows)
    if killer is not None:
        summary["kills"] = resume_pauses(out, killer.kills)
        summary["kill_every_s"] = kill_every_s
    return summary


def summarize(windows: list[dict], memory: list[tuple[float, int]], warmup_windows: int) -> dict:
    warm_from = windows[warmup_windows]["t_s"] if len(windows) > warmup_windows else 0.0
    warm = [rss for t, rss in memory if t >= warm_from]
    window = max(1, len(warm) // 5)  # compare a fifth of the samples at each end
    first, last = (sum(warm[:window]) / window, sum(warm[-window:]) / window) if warm else (0, 0)
    growth = (last - first) / first if first else 0.0
    return {"windows": windows, "memory": [{"t_s": round(t, 1), "rss_bytes": rss} for t, rss in memory],
            "errors": sum(1 for w in windows if w["error"]), "memory_growth": growth,
            "memory_growth_target": GROWTH_TARGET, "lost_requests": int(sum(w["failed"] for w in windows))}


def write_report(summary: dict, out: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "soak.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"# {title}", "", f"errors: {summary['errors']} (target 0); lost requests: "
             f"{summary['lost_requests']} (target 0); memory growth after warm-up: "
             f"{100 * summary['memory_growth']:.1f}% (target <= {100 * GROWTH_TARGET:.0f}%)", ""]
    if "kills" in summary:
        pauses = [k["pause_s"] for k in summary["kills"] if k["pause_s"] is not None]
        lines += [f"rank kills: {len(summary['kills'])} (every {summary['kill_every_s']:g} s); pause per resume: "
                  + (f"{min(pauses):.1f}-{max(pauses):.1f} s, mean {sum(pauses) / len(pauses):.1f} s"
                     if pauses else "none measured (no request that spanned a kill finished)"), ""]
    lines += ["| t (s) | tokens/s | requests/s | p50 ms | failed | error |", "|---|---|---|---|---|---|"]
    for w in summary["windows"]:
        lines.append(f"| {w['t_s']} | {w['tokens_per_s']:.2f} | {w.get('requests_per_s', 0):.3f} | "
                     f"{w.get('p50_ms', 0):.0f} | {w['failed']:.0f} | {table_cell(w['error'] or '')} |")
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


def table_cell(text: str, width: int = 200) -> str:
    """One Markdown table cell: perf_analyzer's multi-line error on one line, pipes escaped, its end kept."""
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= width else "..." + text[-width:]
