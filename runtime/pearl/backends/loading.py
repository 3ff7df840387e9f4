"""Loading transformers models and tokenizers from a local folder (safetensors) or a GGUF file.

Nothing is ever fetched from a hub here (``local_files_only``): paths must exist, and folders are loaded with
safetensors only (no pickle-based weights). Fetching sources is the engine build's job (``pearl_build``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from pearl.backends import attention
from pearl.backends.base import DTYPES, ModelSpec


class ModelPathError(ValueError):
    """A model path that does not exist or holds no loadable model."""


def resolve(path: str) -> tuple[Path, str | None]:
    """Split a model path into (folder, gguf file name or None), refusing what cannot be loaded."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelPathError(f"model path does not exist: {path}")
    if p.is_file():
        if p.suffix != ".gguf":
            raise ModelPathError(f"{path} is a file but not a .gguf; give a GGUF file or a model folder")
        return p.parent, p.name
    if not (p / "config.json").exists():
        raise ModelPathError(f"{path} has no config.json; give a folder with HF weights or a .gguf file")
    if not any(p.glob("*.safetensors")):
        raise ModelPathError(f"{path} has no *.safetensors weights (other formats are not loaded)")
    return p, None


def load_model(spec: ModelSpec) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    if spec.attention == attention.NAME:
        attention.register()
    folder, gguf_file = resolve(spec.path)
    kwargs = {"gguf_file": gguf_file} if gguf_file else {"use_safetensors": True}
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[spec.dtype], local_files_only=True,
                                                 attn_implementation=spec.attention, **kwargs)
    if spec.num_layers is not None:
        truncate_layers(model, spec.num_layers)
    model = model.to(spec.device).eval()
    if spec.cpu_linear == "onednn" and spec.device == "cpu":
        use_onednn_linears(model)
    return model


class OnednnLinear(torch.nn.Module):
    """A linear layer whose weight oneDNN packed once at load, for its own CPU GEMM kernels (float32 or
    bfloat16). PyTorch's default CPU GEMM on one or two threads is far from the memory bandwidth for the
    1-48 rows of a decode or a batched round: on the 1.5B target in bfloat16, a decode step of 8 sequences
    on 2 threads went 0.30 s -> 0.20 s, one sequence on 1 thread 0.35 s -> 0.20 s, with the same logits."""

    ROWS_HINT = 8  # the packing is tuned for about this many rows; any number works

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.out_features = linear.out_features
        weight = linear.weight.detach()
        self.register_buffer("weight", torch.ops.mkldnn._reorder_linear_weight(weight, self.ROWS_HINT))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def use_onednn_linears(model: torch.nn.Module) -> None:
    """Swap every linear of the decoder layers, and the LM head, for an ``OnednnLinear`` (CPU only). A
    tied LM head then has a packed copy of its own beside the embedding (its size in memory again): a
    decode step reads it whole, and unpacked it ran a lone decode 1.5x slower."""
    dtype = next(model.parameters()).dtype
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"cpu_linear onednn needs float32 or bfloat16 weights, got {dtype}")
    for layer in model.model.layers:
        for parent in list(layer.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, torch.nn.Linear):
                    setattr(parent, name, OnednnLinear(child))
    model.lm_head = OnednnLinear(model.lm_head)


def truncate_layers(model: torch.nn.Module, num_layers: int) -> None:
    """Keep the first ``num_layers`` decoder layers: a cheap draft that shares the target's vocabulary."""
    total = model.config.num_hidden_layers
    if num_layers > total:
        raise ValueError(f"num_layers={num_layers} but the model has only {total} layers")
    model.model.layers = model.model.layers[:num_layers]
    model.config.num_hidden_layers = num_layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:num_layers]


def load_tokenizer(path: str):
    """The tokenizer stored with a model (GGUF, or tokenizer files in a folder of any backend), or None."""
    from transformers import AutoTokenizer

    p = Path(path).expanduser()
    if p.suffix == ".gguf":
        folder, gguf_file = resolve(path)
        return AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file, local_files_only=True)
    if not any((p / name).exists() for name in ("tokenizer.json", "tokenizer_config.json")):
        return None
    return AutoTokenizer.from_pretrained(p, local_files_only=True)
