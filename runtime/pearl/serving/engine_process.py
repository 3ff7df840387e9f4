"""An Engine in a child process (:mod:`pearl.serving.engine_host`) that is restarted when it dies, and the
requests it held resumed in the new one.

``EngineProcess`` is a thin client: ``submit(request, on_tokens, on_done, on_error)`` sends a validated
``GenerationRequest`` to the host, and one reader thread per host turns the host's events into those
callbacks (no thread per request). It keeps what a request needs to outlive its world: the output so far
and the counters the ranks reported.

If a worker rank dies, MPICH's process manager takes the host down with it (a rank that the watchdog finds
dead first gets the host killed). What the dead world left is removed (the host's process group, the process
manager's proxy and the ranks, which run in sessions of their own, and MPICH's /dev/shm segments) and a new
host starts. Each request the dead world held is then resent to the new one as its prompt plus the output it
already streamed, with the rest of its budget (``GenerationRequest.resumed``): its client sees a pause, no
error, no token twice or missing, and position-keyed sampling (``pearl.sampling``) continues a seeded request
with the same draws. A request is resumed at most ``max_resumes`` times; past that, or when the new world
cannot start, it fails with ``EngineDied`` / ``EngineStartError``. A request submitted while no host runs
waits for the next; after a failed start, the next request tries once more. A rank that raises (rather than
dies) fails the requests in flight instead: resending them could repeat the failure.
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pearl.params import GenerationRequest
from pearl.processes import kill_if_alive, process_alive
from pearl.schema import COUNTERS
from pearl.serving import host_protocol
from pearl.stats import RequestStats, add_counters
from pearl.streams import EngineLimits

WATCH_INTERVAL_S = 0.5
DEFAULT_MAX_RESUMES = 2

OnTokens = Callable[[list[int]], None]
OnDone = Callable[[str | None, RequestStats], None]  # (finish_reason, statistics)
OnError = Callable[[Exception], None]


class EngineDied(RuntimeError):
    """The engine host (and so the MPI world) died and the request could not be resumed."""


class EngineStartError(RuntimeError):
    """The engine host could not start the world (bad engine directory, a rank failed to load...)."""


class HostHandle:
    """One running host: its process and what its ready message said."""

    def __init__(self, process: subprocess.Popen, ready: dict) -> None:
        self.process, self.ready = process, ready
        self.dead = threading.Event()
        self.reader: threading.Thread | None = None

    def send(self, message: dict) -> None:
        try:
            self.process.stdin.write(host_protocol.encode(message))
            self.process.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass  # the host is gone; its reader reports that


@dataclass(eq=False)
class Flight:
    """A request from submit to its last callback, across worlds."""

    request: GenerationRequest  # as submitted
    on_tokens: OnTokens
    on_done: OnDone
    on_error: OnError
    started: float = field(default_factory=time.monotonic)
    output: list[int] = field(default_factory=list)  # streamed so far, every world
    earlier: list[float] = field(default_factory=lambda: [0.0] * len(COUNTERS))  # dead worlds' STATS fields
    counters: list[float] = field(default_factory=lambda: [0.0] * len(COUNTERS))  # this world's so far
    resumes: int = 0
    host: HostHandle | None = None  # where it runs; None: waiting for a host
    cancelled: bool = False
    paused_at: float | None = None  # when its world died (until its next tokens)

    def to_send(self) -> GenerationRequest:
        return self.request.resumed(self.output) if self.output else self.request

    def stats(self, finish_counters: list[float]) -> RequestStats:
        totals = add_counters(self.earlier, finish_counters)
        return RequestStats.from_message(totals, self.request.mode.name.lower(), self.request.gamma,
                                         time.monotonic() - self.started, self.resumes)


class EngineProcess:
    def __init__(self, engine_dir: str | Path, threads_per_rank: int | None = None,
                 startup_timeout_s: float = 600.0, check_hashes: bool = False,
                 max_resumes: int = DEFAULT_MAX_RESUMES) -> None:
        if max_resumes < 0:
            raise ValueError(f"max_resumes must be >= 0, got {max_resumes}")
        self.engine_dir, self.threads_per_rank = Path(engine_dir), threads_per_rank
        self.startup_timeout_s, self.max_resumes = startup_timeout_s, max_resumes
        self.restarts = 0
        self._lock = threading.Lock()
        self._flights: dict[int, Flight] = {}
        self._closed = False
        self._settled = threading.Event()  # no start under way
        # a failure to start the first host is the caller's error; hashes are checked once, not at restarts
        self._host: HostHandle | None = self._start(check_hashes)
        self._settled.set()
        self.limits = EngineLimits(**{**self._host.ready["limits"],
                                      "eos_token_ids": tuple(self._host.ready["limits"]["eos_token_ids"])})

    @property
    def rank_pids(self) -> dict[str, int]:
        """{"draft": pid, "target": pid} of the current world."""
        self._settled.wait(self.startup_timeout_s)
        return dict(self._host.ready["ranks"]) if self._host is not None else {}

    # -- what GenerationService uses --------------------------------------------------------------------
    def submit(self, request: GenerationRequest, on_tokens: OnTokens, on_done: OnDone, on_error: OnError) -> None:
        """Serve a request (checked against ``limits`` by the caller). The callbacks come from one thread,
        in order: ``on_tokens`` per chunk, then ``on_done`` or ``on_error`` once."""
        with self._lock:
            if self._closed:
                raise EngineDied("the engine is shut down")
            if request.request_id in self._flights:
                raise ValueError(f"request id {request.request_id} is already in flight")
            flight = self._flights[request.request_id] = Flight(request, on_tokens, on_done, on_error)
            if self._host is not None:
                self._send(flight, self._host)
            elif self._settled.is_set():  # the last start failed: this request tries once more
                self._settled.clear()
                threading.Thread(target=self._restart, name="pearl-engine-restart", daemon=True).start()

    def cancel(self, request_id: int) -> None:
        """End the request after the ranks' current round (it then ends with finish_reason "cancelled"); one
        waiting for a new world ends now."""
        with self._lock:
            flight = self._flights.get(request_id)
            if flight is None or flight.cancelled:
                return
            flight.cancelled = True
            if flight.host is not None:
                flight.host.send({"op": "cancel", "id": request_id})
                return
            del self._flights[request_id]
        flight.on_done("cancelled", flight.stats(flight.counters))

    def close(self) -> None:
        """Finish the requests in flight, shut the world down; a request waiting for a world fails."""
        with self._lock:
            self._closed = True
        self._settled.wait(self.startup_timeout_s)
        host = self._host
        if host is not None:
            host.send({"op": "close"})
            try:
                host.process.stdin.close()
            except OSError:
                pass
            try:
                host.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
            self._clean_up(host)
            host.reader.join(timeout=60)
        with self._lock:
            flights, self._flights = list(self._flights.values()), {}
        for flight in flights:
            flight.on_error(EngineDied("the engine is shut down"))

    def __enter__(self) -> "EngineProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- events -----------------------------------------------------------------------------------------
    def _send(self, flight: Flight, host: HostHandle) -> None:
        flight.host = host
        host.send({"op": "generate", "request": host_protocol.encode_request(flight.to_send())})

    def _on_event(self, host: HostHandle, event: dict) -> None:
        with self._lock:
            flight = self._flights.get(event["id"])
            if flight is None or flight.host is not host:
                return  # a request that already ended
            if event["event"] != "tokens":
                del self._flights[event["id"]]
        if flight.paused_at is not None:
            print(f"pearl: request {event['id']} resumed after {time.monotonic() - flight.paused_at:.1f} s",
                  file=sys.stderr, flush=True)
            flight.paused_at = None
        if event["event"] == "failed":
            flight.on_error(RuntimeError(event["message"]))
            return
        flight.counters = event["counters"]
        if event["tokens"]:
            flight.output.extend(event["tokens"])
            flight.on_tokens(event["tokens"])
        if event["event"] == "done":
            flight.on_done(event["finish_reason"], flight.stats(flight.counters))

    def _host_died(self, host: HostHandle, message: str) -> None:
        """Resume what the dead host held in the next one, within each request's resumes; fail the rest."""
        failed, cancelled = [], []
        with self._lock:
            closed = self._closed
            if self._host is host:
                self._host = None
                if not closed:
                    self._settled.clear()  # a start is under way from here on
            for flight in [f for f in self._flights.values() if f.host is host]:
                flight.host = None
                if flight.cancelled:  # its client is gone: nothing to resume
                    cancelled.append(self._flights.pop(flight.request.request_id))
                elif closed or flight.resumes >= self.max_resumes:
                    failed.append(self._flights.pop(flight.request.request_id))
                else:
                    flight.resumes += 1
                    flight.earlier = add_counters(flight.earlier, flight.counters)
                    flight.counters = [0.0] * len(COUNTERS)
                    flight.paused_at = time.monotonic()
        for flight in cancelled:
            flight.on_done("cancelled", flight.stats(flight.counters))
        for flight in failed:
            resumes = f" (resumed {flight.resumes} times already)" if flight.resumes and not closed else ""
            flight.on_error(EngineDied(f"{message}{resumes}"))
        if not closed:
            self._restart()

    # -- the host's life --------------------------------------------------------------------------------
    def _start(self, check_hashes: bool = False) -> HostHandle:
        command = [sys.executable, "-m", "pearl.serving.engine_host", "--engines", str(self.engine_dir)]
        if self.threads_per_rank is not None:
            command += ["--threads-per-rank", str(self.threads_per_rank)]
        if check_hashes:
            command.append("--check-hashes")
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                   start_new_session=True)
        line = read_line(process, self.startup_timeout_s)
        message = json.loads(line) if line else {}
        if message.get("event") != "ready":
            try:  # let it exit by itself: MPI's finalize removes its shared memory, a kill would leave it
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            kill_group(process)
            reason = message.get("message") or f"the engine host exited with code {process.poll()} (see the log)"
            raise EngineStartError(reason)
        host = HostHandle(process, message)
        host.reader = threading.Thread(target=self._read, args=(host,), name="pearl-engine-reader", daemon=True)
        host.reader.start()
        threading.Thread(target=self._watch, args=(host,), name="pearl-engine-watchdog", daemon=True).start()
        return host

    def _restart(self) -> None:
        """Start a replacement host and send it the requests that wait; if it cannot start, they fail."""
        try:
            host = self._start()
        except Exception as exc:
            with self._lock:
                waiting = [f for f in self._flights.values() if f.host is None]
                for flight in waiting:
                    del self._flights[flight.request.request_id]
                self._settled.set()
            for flight in waiting:
                flight.on_error(EngineStartError(f"the engine could not be restarted: {exc}"))
            return
        with self._lock:
            self._host = host
            self.restarts += 1
            for flight in [f for f in self._flights.values() if f.host is None]:
                self._send(flight, host)
            self._settled.set()

    def _read(self, host: HostHandle) -> None:
        for line in host.process.stdout:
            self._on_event(host, json.loads(line))
        code = host.process.wait()
        dead_ranks = [f"{role} pid {pid}" for role, pid in host.ready["ranks"].items() if not process_alive(pid)]
        self._clean_up(host)
        if code == host_protocol.EXIT_RANK_FAILED or (not dead_ranks and code == 0):
            cause = f"the engine host exited with code {code}"
        else:
            cause = f"a worker rank died and took the MPI world down (gone: {', '.join(dead_ranks) or 'none'})"
        self._host_died(host, "the engine is shut down" if self._closed else f"{cause}; the MPI world is restarting")

    def _watch(self, host: HostHandle) -> None:
        """A rank that died without taking the host along (the process manager normally does): kill it all."""
        while not host.dead.wait(WATCH_INTERVAL_S):
            if host.process.poll() is None and not self._closed and \
                    not all(process_alive(pid) for pid in host.ready["ranks"].values()):
                kill_group(host.process)
                return

    def _clean_up(self, host: HostHandle) -> None:
        """Nothing of a finished host may stay: its process group, the process manager, the ranks, MPICH's
        shared memory."""
        kill_group(host.process)
        for pid in [*host.ready["helpers"], *host.ready["ranks"].values()]:
            kill_if_alive(pid)
        for path in host.ready["shm"]:
            Path(path).unlink(missing_ok=True)
        host.dead.set()


def read_line(process: subprocess.Popen, timeout_s: float) -> str:
    """The host's first line, or "" if it exits or stays silent past the timeout."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return lines.get(timeout=0.5)
        except queue.Empty:
            if process.poll() is not None:  # exited: its last words (or EOF) are on their way
                try:
                    return lines.get(timeout=5)
                except queue.Empty:
                    return ""
    return ""


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the host's process group (the host and MPICH's mpiexec) and reap the host."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
