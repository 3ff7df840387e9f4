"""Torch engines: a model converted once into safetensors in the engine dtype, so ranks load it in seconds.

The conversion goes through the runtime's own loader (``pearl.backends.loading``), so a GGUF is
dequantized exactly as the runtime would do it, and a self-draft is cut to its layers before saving. A
quantized model stores its linears in the portable int8 / int4 format of ``pearl.backends.linears`` beside
the rest of its weights, in one safetensors file; engine.json's ``quantization`` tells the loader.
A draft with ``backend: llama_cpp`` keeps its GGUF source as it is instead (``gguf_engine``).
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from pearl.backends.base import ModelSpec
from pearl.backends.linears import quantize_in_place, quantize_linears, use_cpu_kernels
from pearl.backends.loading import load_model
from pearl_build.artifacts import (build_key, finish_model_engine, is_current, partial_folder,
                                   save_engine_tokenizer)
from pearl_build.config import ModelConfig, PairConfig
from pearl_build.gguf_engine import build_gguf_engine
from pearl_build.pair import log
from pearl_build.plan import BuildStep
from pearl_build.sources import Resolved, resolve


def model_steps(pair: PairConfig, model: ModelConfig, out: Path, cache_dir: Path) -> list[BuildStep]:
    fetch = BuildStep(model.role, f"fetch and sha256-check {model.source.location}", cache_dir / "sources")
    if model.backend == "llama_cpp":
        return [fetch, BuildStep(model.role, "link the GGUF as it is + tokenizer + engine.json (llama.cpp runs it "
                                             "on the cpu)", out / model.role)]
    layers = f", first {model.num_layers} layers" if model.num_layers else ""
    quantized = "" if model.quantization == "none" else f", {model.quantization} linears"
    return [fetch,
            BuildStep(model.role, f"convert to {pair.dtype} safetensors{layers}{quantized} + tokenizer + engine.json "
                             f"(runs on {','.join(model.devices)})", out / model.role)]


def build_models(pair: PairConfig, out: Path, cache_dir: Path, force: bool) -> dict[str, str]:
    """Build each model that is not current; return each one's build key."""
    keys = {}
    for model in pair.models:
        resolved = resolve(model.source, cache_dir)
        keys[model.role] = build_key(pair.backend, pair.dtype, pair.max_seq_len, pair.max_draft_len,
                                     model.to_dict(), resolved.fingerprint)
        model_dir = out / model.role
        if not force and is_current(model_dir, keys[model.role]):
            log(f"{model.role}: {model_dir} is up to date")
            continue
        log(f"{model.role}: building {model_dir} from {resolved.path}")
        build = build_gguf_engine if model.backend == "llama_cpp" else build_torch_engine
        build(pair, model, resolved, model_dir, keys[model.role])
    return keys


def build_torch_engine(pair: PairConfig, model: ModelConfig, resolved: Resolved, out_dir: Path,
                       build_key: str) -> dict:
    """Write ``out_dir`` (via a ``.partial`` folder renamed at the end) and return its engine.json."""
    started = time.time()
    partial = partial_folder(out_dir)
    net = load_model(ModelSpec(str(resolved.path), "cpu", pair.dtype, model.num_layers))
    tokenizer = save_engine_tokenizer(model, resolved.path, partial)
    quantization = model.quantization_info
    if model.quantization == "auto":
        seconds = decode_seconds(net, pair, model.group_size)
        kept = replace(model, quantization=choose_quantization(seconds))
        quantization = kept.quantization_info | {"auto_step_s": seconds}
    if quantization["method"] == "none":
        net.save_pretrained(partial, safe_serialization=True)
    else:
        save_quantized(net, quantization["method"], model.group_size, partial)
    return finish_model_engine(
        partial, out_dir, pair, model, resolved, build_key, started,
        backend="torch",
        dtype=pair.dtype,
        architecture=net.config.architectures[0] if net.config.architectures else type(net).__name__,
        num_layers=net.config.num_hidden_layers,
        quantization=quantization,
        vocab_size=net.get_output_embeddings().out_features,
        tokenizer_size=len(tokenizer),
        max_seq_len=min(pair.max_seq_len, int(net.config.max_position_embeddings)))


def save_quantized(net, method: str, group_size: int, folder: Path) -> None:
    """The model's config, and one safetensors file: the quantized linears' portable tensors (their biases
    under their own names), and every other weight as it is (a tied LM head is quantized on its own)."""
    from safetensors.torch import save_file

    quantized = quantize_linears(net, method, group_size)
    linear_weights = {name.rpartition(".")[0] + ".weight" for name in quantized}
    rest = {name: tensor.contiguous() for name, tensor in net.state_dict().items() if name not in linear_weights}
    folder.mkdir(parents=True, exist_ok=True)
    net.config.save_pretrained(folder)
    if getattr(net, "generation_config", None) is not None:
        net.generation_config.save_pretrained(folder)
    save_file(rest | quantized, folder / "model.safetensors", metadata={"format": "pt", "quantization": method})


INT4_MIN_SPEEDUP = 1.15  # int4 must decode this much faster than the best of the others to be kept by auto


def choose_quantization(seconds: dict[str, float]) -> str:
    """What ``quantization: auto`` keeps of the decode steps timed by ``decode_seconds``: the faster of none and
    int8 (int8 weight-only keeps the model's choices, tested, so speed alone decides between them), or int4 where
    it is at least ``INT4_MIN_SPEEDUP`` times as fast as that: 4-bit weights change a few of the model's choices
    (for a draft, how often it is right; for the default pair's Q4_K_M draft in groups of 32, as often as in
    bfloat16 on held-out prompts), so a gain within the noise is not worth them."""
    best = min(("none", "int8"), key=seconds.__getitem__)
    return "int4" if seconds["int4"] * INT4_MIN_SPEEDUP <= seconds[best] else best


def decode_seconds(net, pair: PairConfig, group_size: int) -> dict[str, float]:
    """A decode step of the model unquantized, as int8 and as int4 (in groups of ``group_size``), each with the
    pair's kernels on its threads per rank: what ``quantization: auto`` chooses from."""
    import copy

    import torch

    from pearl.backends.torch_backend import TorchBackend
    from pearl.profiling import forward_seconds

    threads = torch.get_num_threads()
    torch.set_num_threads(pair.threads_per_rank)
    try:
        seconds = {}
        for method in ("none", "int8", "int4"):
            candidate = copy.deepcopy(net)
            if method == "none":
                use_cpu_kernels(candidate, pair.cpu_linear, pair.dtype)
            else:
                quantize_in_place(candidate, method, group_size)
            seconds[method] = forward_seconds(TorchBackend(candidate, pair.attention), max_tokens=1)[0]
            del candidate
        return seconds
    finally:
        torch.set_num_threads(threads)
