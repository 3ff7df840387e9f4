"""Pair configs (``build/configs/<pair>.yaml``): which draft and target to build, from where, for what hardware.

    backend: torch            # torch (CPU or one GPU per model) | tensorrt_llm (GPUs, tensor parallel)
    dtype: float32            # float32 | bfloat16 | float16
    max_seq_len: 4096         # prompt + output tokens an engine accepts
    max_draft_len: 8          # longest draft window the target verifies (gamma's upper bound)
    max_batch_size: 8         # sequences served together: tensorrt_llm's engine limit; the profile's gamma table
    threads_per_rank: 1       # torch threads in each MPI rank
    cpu_linear: auto          # default | onednn | fbgemm | auto: the CPU kernels of the decoder linears and
                              # the LM head (pearl.backends.linears; auto: the fastest this host has)
    attention: sdpa           # sdpa | eager | grouped (eager without repeat_kv copies; fastest on a CPU for
                              # padded batches, pearl.backends.attention)
    draft_acceptance: 0.8     # a draft token's expected chance to be accepted; the profile's gamma rule uses it
    draft_stop_confidence: 0.5  # optional: an adaptive request's draft window ends after a token the draft gave
                              # a top probability below this (pearl.decoding.draft); 0 (default): never
    draft_vocab_limit: 65536  # optional: the draft proposes only token ids below this (and the end-of-sequence
                              # ones): its LM head computes those rows alone (pearl.backends.vocab_limit;
                              # torch). None (default): the whole vocabulary
    eos_tokens: [<|im_end|>, <|endoftext|>]  # optional: the tokens that end a generation (each one token of
                              # the pair's tokenizer). None (default): the target's own EOS ids. A model from
                              # a GGUF file knows one (Qwen2.5's: <|im_end|>, which ends a chat turn; a plain
                              # completion ends with <|endoftext|>, as in the HF release's generation config)
    draft_off_batch_size: 8   # optional: from this many sequences in a round, the target decodes alone
    target_alone_threads: 2   # optional: torch threads of the target while no sequence uses the draft
    draft:
      source: {...}           # see sources.py: a local path, a hub id, or pinned PyPI wheels
      devices: cpu            # "cpu", or GPU indices: [0]; the target's [1, 2, 3, 4] means tensor parallel 4
      num_layers: 12          # optional: keep the first N decoder layers (a self-draft of the target)
      quantization: int8      # optional: none | int8 (per output channel) | int4 (group-wise) weights |
                              # auto: the fastest of none, int8 and int4 on this host (int4 only where it is
                              # 1.15x faster than the others: its 4 bits change a few choices) (torch)
      group_size: 128         # int4's group size (32, 64, 128 or 256), auto's int4 too
    target: {...}

Everything is validated here, so a bad config fails before anything is downloaded or built.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from pearl.backends.base import ATTENTIONS
from pearl.backends.base import DTYPES as RUNTIME_DTYPES
from pearl.backends.linears import CPU_LINEARS, INT4_GROUP_SIZES, QUANTIZATIONS
from pearl.profiling import DEFAULT_ACCEPTANCE
from pearl_build.sources import Source

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
DTYPES = tuple(RUNTIME_DTYPES)  # what the runtime can load

PAIR_BACKENDS = ("torch", "tensorrt_llm")  # a pair's backend: what `make engines` builds its models for
# A model's own backend, in a torch pair: its draft, its target or both may run their GGUF sources in llama.cpp
MODEL_BACKENDS = ("llama_cpp",)


class ConfigError(ValueError):
    """A pair config that is missing, malformed, or asks for something impossible."""


@dataclass(frozen=True)
class ModelConfig:
    role: str  # "draft" or "target"
    source: Source
    devices: tuple[str, ...]  # ("cpu",) or GPU indices as strings ("0",), ("1", "2", "3", "4")
    num_layers: int | None = None
    quantization: str = "none"  # none | int8 | int4: the weights the engine stores
    group_size: int = 128  # int4's inputs per scale
    backend: str | None = None  # None: the pair's; "llama_cpp": the GGUF source as it is, run by llama.cpp

    @property
    def on_gpu(self) -> bool:
        return self.devices != ("cpu",)

    @property
    def tp_size(self) -> int:
        return len(self.devices)

    @property
    def quantization_info(self) -> dict:
        """What the model's engine.json records of its quantization."""
        grouped = self.quantization in ("int4", "auto")  # auto may keep int4
        return {"method": self.quantization} | ({"group_size": self.group_size} if grouped else {})

    def to_dict(self) -> dict:
        quantized = {"quantization": self.quantization_info} if self.quantization != "none" else {}
        backend = {"backend": self.backend} if self.backend else {}
        return {"source": self.source.to_dict(), "devices": list(self.devices), "num_layers": self.num_layers,
                **quantized, **backend}  # models without either keep the build key they had before them


@dataclass(frozen=True)
class PairConfig:
    name: str
    backend: str
    dtype: str
    max_seq_len: int
    max_draft_len: int
    draft: ModelConfig
    target: ModelConfig
    max_batch_size: int = 1
    threads_per_rank: int = 1
    cpu_linear: str = "default"
    attention: str = "sdpa"
    draft_acceptance: float = DEFAULT_ACCEPTANCE
    draft_stop_confidence: float = 0.0
    draft_off_batch_size: int | None = None
    target_alone_threads: int | None = None
    draft_vocab_limit: int | None = None
    eos_tokens: tuple[str, ...] | None = None
    path: Path | None = field(default=None, compare=False)  # the YAML file it came from

    @property
    def models(self) -> tuple[ModelConfig, ModelConfig]:
        return self.draft, self.target

    def to_dict(self) -> dict:
        """The settings that shape the engines (what a rebuild compares)."""
        return {"name": self.name, "backend": self.backend, "dtype": self.dtype, "max_seq_len": self.max_seq_len,
                "max_draft_len": self.max_draft_len, "max_batch_size": self.max_batch_size,
                "threads_per_rank": self.threads_per_rank, "cpu_linear": self.cpu_linear,
                "attention": self.attention,
                "draft_acceptance": self.draft_acceptance, "draft_stop_confidence": self.draft_stop_confidence,
                "draft_off_batch_size": self.draft_off_batch_size,
                "target_alone_threads": self.target_alone_threads, "draft_vocab_limit": self.draft_vocab_limit,
                "draft": self.draft.to_dict(), "target": self.target.to_dict(),
                **({"eos_tokens": list(self.eos_tokens)} if self.eos_tokens else {})}


def available_pairs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def config_path(pair: str) -> Path:
    """A pair name (a file in build/configs/) or a path to a YAML file."""
    path = Path(pair)
    if path.suffix in (".yaml", ".yml"):
        if not path.exists():
            raise ConfigError(f"pair config not found: {path}")
        return path
    path = CONFIG_DIR / f"{pair}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown pair {pair!r}; available: {', '.join(available_pairs())} "
                          f"(or give a path to a .yaml file)")
    return path


def load_pair_config(pair: str) -> PairConfig:
    path = config_path(pair)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return replace(parse_pair(data, default_name=path.stem), path=path.resolve())
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def parse_pair(data: dict, default_name: str) -> PairConfig:
    known = {"name", "backend", "dtype", "max_seq_len", "max_draft_len", "max_batch_size", "threads_per_rank",
             "cpu_linear", "attention", "draft_acceptance", "draft_stop_confidence", "draft_off_batch_size",
             "target_alone_threads", "draft_vocab_limit", "eos_tokens", "draft", "target", "description"}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}; known: {sorted(known)}")
    backend = data.get("backend", "torch")
    if backend not in PAIR_BACKENDS:
        raise ValueError(f"backend must be one of {PAIR_BACKENDS}, got {backend!r}")
    dtype = data.get("dtype", "float32")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    ints = {key: int(data.get(key, default)) for key, default in
            (("max_seq_len", 4096), ("max_draft_len", 8), ("max_batch_size", 1), ("threads_per_rank", 1))}
    optional_ints = {key: None if data.get(key) is None else int(data[key])
                     for key in ("draft_off_batch_size", "target_alone_threads", "draft_vocab_limit")}
    for key, value in (ints | optional_ints).items():
        if value is not None and value < 1:
            raise ValueError(f"{key} must be >= 1, got {value}")
    cpu_linear = data.get("cpu_linear", "default")
    if cpu_linear not in CPU_LINEARS:
        raise ValueError(f"cpu_linear must be one of {CPU_LINEARS}, got {cpu_linear!r}")
    if cpu_linear != "default" and dtype == "float16":
        raise ValueError(f"cpu_linear {cpu_linear} needs dtype float32 or bfloat16, got {dtype}")
    attention = data.get("attention", "sdpa")
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    draft_acceptance = float(data.get("draft_acceptance", DEFAULT_ACCEPTANCE))
    if not 0 < draft_acceptance < 1:
        raise ValueError(f"draft_acceptance must be between 0 and 1 (exclusive), got {draft_acceptance}")
    draft_stop_confidence = float(data.get("draft_stop_confidence", 0.0))
    if not 0 <= draft_stop_confidence < 1:
        raise ValueError(f"draft_stop_confidence must be in [0, 1) (0: never stop a window early), got "
                         f"{draft_stop_confidence}")
    eos_tokens = data.get("eos_tokens")
    if eos_tokens is not None and (not isinstance(eos_tokens, list) or not eos_tokens or
                                   not all(isinstance(token, str) and token for token in eos_tokens)):
        raise ValueError(f"eos_tokens must be a list of token strings (e.g. ['<|im_end|>']), got {eos_tokens!r}")
    draft, target = (parse_model(role, data[role]) for role in ("draft", "target"))
    for model in (draft, target):
        if model.backend == "llama_cpp":
            if backend != "torch" or model.on_gpu:
                raise ValueError(f"{model.role}: backend llama_cpp runs on the CPU, in a pair with backend torch")
            if model.quantization != "none" or model.num_layers is not None:
                raise ValueError(f"{model.role}: backend llama_cpp runs the GGUF source as it is (its own "
                                 "quantization); quantization and num_layers do not apply")
            name = model.source.file or model.source.location
            if not name.endswith(".gguf"):
                raise ValueError(f"{model.role}: backend llama_cpp needs a .gguf source, got {name}")
    if optional_ints["draft_vocab_limit"] is not None and (backend != "torch" or draft.backend == "llama_cpp"):
        raise ValueError("draft_vocab_limit cuts the LM head of a torch draft; this pair's draft runs in "
                         f"{draft.backend if draft.backend == 'llama_cpp' else backend}")
    if backend == "torch":
        for model in (draft, target):
            if model.tp_size != 1:
                raise ValueError(f"{model.role}: the torch backend runs a model on one device; got devices "
                                 f"{list(model.devices)} (use backend: tensorrt_llm for tensor parallelism)")
            if model.quantization != "none" and model.on_gpu:
                raise ValueError(f"{model.role}: quantized torch engines run on the CPU (their kernels are "
                                 f"CPU ones); use backend: tensorrt_llm for weight-only quantization on GPUs")
    if backend == "tensorrt_llm":
        for model in (draft, target):
            if model.quantization == "auto":
                raise ValueError(f"{model.role}: quantization auto picks torch CPU kernels; give none, int8 or int4")
            if not model.on_gpu:
                raise ValueError(f"{model.role}: tensorrt_llm engines run on GPUs; give GPU indices as devices")
    if draft.on_gpu and target.on_gpu and set(draft.devices) & set(target.devices):
        raise ValueError(f"draft and target share GPUs {sorted(set(draft.devices) & set(target.devices))}; "
                         f"PEARL runs them at the same time, each on its own GPU(s)")
    return PairConfig(name=data.get("name", default_name), backend=backend, dtype=dtype, draft=draft, target=target,
                      cpu_linear=cpu_linear, attention=attention, draft_acceptance=draft_acceptance,
                      draft_stop_confidence=draft_stop_confidence,
                      eos_tokens=tuple(eos_tokens) if eos_tokens else None, **ints, **optional_ints)


def parse_model(role: str, data: dict) -> ModelConfig:
    if not isinstance(data, dict) or "source" not in data:
        raise ValueError(f"{role}: expected a mapping with a 'source'")
    unknown = set(data) - {"source", "devices", "num_layers", "quantization", "group_size", "backend"}
    if unknown:
        raise ValueError(f"{role}: unknown keys {sorted(unknown)}")
    devices = data.get("devices", "cpu")
    if devices == "cpu":
        devices = ("cpu",)
    elif isinstance(devices, list) and devices and all(isinstance(d, int) and d >= 0 for d in devices):
        if len(set(devices)) != len(devices):
            raise ValueError(f"{role}: devices repeat a GPU: {devices}")
        devices = tuple(str(d) for d in devices)
    else:
        raise ValueError(f"{role}: devices must be 'cpu' or a list of GPU indices, got {devices!r}")
    num_layers = data.get("num_layers")
    if num_layers is not None and (not isinstance(num_layers, int) or num_layers < 1):
        raise ValueError(f"{role}: num_layers must be a positive integer, got {num_layers!r}")
    quantization = data.get("quantization", "none")
    if quantization not in (*QUANTIZATIONS, "auto"):
        raise ValueError(f"{role}: quantization must be one of {(*QUANTIZATIONS, 'auto')}, got {quantization!r}")
    group_size = data.get("group_size", 128)
    if group_size not in INT4_GROUP_SIZES:
        raise ValueError(f"{role}: group_size must be one of {INT4_GROUP_SIZES}, got {group_size!r}")
    backend = data.get("backend")
    if backend is not None and backend not in MODEL_BACKENDS:
        raise ValueError(f"{role}: backend must be one of {MODEL_BACKENDS} (or left out: the pair's), got {backend!r}")
    return ModelConfig(role=role, source=Source.parse(data["source"]), devices=devices,
                       num_layers=num_layers, quantization=quantization, group_size=group_size, backend=backend)
