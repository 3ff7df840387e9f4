"""Model backends behind one interface (``ModelBackend``): torch everywhere, TensorRT-LLM on GPU hosts, llama.cpp
for GGUF drafts on CPUs."""
from pathlib import Path

from pearl.backends.base import ModelBackend, ModelSpec
from pearl.engine_files import gguf_model_file
from pearl.tokenizers import ModelPathError, resolve

BACKENDS = ("torch", "tensorrt_llm", "llama_cpp")


def check_model_path(spec: ModelSpec) -> None:
    """Fail early, in the driver, on a path the spec's backend cannot load (before any rank starts)."""
    if spec.backend not in BACKENDS:
        raise ValueError(f"unknown backend {spec.backend!r}; available: {', '.join(BACKENDS)}")
    if spec.backend == "torch":
        resolve(spec.path)
    elif spec.backend == "llama_cpp":
        if gguf_model_file(spec.path) is None:
            raise ModelPathError(f"{spec.path} is neither a .gguf file nor a llama_cpp engine folder (the llama_cpp "
                                 f"backend runs GGUF models)")
    elif not (Path(spec.path) / "config.json").is_file() or not any(Path(spec.path).glob("rank*.engine")):
        raise ModelPathError(f"{spec.path} is not a TensorRT-LLM engine folder (config.json + rank*.engine); "
                             f"build it with `make engines`")


def load_backend(spec: ModelSpec, participant_ids: list[int] | None = None) -> ModelBackend:
    """``participant_ids``: the MPI_COMM_WORLD ranks of the model's shards, leader first (tensorrt_llm; the
    torch backend runs a model on this rank alone). Its generations end at the spec's ``eos_token_ids`` (the
    pair's ``eos_tokens``) where it names them, else at the ids the backend finds in its model."""
    check_model_path(spec)
    if spec.backend == "tensorrt_llm":
        from pearl.backends.trtllm_backend import TrtllmBackend
        backend = TrtllmBackend.load(spec, participant_ids)
    elif spec.backend == "llama_cpp":
        from pearl.backends.llamacpp_backend import LlamaCppBackend
        backend = LlamaCppBackend.load(spec)
    else:
        from pearl.backends.torch_backend import TorchBackend
        backend = TorchBackend.load(spec)
    if spec.eos_token_ids is not None:
        backend.eos_token_ids = spec.eos_token_ids
    return backend


__all__ = ["BACKENDS", "ModelBackend", "ModelSpec", "check_model_path", "load_backend"]
