"""``make bench-concurrency``: the batched engine's output tokens/s and latency at concurrency 1, 2, 4, 8, 16.

Writes summary.json, summary.md and concurrency.png to --out (see pearl.bench.concurrency).
"""
import argparse
import sys
from pathlib import Path

from pearl.bench.concurrency import requests_for, run_level, summarize, write_report
from pearl.bench.prompts import humaneval
from pearl.engine import Engine
from pearl.params import SamplingParams


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=Path, required=True, help="a pair's engine directory")
    parser.add_argument("--concurrency", default="1,2,4,8,16")
    parser.add_argument("--prompts", type=int, default=16, help="the first N HumanEval problems (default 16)")
    parser.add_argument("--min-requests", type=int, default=8,
                        help="requests per level, at least (default 8: levels up to 8 serve the same 8 prompts)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--mode", default="pearl", choices=["pearl", "sd", "ar"])
    parser.add_argument("--gamma", default="auto", help="a number, or auto: the profile's gamma per batch size")
    parser.add_argument("--out", type=Path, help="results folder (default results/concurrency/<pair>)")
    args = parser.parse_args()
    gamma = args.gamma if args.gamma == "auto" else int(args.gamma)
    sampling = SamplingParams(max_tokens=args.max_tokens, ignore_eos=True)  # every request the same length
    out = args.out or Path("results") / "concurrency" / args.engines.resolve().name
    levels = []
    with Engine.from_engine_dir(args.engines) as engine:
        prompts = [engine.tokenizer(p.text).input_ids for p in humaneval(args.prompts)]
        for concurrency in [int(c) for c in args.concurrency.split(",")]:
            level = run_level(engine, prompts, concurrency, requests_for(concurrency, args.min_requests), sampling,
                              args.mode, gamma)
            print(f"concurrency {concurrency}: {level.tokens_per_s:.2f} tokens/s, latency "
                  f"{level.latency_mean_s:.1f} s, {level.mean_batch_size:.2f} sequences per round", flush=True)
            levels.append(level)
        summary = summarize(levels, engines=str(args.engines), mode=args.mode, gamma=args.gamma,
                            prompts=len(prompts), max_tokens=args.max_tokens, max_batch_size=engine.max_batch_size)
    files = write_report(summary, out, f"Continuous batching: {args.engines.resolve().name}")
    print((out / "summary.md").read_text())
    print("\n".join(["written:", *map(str, files)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
