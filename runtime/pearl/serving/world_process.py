"""A world host (:mod:`pearl.serving.world_host`: a child process that owns one LLM and its MPI world) that is
restarted when it dies, and the requests it held resumed in the new one.

``WorldProcess`` is a thin client: ``submit(request, on_tokens, on_done, on_error)`` sends a validated
``GenerationRequest`` to the host, and one reader thread per host turns the host's events into those
callbacks (no thread per request). It keeps what a request needs to outlive its world: the output so far
and the counters the ranks reported.

If a worker rank dies, MPICH's process manager takes the host down with it (a rank that the watchdog finds
dead first gets the host killed). What the dead world left is removed (the host's process group, the process
manager's proxy and the ranks, which run in sessions of their own, and MPICH's /dev/shm segments) and a new
host starts. Each request the dead world held is then resent to the new one as its prompt plus the output it
already streamed, with the rest of its budget (``GenerationRequest.resumed``): its client sees a pause, no
error, no token twice or missing, and position-keyed sampling (``pearl.sampling``) continues a seeded request
with the same draws. A request is resumed at most ``max_resumes`` times in a row without streaming a token in
between (a request that makes progress between deaths is not what kills the worlds, and its output bounds how
often that can happen); past that, or when the new world cannot start, it fails with ``WorldDied`` /
``WorldStartError``. A request submitted while no host runs waits for the next; after a failed start, the
next request tries once more. A rank that raises (rather than dies) fails the requests in flight instead:
resending them could repeat the failure.

With ``spare_world``, a second host loads its world in the background once the first is ready and waits: when
the serving world dies, the spare takes over at once (a resume then costs one prefill, not a world's start).
The next spare starts loading once every resumed request has streamed again: loading it beside their prefill
would slow that prefill down, and the prefill is what the clients wait for. It costs the models' memory twice.
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
from pearl.streams import PairLimits

WATCH_INTERVAL_S = 0.5
DEFAULT_MAX_RESUMES = 2

OnTokens = Callable[[list[int]], None]
OnDone = Callable[[str | None, RequestStats], None]  # (finish_reason, statistics)
OnError = Callable[[Exception], None]


class WorldDied(RuntimeError):
    """The world host (and so the MPI world) died and the request could not be resumed."""


class WorldStartError(RuntimeError):
    """The world host could not start the world (bad engine directory, a rank failed to load...)."""


class HostHandle:
    """One running host: its process and what its ready message said."""

    def __init__(self, process: subprocess.Popen, ready: dict) -> None:
        self.process, self.ready = process, ready
        self.dead = threading.Event()
        self.reader: threading.Thread | None = None

    def alive(self) -> bool:
        """The host and both its ranks still run."""
        return self.process.poll() is None and all(process_alive(pid) for pid in self.ready["ranks"].values())

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
    fruitless_resumes: int = 0  # resumes in a row with no token streamed since
    output_at_resume: int = 0  # len(output) when it was last resumed
    host: HostHandle | None = None  # where it runs; None: waiting for a host
    cancelled: bool = False
    paused_at: float | None = None  # when its world died (until its next tokens)

    def resume(self, max_resumes: int) -> bool:
        """Count one more resume if the budget allows it: ``max_resumes`` in a row without a token between."""
        if len(self.output) > self.output_at_resume:
            self.fruitless_resumes = 0
        if self.fruitless_resumes >= max_resumes:
            return False
        self.resumes += 1
        self.fruitless_resumes += 1
        self.output_at_resume = len(self.output)
        return True

    def to_send(self) -> GenerationRequest:
        return self.request.resumed(self.output) if self.output else self.request

    def stats(self, finish_counters: list[float]) -> RequestStats:
        totals = add_counters(self.earlier, finish_counters)
        return RequestStats.from_message(totals, self.request.mode.name.lower(), self.request.gamma,
                                         time.monotonic() - self.started, self.resumes)


class WorldProcess:
    """The Triton model's handle on its world: starts the world host, restarts it (or promotes the spare) when
    it dies, and carries each request's callbacks across worlds (module docstring)."""

    def __init__(self, engine_dir: str | Path, threads_per_rank: int | None = None,
                 startup_timeout_s: float = 600.0, check_hashes: bool = False,
                 max_resumes: int = DEFAULT_MAX_RESUMES, spare_world: bool = False) -> None:
        if max_resumes < 0:
            raise ValueError(f"max_resumes must be >= 0, got {max_resumes}")
        self.engine_dir, self.threads_per_rank = Path(engine_dir), threads_per_rank
        self.startup_timeout_s, self.max_resumes, self.spare_world = startup_timeout_s, max_resumes, spare_world
        self.restarts = 0
        self._lock = threading.Lock()
        self._flights: dict[int, Flight] = {}
        self._closed = False
        self._settled = threading.Event()  # no start under way
        self._spare: HostHandle | None = None  # a loaded world waiting to take over
        self._spare_settled = threading.Event()  # no spare start under way
        self._spare_settled.set()
        self._spare_due = False  # start the next spare once no resumed request waits for its first tokens
        # a failure to start the first host is the caller's error; hashes are checked once, not at restarts
        self._host: HostHandle | None = self._start(check_hashes)
        self._settled.set()
        self.limits = PairLimits(**{**self._host.ready["limits"],
                                    "eos_token_ids": tuple(self._host.ready["limits"]["eos_token_ids"])})
        self._start_spare()

    @property
    def rank_pids(self) -> dict[str, int]:
        """{"draft": pid, "target": pid} of the current world."""
        self._settled.wait(self.startup_timeout_s)
        return dict(self._host.ready["ranks"]) if self._host is not None else {}

    def wait_for_spare(self, timeout_s: float | None = None) -> dict[str, int]:
        """The spare world's {"draft": pid, "target": pid} once it is loaded ({} without one)."""
        self._spare_settled.wait(self.startup_timeout_s if timeout_s is None else timeout_s)
        spare = self._spare
        return dict(spare.ready["ranks"]) if spare is not None else {}

    # -- what GenerationService uses --------------------------------------------------------------------
    def submit(self, request: GenerationRequest, on_tokens: OnTokens, on_done: OnDone, on_error: OnError) -> None:
        """Serve a request (checked against ``limits`` by the caller). The callbacks come from one thread,
        in order: ``on_tokens`` per chunk, then ``on_done`` or ``on_error`` once."""
        with self._lock:
            if self._closed:
                raise WorldDied("the world is shut down")
            if request.request_id in self._flights:
                raise ValueError(f"request id {request.request_id} is already in flight")
            flight = self._flights[request.request_id] = Flight(request, on_tokens, on_done, on_error)
            if self._host is not None:
                self._send(flight, self._host)
            elif self._settled.is_set():  # the last start failed: this request tries once more
                self._settled.clear()
                threading.Thread(target=self._restart, name="pearl-world-restart", daemon=True).start()

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
        self._spare_settled.wait(self.startup_timeout_s)
        for host in (self._host, self._spare):
            if host is not None:
                self._stop(host)
        with self._lock:
            flights, self._flights = list(self._flights.values()), {}
        for flight in flights:
            flight.on_error(WorldDied("the world is shut down"))

    def __enter__(self) -> "WorldProcess":
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
            self._start_spare_if_due()
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
        """Resume what the dead host held in the next one, within each request's resumes; fail the rest.
        A dead spare is replaced by another spare."""
        failed, cancelled = [], []
        with self._lock:
            closed = self._closed
            serving, spare = self._host is host, self._spare is host
            if serving:
                self._host = None
                if not closed:
                    self._settled.clear()  # a start is under way from here on
            if spare:
                self._spare = None
            for flight in [f for f in self._flights.values() if f.host is host]:
                flight.host = None
                if flight.cancelled:  # its client is gone: nothing to resume
                    cancelled.append(self._flights.pop(flight.request.request_id))
                elif closed or not flight.resume(self.max_resumes):
                    failed.append(self._flights.pop(flight.request.request_id))
                else:
                    flight.earlier = add_counters(flight.earlier, flight.counters)
                    flight.counters = [0.0] * len(COUNTERS)
                    flight.paused_at = time.monotonic()
        for flight in cancelled:
            flight.on_done("cancelled", flight.stats(flight.counters))
        for flight in failed:
            resumes = (f" (resumed {flight.fruitless_resumes} times in a row without a new token)"
                       if flight.fruitless_resumes and not closed else "")
            flight.on_error(WorldDied(f"{message}{resumes}"))
        if closed:
            return
        if serving:
            self._restart()
        elif spare:
            print(f"pearl: the spare world died ({message}); loading another", file=sys.stderr, flush=True)
            self._start_spare()

    # -- the host's life --------------------------------------------------------------------------------
    def _start(self, check_hashes: bool = False) -> HostHandle:
        command = [sys.executable, "-m", "pearl.serving.world_host", "--engines", str(self.engine_dir)]
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
            reason = message.get("message") or f"the world host exited with code {process.poll()} (see the log)"
            raise WorldStartError(reason)
        host = HostHandle(process, message)
        host.reader = threading.Thread(target=self._read, args=(host,), name="pearl-world-reader", daemon=True)
        host.reader.start()
        threading.Thread(target=self._watch, args=(host,), name="pearl-world-watchdog", daemon=True).start()
        return host

    def _restart(self) -> None:
        """Put the spare world (or a new host) in the dead one's place and send it the requests that wait; if
        none can start, they fail."""
        try:
            host = self._take_spare() or self._start()
        except Exception as exc:
            with self._lock:
                waiting = [f for f in self._flights.values() if f.host is None]
                for flight in waiting:
                    del self._flights[flight.request.request_id]
                self._settled.set()
            for flight in waiting:
                flight.on_error(WorldStartError(f"the world could not be restarted: {exc}"))
            return
        with self._lock:
            self._host = host
            self.restarts += 1
            for flight in [f for f in self._flights.values() if f.host is None]:
                self._send(flight, host)
            self._settled.set()
            self._spare_due = True
        self._start_spare_if_due()

    def _start_spare_if_due(self) -> None:
        """After a restart, the next spare once no resumed request waits for its first tokens in the new world."""
        with self._lock:
            if not self._spare_due or any(f.paused_at is not None for f in self._flights.values()):
                return
            self._spare_due = False
        self._start_spare()

    def _start_spare(self) -> None:
        """With ``spare_world``, load a spare world in the background unless one is loaded or loading."""
        with self._lock:
            if not self.spare_world or self._closed or self._spare is not None or not self._spare_settled.is_set():
                return
            self._spare_settled.clear()
        threading.Thread(target=self._load_spare, name="pearl-world-spare", daemon=True).start()

    def _load_spare(self) -> None:
        try:
            host = self._start()
        except Exception as exc:  # the serving world is unaffected; the next restart starts a host itself
            print(f"pearl: the spare world could not start: {exc}", file=sys.stderr, flush=True)
            host = None
        with self._lock:
            if host is not None and not self._closed and host.alive():
                self._spare, host = host, None
            self._spare_settled.set()
        if host is not None:  # closed while it loaded, or died at once
            self._stop(host)

    def _take_spare(self) -> HostHandle | None:
        """The spare world, once a start under way has ended; None without a live one."""
        self._spare_settled.wait(self.startup_timeout_s)
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is None:
            return None
        if not spare.alive():
            self._stop(spare)  # died as it was taken: its reader finds it neither serving nor spare
            return None
        print("pearl: the spare world takes over", file=sys.stderr, flush=True)
        return spare

    def _stop(self, host: HostHandle) -> None:
        """Close a host: it finishes what it serves, shuts its world down and exits; nothing of it stays."""
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
        if host.reader is not None and host.reader is not threading.current_thread():
            host.reader.join(timeout=60)

    def _read(self, host: HostHandle) -> None:
        for line in host.process.stdout:
            self._on_event(host, json.loads(line))
        code = host.process.wait()
        dead_ranks = [f"{role} pid {pid}" for role, pid in host.ready["ranks"].items() if not process_alive(pid)]
        self._clean_up(host)
        if code == host_protocol.EXIT_RANK_FAILED or (not dead_ranks and code == 0):
            cause = f"the world host exited with code {code}"
        else:
            cause = f"a worker rank died and took the MPI world down (gone: {', '.join(dead_ranks) or 'none'})"
        self._host_died(host, "the world is shut down" if self._closed else f"{cause}; the MPI world is restarting")

    def _watch(self, host: HostHandle) -> None:
        """A rank that died without taking the host along (the process manager normally does): kill it all."""
        while not host.dead.wait(WATCH_INTERVAL_S):
            if host.process.poll() is None and not self._closed and not host.alive():
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
