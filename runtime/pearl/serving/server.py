"""Starting, waiting for, and stopping a Triton Inference Server on a model repository.

Which server: ``tritonserver`` on PATH (NVIDIA's Triton containers, with their own backends), else the
one bundled in the ``nvidia-pytriton`` wheel (tritonserver 2.51 with the python backend; what CPU hosts
use). The bundled server needs, as measured here: its shared libraries (``nvidia_pytriton.libs``) and
the Python's libdir on LD_LIBRARY_PATH (else the python backend stub cannot load and the server hangs),
this venv's ``bin`` first on PATH (else the stub runs without our packages), and a backend directory
``python/`` holding libtriton_python.so, triton_python_backend_utils.py and the stub for this Python.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from pearl.processes import exit_with_parent

LOOPBACK = "127.0.0.1"


def add_server_arguments(parser, cache_dir: Path) -> None:
    """The command-line options every script that starts a server shares."""
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--cache-dir", type=Path, default=cache_dir, help="server log, backends, filled repositories")


class ServerError(RuntimeError):
    """The server could not be found, did not become ready, or exited."""


@dataclass(frozen=True)
class ServerCommand:
    """How to run tritonserver on this host: the binary, extra environment, extra arguments."""

    binary: str
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()


def bundled_backends(cache_dir: Path) -> tuple[Path, Path]:
    """(tritonserver binary, backend directory) from the nvidia-pytriton wheel installed in this venv."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("no tritonserver on PATH and nvidia-pytriton is not installed; run `make setup`")
    root = Path(spec.submodule_search_locations[0]) / "tritonserver"
    python_dir = cache_dir / "triton_backends" / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for source in (root / "backends" / "python" / "libtriton_python.so",
                   root / "backends" / "python" / "triton_python_backend_utils.py",
                   root / "python_backend_stubs" / version / "triton_python_backend_stub"):
        if not source.exists():
            raise ServerError(f"{source} is missing from the nvidia-pytriton wheel (Python {version} unsupported?)")
        link = python_dir / source.name
        if not link.exists():
            link.symlink_to(source)
    return root / "bin" / "tritonserver", python_dir.parent


def server_command(cache_dir: Path) -> ServerCommand:
    system = shutil.which("tritonserver")
    if system:
        return ServerCommand(system)
    binary, backends = bundled_backends(cache_dir)
    libs = binary.parents[3] / "nvidia_pytriton.libs"  # site-packages/nvidia_pytriton.libs
    library_path = os.pathsep.join(filter(None, [str(libs), sysconfig.get_config_var("LIBDIR"),
                                                 os.environ.get("LD_LIBRARY_PATH")]))
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return ServerCommand(str(binary), {"LD_LIBRARY_PATH": library_path, "PATH": path},
                         ("--backend-directory", str(backends)))


class TritonServer:
    """A tritonserver process on ``repository``; use as a context manager or call start()/stop(). The server
    ends when the thread that started it ends (``pearl.processes.exit_with_parent``): start it from the main
    thread, or one that lives as long as the server should."""

    def __init__(self, repository: Path, cache_dir: Path, host: str = LOOPBACK, http_port: int = 8000,
                 grpc_port: int = 8001, metrics_port: int = 8002, log_file: Path | None = None) -> None:
        self.repository, self.cache_dir, self.host = Path(repository), Path(cache_dir), host
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.log_file = log_file or self.cache_dir / "tritonserver.log"
        self.process: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def command(self) -> tuple[list[str], dict[str, str]]:
        cmd = server_command(self.cache_dir)
        argv = [cmd.binary, "--model-repository", str(self.repository.resolve()), *cmd.args,
                "--http-address", self.host, "--grpc-address", self.host, "--metrics-address", self.host,
                "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
                "--metrics-port", str(self.metrics_port),
                # keep serving when a model fails to load: readiness and the repository index say why
                "--exit-on-error", "false"]
        return argv, {**os.environ, **cmd.env}

    def start(self, timeout: float = 600.0) -> "TritonServer":
        argv, env = self.command()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "wb") as log:
            # Its own process group: stop() reaches the python backend stubs and their MPI ranks too. SIGTERM
            # when this process dies, even by SIGKILL: Triton then unloads the models (the pearl model closes
            # its world) and exits, its stubs with it, instead of staying behind holding the ports.
            self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True, preexec_fn=exit_with_parent(signal.SIGTERM))
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with {self.process.returncode} before it was ready:\n"
                                  f"{self.log_tail()}")
            if self.ready():
                return
            failed = {m["name"]: m.get("reason", "") for m in self.model_states() if m.get("state") == "UNAVAILABLE"}
            if failed:
                self.stop()
                raise ServerError("models failed to load:\n" + "\n".join(f"- {name}: {reason}"
                                                                          for name, reason in failed.items()))
            time.sleep(0.5)
        self.stop()
        raise ServerError(f"tritonserver was not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def model_states(self) -> list[dict]:
        """Triton's repository index: each model's name, state (READY, LOADING, UNAVAILABLE) and reason."""
        request = urllib.request.Request(f"http://{self.http_url}/v2/repository/index", data=b"{}", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            return []

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (Triton unloads models, so the pearl model closes its world), then SIGKILL the group."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        try:  # stragglers in the group (a hung stub or rank)
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
