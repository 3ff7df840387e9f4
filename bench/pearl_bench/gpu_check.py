"""``scripts/gpu_check.sh``: one prepared check a host with a GPU runs end to end in under 10 minutes.

What it runs is in ``gpu_check.yaml`` beside this module: random-weight pairs (nothing to download), a tiny one
and one shaped like Qwen2.5 0.5B/1.5B, on the torch backend on CUDA (draft on GPU 0 and target on GPU 1, or both
on GPU 0 where there is one GPU), each with ar, sd and pearl: tokens/s, acceptance, round overhead. Where the
pinned TensorRT-LLM imports, the tiny pair is also built with ``make engines``' own code and run. Random weights
say nothing of a real pair's acceptance; this checks the machinery and its overhead on a GPU. One JSON file out.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml

from pearl.backends.base import ModelSpec
from pearl.ranks.config import WorldConfig
from pearl.llm import LLM
from pearl.params import SamplingParams

CONFIG = Path(__file__).with_suffix(".yaml")
# label: (mode, gamma); "gamma" is gpu_check.yaml's fixed window, "auto" the adaptive one (drafting off where
# the target alone is faster). ar comes first: the reference every other run's tokens must equal.
MODES = {"ar": ("ar", "gamma"), "sd": ("sd", "gamma"), "pearl": ("pearl", "gamma"), "pearl_auto": ("pearl", "auto")}


def save_random_model(folder: Path, shape: dict, dtype: str, seed: int, device: str) -> Path:
    """A Qwen2 model of ``shape`` with random weights (initialized on ``device``: fast for 1.5B), and a word-level
    tokenizer over its vocabulary, so both the runtime and a TensorRT-LLM conversion can load the folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(seed)
    config = Qwen2Config(**shape, max_position_embeddings=4096, eos_token_id=shape["vocab_size"] - 1)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(folder)
    words = [f"t{i}" for i in range(shape["vocab_size"] - 1)]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate([*words, "</s>"])}, unk_token=words[0]))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=core, eos_token="</s>", unk_token=words[0]).save_pretrained(folder)
    return folder


def measure(llm: LLM, settings: dict, vocab: int) -> dict:
    """Per mode: one warm-up request, then ``requests`` timed ones of exactly ``max_tokens`` tokens (EOS ignored)."""
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(vocab - 1, (settings["prompt_tokens"],), generator=generator).tolist()
    sampling = SamplingParams(max_tokens=settings["max_tokens"], ignore_eos=True)
    results, ar_tokens = {}, None
    for label, (mode, gamma) in MODES.items():
        gamma = settings["gamma"] if gamma == "gamma" else gamma
        llm.generate(prompt, sampling, mode, gamma).collect()
        streams = [llm.generate(prompt, sampling, mode, gamma).collect() for _ in range(settings["requests"])]
        stats = [stream.stats for stream in streams]
        ar_tokens = ar_tokens or streams[0].token_ids
        results[label] = {
            "same_tokens_as_ar": all(stream.token_ids == ar_tokens for stream in streams),
            "first_difference": first_difference(ar_tokens, [stream.token_ids for stream in streams]),
            "tokens_per_s": sum(s.generated_tokens for s in stats) / sum(s.wall_s for s in stats),
            "round_overhead": sum(s.round_overhead for s in stats) / len(stats),
            "acceptance_rate": sum(s.acceptance_rate for s in stats) / len(stats),
            "tokens_per_target_forward": sum(s.tokens_per_target_forward for s in stats) / len(stats),
            "drafted_rounds": sum(s.drafted_rounds for s in stats) / sum(s.rounds for s in stats),
            "requests": [s.to_dict() for s in stats]}
    return results


def first_difference(reference: list[int], outputs: list[list[int]]) -> int | None:
    """The first token position where any output leaves the reference (greedy on a GPU can differ from ``ar`` at
    a near tie, where a verify's batched kernels and a one-token step round differently), or None."""
    positions = [next((i for i, (a, b) in enumerate(zip(reference, out)) if a != b), None) for out in outputs]
    found = [p for p in positions if p is not None]
    return min(found) if found else None


def torch_pair(folders: dict[str, Path], settings: dict, devices: tuple[str, str]) -> dict:
    config = WorldConfig(draft=ModelSpec(str(folders["draft"]), devices[0], settings["dtype"]),
                         target=ModelSpec(str(folders["target"]), devices[1], settings["dtype"]))
    with LLM(config) as llm:
        return {"devices": list(devices), **measure(llm, settings, llm.vocab_size)}


def trtllm_pair(name: str, folders: dict[str, Path], settings: dict, work: Path, gpus: int) -> dict:
    """Build the pair's TensorRT-LLM engines as ``make engines`` does, then run them."""
    from pearl_build.config import load_pair_config
    from pearl_build.pipeline import build_pair

    config_path = work / f"{name}-trtllm.yaml"
    config_path.write_text(yaml.safe_dump({
        "backend": "tensorrt_llm", "dtype": settings["dtype"], **settings["trtllm_build"],
        "draft": {"devices": [0], "source": {"path": str(folders["draft"])}},
        "target": {"devices": [1], "source": {"path": str(folders["target"])}}}))
    pair = load_pair_config(str(config_path))
    if gpus == 1:  # pair configs keep the models on separate GPUs; a one-GPU check shares GPU 0 on purpose
        pair = replace(pair, target=replace(pair.target, devices=("0",)))
    out = build_pair(pair, work / "engines", work / "cache", profile=False)
    with LLM.from_engine_dir(out) as llm:
        return measure(llm, settings, llm.vocab_size)


def host_facts() -> dict:
    facts = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
             "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
    try:
        import tensorrt_llm
        facts["tensorrt_llm"] = tensorrt_llm.__version__
    except ImportError:
        facts["tensorrt_llm"] = None
    return facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pearl_bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/gpu_check"))
    parser.add_argument("--work", type=Path, default=Path(".cache/pearl/gpu_check"), help="random models, engines")
    parser.add_argument("--pairs", help="comma-separated pair names of gpu_check.yaml (default: all)")
    parser.add_argument("--max-tokens", type=int, help="override gpu_check.yaml's max_tokens")
    parser.add_argument("--requests", type=int, help="override gpu_check.yaml's timed requests per mode")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU in float32: a smoke test of this script")
    args = parser.parse_args(argv)
    settings = yaml.safe_load(CONFIG.read_text())
    settings.update({key: value for key, value in (("max_tokens", args.max_tokens), ("requests", args.requests))
                     if value})
    gpus = torch.cuda.device_count()
    if args.cpu:
        settings["dtype"], devices, gpus = "float32", ("cpu", "cpu"), 0
    elif gpus == 0:
        print("gpu_check: no CUDA GPU here (use --cpu for a smoke test)", file=sys.stderr)
        return 2
    else:
        devices = ("cuda:0", "cuda:1" if gpus > 1 else "cuda:0")
    names = args.pairs.split(",") if args.pairs else list(settings["pairs"])
    report = {"host": host_facts(), "settings": {k: v for k, v in settings.items() if k != "pairs"}, "pairs": {}}
    args.work.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        pair = settings["pairs"][name]
        started = time.perf_counter()
        folders = {role: save_random_model(args.work / name / role, pair[role], settings["dtype"], 2 * index + i,
                                           devices[i]) for i, role in enumerate(("draft", "target"))}
        entry = {"torch": torch_pair(folders, settings, devices)}
        if pair.get("trtllm") and report["host"]["tensorrt_llm"] and gpus:
            entry["tensorrt_llm"] = trtllm_pair(name, folders, settings, args.work, gpus)
        entry["seconds"] = round(time.perf_counter() - started, 1)
        report["pairs"][name] = entry
        summary = ", ".join(f"{mode} {entry['torch'][mode]['tokens_per_s']:.1f} tok/s"
                            + ("" if entry["torch"][mode]["same_tokens_as_ar"] else " (differs from ar)")
                            for mode in MODES)
        print(f"gpu_check: {name} (torch): {summary}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"gpu_check: wrote {args.out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
