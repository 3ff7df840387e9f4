"""Running the benchmark: every (method, prompt) once, appended to records.jsonl as it finishes.

A run can be interrupted and resumed: finished records are kept and skipped. The window sweeps (sd, pearl and
llama.cpp's speculative decoding) run on the first ``sweep_per_class`` prompts of each class; the best window
of each (by tokens/s) then runs on all. Our LLM's methods run side by side, prompt by prompt (both LLMs
stay up: the machine's speed drifts, and a ratio is only fair between runs made close in time); then
transformers' assisted generation in this process, then llama.cpp, each over all prompts.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

from pearl_bench.methods import AssistedGeneration, Method, run_on_llm
from pearl_bench.prompts import Prompt
from pearl.backends.base import ModelSpec
from pearl.engine_files import gguf_model_file, load_pair, pair_models
from pearl.llm import LLM


@dataclass(frozen=True)
class BenchConfig:
    engine_dir: Path
    out_dir: Path
    max_tokens: int = 64
    gammas: tuple[int, ...] = (2, 3, 4)
    sweep_per_class: int = 1
    llama_cpp: bool = True
    cache_dir: Path = Path(".cache/pearl")


def record_key(method: Method, prompt_id: str) -> str:
    return f"{method.label}|{prompt_id}"


class BenchRun:
    def __init__(self, config: BenchConfig, prompts: list[Prompt]) -> None:
        self.config, self.prompts = config, prompts
        self.records_path = config.out_dir / "records.jsonl"
        config.out_dir.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, dict] = {}
        if self.records_path.exists():
            for line in self.records_path.read_text().splitlines():
                if line.strip():
                    record = json.loads(line)
                    self.records[record["key"]] = record
        self.world_config, self.costs = load_pair(config.engine_dir)
        self.cores = 2 * self.world_config.threads_per_rank  # what PEARL's two ranks use: every method gets them
        self._tokenizer = None
        self._llms: dict[bool, LLM] = {}  # by Method.serial
        self._target = None  # the target in this process (assisted generation, divergence margins)
        self.bar: tqdm | None = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from pearl.tokenizers import load_tokenizer
            self._tokenizer = load_tokenizer(self.world_config.target.path)
        return self._tokenizer

    @property
    def sweep_prompts(self) -> list[Prompt]:
        categories = dict.fromkeys(p.category for p in self.prompts)
        return [p for c in categories for p in [q for q in self.prompts if q.category == c][:self.config.sweep_per_class]]

    def run(self) -> dict[str, dict]:
        gammas = self.config.gammas
        with tqdm(total=self._planned(), initial=len(self.records), desc="bench", unit="run") as self.bar:
            self._run_on_llms([Method(name, g) for g in gammas for name in ("sd", "pearl")], self.sweep_prompts)
            self._run_on_llms([Method("ar"), Method("sd", self.best_gamma("sd")), Method("pearl", "auto"),
                               Method("pearl", self.best_gamma("pearl"))], self.prompts)
            self._close_llms()
            self._run_assisted()
            if self.config.llama_cpp:
                self._run_llama_cpp()
        return self.records

    def _planned(self) -> int:
        n, s, g = len(self.prompts), len(self.sweep_prompts), len(self.config.gammas)
        llama = (3 * n + g * s) if self.config.llama_cpp else 0
        return 2 * g * s + 4 * n + n + llama

    def best_gamma(self, name: str) -> int:
        def speed(gamma: int) -> float:
            runs = [self.records.get(record_key(Method(name, gamma), p.prompt_id)) for p in self.sweep_prompts]
            runs = [r for r in runs if r]
            return sum(r["generated_tokens"] for r in runs) / max(1e-9, sum(r["wall_s"] for r in runs))
        return max(self.config.gammas, key=speed)

    def _run_on_llms(self, methods: list[Method], prompts: list[Prompt]) -> None:
        """Every method on a prompt, then the next prompt."""
        for prompt in prompts:
            for method in methods:
                if record_key(method, prompt.prompt_id) not in self.records:
                    result = run_on_llm(self._llm(method.serial), method, prompt.token_ids(self.tokenizer),
                                        self.config.max_tokens)
                    self._save(method, prompt, result)

    def _llm(self, serial: bool) -> LLM:
        """Started on first need and kept: the serial one runs each rank on every core, the parallel one is
        the pair as built."""
        if serial not in self._llms:
            config = self.world_config
            if serial:
                config = replace(config, threads_per_rank=self.cores, target_alone_threads=self.cores)
            self._llms[serial] = LLM(config, self.costs)
        return self._llms[serial]

    def _close_llms(self) -> None:
        for llm in self._llms.values():
            llm.close()
        self._llms = {}

    @property
    def target(self):
        if self._target is None:
            from pearl.backends.loading import load_model
            self._target = load_model(as_torch_model(self.world_config.target, self.world_config.target.dtype))
        return self._target

    def _run_assisted(self) -> None:
        from pearl.backends.loading import load_model
        from pearl.backends.loading import eos_token_ids

        method = Method("assisted")
        pending = [p for p in self.prompts if record_key(method, p.prompt_id) not in self.records]
        if not pending:
            return
        torch.set_num_threads(self.cores)
        draft = load_model(as_torch_model(self.world_config.draft, self.world_config.target.dtype))
        # the pair's end tokens (its eos_tokens), where our methods end too
        assisted = AssistedGeneration(self.target, draft, eos_token_ids(self.target, self.world_config.target))
        for prompt in pending:
            self._save(method, prompt, assisted.run(prompt.token_ids(self.tokenizer), self.config.max_tokens))
        del draft, assisted

    def _run_llama_cpp(self) -> None:
        from pearl_bench import llamacpp
        from pearl_bench.llamacpp_build import ensure_built

        sources = gguf_sources(self.config.engine_dir, self.config.cache_dir)
        if sources is None:
            tqdm.write("[bench] llama.cpp skipped: the pair's sources are not GGUF files")
            return
        binaries = ensure_built(self.config.cache_dir)
        runs = {  # method -> how it runs one prompt's text
            Method("llama.cpp", threads=1): lambda text, m: llamacpp.run_plain(
                binaries, sources["target"], text, self.config.max_tokens, 1),
            Method("llama.cpp", threads=self.cores): lambda text, m: llamacpp.run_plain(
                binaries, sources["target"], text, self.config.max_tokens, self.cores),
        }
        speculative = lambda text, m: llamacpp.run_speculative(  # noqa: E731
            binaries, sources["target"], sources["draft"], text, self.config.max_tokens, self.cores, self.cores,
            draft_max=m.gamma)
        for method, prompts in [*[(Method("llama.cpp-spec", g), self.sweep_prompts) for g in self.config.gammas],
                                *[(m, self.prompts) for m in runs]]:
            for prompt in prompts:
                if record_key(method, prompt.prompt_id) not in self.records:
                    self._save(method, prompt, (runs.get(method) or speculative)(prompt.formatted(self.tokenizer),
                                                                                 method))
        best = Method("llama.cpp-spec", self.best_gamma("llama.cpp-spec"))
        for prompt in self.prompts:
            if record_key(best, prompt.prompt_id) not in self.records:
                self._save(best, prompt, speculative(prompt.formatted(self.tokenizer), best))

    def margin(self, prompt_id: str, ar_prefix: list[int]) -> float:
        """The target's top-2 logit gap where an output left ar's: a tiny gap means a numerical near-tie."""
        prompt = next(p for p in self.prompts if p.prompt_id == prompt_id)
        with torch.inference_mode():
            ids = torch.tensor([prompt.token_ids(self.tokenizer) + ar_prefix])
            logits = self.target(ids).logits[0, -1].float()
        top2 = torch.topk(logits, 2).values
        return float(top2[0] - top2[1])

    def _save(self, method: Method, prompt: Prompt, result: dict) -> None:
        record = {"key": record_key(method, prompt.prompt_id), "method": method.name, "gamma": method.gamma,
                  "label": method.label, "prompt_id": prompt.prompt_id, "category": prompt.category, **result}
        self.records[record["key"]] = record
        with open(self.records_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.bar is not None:
            self.bar.set_postfix_str(f"{method.label} {result['tokens_per_s']:.1f} tok/s")
            self.bar.update(1)


def as_torch_model(spec: ModelSpec, dtype: str) -> ModelSpec:
    """The model as transformers runs it, for the methods that need a torch model (assisted generation, the
    target's logit margins): a llama_cpp model's GGUF dequantized to ``dtype`` (close to, not exactly, what
    llama.cpp computes), any other as it is."""
    if spec.backend != "llama_cpp":
        return spec
    return replace(spec, path=str(gguf_model_file(spec.path)), backend="torch", dtype=dtype)


def gguf_sources(engine_dir: Path, cache_dir: Path) -> dict[str, Path] | None:
    """Each model's GGUF source file, as the build verified it (None when a source is not a GGUF file)."""
    from pearl_build.sources import Source, resolve

    paths = {}
    for role, (_, info) in pair_models(engine_dir).items():
        path = resolve(Source.from_dict(info["source"]), cache_dir).path
        if path.suffix != ".gguf":
            return None
        paths[role] = path
    return paths
