"""The driver's handle on the worker ranks: start them, send requests, receive tokens, shut them down.

``World.start`` spawns the workers from a plain Python process (``MPI.COMM_SELF.Spawn``), or attaches to
workers started next to it by ``mpiexec -n 1 python -m pearl ... : -n 2 python -m pearl.ranks.worker``.

Many requests are in flight at once (the ranks batch them): ``submit`` sends one (from any thread), and
``poll`` receives the next ``Report`` of any request: its new tokens and its counters so far. ``poll`` has
one caller at a time: the world host's event loop (``pearl.serving.world_host``), or the receiver thread
of ``pearl.ranks.router`` that routes reports to the threads of ``LLM.generate``. A rank's ERROR makes
``poll`` raise: the batch is lost and the world must be restarted.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def _put_mpiexec_on_path() -> None:
    """MPICH spawns through its process manager, found on PATH; without it Spawn hangs."""
    bindir = str(Path(sys.executable).parent)
    if (Path(bindir) / "mpiexec").exists() and bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


_put_mpiexec_on_path()
from mpi4py import MPI  # noqa: E402  (after PATH is set)

from pearl.ranks.config import WorldConfig  # noqa: E402
from pearl.ranks.protocol import (CANCEL, CONFIG, CONTROL, COSTS, DRAFT_RANK, ERROR, OP_GENERATE,  # noqa: E402
                                 OP_PROFILE, OP_SHUTDOWN, OP_START, PROFILE, READY, SAMPLING, STATS, TARGET_RANK,
                                 TOKENS, encode_request, message_text, text_message)
from pearl.ranks.transport import Endpoint, wait_until  # noqa: E402
from pearl.ranks.roles import WorldLayout  # noqa: E402
from pearl.ranks.worker import INTERCOMM_TAG  # noqa: E402
from pearl.params import GenerationRequest, Mode  # noqa: E402
from pearl.processes import kill_if_alive, process_alive  # noqa: E402
from pearl.speculation import SpeculationCosts  # noqa: E402

WORKER_RANKS = (DRAFT_RANK, TARGET_RANK)  # the models' leaders: the ranks that serve requests
ROLE_NAMES = {DRAFT_RANK: "draft", TARGET_RANK: "target"}
POLL_MAX_SLEEP_S = 5e-3  # see pearl.ranks.worker.IDLE_MAX_SLEEP_S: idle probes slow the ranks


class WorldError(RuntimeError):
    """A worker could not start, or failed while serving."""


@dataclass(frozen=True)
class Report:
    """A request's progress: its new tokens, and its counters so far (a STATS message's fields, in
    ``pearl.schema.COUNTERS`` order); ``finish_reason`` (``pearl.stopping.FinishReason``) 0: more follow."""

    request_id: int
    tokens: list[int]
    finish_reason: int
    counters: np.ndarray

    @property
    def finished(self) -> bool:
        return self.finish_reason != 0


@dataclass(frozen=True)
class RankInfo:
    """What a worker reports once its model is loaded."""

    pid: int
    vocab_size: int
    max_seq_len: int
    eos_token_ids: tuple[int, ...]


class World:
    def __init__(self, intercomm: MPI.Intercomm | None, spawned: bool, layout: WorldLayout = WorldLayout(),
                 endpoint=None) -> None:
        """Over MPI's intercommunicator to the workers, or (``intercomm`` None) over ``endpoint``, the driver's
        side of an in-process world (``pearl.ranks.local``)."""
        self.intercomm, self.spawned, self.layout = intercomm, spawned, layout
        self.endpoint = endpoint if intercomm is None else Endpoint(intercomm)
        self._local_workers: list[threading.Thread] = []
        self.ranks: dict[int, RankInfo] = {}
        self.closed = False
        self.failure: str | None = None  # set when a rank failed while serving: the world must be restarted
        self._send_lock = threading.Lock()  # a request's CONTROL and SAMPLING go out back to back
        self._profile_lock = threading.Lock()

    @classmethod
    def start(cls, config: WorldConfig) -> "World":
        world_comm, layout = MPI.COMM_WORLD, WorldLayout.of(config)
        if world_comm.Get_size() > 1:  # launched by mpiexec with the workers beside us
            local = world_comm.Split(color=0, key=world_comm.Get_rank())
            world = cls(local.Create_intercomm(0, world_comm, 1, INTERCOMM_TAG), spawned=False, layout=layout)
        else:
            intercomm = MPI.COMM_SELF.Spawn(sys.executable, args=["-m", "pearl.ranks.worker"],
                                            maxprocs=layout.num_workers)
            world = cls(intercomm, spawned=True, layout=layout)
        try:
            if world.intercomm.Get_remote_size() != layout.num_workers:
                raise WorldError(f"{world.intercomm.Get_remote_size()} worker ranks were started, this pair needs "
                                 f"{layout.describe()}")
            world._handshake(config)
        except BaseException:
            world.close()
            raise
        return world

    @classmethod
    def local(cls, config: WorldConfig) -> "World":
        """The world in this process: the workers on threads, messages in memory (``pearl.ranks.local``)."""
        from pearl.ranks.local import start_workers

        layout = WorldLayout.of(config)
        endpoint, threads = start_workers(layout.num_workers)
        world = cls(None, spawned=False, layout=layout, endpoint=endpoint)
        world._local_workers = threads
        try:
            world._handshake(config)
        except BaseException:
            world.close()
            raise
        return world

    def _handshake(self, config: WorldConfig) -> None:
        for rank in range(self.layout.num_workers):  # followers too: they load their model's shards
            self.endpoint.send(text_message(config.to_json()), rank, CONFIG)
        errors = []
        for _ in range(self.layout.num_workers):
            message, source, tag = self.endpoint.recv(tag=MPI.ANY_TAG, timeout=config.startup_timeout_s)
            if tag == ERROR:
                errors.append(f"{self.name(source)} rank: {message_text(message)}")
            elif tag == READY:
                pid, vocab, max_len, *eos = message.tolist()
                self.ranks[source] = RankInfo(pid, vocab, max_len, tuple(eos))
        if errors:
            raise WorldError("; ".join(errors))

    def begin(self, vocab_size: int) -> None:
        """Tell the workers the shared vocabulary; they serve requests from now on."""
        self._control([OP_START, vocab_size])

    def _control(self, values: list[int]) -> None:
        with self._send_lock:
            for rank in WORKER_RANKS:
                self.endpoint.send(np.array(values, dtype=np.int64), rank, CONTROL)

    def name(self, rank: int) -> str:
        return self.layout.name(rank)

    def has_report(self) -> bool:
        """Whether ``poll`` has something to return now (a report, or a rank's failure)."""
        return self.failure is not None or self.endpoint.has(tag=ERROR) or self.endpoint.has(TARGET_RANK, TOKENS)

    def poll(self, timeout: float = 0.0, max_sleep: float = POLL_MAX_SLEEP_S) -> Report | None:
        """The next report of any request, waiting up to ``timeout`` s (probing every ``max_sleep`` s at most:
        tokens reach a client that late at most, and the ranks keep the cores); None if none came. Raises
        WorldError once a rank failed. One caller at a time."""
        # an in-process world's endpoint waits on its mailbox; probing would take the GIL from the rank threads
        waiter = getattr(self.endpoint, "wait_until", None)
        if not (waiter(self.has_report, timeout) if waiter else wait_until(self.has_report, timeout, max_sleep)):
            return None
        if self.failure is None and self.endpoint.has(tag=ERROR):
            message, source, _ = self.endpoint.recv(tag=ERROR)
            self.failure = f"the {self.name(source)} rank failed:\n{message_text(message)}"
        if self.failure is not None:
            raise WorldError(self.failure)
        tokens = self.endpoint.recv_from(TARGET_RANK, TOKENS)
        counters = self.endpoint.recv_from(TARGET_RANK, STATS)  # sent right after every TOKENS
        return Report(int(tokens[0]), tokens[2:].tolist(), int(tokens[1]), counters[1:])

    def profile(self, max_tokens: dict[str, int], steps: int | dict[str, int] = 5, batch_size: int = 1,
                threads: dict[str, int] | None = None, feed: bool = False,
                together: bool = False) -> dict[str, list[float]]:
        """Per model named in ``max_tokens``: seconds of a forward over k new tokens for each of ``batch_size``
        sequences, k = 1..max_tokens[role] (``feed``: k = max_tokens[role] alone, the last token's logits only:
        a catch-up), the median of ``steps`` (per role, or the same for both), measured on its own rank (on
        ``threads[role]`` threads, default its own), one rank at a time (so neither disturbs the other's
        timing), or with ``together`` both at once (as PEARL's rounds run them)."""
        ranks = [rank for rank in WORKER_RANKS if ROLE_NAMES[rank] in max_tokens]
        seconds = {}
        with self._profile_lock:
            for group in [ranks] if together else [[rank] for rank in ranks]:  # the ranks measuring at once
                for rank in group:
                    role = ROLE_NAMES[rank]
                    count = steps[role] if isinstance(steps, dict) else steps
                    message = [OP_PROFILE, count, max_tokens[role], batch_size, (threads or {}).get(role, 0),
                               int(feed)]
                    with self._send_lock:
                        self.endpoint.send(np.array(message, dtype=np.int64), rank, CONTROL)
                for rank in group:
                    # its own tag: a receive beside poll's (which never takes a PROFILE)
                    seconds[ROLE_NAMES[rank]] = self.endpoint.recv_from(rank, PROFILE).tolist()
        return seconds

    def send_costs(self, costs: SpeculationCosts) -> None:
        """The pair's costs, from which the target picks adaptive requests' windows."""
        with self._send_lock:
            self.endpoint.send(costs.to_message(), TARGET_RANK, COSTS)

    def submit(self, request: GenerationRequest) -> None:
        """Send the request to its ranks (the draft only hears of requests that use it); its reports come
        from ``poll``."""
        if self.closed:
            raise WorldError("the worker ranks are shut down (the world is closed)")
        if self.failure is not None:
            raise WorldError(f"the worker ranks failed earlier and must be restarted: {self.failure}")
        ints, floats = encode_request(request)
        with self._send_lock:
            for rank in WORKER_RANKS if request.mode is not Mode.AR else (TARGET_RANK,):
                self.endpoint.send(ints, rank, CONTROL)
                self.endpoint.send(floats, rank, SAMPLING)

    def cancel(self, request_id: int) -> None:
        """Ask the target to end the request at its next round boundary (it then finishes as usual)."""
        if not self.closed and self.failure is None:
            with self._send_lock:
                self.endpoint.send(np.array([request_id], dtype=np.int64), TARGET_RANK, CANCEL)

    def close(self, timeout: float = 30.0) -> None:
        """Shut the workers down and wait until their processes are gone; kill any that hang. Whoever polls
        must have stopped."""
        if self.closed:
            return
        self.closed = True
        with self._send_lock:  # every worker: followers wait for it too (pearl.ranks.roles)
            for rank in range(self.layout.num_workers):
                self.endpoint.send(np.array([OP_SHUTDOWN], dtype=np.int64), rank, CONTROL)
        for thread in self._local_workers:
            thread.join(timeout)
        if not self.spawned:
            return  # mpiexec's workers finalize MPI together with this process, after it exits
        self.intercomm.Disconnect()
        deadline = time.monotonic() + timeout
        for info in self.ranks.values():
            while process_alive(info.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            kill_if_alive(info.pid)  # e.g. stuck waiting for a peer that failed
