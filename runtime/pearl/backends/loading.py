"""Loading transformers models and tokenizers from a local folder (safetensors) or a GGUF file, and quantized
engines (int8 / int4 tensors in safetensors, ``pearl.backends.linears``) from their engine folder.

Nothing is ever fetched from a hub here (``local_files_only``): paths must exist, and folders are loaded with
safetensors only (no pickle-based weights). Fetching sources is the engine build's job (``pearl_build``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from pearl.backends import attention
from pearl.backends.base import DTYPES, ModelSpec
from pearl.backends.linears import use_cpu_kernels
from pearl.backends.vocab_limit import cut_lm_head
from pearl.engine_files import read_engine_json
from pearl.tokenizers import resolve


def load_model(spec: ModelSpec) -> torch.nn.Module:
    """The spec's model, on its device, with the spec's CPU kernels. A quantized engine (its engine.json says
    so) is built from its stored int8 / int4 tensors; anything else loads through transformers."""
    from transformers import AutoModelForCausalLM

    if spec.attention == attention.NAME:
        attention.register()
    folder, gguf_file = resolve(spec.path)
    quantization = engine_quantization(folder) if gguf_file is None else "none"
    state = None
    if quantization != "none":
        if spec.device != "cpu":
            raise ValueError(f"{spec.path} is an {quantization} engine; quantized engines run on the CPU")
        model, state = _quantized_skeleton(folder, spec)
    else:
        kwargs = {"gguf_file": gguf_file} if gguf_file else {"use_safetensors": True}
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[spec.dtype], local_files_only=True,
                                                     attn_implementation=spec.attention, **kwargs)
    if spec.num_layers is not None:
        truncate_layers(model, spec.num_layers)
    finish_head = None
    if spec.vocab_limit is not None:  # before the kernels, which then hold only the rows kept
        finish_head = cut_lm_head(model, spec.vocab_limit, eos_token_ids(model, spec), DTYPES[spec.dtype], state,
                                  quantization)
    if spec.device == "cpu":
        use_cpu_kernels(model, spec.cpu_linear, quantization if quantization != "none" else spec.dtype, state)
    if state is not None:  # what the kernels did not take: embeddings, norms, the other modules' biases
        model.load_state_dict(state, strict=True, assign=True)
    if finish_head is not None:
        finish_head()
    return model.to(spec.device).eval()


def eos_token_ids(model, spec: ModelSpec | None = None) -> tuple[int, ...]:
    """The ids that end a generation: the spec's where it names them, else every EOS id the model's config and
    generation config name."""
    if spec is not None and spec.eos_token_ids is not None:
        return spec.eos_token_ids
    ids: set[int] = set()
    for source in (model.config, getattr(model, "generation_config", None)):
        value = getattr(source, "eos_token_id", None)
        if value is not None:
            ids.update([value] if isinstance(value, int) else value)
    return tuple(sorted(ids))


def engine_quantization(folder: Path) -> str:
    """The quantization a model engine folder stores ("none" for a plain HF folder)."""
    return ((read_engine_json(folder) or {}).get("quantization") or {}).get("method", "none")


def _quantized_skeleton(folder: Path, spec: ModelSpec) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The model's modules with no weights (nothing random is initialised), and the engine's tensors."""
    from accelerate import init_empty_weights
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    with init_empty_weights(include_buffers=False):  # buffers (rotary frequencies) are computed, not stored
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[spec.dtype], attn_implementation=spec.attention)
    state = {}
    for path in sorted(folder.glob("*.safetensors")):
        state.update(load_file(path))
    return model, state


def truncate_layers(model: torch.nn.Module, num_layers: int) -> None:
    """Keep the first ``num_layers`` decoder layers: a cheap draft that shares the target's vocabulary."""
    total = model.config.num_hidden_layers
    if num_layers > total:
        raise ValueError(f"num_layers={num_layers} but the model has only {total} layers")
    model.model.layers = model.model.layers[:num_layers]
    model.config.num_hidden_layers = num_layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:num_layers]
