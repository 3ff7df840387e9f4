"""llama.cpp's tools as the benchmark runs them: their names and where a build put them
(:func:`pearl.bench.llamacpp_build.ensure_built`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PLAIN, SPECULATIVE, BENCH = "llama-completion", "llama-speculative-simple", "llama-bench"


class LlamaCppError(RuntimeError):
    """The build or a run of a llama.cpp tool failed, or its output did not parse."""


@dataclass(frozen=True)
class Binaries:
    plain: Path
    speculative: Path
    bench: Path

    @classmethod
    def in_folder(cls, folder: Path) -> "Binaries":
        folder = folder.resolve()  # runs need not share the builder's working directory
        return cls(folder / PLAIN, folder / SPECULATIVE, folder / BENCH)
