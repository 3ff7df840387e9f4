"""A model's files before any weights load: the checks a model path must pass (an HF folder with safetensors,
or a GGUF file) and its tokenizer. No torch: the Triton pre/postprocessing models load tokenizers with it.

Nothing is ever fetched from a hub (``local_files_only``).
"""
from __future__ import annotations

from pathlib import Path


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
