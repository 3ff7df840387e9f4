"""``make bench``: PEARL against ar, sd and transformers' assisted generation on HumanEval, two resource settings.

Writes records.jsonl (resumable), summary.json, summary.md, speedup.png and accepted_lengths.png to --out.
"""
import argparse
import sys
from pathlib import Path

from pearl.bench import report
from pearl.bench.methods import SETTINGS
from pearl.bench.prompts import from_jsonl, humaneval
from pearl.bench.runner import BenchConfig, BenchRun


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=Path, required=True, help="a pair's engine directory")
    parser.add_argument("--prompts", type=int, default=2, help="the first N HumanEval problems (default 2)")
    parser.add_argument("--full", action="store_true", help="all 164 HumanEval problems")
    parser.add_argument("--prompts-file", type=Path, help="a JSONL file of {\"prompt\": ...} instead")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--gammas", default="2,3,4", help="the sd/pearl gamma sweep")
    parser.add_argument("--sweep-prompts", type=int, default=1, help="prompts the sweep runs on")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"of {', '.join(SETTINGS)}")
    parser.add_argument("--out", type=Path, help="results folder (default results/bench/<pair>)")
    parser.add_argument("--fresh", action="store_true", help="discard earlier records instead of resuming")
    args = parser.parse_args()
    import transformers

    transformers.logging.set_verbosity_error()  # 4.57's false "incorrect regex pattern" warning on local folders
    limit = None if args.full else args.prompts
    prompts = from_jsonl(args.prompts_file, limit) if args.prompts_file else humaneval(limit)
    out = args.out or Path("results") / "bench" / args.engines.resolve().name
    if args.fresh and (out / "records.jsonl").exists():
        (out / "records.jsonl").unlink()
    settings = tuple(s for s in args.settings.split(",") if s)
    unknown = set(settings) - set(SETTINGS)
    if unknown:
        parser.error(f"unknown settings {sorted(unknown)}")
    config = BenchConfig(args.engines, out, args.max_tokens, tuple(int(g) for g in args.gammas.split(",")),
                         args.sweep_prompts, settings)
    run = BenchRun(config, prompts)
    records = run.run()
    summary = report.summarize(records, [p.prompt_id for p in prompts], margin=run.margin)
    summary.update({"engines": str(args.engines), "max_tokens": args.max_tokens})
    files = report.write(summary, records, out, f"PEARL benchmark: {args.engines.resolve().name}")
    print((out / "summary.md").read_text())
    print("\n".join(["written:", *map(str, files)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
