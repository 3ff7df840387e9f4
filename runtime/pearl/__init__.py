"""pearl-serve: PEARL parallel speculative decoding on MPI ranks (draft rank 0, target rank 1).

Public API: ``LLM`` (pearl.llm), ``WorldConfig`` (pearl.ranks.config) and ``ModelSpec`` (what to run),
``SamplingParams`` and ``Mode`` (pearl.params). Importing ``pearl`` loads neither torch nor MPI: the names that
need them load on first use, so the Triton-side modules (``pearl.serving``) stay free of both.
"""
from pearl.params import Mode, SamplingParams

_LAZY = {"LLM": "pearl.llm", "ModelSpec": "pearl.backends.base", "WorldConfig": "pearl.ranks.config"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pearl' has no attribute {name!r}")


__all__ = ["LLM", "Mode", "ModelSpec", "SamplingParams", "WorldConfig"]
