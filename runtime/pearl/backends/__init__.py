"""Model backends behind one interface (``ModelBackend``): torch everywhere, TensorRT-LLM on GPU hosts."""
from pearl.backends.base import ModelBackend, ModelSpec


def load_backend(spec: ModelSpec) -> ModelBackend:
    if spec.backend == "torch":
        from pearl.backends.torch_backend import TorchBackend
        return TorchBackend.load(spec)
    raise ValueError(f"unknown backend {spec.backend!r}; available: torch")


__all__ = ["ModelBackend", "ModelSpec", "load_backend"]
