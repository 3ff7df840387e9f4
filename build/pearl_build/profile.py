"""Profiling a built pair on this host through the real runtime: the numbers ``gamma=auto`` reads.

The pair is started exactly as serving starts it (an Engine spawning its MPI ranks with the engine's
devices, dtype and threads), then each rank times its own forwards, one rank at a time.
"""
from __future__ import annotations

import platform
import time
from pathlib import Path

from pearl.engine import Engine
from pearl.engine_files import load_pair
from pearl.profiling import DEFAULT_ACCEPTANCE, recommended_gamma, speed_ratio

STEPS = 5  # timed forwards per window length (the median is kept)


def hardware(device: str) -> str:
    """A readable name for a torch device string ("cpu", "cuda:1")."""
    if device != "cpu":
        import torch
        return torch.cuda.get_device_name(torch.device(device)) if torch.cuda.is_available() else device
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def batch_sizes(max_batch_size: int) -> list[int]:
    """The batch sizes a pair's gamma table covers: powers of two up to max_batch_size, and it."""
    sizes = [1]
    while sizes[-1] * 2 <= max_batch_size:
        sizes.append(sizes[-1] * 2)
    return sizes + ([max_batch_size] if sizes[-1] != max_batch_size else [])


def profile_pair(pair_dir: Path, max_draft_len: int, max_batch_size: int = 1,
                 draft_acceptance: float = DEFAULT_ACCEPTANCE) -> dict:
    """Draft and target step times, the target's cost to verify k = 1..max_draft_len tokens, and gamma, for a
    lone sequence (the top-level fields) and for each batch size up to max_batch_size ("by_batch_size"):
    batched, a verify costs more and gamma moves with it (nano-PEARL measures it the same way). Gamma is
    the window with the most expected tokens per second at the pair's ``draft_acceptance``."""
    config, _ = load_pair(pair_dir)
    table = {}
    with Engine(config) as engine:
        for size in batch_sizes(max_batch_size):
            seconds = engine.world.profile({"draft": 1, "target": max_draft_len}, steps=STEPS, batch_size=size)
            draft_step, verify = seconds["draft"][0], seconds["target"]
            table[str(size)] = {  # JSON keys are strings
                "draft_step_s": draft_step,
                "target_verify_s": verify,  # [k-1]: seconds for the target to take k new tokens per sequence
                "speed_ratio": speed_ratio(draft_step, verify[0]),
                "recommended_gamma": recommended_gamma(draft_step, verify, draft_acceptance),
            }
    lone = table["1"]
    return {
        "draft_step_s": lone["draft_step_s"],
        "target_step_s": lone["target_verify_s"][0],
        "target_verify_s": lone["target_verify_s"],
        "speed_ratio": lone["speed_ratio"],
        "recommended_gamma": lone["recommended_gamma"],
        "by_batch_size": table,
        "draft_acceptance": draft_acceptance,
        "threads_per_rank": config.threads_per_rank,
        "draft_hardware": hardware(config.draft.device),
        "target_hardware": hardware(config.target.device),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
