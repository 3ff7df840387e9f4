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
from pearl.profiling import recommended_gamma, speed_ratio

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


def profile_pair(pair_dir: Path, max_draft_len: int) -> dict:
    """Draft and target step times, the target's cost to verify k = 1..max_draft_len tokens, and gamma."""
    config, _ = load_pair(pair_dir)
    with Engine(config) as engine:
        seconds = engine.world.profile({"draft": 1, "target": max_draft_len}, steps=STEPS)
    draft_step, verify = seconds["draft"][0], seconds["target"]
    return {
        "draft_step_s": draft_step,
        "target_step_s": verify[0],
        "target_verify_s": verify,  # [k-1]: seconds for the target to take k new tokens
        "speed_ratio": speed_ratio(draft_step, verify[0]),
        "recommended_gamma": recommended_gamma(draft_step, verify),
        "threads_per_rank": config.threads_per_rank,
        "draft_hardware": hardware(config.draft.device),
        "target_hardware": hardware(config.target.device),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
