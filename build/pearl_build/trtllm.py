"""TensorRT-LLM engines: convert each model to a TRT-LLM checkpoint, then ``trtllm-build`` it, on its own GPU(s).

Per model (one lane; the draft's and the target's lanes run in parallel):
1. ``python -m pearl_build.trtllm convert``: fetch and verify the source, dequantize a GGUF (or cut a
   self-draft's layers) into a Hugging Face folder, convert it rank by rank for its tensor parallelism,
   and keep the tokenizer beside the checkpoint.
2. ``trtllm-build`` with what PEARL needs: a paged KV cache with block reuse (every request resubmits its
   prefix), generation logits (the runtime verifies from logits), and for the target
   ``--speculative_decoding_mode draft_tokens_external --max_draft_len`` (its forward takes the draft window).
3. In-process: copy the tokenizer into the engine folder and write engine.json.

Names checked against NVIDIA/TensorRT-LLM's source (the release pinned in pearl.backends.trtllm_pin, which
``build_pair`` requires):
- ``tensorrt_llm.AutoModelForCausalLM.from_hugging_face(hf_model_or_dir, dtype, mapping=..., quant_config=...)``
  with ``QuantConfig(quant_algo=QuantAlgo.W8A16 | W4A16)`` (tensorrt_llm/models/modeling_utils.py,
  tensorrt_llm/quantization/mode.py) for a quantized model
  (tensorrt_llm/models/automodel.py; picks the class from ``architectures[0]`` via MODEL_MAP in
  tensorrt_llm/models/__init__.py), ``tensorrt_llm.Mapping(world_size, rank, tp_size=...)``
  (tensorrt_llm/mapping.py), ``PretrainedModel.save_checkpoint(output_dir, save_config)``
  (tensorrt_llm/models/modeling_utils.py) - the per-rank loop of docs/source/architecture/workflow.md.
- ``trtllm-build`` flags: tensorrt_llm/commands/build.py and ``add_plugin_argument`` in
  tensorrt_llm/plugin/plugin.py. TP comes from the checkpoint's mapping (no TP flag since 0.12); ``--workers``
  builds ranks in parallel on the visible GPUs. ``--gather_context_logits`` is refused with draft tokens, so
  logits come back as generation logits (see runtime/pearl/backends/trtllm_backend.py).
- examples/draft_target_model/README.md: paged context FMHA for KV reuse, draft_tokens_external and
  max_draft_len on the target, gather_generation_logits for logits.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from pearl.backends import trtllm_pin
from pearl.engine_files import write_engine_json
from pearl_build.artifacts import build_key, file_manifest, is_current
from pearl_build.config import ModelConfig, PairConfig, load_pair_config
from pearl_build.pair import log
from pearl_build.plan import BuildStep, gpu_env
from pearl_build.sources import resolve

# A model's `quantization` as TensorRT-LLM's weight-only QuantAlgo (tensorrt_llm/quantization/mode.py): int8 per
# channel; int4 per channel too (group-wise int4 there needs AWQ/GPTQ calibration; group_size is the torch
# engines' only)
QUANT_ALGOS = {"int8": "W8A16", "int4": "W4A16"}
TOKENIZER_DIR = "tokenizer"  # inside a checkpoint folder: the HF tokenizer and generation config
SOURCE_JSON = "source.json"  # inside a checkpoint folder: the verified source's fingerprint


class TrtllmUnavailable(RuntimeError):
    """A tensorrt_llm pair config on a host where TensorRT-LLM is not importable."""


def checkpoint_dir(out: Path, model: ModelConfig) -> Path:
    return out / f"{model.role}.checkpoint"


def build_command(pair: PairConfig, model: ModelConfig, out: Path) -> list[str]:
    command = ["trtllm-build", "--checkpoint_dir", str(checkpoint_dir(out, model)), "--output_dir",
               str(out / model.role), "--max_batch_size", str(pair.max_batch_size),
               "--max_seq_len", str(pair.max_seq_len),
               # the runtime's length limit is min(max_input_len, max_seq_len - 1): keep the whole max_seq_len usable
               "--max_input_len", str(pair.max_seq_len - 1),
               "--kv_cache_type", "paged", "--use_paged_context_fmha", "enable",
               "--gemm_plugin", "auto", "--gather_generation_logits", "--workers", str(model.tp_size)]
    if model.role == "target":
        command += ["--speculative_decoding_mode", "draft_tokens_external",
                    "--max_draft_len", str(pair.max_draft_len)]
    return command


def model_steps(pair: PairConfig, model: ModelConfig, out: Path, cache_dir: Path) -> list[BuildStep]:
    env = gpu_env(model)
    ckpt = checkpoint_dir(out, model)
    convert = [sys.executable, "-m", "pearl_build.trtllm", "convert", "--config", str(pair.path), "--role",
               model.role, "--cache-dir", str(cache_dir), "--output-dir", str(ckpt)]
    quantized = f", weight-only {QUANT_ALGOS[model.quantization]}" if model.quantization != "none" else ""
    return [BuildStep(model.role, f"convert to a TRT-LLM checkpoint, tp_size {model.tp_size}{quantized}", ckpt,
                 tuple(convert), env),
            BuildStep(model.role, "build the engine", out / model.role, tuple(build_command(pair, model, out)), env),
            BuildStep(model.role, "copy the tokenizer, write engine.json", out / model.role)]


def require_tensorrt_llm(pair: PairConfig) -> None:
    """TensorRT-LLM importable here, and the pinned release (``tensorrt_llm.__version__``), or a clear error."""
    if importlib.util.find_spec("tensorrt_llm") is None:
        raise TrtllmUnavailable(
            f"pair {pair.name} builds TensorRT-LLM engines, but tensorrt_llm is not importable here. Use a GPU host "
            f"with {trtllm_pin.describe()} (`make setup-gpu` there), see the exact plan with "
            f"`make engines PAIR={pair.name} DRY_RUN=1`, or pick a torch pair config for this host")
    import tensorrt_llm
    trtllm_pin.check_version(tensorrt_llm.__version__)


def build_models(pair: PairConfig, out: Path, cache_dir: Path, force: bool) -> dict[str, str]:
    """Build each model that is not current, the two lanes in parallel; return each one's build key."""
    require_tensorrt_llm(pair)
    keys, lanes, errors = {}, [], {}
    for model in pair.models:
        resolved = resolve(model.source, cache_dir)  # verified here too, so the key covers the source bytes
        keys[model.role] = build_key("tensorrt_llm", pair.to_dict(), model.to_dict(), resolved.fingerprint)
        if not force and is_current(out / model.role, keys[model.role]):
            log(f"{model.role}: {out / model.role} is up to date")
            continue
        steps = model_steps(pair, model, out, cache_dir)
        lanes.append(threading.Thread(target=run_lane, args=(pair, model, out, steps, keys[model.role], errors)))
    for lane in lanes:
        lane.start()
    for lane in lanes:
        lane.join()
    if errors:
        raise RuntimeError("\n".join(errors.values()))
    return keys


def run_lane(pair: PairConfig, model: ModelConfig, out: Path, steps: list[BuildStep], key: str,
             errors: dict[str, str]) -> None:
    """Run one model's steps in order; a failure goes into ``errors`` for build_models to report."""
    started = time.time()
    for step in steps:
        if not step.command:
            continue
        print(f"[{model.role}] {step.render()}", flush=True)
        result = subprocess.run(step.command, env={**os.environ, **step.env}, capture_output=True, text=True)
        sys.stdout.write("".join(f"[{model.role}] {line}\n" for line in result.stdout.splitlines()[-20:]))
        if result.returncode != 0:
            errors[model.role] = (f"{model.role}: `{step.render()}` failed (exit {result.returncode}):\n"
                          f"{result.stderr.strip()[-4000:]}")
            return
    finalize_engine(pair, model, out, key, time.time() - started)


def finalize_engine(pair: PairConfig, model: ModelConfig, out: Path, key: str, seconds: float) -> dict:
    ckpt, engine_dir = checkpoint_dir(out, model), out / model.role
    for item in (ckpt / TOKENIZER_DIR).iterdir():
        shutil.copy2(item, engine_dir / item.name)
    config = json.loads((engine_dir / "config.json").read_text())  # TRT-LLM's EngineConfig (tensorrt_llm/builder.py)
    info = {"backend": "tensorrt_llm", "role": model.role, "dtype": pair.dtype, "devices": list(model.devices),
            "architecture": config["pretrained_config"]["architecture"],
            "num_layers": config["pretrained_config"]["num_hidden_layers"],
            "vocab_size": config["pretrained_config"]["vocab_size"], "tp_size": model.tp_size,
            "max_seq_len": pair.max_seq_len, "max_draft_len": pair.max_draft_len,
            "max_batch_size": pair.max_batch_size, "tensorrt_llm_version": config.get("version"),
            "source": model.source.to_dict(), "source_fingerprint": json.loads((ckpt / SOURCE_JSON).read_text()),
            "build_key": key, "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "build_seconds": round(seconds, 1),
            "files": file_manifest(engine_dir)}
    write_engine_json(engine_dir, info)
    return info


def convert(config: Path, role: str, cache_dir: Path, output_dir: Path) -> None:
    """Step 1 of a lane (run in its own process, pinned to the model's GPUs)."""
    import tensorrt_llm  # tensorrt_llm/__init__.py re-exports AutoModelForCausalLM and Mapping

    from pearl.tokenizers import load_tokenizer
    pair = load_pair_config(str(config))
    model = pair.draft if role == "draft" else pair.target
    resolved = resolve(model.source, cache_dir)
    hf_dir = resolved.path
    shutil.rmtree(output_dir, ignore_errors=True)
    output_dir.mkdir(parents=True)
    if hf_dir.is_file() or model.num_layers:  # a GGUF, or a self-draft: write the HF folder TRT-LLM converts
        from pearl.backends.base import ModelSpec
        from pearl.backends.loading import load_model
        hf_dir = output_dir / "hf"
        load_model(ModelSpec(str(resolved.path), "cpu", pair.dtype, model.num_layers)).save_pretrained(hf_dir)
        load_tokenizer(str(resolved.path)).save_pretrained(hf_dir)
    quant_config = None
    if model.quantization != "none":  # weight-only, quantized from the HF weights while converting
        from tensorrt_llm.models.modeling_utils import QuantConfig
        from tensorrt_llm.quantization import QuantAlgo
        quant_config = QuantConfig(quant_algo=QuantAlgo[QUANT_ALGOS[model.quantization]])
    for rank in range(model.tp_size):
        mapping = tensorrt_llm.Mapping(world_size=model.tp_size, rank=rank, tp_size=model.tp_size)
        trt_model = tensorrt_llm.AutoModelForCausalLM.from_hugging_face(str(hf_dir), dtype=pair.dtype,
                                                                       mapping=mapping, quant_config=quant_config)
        trt_model.save_checkpoint(str(output_dir), save_config=(rank == 0))  # rank<r>.safetensors + config.json
        del trt_model
    tokenizer_dir = output_dir / TOKENIZER_DIR
    load_tokenizer(str(hf_dir)).save_pretrained(tokenizer_dir)
    if (hf_dir / "generation_config.json").exists():  # EOS ids: the engine's config.json is TRT-LLM's, not HF's
        shutil.copy2(hf_dir / "generation_config.json", tokenizer_dir / "generation_config.json")
    shutil.rmtree(output_dir / "hf", ignore_errors=True)
    (output_dir / SOURCE_JSON).write_text(json.dumps(resolved.fingerprint, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pearl_build.trtllm")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="a model of a pair config -> TRT-LLM checkpoint (one build step)")
    c.add_argument("--config", type=Path, required=True)
    c.add_argument("--role", choices=["draft", "target"], required=True)
    c.add_argument("--cache-dir", type=Path, required=True)
    c.add_argument("--output-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    convert(args.config, args.role, args.cache_dir, args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
