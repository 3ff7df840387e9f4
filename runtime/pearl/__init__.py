"""pearl-serve: PEARL parallel speculative decoding on MPI ranks (draft rank 0, target rank 1).

Public API: ``Engine`` (pearl.engine), ``WorldConfig`` / ``ModelSpec`` (what to run),
``SamplingParams`` and ``Mode`` (pearl.params).
"""
from pearl.backends.base import ModelSpec
from pearl.params import Mode, SamplingParams

__all__ = ["Mode", "ModelSpec", "SamplingParams"]
