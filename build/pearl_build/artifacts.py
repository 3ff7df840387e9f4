"""What identifies a built engine: a build key over its inputs, and a manifest of its files.

A rebuild is a no-op when the folder's engine.json carries the same build key (same config, same source
bytes, same build format) and every file in its manifest is still there with its recorded size.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from pearl.engine_files import ENGINE_JSON, read_engine_json, write_engine_json
from pearl.tokenizers import load_tokenizer
from pearl_build.config import ModelConfig, PairConfig
from pearl_build.sources import Resolved, sha256_file

# Bump when the engine layout or conversion changes, so old engines are rebuilt.
BUILD_FORMAT = 1


def build_key(*parts: object) -> str:
    """A stable hash of JSON-able build inputs."""
    text = json.dumps([BUILD_FORMAT, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_manifest(folder: Path) -> dict[str, dict]:
    """Every file of an engine folder (but engine.json) with its size and sha256."""
    return {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ENGINE_JSON}


def is_current(folder: Path, key: str) -> bool:
    info = read_engine_json(folder) if folder.is_dir() else None
    if info is None or info.get("build_key") != key:
        return False
    return all((folder / name).is_file() and (folder / name).stat().st_size == entry["bytes"]
               for name, entry in info.get("files", {}).items())


def partial_folder(out_dir: Path) -> Path:
    """The empty folder a builder writes a model engine into; ``finish_model_engine`` puts it in place."""
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def save_engine_tokenizer(model: ModelConfig, source: Path, folder: Path):
    """The source's tokenizer, saved into the engine folder (an engine without one cannot serve)."""
    tokenizer = load_tokenizer(str(source))
    if tokenizer is None:
        raise ValueError(f"{model.role}: {source} has no tokenizer; an engine needs one for serving")
    tokenizer.save_pretrained(folder)
    return tokenizer


def finish_model_engine(partial: Path, out_dir: Path, pair: PairConfig, model: ModelConfig, resolved: Resolved,
                        key: str, started: float, **fields) -> dict:
    """Complete a model folder a builder wrote into ``partial`` (``partial_folder``): its engine.json (the builder's ``fields``
    plus what every model's has: role, devices, source and hashes, build key and time, the files' manifest),
    written last since its presence marks a complete engine; then the folder takes ``out_dir``'s place."""
    info = fields | {
        "role": model.role,
        "devices": list(model.devices),
        "max_draft_len": pair.max_draft_len,
        "source": model.source.to_dict(),
        "source_fingerprint": resolved.fingerprint,
        "build_key": key,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "build_seconds": round(time.time() - started, 1),
        "files": file_manifest(partial),
    }
    write_engine_json(partial, info)
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.replace(out_dir)
    return info
