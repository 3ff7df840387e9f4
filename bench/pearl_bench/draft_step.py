"""What the draft's engine buys: its decode step as served (its quantization, this host's kernels, or llama.cpp)
against the same draft in the pair's dtype, with torch's default linears and with the host's best float
kernels, each on the one core PEARL gives the draft."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from pearl.backends import load_backend
from pearl.engine_files import load_pair, pair_models
from pearl.profiling import forward_seconds


def draft_steps(engine_dir: Path, cache_dir: Path, steps: int = 5) -> dict[str, float]:
    """Seconds of one draft decode step per variant: "served", "<dtype>, default linears", "<dtype>, auto"."""
    from pearl_build.sources import Source, resolve

    config, _ = load_pair(engine_dir)
    _, info = pair_models(engine_dir)["draft"]
    source = resolve(Source.from_dict(info["source"]), cache_dir).path
    # the same draft as a torch model (a llama_cpp draft's GGUF through transformers), in the pair's dtype
    unquantized = replace(config.draft, path=str(source), num_layers=info["num_layers"], backend="torch",
                          dtype=config.target.dtype)
    variants = {"served": config.draft,
                f"{unquantized.dtype}, default linears": replace(unquantized, cpu_linear="default"),
                f"{unquantized.dtype}, cpu_linear auto": replace(unquantized, cpu_linear="auto")}
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads_per_rank)
    try:
        seconds = {}
        for name, spec in variants.items():
            backend = load_backend(spec)
            seconds[name] = forward_seconds(backend, 1, steps)[0]
            del backend
        return seconds
    finally:
        torch.set_num_threads(threads)


def lines(seconds: dict[str, float], target: float = 2.5) -> list[str]:
    served = seconds["served"]
    out = [f"draft step as served {1000 * served:.1f} ms"]
    for name, value in seconds.items():
        if name != "served":
            ratio = value / served
            out.append(f"draft step {name} {1000 * value:.1f} ms: served is {ratio:.2f}x faster"
                       + (f" (target >= {target}x: {'met' if ratio >= target else 'not met'})"
                          if name.endswith("default linears") else ""))
    return out
