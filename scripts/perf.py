"""``make perf``: start the server, load it with perf_analyzer (gRPC; `stream` on and off; several
concurrencies) and genai-perf (streamed: TTFT, inter-token latency, output tokens/s) using HumanEval prompts,
and write raw outputs, summary.json/.md and latency_throughput.png.
"""
import argparse
import json
import sys
from pathlib import Path

from pearl.bench.genai_perf import find_genai_perf, run_genai_point
from pearl.bench.perf import run_point, token_latencies, write_report
from pearl.bench.prompts import humaneval
from pearl.engine_files import pair_models
from pearl.serving.repository import build_repository, values_for_engines
from pearl.serving.server import TritonServer, add_server_arguments

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument("--prompts", type=int, default=8, help="HumanEval prompts cycled through by the load")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", default="1,2,4,8,16")
    parser.add_argument("--requests-per-point", type=int, default=0,
                        help="requests measured per point (default 2 x concurrency, at least 4)")
    parser.add_argument("--genai-perf", default="genai-perf", metavar="PATH",
                        help="genai-perf executable (`make perf` passes the one `make genai-perf` installs)")
    parser.add_argument("--no-genai-perf", action="store_true", help="perf_analyzer only")
    parser.add_argument("--out", type=Path, help="results folder (default results/perf/<pair>)")
    add_server_arguments(parser, REPO / ".cache" / "pearl")
    args = parser.parse_args()

    def requests_for(concurrency: int) -> int:
        return args.requests_per_point or max(4, 2 * concurrency)

    out = args.out or REPO / "results" / "perf" / args.engines.resolve().name
    out.mkdir(parents=True, exist_ok=True)
    prompts = humaneval(args.prompts)
    genai_perf = None if args.no_genai_perf else find_genai_perf(args.genai_perf)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    repository = build_repository(REPO / "triton_repo", args.cache_dir / "triton_repo" / args.engines.resolve().name,
                                  values_for_engines(args.engines))
    points, genai_points = [], []
    with TritonServer(repository, args.cache_dir, http_port=args.http_port, grpc_port=args.grpc_port,
                      metrics_port=args.metrics_port) as server:
        for stream in (False, True):
            for concurrency in concurrencies:
                point = run_point(server.grpc_url, out, args.cache_dir, prompts, args.max_tokens, stream,
                                  concurrency, requests_for(concurrency)).to_dict()
                if stream:
                    point.update(token_latencies(out / f"profile_stream_c{concurrency}.json"))
                points.append(point)
                print(json.dumps(point), flush=True)
        if genai_perf is not None:
            tokenizer = pair_models(args.engines, check_files=False)["target"][0]
            for concurrency in concurrencies:
                point = run_genai_point(genai_perf, server.grpc_url, tokenizer, out, args.cache_dir, prompts,
                                        args.max_tokens, concurrency, requests_for(concurrency))
                genai_points.append(point)
                print(json.dumps({"genai_perf": point}), flush=True)
    summary = {"engines": str(args.engines), "max_tokens": args.max_tokens, "prompts": args.prompts, "points": points,
               "genai_perf": genai_points}
    write_report(summary, out, f"make perf: {args.engines.resolve().name}")
    print((out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
