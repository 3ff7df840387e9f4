"""Running the benchmark: every (setting, method, prompt) once, appended to records.jsonl as it finishes.

A run can be interrupted and resumed: finished records are kept and skipped. Gamma sweeps (sd and pearl)
run on the first ``sweep_prompts`` prompts; the best gamma per setting (by tokens/s) then runs on all.
Engines start once per thread count and stop before transformers' assisted generation loads the models
into this process, so at most one copy of the pair is in memory.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from pearl.bench.methods import SETTINGS, AssistedGeneration, Method, run_on_engine
from pearl.backends.torch_backend import eos_token_ids
from pearl.bench.prompts import Prompt
from pearl.engine import Engine
from pearl.engine_files import load_pair


@dataclass(frozen=True)
class BenchConfig:
    engine_dir: Path
    out_dir: Path
    max_tokens: int = 48
    gammas: tuple[int, ...] = (2, 3, 4)
    sweep_prompts: int = 1
    settings: tuple[str, ...] = tuple(SETTINGS)


def record_key(setting: str, method: Method, prompt_id: str) -> str:
    return f"{setting}|{method.label}|{prompt_id}"


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
        self.world_config, self.auto_gamma = load_pair(config.engine_dir)
        self._tokenizer = None
        self._engine: Engine | None = None
        self._scorer = None  # the target in this process, loaded only to measure divergence margins
        self.bar: tqdm | None = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from pearl.backends.loading import load_tokenizer
            self._tokenizer = load_tokenizer(self.world_config.target.path)
        return self._tokenizer

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        return self.tokenizer(prompt.text).input_ids

    def run(self) -> dict[str, dict]:
        n, g = len(self.prompts), len(self.config.gammas)
        s = min(self.config.sweep_prompts, n)
        per_setting = {1: 5 * n + 4 * s * (g - 1), 2: 3 * n + 2 * s * (g - 1)}  # pearl runs in the 1-thread one
        total = sum(per_setting[min(SETTINGS[name], 2)] for name in self.config.settings)
        with tqdm(total=total, initial=min(total, len(self.records)), desc="bench", unit="run") as self.bar:
            for setting in self.config.settings:
                self._run_setting(setting)
        return self.records

    def _run_setting(self, setting: str) -> None:
        threads, sweep = SETTINGS[setting], self.prompts[:self.config.sweep_prompts]
        runs = [(Method("ar"), self.prompts)] + [(Method("sd", g), sweep) for g in self.config.gammas]
        if threads == 1:  # PEARL always runs one core per model: measured here, reported in every setting
            runs += [(Method("pearl", "auto"), self.prompts)]
            runs += [(Method("pearl", g), sweep) for g in self.config.gammas]
        self._run_engine(threads, setting, runs)
        best = [(Method("sd", self.best_gamma(setting, "sd")), self.prompts)]
        if threads == 1:
            best.append((Method("pearl", self.best_gamma(setting, "pearl")), self.prompts))
        self._run_engine(threads, setting, best)
        self._close_engine()
        self._run_assisted(setting)

    def best_gamma(self, setting: str, name: str) -> int:
        def speed(gamma: int) -> float:
            runs = [self.records.get(record_key(setting, Method(name, gamma), p.prompt_id))
                    for p in self.prompts[:self.config.sweep_prompts]]
            runs = [r for r in runs if r]
            return sum(r["generated_tokens"] for r in runs) / max(1e-9, sum(r["wall_s"] for r in runs))
        return max(self.config.gammas, key=speed)

    def _run_engine(self, threads: int, setting: str, work: list[tuple[Method, list[Prompt]]]) -> None:
        for method, prompt in [(m, p) for m, prompts in work for p in prompts]:
            if record_key(setting, method, prompt.prompt_id) in self.records:
                continue
            if self._engine is None:  # started on first need, kept for the setting's later runs
                self._engine = Engine(replace(self.world_config, threads_per_rank=threads),
                                      recommended_gamma=self.auto_gamma)
            self._save(setting, method, prompt, run_on_engine(self._engine, method, self.prompt_ids(prompt),
                                                              self.config.max_tokens))

    def _close_engine(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def _run_assisted(self, setting: str) -> None:
        import torch

        from pearl.backends.loading import load_model

        method = Method("assisted")
        pending = [p for p in self.prompts if record_key(setting, method, p.prompt_id) not in self.records]
        if not pending:
            return
        torch.set_num_threads(SETTINGS[setting])
        target = load_model(self.world_config.target)
        draft = load_model(self.world_config.draft)
        assisted = AssistedGeneration(target, draft, eos_token_ids(target))
        for prompt in pending:
            self._save(setting, method, prompt, assisted.run(self.prompt_ids(prompt), self.config.max_tokens))
        del target, draft, assisted

    def margin(self, prompt_id: str, ar_prefix: list[int]) -> float:
        """The target's top-2 logit gap where an output left ar's: a tiny gap means a numerical near-tie."""
        import torch

        from pearl.backends.loading import load_model
        if self._scorer is None:
            self._scorer = load_model(self.world_config.target)
        prompt = next(p for p in self.prompts if p.prompt_id == prompt_id)
        with torch.inference_mode():
            logits = self._scorer(torch.tensor([self.prompt_ids(prompt) + ar_prefix])).logits[0, -1].float()
        top2 = torch.topk(logits, 2).values
        return float(top2[0] - top2[1])

    def _save(self, setting: str, method: Method, prompt: Prompt, result: dict) -> None:
        record = {"key": record_key(setting, method, prompt.prompt_id), "setting": setting, "method": method.name,
                  "gamma": method.gamma, "label": method.label, "prompt_id": prompt.prompt_id, **result}
        self.records[record["key"]] = record
        with open(self.records_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.bar is not None:
            self.bar.set_postfix_str(f"{setting} {method.label} {result['tokens_per_s']:.1f} tok/s")
            self.bar.update(1)
