"""An Engine in a child process (:mod:`pearl.serving.engine_host`) that is restarted when it dies.

``EngineProcess`` has the Engine's serving surface (``generate`` -> ``GenerationStream``, ``eos_token_ids``,
``close``). If a worker rank dies, MPICH's process manager takes the host down with it (a rank that the
watchdog finds dead first gets the host killed): the running request ends at once with ``EngineDied``, what
the dead world left is removed (the host's process group, the process manager's proxy and the ranks, which
run in sessions of their own, and MPICH's /dev/shm segments), and a new host starts in the background. The
next request waits for it. Should the new host fail to start, each request tries once more and otherwise
fails with the reason.
"""
from __future__ import annotations

import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

from pearl.params import GenerationRequest, Mode, SamplingParams
from pearl.processes import kill_if_alive, process_alive
from pearl.stats import RequestStats
from pearl.streams import GenerationStream, check_fits

WATCH_INTERVAL_S = 0.5


class EngineDied(RuntimeError):
    """The engine host (and so the MPI world) died while serving; a new one is starting."""


class EngineStartError(RuntimeError):
    """The engine host could not start the world (bad engine directory, a rank failed to load...)."""


class HostHandle:
    """One running host: its process, what its ready message said, and where its events go."""

    def __init__(self, process: subprocess.Popen, ready: dict) -> None:
        self.process = process
        self.ready = ready
        self._events: dict[int, queue.Queue[dict]] = {}  # per request in flight, in arrival order
        self._events_lock = threading.Lock()
        self._death: dict | None = None
        self.dead = threading.Event()

    def subscribe(self, request_id: int) -> queue.Queue[dict]:
        """The queue that gets the request's events (and a "died" event if the host dies)."""
        events: queue.Queue[dict] = queue.Queue()
        with self._events_lock:
            self._events[request_id] = events
            if self._death is not None:
                events.put(self._death)
        return events

    def unsubscribe(self, request_id: int) -> None:
        with self._events_lock:
            self._events.pop(request_id, None)

    def deliver(self, event: dict) -> None:
        with self._events_lock:
            events = self._events.get(event.get("id"))
        if events is not None:  # else: late events of a request whose consumer stopped early
            events.put(event)

    def died(self, message: str) -> None:
        """Every request in flight, and any that comes later, hears that the host is gone."""
        with self._events_lock:
            self._death = {"event": "died", "message": message}
            for events in self._events.values():
                events.put(self._death)

    def send(self, message: dict) -> None:
        try:
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass  # the host is gone; its reader reports that


class EngineProcess:
    def __init__(self, engine_dir: str | Path, threads_per_rank: int | None = None,
                 startup_timeout_s: float = 600.0, check_hashes: bool = False) -> None:
        self.engine_dir, self.threads_per_rank = Path(engine_dir), threads_per_rank
        self.startup_timeout_s = startup_timeout_s
        self._ids = itertools.count(1)
        self._closed = False
        self.restarts = 0
        self._host_ready = threading.Event()
        self._start_error: str | None = None
        # a failure to start the first host is the caller's error; hashes are checked once, not at restarts
        self._host = self._start(check_hashes)
        self._host_ready.set()

    # -- what GenerationService uses --------------------------------------------------------------------
    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return tuple(self._host.ready["eos_token_ids"])

    @property
    def max_batch_size(self) -> int:
        """Requests the engine serves at once (the ranks batch them)."""
        return int(self._host.ready["max_batch_size"])

    @property
    def rank_pids(self) -> dict[str, int]:
        """{"draft": pid, "target": pid} of the current world."""
        return dict(self._host.ready["ranks"])

    def generate(self, prompt_ids: list[int], sampling: SamplingParams = SamplingParams(),
                 mode: Mode | str = Mode.PEARL, gamma: int | str = "auto") -> GenerationStream:
        """As ``Engine.generate`` (``gamma="auto"``: adaptive windows)."""
        mode = Mode.parse(mode) if isinstance(mode, str) else mode
        ready = self._host.ready
        request = GenerationRequest(next(self._ids), tuple(int(t) for t in prompt_ids), sampling, mode,
                                    None if gamma == "auto" else int(gamma))
        check_fits(request, ready["vocab_size"], ready["max_seq_len"])
        return GenerationStream(lambda stream: self._serve(request, stream, request.gamma or "auto"),
                                cancel=lambda: self._host.send({"op": "cancel", "id": request.request_id}))

    def close(self) -> None:
        self._closed = True
        self._host_ready.wait(self.startup_timeout_s)
        host = self._host
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

    def __enter__(self) -> "EngineProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- serving ----------------------------------------------------------------------------------------
    def _serve(self, request: GenerationRequest, stream: GenerationStream,
               gamma: int | str) -> Iterator[list[int]]:
        """Send the request and turn the host's events into chunks. A world that dies before the request's
        first tokens (a rank killed between requests) costs no output: the request goes to the new world,
        once (a request that itself brings the world down must not do it forever)."""
        for attempt in (1, 2):
            host = self._running_host()
            events = host.subscribe(request.request_id)
            try:
                host.send({"op": "generate", "id": request.request_id, "prompt_ids": list(request.prompt_ids),
                           "sampling": asdict(request.sampling), "mode": request.mode.name.lower(),
                           "gamma": gamma})
                while True:
                    event = events.get()
                    if event["event"] == "died":
                        if stream.token_ids or attempt == 2 or self._closed:
                            raise EngineDied(event["message"])
                        break  # nothing was produced yet: send it again to the new world
                    if event["event"] == "tokens":
                        yield event["tokens"]
                    elif event["event"] == "failed":
                        raise RuntimeError(event["message"])
                    elif event["event"] == "done":
                        if event["finish_reason"]:
                            stream.finish_reason = event["finish_reason"]
                        stream.stats = RequestStats(**event["stats"])
                        return
            finally:
                host.unsubscribe(request.request_id)

    def _running_host(self) -> HostHandle:
        """The current live host: waits while a replacement starts, retries one that failed to start."""
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if self._closed:
                raise EngineDied("the engine is shut down")
            if not self._host_ready.wait(max(0.0, deadline - time.monotonic())):
                raise EngineDied(f"the engine did not restart within {self.startup_timeout_s:g} s")
            if self._start_error is not None:
                self._restart()
                if self._start_error is not None:
                    raise EngineStartError(f"the engine could not be restarted: {self._start_error}")
            if not self._host.dead.is_set():
                return self._host
            time.sleep(0.05)  # the reader has seen the death and is about to start the replacement

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
        threading.Thread(target=self._read, args=(host,), name="pearl-engine-reader", daemon=True).start()
        threading.Thread(target=self._watch, args=(host,), name="pearl-engine-watchdog", daemon=True).start()
        return host

    def _read(self, host: HostHandle) -> None:
        for line in host.process.stdout:
            host.deliver(json.loads(line))
        code = host.process.wait()
        dead_ranks = [f"{role} pid {pid}" for role, pid in host.ready["ranks"].items() if not process_alive(pid)]
        self._clean_up(host)
        if self._closed:
            host.died("the engine is shut down")
            return
        cause = (f"a worker rank died and took the MPI world down (gone: {', '.join(dead_ranks)})"
                 if dead_ranks and code != 0 else f"the engine host exited with code {code}")
        host.died(f"{cause}; the MPI world is restarting")
        self._restart()

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

    def _restart(self) -> None:
        """Start a replacement host; requests wait meanwhile (``_host_ready``)."""
        self._host_ready.clear()
        try:
            self._host = self._start()
            self._start_error = None
            self.restarts += 1
        except Exception as exc:  # the next request reports it
            self._start_error = str(exc)
        finally:
            self._host_ready.set()


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

