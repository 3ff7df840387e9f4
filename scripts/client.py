"""Send a prompt to the running server's ``ensemble`` and print the answer as it arrives, then statistics.

    python scripts/client.py --prompt "def quicksort(arr):"                      # gRPC, streamed
    python scripts/client.py --protocol http --prompt "..."                      # HTTP generate
    python scripts/client.py --protocol http-stream --prompt "..."               # HTTP generate_stream (SSE)
"""
import argparse
import sys

from pearl.serving.client import RequestFailed, grpc_generate, http_generate, http_generate_stream


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--protocol", choices=["grpc", "http", "http-stream"], default="grpc")
    parser.add_argument("--url", help="host:port (default 127.0.0.1:8001 for gRPC, :8000 for HTTP)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--num-draft-tokens", type=int, help="gamma (default: the engine's)")
    parser.add_argument("--decoding-mode", choices=["pearl", "sd", "ar"])
    parser.add_argument("--stop", action="append", help="stop text (repeatable)")
    args = parser.parse_args()
    inputs = {"max_tokens": args.max_tokens, "temperature": args.temperature, "exclude_input_in_output": True}
    for name in ("top_k", "top_p", "seed", "num_draft_tokens", "decoding_mode"):
        if getattr(args, name) is not None:
            inputs[name] = getattr(args, name)
    if args.stop:
        inputs["stop_words"] = args.stop
    grpc = args.protocol == "grpc"
    url = args.url or ("127.0.0.1:8001" if grpc else "127.0.0.1:8000")
    try:
        if grpc:
            chunks = grpc_generate(url, args.prompt, **inputs)
        elif args.protocol == "http-stream":
            chunks = http_generate_stream(url, args.prompt, **inputs)
        else:
            chunks = [http_generate(url, args.prompt, **inputs)]
        for chunk in chunks:
            print(chunk.text, end="", flush=True)
            stats = chunk.stats
    except RequestFailed as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    print("\n" + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
