"""``make serve``: fill the Triton model repository from an engine directory and run Triton on it.

Binds to 127.0.0.1 unless --host says otherwise, waits for /v2/health/ready, and serves until Ctrl-C or
SIGTERM, then stops the server (which unloads the models and shuts the MPI world down).
"""
import argparse
import signal
import sys
import threading
from pathlib import Path

from pearl.serving.repository import build_repository, values_for_engines
from pearl.serving.server import LOOPBACK, TritonServer, add_server_arguments

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=Path, required=True, help="a pair's engine directory (engines/<pair>)")
    parser.add_argument("--host", default=LOOPBACK, help="address to bind (default loopback only)")
    parser.add_argument("--repository", type=Path, help="where the filled repository goes "
                        "(default <cache-dir>/triton_repo/<pair>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="template value, e.g. apply_chat_template=true (repeatable)")
    add_server_arguments(parser, REPO / ".cache" / "pearl")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    repository = args.repository or args.cache_dir / "triton_repo" / args.engines.resolve().name
    build_repository(REPO / "triton_repo", repository, values_for_engines(args.engines, **overrides))
    server = TritonServer(repository, args.cache_dir, args.host, args.http_port, args.grpc_port, args.metrics_port)
    print(f"starting tritonserver on {repository} (log: {server.log_file})", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with server:
        print(f"ready: HTTP {server.http_url}, gRPC {server.grpc_url}, metrics {args.host}:{args.metrics_port}"
              f"/metrics; Ctrl-C stops", flush=True)
        try:
            while not stop.wait(1.0):
                if server.process.poll() is not None:
                    print(f"tritonserver exited:\n{server.log_tail()}", file=sys.stderr)
                    return 1
        except KeyboardInterrupt:
            pass
        print("stopping", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
