"""``make soak``: perf_analyzer at concurrency 8 against the served ensemble for a while (default 10
minutes); reports errors, generated tokens/s over time and the server's memory over time."""
import argparse
import sys
from pathlib import Path

from pearl.bench.prompts import humaneval
from pearl.bench.soak import soak, write_report
from pearl.serving.repository import build_repository, values_for_engines
from pearl.serving.server import TritonServer, add_server_arguments

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=16, help="HumanEval prompts cycled through")
    parser.add_argument("--requests-per-window", type=int, default=16)
    parser.add_argument("--out", type=Path, help="results folder (default results/soak/<pair>)")
    add_server_arguments(parser, REPO / ".cache" / "pearl")
    args = parser.parse_args()
    out = args.out or REPO / "results" / "soak" / args.engines.resolve().name
    out.mkdir(parents=True, exist_ok=True)
    repository = build_repository(REPO / "triton_repo", args.cache_dir / "triton_repo" / args.engines.resolve().name,
                                  values_for_engines(args.engines))
    with TritonServer(repository, args.cache_dir, http_port=args.http_port, grpc_port=args.grpc_port,
                      metrics_port=args.metrics_port) as server:
        summary = soak(server, out, args.cache_dir, humaneval(args.prompts), args.max_tokens, args.concurrency,
                       60 * args.minutes, args.requests_per_window)
    write_report(summary, out, f"soak: {args.engines.resolve().name}, concurrency {args.concurrency}")
    print((out / "soak.md").read_text())
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
