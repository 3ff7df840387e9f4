"""``make perf``: start the server, load it with perf_analyzer (gRPC; `stream` on and off; several
concurrencies) using HumanEval prompts, and write raw outputs, summary.json/.md and latency_throughput.png.
"""
import argparse
import json
import sys
from pathlib import Path

from pearl.bench.perf import run_point, token_latencies, write_report
from pearl.bench.prompts import humaneval
from pearl.serving.repository import build_repository, values_for_engines
from pearl.serving.server import TritonServer, add_server_arguments

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument("--prompts", type=int, default=8, help="HumanEval prompts cycled through by the load")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument("--requests-per-point", type=int, default=0,
                        help="requests measured per point (default 2 x concurrency, at least 4)")
    parser.add_argument("--out", type=Path, help="results folder (default results/perf/<pair>)")
    add_server_arguments(parser, REPO / ".cache" / "pearl")
    args = parser.parse_args()
    out = args.out or REPO / "results" / "perf" / args.engines.resolve().name
    out.mkdir(parents=True, exist_ok=True)
    prompts = humaneval(args.prompts)
    repository = build_repository(REPO / "triton_repo", args.cache_dir / "triton_repo" / args.engines.resolve().name,
                                  values_for_engines(args.engines))
    points = []
    with TritonServer(repository, args.cache_dir, http_port=args.http_port, grpc_port=args.grpc_port,
                      metrics_port=args.metrics_port) as server:
        for stream in (False, True):
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                count = args.requests_per_point or max(4, 2 * concurrency)
                point = run_point(server.grpc_url, out, args.cache_dir, prompts, args.max_tokens, stream,
                                  concurrency, count).to_dict()
                if stream:
                    point.update(token_latencies(out / f"profile_stream_c{concurrency}.json"))
                points.append(point)
                print(json.dumps(point), flush=True)
    summary = {"engines": str(args.engines), "max_tokens": args.max_tokens, "prompts": args.prompts, "points": points}
    write_report(summary, out, f"perf_analyzer: {args.engines.resolve().name}")
    print((out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
