"""``make bench``: PEARL against ar, sd, transformers' assisted generation and llama.cpp, per prompt class.

Prompts: HumanEval plus the committed mixed set (chat, math, translation, summarisation), ``--per-class`` of
each. Writes records.jsonl (resumable), summary.json, summary.md and speedup.png to --out.
"""
import argparse
import sys
from pathlib import Path

from pearl.bench import report
from pearl.bench.draft_step import draft_steps, lines
from pearl.bench.prompts import CLASSES, from_jsonl, mixed
from pearl.bench.runner import BenchConfig, BenchRun


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=Path, required=True, help="a pair's engine directory")
    parser.add_argument("--per-class", type=int, default=4, help="prompts of each class (default 4)")
    parser.add_argument("--classes", default=",".join(CLASSES), help=f"of {', '.join(CLASSES)}")
    parser.add_argument("--prompts-file", type=Path, help="a JSONL file of {\"prompt\", \"class\"?, \"chat\"?} instead")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--gammas", default="2,3,4", help="the fixed windows swept for sd, pearl, llama.cpp")
    parser.add_argument("--sweep-per-class", type=int, default=1, help="prompts of each class the sweep runs on")
    parser.add_argument("--no-llama-cpp", action="store_true", help="skip llama.cpp (built on first use)")
    parser.add_argument("--no-draft-step", action="store_true", help="skip timing the draft's step variants")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/pearl"))
    parser.add_argument("--out", type=Path, help="results folder (default results/bench/<pair>)")
    parser.add_argument("--fresh", action="store_true", help="discard earlier records instead of resuming")
    args = parser.parse_args()
    import transformers

    transformers.logging.set_verbosity_error()  # 4.57's false "incorrect regex pattern" warning on local folders
    classes = tuple(c for c in args.classes.split(",") if c)
    try:
        prompts = from_jsonl(args.prompts_file) if args.prompts_file else mixed(args.per_class, classes)
    except ValueError as exc:
        parser.error(str(exc))
    out = args.out or Path("results") / "bench" / args.engines.resolve().name
    if args.fresh and (out / "records.jsonl").exists():
        (out / "records.jsonl").unlink()
    config = BenchConfig(args.engines, out, args.max_tokens, tuple(int(g) for g in args.gammas.split(",")),
                         args.sweep_per_class, not args.no_llama_cpp, args.cache_dir)
    run = BenchRun(config, prompts)
    records = run.run()
    summary = report.summarize(records, prompts, run.sweep_prompts, margin=run.margin)
    summary.update({"engines": str(args.engines), "max_tokens": args.max_tokens})
    extra = []
    if not args.no_draft_step:
        summary["draft_step_s"] = draft_steps(args.engines, args.cache_dir)
        extra += lines(summary["draft_step_s"])
    overhead = summary["groups"]["overall"]["methods"].get("pearl(gamma=auto)", {}).get("round_overhead")
    if overhead is not None:
        extra.append(f"pearl(gamma=auto) round overhead {100 * overhead:.1f}% (target < 3%: "
                     f"{'met' if overhead < 0.03 else 'not met'})")
    files = report.write(summary, out, f"PEARL benchmark: {args.engines.resolve().name}", extra)
    print((out / "summary.md").read_text())
    print("\n".join(["written:", *map(str, files)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
