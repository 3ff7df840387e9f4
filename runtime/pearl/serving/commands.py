"""The serving commands of ``pearl``: ``serve`` (Triton with a pair's ensemble, and the OpenAI-compatible
API, until Ctrl-C), ``demo`` (one streamed answer, then stop), ``client`` (a prompt to a running server) and
``fill-template``."""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import time
from pathlib import Path
from string import Template

from pearl.layout import CACHE_DIR, TRITON_TEMPLATES
from pearl.schema import pbtxt_blocks
from pearl.serving.repository import build_repository, template_overrides, values_for_engines
from pearl.serving.server import LOOPBACK, TritonServer, add_server_arguments


def serve(argv: list[str] | None = None) -> int:
    """Fill the model repository from an engine directory and run Triton on it, with the OpenAI-compatible
    API next to it: bound to 127.0.0.1 unless --host says otherwise, ready when /v2/health/ready says so,
    until Ctrl-C or SIGTERM (which unload the models and shut the MPI world down)."""
    parser = argparse.ArgumentParser(prog="pearl serve", description=serve.__doc__.splitlines()[0])
    parser.add_argument("--engines", type=Path, required=True, help="a pair's engine directory (engines/<pair>)")
    parser.add_argument("--host", default=LOOPBACK, help="address to bind (default loopback only)")
    parser.add_argument("--repository", type=Path, help="where the filled repository goes "
                        "(default <cache-dir>/triton_repo/<pair>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="template value, e.g. apply_chat_template=true (repeatable)")
    parser.add_argument("--openai-port", type=int, default=9000,
                        help="the OpenAI-compatible API's port (0: none; it needs apply_chat_template=false)")
    add_server_arguments(parser, CACHE_DIR)
    args = parser.parse_args(argv)
    repository = args.repository or args.cache_dir / "triton_repo" / args.engines.resolve().name
    values = values_for_engines(args.engines, **template_overrides(args.set))
    build_repository(TRITON_TEMPLATES, repository, values)
    server = TritonServer(repository, args.cache_dir, args.host, args.http_port, args.grpc_port, args.metrics_port)
    frontend = openai_config(server, values) if args.openai_port else None  # refused before Triton starts
    print(f"starting tritonserver on {repository} (log: {server.log_file})", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with server, openai_frontend(frontend, server.host, args.openai_port) as openai:
        print(f"ready: HTTP {server.http_url}, gRPC {server.grpc_url}, metrics {args.host}:{args.metrics_port}"
              f"/metrics{f', OpenAI API {openai.url}' if openai else ''}; Ctrl-C stops", flush=True)
        try:
            while not stop.wait(1.0):
                if server.process.poll() is not None:
                    print(f"tritonserver exited:\n{server.log_tail()}", file=sys.stderr)
                    return 1
        except KeyboardInterrupt:
            pass
        print("stopping", flush=True)
    return 0


def openai_config(server: TritonServer, values: dict[str, str]):
    from pearl.serving.openai_app import FrontendConfig

    return FrontendConfig.for_repository(server.grpc_url, values)


@contextlib.contextmanager
def openai_frontend(config, host: str, port: int):
    """The OpenAI-compatible API (``config``: its FrontendConfig) on ``host:port``; None without a config."""
    if config is None:
        yield None
        return
    from pearl.serving.openai_app import OpenAIServer

    with OpenAIServer(config, host, port) as frontend:
        yield frontend


def demo(argv: list[str] | None = None) -> int:
    """Start Triton on the built engines, stream one answer over gRPC, print its statistics, stop. The prompt
    goes through the model's chat template (the repository is filled with apply_chat_template=true)."""
    from pearl.serving.client import grpc_generate

    parser = argparse.ArgumentParser(prog="pearl demo", description=demo.__doc__.splitlines()[0])
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument("--prompt", default="Write a Python function that returns the n-th Fibonacci number.")
    parser.add_argument("--max-tokens", type=int, default=128)
    add_server_arguments(parser, CACHE_DIR)
    args = parser.parse_args(argv)
    repository = args.cache_dir / "triton_repo" / f"{args.engines.resolve().name}-chat"
    build_repository(TRITON_TEMPLATES, repository, values_for_engines(args.engines, apply_chat_template="true"))
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


def client(argv: list[str] | None = None) -> int:
    """Send a prompt to the running server's ``ensemble`` and print the answer as it arrives, then statistics
    (``--protocol grpc``: streamed; ``http``: generate; ``http-stream``: generate_stream, server-sent events)."""
    from pearl.serving.client import RequestFailed, grpc_generate, http_generate, http_generate_stream

    parser = argparse.ArgumentParser(prog="pearl client", description=client.__doc__.splitlines()[0])
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--protocol", choices=["grpc", "http", "http-stream"], default="grpc")
    parser.add_argument("--url", help="host:port (default 127.0.0.1:8001 for gRPC, :8000 for HTTP)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--num-draft-tokens", type=int, help="gamma (default: adaptive)")
    parser.add_argument("--decoding-mode", choices=["pearl", "sd", "ar"])
    parser.add_argument("--stop", action="append", help="stop text (repeatable)")
    args = parser.parse_args(argv)
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


def fill_template(argv: list[str] | None = None) -> int:
    """Fill the Triton model repository's templates (like TensorRT-LLM's tools/fill_template.py):
    ``--engines engines/<pair> --output <repo> [key:value,...]`` copies triton_repo/ with every ${placeholder}
    filled from the engine directory; ``-i FILE key:value,...`` fills one file in place (TensorRT-LLM's usage;
    unknown placeholders are left as they are)."""
    parser = argparse.ArgumentParser(prog="pearl fill-template", description=fill_template.__doc__.splitlines()[0])
    parser.add_argument("values", nargs="?", default="", help="key:value,key:value overrides")
    parser.add_argument("--engines", type=Path, help="a pair's engine directory (engines/<pair>)")
    parser.add_argument("--output", type=Path, help="where the filled repository goes")
    parser.add_argument("--templates", type=Path, default=TRITON_TEMPLATES)
    parser.add_argument("-i", "--in-place", type=Path, help="fill this one file in place")
    args = parser.parse_args(argv)
    values = {}
    for item in filter(None, args.values.split(",")):
        key, sep, value = item.partition(":")
        if not sep:
            parser.error(f"expected key:value, got {item!r}")
        values[key.strip()] = value.strip()
    if args.in_place:
        args.in_place.write_text(Template(args.in_place.read_text()).safe_substitute({**pbtxt_blocks(), **values}))
        return 0
    if not (args.engines and args.output):
        parser.error("give --engines and --output (or -i FILE)")
    try:
        out = build_repository(args.templates, args.output, values_for_engines(args.engines, **values))
    except ValueError as exc:
        print(f"pearl fill-template: error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0
