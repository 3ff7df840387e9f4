"""``make demo``: start Triton on the built engines, stream one answer over gRPC, print statistics, stop.

The prompt is wrapped in the model's chat template (the repository is filled with apply_chat_template=true).
"""
import argparse
import sys
import time
from pathlib import Path

from pearl.serving.client import grpc_generate
from pearl.serving.repository import build_repository, values_for_engines
from pearl.serving.server import TritonServer, add_server_arguments

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument("--prompt", default="Write a Python function that returns the n-th Fibonacci number.")
    parser.add_argument("--max-tokens", type=int, default=128)
    add_server_arguments(parser, REPO / ".cache" / "pearl")
    args = parser.parse_args()
    repository = args.cache_dir / "triton_repo" / f"{args.engines.resolve().name}-chat"
    build_repository(REPO / "triton_repo", repository, values_for_engines(args.engines, apply_chat_template="true"))
    server = TritonServer(repository, args.cache_dir, http_port=args.http_port, grpc_port=args.grpc_port,
                          metrics_port=args.metrics_port)
    print(f"starting tritonserver (model repository {repository}) ...", flush=True)
    started = time.monotonic()
    with server:
        print(f"ready in {time.monotonic() - started:.0f} s; gRPC {server.grpc_url}\n\n>>> {args.prompt}\n", flush=True)
        started = time.monotonic()
        for chunk in grpc_generate(server.grpc_url, args.prompt, max_tokens=args.max_tokens,
                                   exclude_input_in_output=True):
            print(chunk.text, end="", flush=True)
        seconds = time.monotonic() - started
        print("\n\n" + "\n".join(f"{name}: {value:.3g}" if isinstance(value, float) else f"{name}: {value}"
                                  for name, value in chunk.stats.items()))
        print(f"wall time: {seconds:.1f} s (client side, streamed)\nstopping the server", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
