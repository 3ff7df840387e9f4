"""llama.cpp's tools run side by side with our methods, on the same GGUF files and cores.

Greedy runs of the tools, with the text they print on stdout and the timings they print on stderr parsed:

- :func:`run_plain`: the model alone (``llama-completion``) on a prompt, up to N tokens, on T threads;
- :func:`run_speculative`: draft-model speculative decoding (``llama-speculative-simple -md draft.gguf``);
- :func:`run_llama_bench`: ``llama-bench``'s synthetic prompt-processing and generation throughput.

The tools come from :func:`pearl_bench.llamacpp_build.ensure_built`.
"""
from __future__ import annotations

import json
import re
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

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


# The lines parsed, as the pinned tree prints them on stderr (after a timestamp and a level letter):
# common_perf_print (common/sampling.cpp) for llama-completion, main() of examples/speculative-simple.
_PROMPT_EVAL = re.compile(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens")
_EVAL = re.compile(r"\w+:\s+eval time =\s*([\d.]+) ms /\s*(\d+) runs")  # \w+: keeps "prompt eval" out
_TOTAL = re.compile(r"total time =\s*([\d.]+) ms")
_SAMPLED = re.compile(r"samplers time =\s*[\d.]+ ms /\s*(\d+) tokens")
_SPEC_SPEED = re.compile(r"(encoded|decoded)\s+(\d+) tokens in\s+([\d.]+) seconds")
_SPEC_COUNT = re.compile(r"\b(n_draft|n_predict|n_drafted|n_accept)\s*= (\d+)$", re.MULTILINE)
END_OF_TEXT = " [end of text]\n"  # llama-completion's mark that the model ended the text (EOS)
GREEDY = ("--temp", "0", "--top-k", "1")


def _groups(pattern: re.Pattern, stderr: str) -> tuple[str, ...]:
    match = pattern.search(stderr)
    if match is None:
        raise LlamaCppError(f"no /{pattern.pattern}/ in llama.cpp's output:\n{stderr[-2000:]}")
    return match.groups()


def parse_plain(stdout: str, stderr: str) -> dict:
    """llama-completion's result (see :func:`run_plain`)."""
    text = stdout.removesuffix("\n\n")  # printed after the text
    stopped_at_eos = text.endswith(END_OF_TEXT)
    prompt_ms, prompt_tokens = map(float, _groups(_PROMPT_EVAL, stderr))
    eval_ms, eval_runs = map(float, _groups(_EVAL, stderr))
    wall_s = float(_groups(_TOTAL, stderr)[0]) / 1e3
    # the sampler also counts the prompt's tokens; an EOS it sampled ends the text and is not a token of it
    generated = int(_groups(_SAMPLED, stderr)[0]) - int(prompt_tokens) - stopped_at_eos
    return {"text": text.removesuffix(END_OF_TEXT), "generated_tokens": generated, "stopped_at_eos": stopped_at_eos,
            "prompt_tokens": int(prompt_tokens), "prompt_eval_s": prompt_ms / 1e3,
            "prompt_tokens_per_s": prompt_tokens / prompt_ms * 1e3,
            # llama.cpp's generation speed: one decode per token after the first (which the prompt gives)
            "decode_s": eval_ms / 1e3, "decode_tokens_per_s": eval_runs / eval_ms * 1e3 if eval_ms else None,
            "wall_s": wall_s, "tokens_per_s": generated / wall_s}


def parse_speculative(stdout: str, stderr: str, prompt: str, max_tokens: int) -> dict:
    """llama-speculative-simple's result (see :func:`run_speculative`)."""
    spans = {m[1]: (int(m[2]), float(m[3])) for m in _SPEC_SPEED.finditer(stderr)}
    counts = {m[1]: int(m[2]) for m in _SPEC_COUNT.finditer(stderr)}
    missing = {"encoded", "decoded"} - set(spans) | {"n_draft", "n_predict", "n_drafted", "n_accept"} - set(counts)
    if missing:
        raise LlamaCppError(f"no {sorted(missing)} in llama-speculative-simple's output:\n{stderr[-2000:]}")
    (prompt_tokens, prompt_s), (decoded, decode_s) = spans["encoded"], spans["decoded"]
    # it stops once n_predict > max_tokens, or at EOS (counted in n_predict, not printed)
    stopped_at_eos = decoded <= max_tokens
    generated = decoded - stopped_at_eos
    # stdout: "\n\n", the prompt as detokenized, the text, "\n\n" and "\n\n" again at exit
    text = stdout.removeprefix("\n\n").removesuffix("\n\n\n\n")
    start = text.find(prompt)
    text = text[start + len(prompt):] if start >= 0 else text
    drafted, accepted = counts["n_drafted"], counts["n_accept"]
    return {"text": text, "generated_tokens": generated, "stopped_at_eos": stopped_at_eos,
            "prompt_tokens": prompt_tokens, "prompt_eval_s": prompt_s, "prompt_tokens_per_s": prompt_tokens / prompt_s,
            "decode_s": decode_s, "decode_tokens_per_s": decoded / decode_s,  # llama.cpp's "speed"
            "wall_s": prompt_s + decode_s, "tokens_per_s": generated / (prompt_s + decode_s),
            "draft_max": counts["n_draft"], "drafted_tokens": drafted, "accepted_tokens": accepted,
            "acceptance_rate": accepted / drafted if drafted else None}


def plain_command(binaries: Binaries, model: Path, prompt_file: Path, max_tokens: int, threads: int,
                  ctx_size: int) -> list[str]:
    return [str(binaries.plain), "-m", str(model), "-f", str(prompt_file), "-n", str(max_tokens),
            "-t", str(threads), "-c", str(ctx_size), *GREEDY, "-no-cnv", "--no-display-prompt"]


def speculative_command(binaries: Binaries, target: Path, draft: Path, prompt_file: Path, max_tokens: int,
                        threads: int, draft_threads: int, draft_max: int, ctx_size: int) -> list[str]:
    # --spec-type is given: without it the tool infers the type from the draft GGUF's metadata
    return [str(binaries.speculative), "-m", str(target), "-md", str(draft), "--spec-type", "draft-simple",
            "-f", str(prompt_file), "-n", str(max_tokens), "-t", str(threads), "-td", str(draft_threads),
            "--spec-draft-n-max", str(draft_max), "-c", str(ctx_size), *GREEDY]


def run_plain(binaries: Binaries, model: Path, prompt: str, max_tokens: int, threads: int,
              ctx_size: int = 4096) -> dict:
    """The model alone, greedy, on a prompt for up to max_tokens tokens (EOS ends it) on ``threads`` threads.

    Returns tool, threads, max_tokens and: text (after the prompt), generated_tokens (EOS not counted, as in
    our records), stopped_at_eos, prompt_tokens, prompt_eval_s, prompt_tokens_per_s, decode_s and
    decode_tokens_per_s (llama.cpp's generation speed: decodes after the first token / their time), wall_s
    (prompt to last token, model load and warm-up excluded) and tokens_per_s (generated_tokens / wall_s).
    """
    with prompt_file(prompt) as path:
        stdout, stderr = _run(plain_command(binaries, model, path, max_tokens, threads, ctx_size))
    return {"tool": PLAIN, "threads": threads, "max_tokens": max_tokens, **parse_plain(stdout, stderr)}


def run_speculative(binaries: Binaries, target: Path, draft: Path, prompt: str, max_tokens: int, threads: int,
                    draft_threads: int, draft_max: int = 3, ctx_size: int = 4096) -> dict:
    """Draft-model speculative decoding, greedy; the draft and the target take turns on the threads given.

    Returns what :func:`run_plain` does (decode_tokens_per_s is the tool's "speed": all tokens / decode time)
    plus draft_threads, draft_max, drafted_tokens, accepted_tokens and acceptance_rate (accepted / drafted).
    The tool stops once it has more than max_tokens tokens, so it may return up to draft_max + 1 more.
    """
    with prompt_file(prompt) as path:
        stdout, stderr = _run(speculative_command(binaries, target, draft, path, max_tokens, threads,
                                                  draft_threads, draft_max, ctx_size))
    return {"tool": SPECULATIVE, "threads": threads, "draft_threads": draft_threads, "max_tokens": max_tokens,
            **parse_speculative(stdout, stderr, prompt, max_tokens)}


def run_llama_bench(binaries: Binaries, model: Path, threads: int, prompt_tokens: int, gen_tokens: int,
                    repetitions: int = 3) -> dict:
    """llama-bench's own throughput test (synthetic tokens, no text): prompt processing and generation."""
    command = [str(binaries.bench), "-m", str(model), "-t", str(threads), "-p", str(prompt_tokens),
               "-n", str(gen_tokens), "-r", str(repetitions), "-o", "jsonl"]
    stdout, _ = _run(command)
    return {"tool": BENCH, "threads": threads, **parse_llama_bench(stdout)}


def parse_llama_bench(stdout: str) -> dict:
    """llama-bench's JSONL: one test of prompt processing (n_gen 0), one of generation (n_prompt 0)."""
    tests = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    prompt = [t for t in tests if t["n_gen"] == 0]
    generation = [t for t in tests if t["n_prompt"] == 0 and t["n_gen"] > 0]
    if len(prompt) != 1 or len(generation) != 1:
        raise LlamaCppError(f"expected a prompt and a generation test from llama-bench, got:\n{stdout[-2000:]}")
    (p,), (g,) = prompt, generation
    return {"prompt_tokens": p["n_prompt"], "prompt_tokens_per_s": p["avg_ts"], "prompt_stddev": p["stddev_ts"],
            "generated_tokens": g["n_gen"], "decode_tokens_per_s": g["avg_ts"], "decode_stddev": g["stddev_ts"],
            "repetitions": len(g["samples_ts"])}


@contextmanager
def prompt_file(prompt: str) -> Iterator[Path]:
    """The prompt in a temporary file for `-f` (no shell quoting, any length)."""
    with tempfile.TemporaryDirectory(prefix="pearl-llamacpp-") as tmp:
        path = Path(tmp) / "prompt.txt"
        # `-f` drops one trailing newline: add one, so a prompt ending in "\n" (HumanEval's do) keeps its own
        path.write_text(prompt + "\n", encoding="utf-8")
        yield path


def _run(command: list[str]) -> tuple[str, str]:
    # a token may end inside a UTF-8 character: replace rather than fail on the text
    result = subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace",
                            stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise LlamaCppError(f"{Path(command[0]).name} exited with {result.returncode}:\n{result.stderr[-3000:]}")
    return result.stdout, result.stderr
