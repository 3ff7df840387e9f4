"""The one TensorRT-LLM release this project targets, and the checks that a host has it.

TensorRT-LLM's main branch removed the TensorRT engine flow in mid-2026 (``trtllm-build``, checkpoint
conversion, the engine ``Executor``; its docs/source/legacy/tensorrt-backend-removal.md), so the build and the
runtime are written against one release that still has it:

- TensorRT-LLM 1.0.0: git tag v1.0.0, commit ``GIT_COMMIT`` (the ``tensorrt_llm`` submodule of
  triton-inference-server/tensorrtllm_backend at its tag v1.0.0, 2025-09-24);
- shipped in NVIDIA's Triton container ``CONTAINER`` (Triton's release compatibility matrix lists
  TensorRT-LLM 1.0.0 for the 25.09 and 25.10 ``trtllm-python-py3`` containers), which also brings the Open MPI
  that TensorRT-LLM links (HPC-X's, under ``CONTAINER_MPI_HOME``).

``make engines`` for a tensorrt_llm pair and the tensorrt_llm backend both call ``check_version``.
"""
from __future__ import annotations

VERSION = "1.0.0"
GIT_TAG = "v1.0.0"
GIT_COMMIT = "ae8270b713446948246f16fadf4e2a32e35d0f62"
CONTAINER = "nvcr.io/nvidia/tritonserver:25.10-trtllm-python-py3"
CONTAINER_MPI_HOME = "/opt/hpcx/ompi"  # where that container keeps Open MPI; `make setup-gpu MPI_HOME=...` overrides
MPI4PY_VERSION = "4.1.2"  # built from source against that Open MPI (the same release requirements.txt pins)


class TrtllmVersionError(RuntimeError):
    """TensorRT-LLM is importable but is not the pinned release."""


def describe() -> str:
    return f"TensorRT-LLM {VERSION} ({GIT_TAG}, commit {GIT_COMMIT[:12]}; container {CONTAINER})"


def check_version(found: str) -> None:
    """Refuse any TensorRT-LLM but the pinned release (post-releases of it, ``1.0.0.post1``, are the same API)."""
    if found != VERSION and not found.startswith(f"{VERSION}.post"):
        raise TrtllmVersionError(
            f"TensorRT-LLM {found} is installed, but pearl-serve is pinned to {describe()} "
            f"(runtime/pearl/backends/trtllm_pin.py): its engine flow and executor bindings are what the build and "
            f"the runtime were checked against. Run in that container, or install tensorrt_llm=={VERSION}")
