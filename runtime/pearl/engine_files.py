"""The engine directory that ``make engines`` writes and the runtime reads; this module owns its layout.

    engines/<pair>/
      engine.json      the pair: its two model folders, threads per rank, the shared vocabulary, and the
                       profile measured at build time (per batch size: a draft step, a target verify of
                       1..max_draft_len tokens, a target step alone: the costs adaptive windows come from)
      draft/, target/  one model each: weights (torch: model*.safetensors + config.json, int8 / int4
                       tensors when quantized; tensorrt_llm: rank<i>.engine + config.json; llama_cpp:
                       model.gguf, the GGUF source as it is), tokenizer files,
                       and an engine.json of its own (backend, dtype, quantization, devices, vocab size, max
                       lengths, source and hashes, build key/time)

A model folder's engine.json is written last, so its presence means the folder is complete.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tqdm import tqdm

ENGINE_JSON = "engine.json"
GGUF_FILE = "model.gguf"  # a llama_cpp model folder's weights
ROLES = ("draft", "target")
CHUNK = 1 << 22
PROGRESS_MIN_BYTES = 1 << 28  # smaller files hash in a blink: no bar


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, leave=False, desc=f"sha256 {path.name}",
                                      disable=size < PROGRESS_MIN_BYTES) as bar:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


class EngineDirError(ValueError):
    """An engine directory that is missing, incomplete, or not what the caller expects."""


def read_engine_json(folder: str | Path) -> dict | None:
    """The folder's engine.json, or None when the folder is not an engine (e.g. a plain HF folder)."""
    path = Path(folder) / ENGINE_JSON
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EngineDirError(f"{path} is not valid JSON ({exc}); rebuild with `make engines`") from exc


def write_engine_json(folder: str | Path, data: dict) -> None:
    path = Path(folder) / ENGINE_JSON
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)  # atomic: a reader never sees half a file


def gguf_model_file(path: str | Path) -> Path | None:
    """The GGUF file a llama_cpp model is: ``path`` itself, or the one in a llama_cpp engine folder."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return path
    info = read_engine_json(path) if path.is_dir() else None
    if info is not None and info.get("backend") == "llama_cpp" and (path / GGUF_FILE).is_file():
        return path / GGUF_FILE
    return None


def model_device(info: dict) -> str:
    """The torch device string a model engine runs on ("cpu", or "cuda:<first GPU>")."""
    devices = info["devices"]
    return "cpu" if devices == ["cpu"] else f"cuda:{devices[0]}"


def pair_models(folder: str | Path, check_files: bool = True,
                check_hashes: bool = False) -> dict[str, tuple[Path, dict]]:
    """Each role's (model folder, engine.json) in a pair's engine directory; ``check_files``: every file the
    model's manifest lists is present at its recorded size (cheap); ``check_hashes``: and has its recorded
    sha256 (reads every byte: a damaged file of the right size is caught too)."""
    folder = Path(folder)
    pair = read_engine_json(folder)
    if pair is None or "models" not in pair:
        raise EngineDirError(f"{folder} is not a pair's engine directory (no {ENGINE_JSON} with 'models'); "
                             f"build one with `make engines PAIR=<name>`")
    models = {}
    for role in ROLES:
        model_dir = folder / pair["models"][role]
        info = read_engine_json(model_dir)
        if info is None:
            raise EngineDirError(f"{model_dir} has no {ENGINE_JSON}: the build did not finish; rerun `make engines`")
        for name, entry in (info.get("files", {}) if check_files else {}).items():
            path = model_dir / name
            if not path.is_file():
                raise EngineDirError(f"{path} is missing")
            if path.stat().st_size != entry["bytes"]:
                raise EngineDirError(f"{path} has {path.stat().st_size} bytes, the build wrote {entry['bytes']}: "
                                     f"the engine is damaged or was changed")
            if check_hashes and sha256_file(path) != entry["sha256"]:
                raise EngineDirError(f"{path} does not have the sha256 the build recorded ({entry['sha256']}): "
                                     f"the engine is damaged or was changed")
        models[role] = model_dir, info
    return models


def load_pair(folder: str | Path, check_files: bool = True, check_hashes: bool = False):
    """(WorldConfig, SpeculationCosts or None when the pair was not profiled) for a pair's engine directory
    (checked by ``pair_models``)."""
    from pearl.backends.base import ModelSpec
    from pearl.ranks.config import WorldConfig
    from pearl.profiling import DEFAULT_ACCEPTANCE
    from pearl.speculation import SpeculationCosts

    models = pair_models(folder, check_files, check_hashes)  # first: a clear error for a folder that is no pair
    pair = read_engine_json(folder)
    settings = pair.get("config", {})
    cpu_linear, attention = settings.get("cpu_linear", "default"), settings.get("attention", "sdpa")
    specs = {role: ModelSpec(str(model_dir), model_device(info), info["dtype"], backend=info["backend"],
                             cpu_linear=cpu_linear, attention=attention, tensor_parallel=int(info.get("tp_size", 1)),
                             exact_logits=role != "draft",
                             vocab_limit=settings.get("draft_vocab_limit") if role == "draft" else None,
                             # the pair's eos_tokens as the build found them in its tokenizer; absent: each
                             # model's own
                             eos_token_ids=pair.get("eos_token_ids"))
             for role, (model_dir, info) in models.items()}
    profile = pair.get("profile") or {}
    config = WorldConfig(draft=specs["draft"], target=specs["target"],
                         threads_per_rank=int(pair.get("threads_per_rank", 1)),
                         max_batch_size=int(settings.get("max_batch_size", 1)),
                         draft_off_batch_size=settings.get("draft_off_batch_size"),
                         target_alone_threads=settings.get("target_alone_threads"),
                         draft_stop_confidence=float(settings.get("draft_stop_confidence", 0.0)))
    prior = settings.get("draft_acceptance", DEFAULT_ACCEPTANCE)
    return config, SpeculationCosts.from_profile(profile, prior) if "by_batch_size" in profile else None
