"""Profiling a built pair on this host through the real runtime: the numbers ``gamma=auto`` reads.

The pair is started exactly as serving starts it (an LLM spawning its MPI ranks with the engine's
devices, dtype and threads), then each rank times its own forwards: a PEARL round's (a draft step, the
target's verifies) with the other model computing beside it, as in a round; an SD round's and a catch-up's
one rank at a time.
"""
from __future__ import annotations

import math
import platform
import time
from pathlib import Path

from pearl.engine_files import load_pair
from pearl.llm import LLM
from pearl.profiling import DEFAULT_ACCEPTANCE, PROFILE_PROMPT_TOKENS
from pearl.speculation import CostRow, best_window

STEPS = 5  # timed forwards per window length (the median is kept)
FEED_TOKENS = 128  # the draft's catch-up is timed as one forward over this many tokens
# Beside the target's verifies the draft decodes this much longer than they last (its step count comes from
# both timed alone), so that most of its steps, and all of the target's forwards, run beside the other
BESIDE_MARGIN = 1.5


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


def batch_sizes(max_batch_size: int, draft_off_batch_size: int | None = None) -> list[int]:
    """The batch sizes a pair's profile covers: powers of two up to max_batch_size, and it; none from
    draft_off_batch_size on, where no sequence drafts and no window is chosen."""
    sizes = [1]
    while sizes[-1] * 2 <= max_batch_size:
        sizes.append(sizes[-1] * 2)
    sizes += [max_batch_size] if sizes[-1] != max_batch_size else []
    return [size for size in sizes if draft_off_batch_size is None or size < draft_off_batch_size] or [1]


def profile_pair(pair_dir: Path, max_draft_len: int, max_batch_size: int = 1,
                 draft_acceptance: float = DEFAULT_ACCEPTANCE) -> dict:
    """For each batch size up to max_batch_size ("by_batch_size"; a lone sequence's also at the top level):
    a draft step, the target's cost to verify k = 1..max_draft_len tokens per sequence (both on the pair's
    threads per rank, each timed while the other computes: in a PEARL round they run at once, and on a CPU
    they share its memory bandwidth: the default pair's draft step took 51 ms beside the target against 42
    alone), and the same step and verifies on ``target_alone_threads`` (vanilla SD's rounds, where the models
    take turns on every core, timed one at a time; the target's step there is also its decoding alone).
    Batched, a verify costs more and the best window moves with it (nano-PEARL measures it the same way).
    ``recommended_gamma`` is the PEARL window with the most expected tokens per second at the pair's
    ``draft_acceptance``; adaptive requests start from it and move with their own acceptance.
    ``draft_feed_s``: the draft's seconds per token when it feeds ``FEED_TOKENS`` at once (catching up on a
    prompt or on tokens the target decoded alone); ``draft_alone_feed_s`` the same on ``target_alone_threads``
    (a catch-up in an SD round)."""
    config, _ = load_pair(pair_dir)
    table = {}
    with LLM(config) as llm:
        feed = min(FEED_TOKENS, llm.max_seq_len - PROFILE_PROMPT_TOKENS - 1)
        feed_s = llm.world.profile({"draft": feed}, steps=STEPS, feed=True)["draft"][0] / feed
        alone_feed_s = feed_s
        if config.alone_threads != config.threads_per_rank:
            alone_feed_s = llm.world.profile({"draft": feed}, steps=STEPS, feed=True,
                                             threads={"draft": config.alone_threads})["draft"][0] / feed
        for size in batch_sizes(max_batch_size, config.draft_off_batch_size):
            lone = llm.world.profile({"draft": 1, "target": max_draft_len}, steps=STEPS, batch_size=size)
            alone, draft_alone = lone["target"], lone["draft"][0]
            draft_steps = math.ceil(BESIDE_MARGIN * (STEPS + 1) * sum(lone["target"]) / lone["draft"][0])
            seconds = llm.world.profile({"draft": 1, "target": max_draft_len}, batch_size=size, together=True,
                                        steps={"draft": draft_steps, "target": STEPS})
            if config.alone_threads != config.threads_per_rank:
                both = llm.world.profile({"draft": 1, "target": max_draft_len}, steps=STEPS, batch_size=size,
                                         threads={"draft": config.alone_threads, "target": config.alone_threads})
                alone, draft_alone = both["target"], both["draft"][0]
            row = CostRow(seconds["draft"][0], tuple(seconds["target"]), alone[0], tuple(alone), draft_alone)
            table[str(size)] = {  # JSON keys are strings
                "draft_step_s": row.draft_step_s,
                "target_verify_s": list(row.verify_s),  # [k-1]: the target taking k new tokens (beside the draft)
                "target_alone_step_s": row.alone_step_s,
                "target_alone_verify_s": list(row.alone_verify_s),  # the same on target_alone_threads (SD)
                "draft_alone_step_s": row.sd_draft_step,  # a draft step on target_alone_threads (SD: the target waits)
                "speed_ratio": row.verify_s[0] / row.draft_step_s,
                "recommended_gamma": best_window("pearl", draft_acceptance, row, max_draft_len)[0],
            }
    lone = table["1"]
    return {
        "draft_step_s": lone["draft_step_s"],
        "target_step_s": lone["target_verify_s"][0],
        "target_verify_s": lone["target_verify_s"],
        "target_alone_step_s": lone["target_alone_step_s"],
        "target_alone_verify_s": lone["target_alone_verify_s"],
        "draft_feed_s": feed_s,
        "draft_alone_feed_s": alone_feed_s,
        "speed_ratio": lone["speed_ratio"],
        "recommended_gamma": lone["recommended_gamma"],
        "by_batch_size": table,
        "draft_acceptance": draft_acceptance,
        "threads_per_rank": config.threads_per_rank,
        "target_alone_threads": config.alone_threads,
        "draft_hardware": hardware(config.draft.device),
        "target_hardware": hardware(config.target.device),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
