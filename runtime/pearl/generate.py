"""``pearl generate``: run prompts through an LLM, without a server.

Text mode streams each completion to stdout, then its statistics. ``--json`` prints exactly one JSON
object per request on stdout (prompt, text, token_ids, stats) and nothing else.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from pearl.params import Mode


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _gamma(text: str) -> int | str:
    return "auto" if text == "auto" else _positive_int(text)


def add_arguments(g: argparse.ArgumentParser) -> None:
    """``pearl generate``'s options."""
    g.add_argument("--engines", type=Path, help="a pair's engine directory from `make engines` (engines/<pair>); "
                   "sets the models, devices, dtype and what --gamma auto means")
    g.add_argument("--draft", help="draft model: engine or HF folder (safetensors), or a .gguf file")
    g.add_argument("--target", help="target model: engine or HF folder (safetensors), or a .gguf file")
    g.add_argument("--draft-layers", type=_positive_int, help="use only the first N layers of the draft")
    g.add_argument("--mode", choices=[m.name.lower() for m in Mode], default="pearl")
    g.add_argument("--gamma", type=_gamma, default="auto",
                   help="draft window length, or 'auto': adaptive, each round's window from the acceptance so far "
                        "and the pair's measured costs (none while the target alone is faster)")
    g.add_argument("--max-tokens", type=_positive_int, default=128)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=0, help="0 = off")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--stop", action="append", default=[], help="stop text (repeatable); output ends with it")
    g.add_argument("--ignore-eos", action="store_true")
    g.add_argument("--threads-per-rank", type=_positive_int,
                   help="torch threads in each rank (default: the engines' setting, else 1)")
    g.add_argument("--device", default="auto", help="auto, cpu or cuda: draft on GPU 0, target on GPU 1 if any")
    g.add_argument("--dtype", default="auto", help="auto (float32 on CPU, bfloat16 on GPU), float32, ...")
    g.add_argument("--prompt", action="append", default=[], help="prompt text (repeatable)")
    g.add_argument("--prompts-file", type=Path, help="JSONL file, one {\"prompt\": ...} per line")
    g.add_argument("--chat", action="store_true", help="wrap each prompt in the tokenizer's chat template")
    g.add_argument("--json", action="store_true", help="one JSON object per request on stdout, nothing else")
    g.add_argument("--verbose", action="store_true", help="also print timing details (round overhead)")


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts_file:
        if not args.prompts_file.exists():
            raise ValueError(f"prompts file not found: {args.prompts_file}")
        for number, line in enumerate(args.prompts_file.read_text().splitlines(), 1):
            if line.strip():
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                    raise ValueError(f"{args.prompts_file}:{number}: expected an object with a \"prompt\" string")
                prompts.append(record["prompt"])
    if not prompts:
        raise ValueError("give at least one --prompt or a --prompts-file")
    return prompts


def devices(choice: str) -> tuple[str, str]:
    """(draft device, target device): each model on its own GPU when there are two."""
    import torch

    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice != "cuda":
        return choice, choice
    return "cuda:0", "cuda:1" if torch.cuda.device_count() > 1 else "cuda:0"


def start_llm(args: argparse.Namespace):
    """An LLM over ``--engines`` or over ``--draft``/``--target``."""
    from pearl.llm import LLM

    if args.engines is not None:
        if args.draft or args.target or args.draft_layers:
            raise ValueError("--engines already names the models; drop --draft/--target/--draft-layers")
        if args.device != "auto" or args.dtype != "auto":
            raise ValueError("--engines runs where and in the dtype the engines were built for; "
                             "drop --device/--dtype (or rebuild the engines)")
        return LLM.from_engine_dir(args.engines, args.threads_per_rank)
    if not (args.draft and args.target):
        raise ValueError("give --engines DIR, or both --draft and --target")
    return LLM(world_config(args))


def world_config(args: argparse.Namespace):
    from pearl.backends.base import ModelSpec
    from pearl.ranks.config import WorldConfig

    draft_device, target_device = devices(args.device)
    dtype = args.dtype if args.dtype != "auto" else ("float32" if target_device == "cpu" else "bfloat16")
    return WorldConfig(draft=ModelSpec(args.draft, draft_device, dtype, args.draft_layers),
                       target=ModelSpec(args.target, target_device, dtype),
                       threads_per_rank=args.threads_per_rank or 1)


def format_stats(stats, verbose: bool) -> str:
    lines = [f"tokens {stats.generated_tokens} in {stats.wall_s:.2f} s ({stats.tokens_per_s:.1f} tokens/s)",
             f"target forwards {stats.target_forwards}, draft forwards {stats.draft_forwards}, "
             f"tokens per target forward {stats.tokens_per_target_forward:.2f}",
             f"mean accepted length {stats.mean_accepted_length:.2f}, acceptance rate {stats.acceptance_rate:.2f}"
             f" (mode {stats.mode}, gamma {stats.gamma or 'auto'}: drafted {stats.drafted_rounds} of "
             f"{stats.rounds} rounds ({stats.sd_rounds} as SD), mean window {stats.mean_gamma:.1f})"]
    if verbose:
        lines.append(f"target: forwards {stats.target_forward_s:.3f} s, waiting for draft "
                     f"{stats.target_wait_s:.3f} s, round overhead {100 * stats.round_overhead:.1f}% "
                     f"over {stats.rounds} rounds")
    return "\n".join(f"[{line}]" for line in lines)


def run_generate(args: argparse.Namespace) -> int:
    from pearl.params import SamplingParams
    from pearl.text import IncrementalDetokenizer, encode_prompt

    prompts = read_prompts(args)
    # Validated before any model loads; stop texts are added once the tokenizer is at hand.
    sampling = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                              max_tokens=args.max_tokens, ignore_eos=args.ignore_eos)
    with start_llm(args) as llm:
        tokenizer = llm.tokenizer
        if tokenizer is None:
            raise ValueError(f"{llm.config.target.path} has no tokenizer; text prompts need one")
        stops = tuple(tuple(tokenizer.encode(s, add_special_tokens=False)) for s in args.stop)
        sampling = replace(sampling, stop_token_ids=stops)
        for prompt in prompts:
            prompt_ids = encode_prompt(tokenizer, prompt, args.chat)
            stream = llm.generate(prompt_ids, sampling, args.mode, args.gamma)
            detok = IncrementalDetokenizer(tokenizer)
            for chunk in stream:
                piece = detok.add(chunk)
                if not args.json:
                    print(piece, end="", flush=True)
            tail = detok.flush()
            if args.json:
                text = tokenizer.decode(stream.token_ids, skip_special_tokens=True)
                print(json.dumps({"prompt": prompt, "text": text, "token_ids": stream.token_ids,
                                  "finish_reason": stream.finish_reason, "stats": stream.stats.to_dict()}),
                      flush=True)
            else:
                print(tail)
                print(format_stats(stream.stats, args.verbose), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pearl generate", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    import transformers

    transformers.logging.set_verbosity_error()
    from pearl.tokenizers import ModelPathError
    from pearl.engine_files import EngineDirError
    from pearl.llm import VocabularyMismatch
    from pearl.ranks.world import WorldError

    try:
        return run_generate(args)
    except (ValueError, ModelPathError, VocabularyMismatch, EngineDirError) as exc:
        print(f"pearl generate: error: {exc}", file=sys.stderr)
        return 2
    except WorldError as exc:
        print(f"pearl generate: the worker ranks failed: {exc}", file=sys.stderr)
        return 1
