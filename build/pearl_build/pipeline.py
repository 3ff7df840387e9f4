"""Building a pair: each model by its backend's builder, then the pair's own steps (``pair.finish_pair``).

Each step is skipped when its output is current (see artifacts.py), so rerunning ``make engines`` with
unchanged sources does nothing but verify the pinned hashes. A builder (``torch_engine``, ``trtllm``) gives
a model's steps for the plan (``model_steps``) and builds the pair's models (``build_models``).
"""
from __future__ import annotations

from pathlib import Path

from pearl_build import torch_engine, trtllm
from pearl_build.config import PairConfig
from pearl_build.pair import finish_pair
from pearl_build.plan import BuildPlan

BUILDERS = {"torch": torch_engine, "tensorrt_llm": trtllm}


def plan_pair(pair: PairConfig, engines_root: Path, cache_dir: Path) -> BuildPlan:
    """What ``make engines`` does for the pair (``DRY_RUN=1`` prints it)."""
    out = engines_root / pair.name
    builder = BUILDERS[pair.backend]
    lanes = {m.role: builder.model_steps(pair, m, out, cache_dir) for m in pair.models}
    after = ["check that the draft and target tokenizers agree; cut padded vocabularies to the shared size",
             f"write {out / 'engine.json'} (models, threads per rank, shared vocabulary)",
             f"profile the pair through the runtime (per batch size: a draft step, a target verify of "
             f"1..{pair.max_draft_len} tokens, a target step alone) into {out / 'engine.json'}"]
    return BuildPlan(pair, out, lanes, after)


def build_pair(pair: PairConfig, engines_root: Path, cache_dir: Path, force: bool = False,
               profile: bool = True, reprofile: bool = False) -> Path:
    """Build ``engines_root/<pair>`` and return it. ``force`` rebuilds even current engines."""
    out = engines_root / pair.name
    keys = BUILDERS[pair.backend].build_models(pair, out, cache_dir, force)
    finish_pair(pair, out, keys, profile, reprofile or force)
    return out
