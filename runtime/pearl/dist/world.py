"""The driver's handle on the worker ranks: start them, send requests, receive tokens, shut them down.

``World.start`` spawns the workers from a plain Python process (``MPI.COMM_SELF.Spawn``), or attaches to
workers started next to it by ``mpiexec -n 1 python -m pearl ... : -n 2 python -m pearl.dist.worker``.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np


def _put_mpiexec_on_path() -> None:
    """MPICH spawns through its process manager, found on PATH; without it Spawn hangs."""
    bindir = str(Path(sys.executable).parent)
    if (Path(bindir) / "mpiexec").exists() and bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


_put_mpiexec_on_path()
from mpi4py import MPI  # noqa: E402  (after PATH is set)

from pearl.dist.config import WorldConfig  # noqa: E402
from pearl.dist.protocol import (CANCEL, CONFIG, CONTROL, DRAFT_RANK, ERROR, OP_GENERATE, OP_PROFILE,  # noqa: E402
                                 OP_SHUTDOWN, OP_START, PROFILE, READY, SAMPLING, STATS, TARGET_RANK, TOKENS,
                                 encode_request, message_text, text_message)
from pearl.dist.transport import Endpoint  # noqa: E402
from pearl.dist.worker import INTERCOMM_TAG  # noqa: E402
from pearl.params import GenerationRequest  # noqa: E402
from pearl.processes import kill_if_alive, process_alive  # noqa: E402

WORKER_RANKS = (DRAFT_RANK, TARGET_RANK)
ROLE_NAMES = {DRAFT_RANK: "draft", TARGET_RANK: "target"}


class WorldError(RuntimeError):
    """A worker could not start, or failed while serving."""


@dataclass(frozen=True)
class RankInfo:
    """What a worker reports once its model is loaded."""

    pid: int
    vocab_size: int
    max_seq_len: int
    eos_token_ids: tuple[int, ...]


class World:
    def __init__(self, intercomm: MPI.Intercomm, spawned: bool) -> None:
        self.intercomm, self.spawned = intercomm, spawned
        self.endpoint = Endpoint(intercomm)
        self.ranks: dict[int, RankInfo] = {}
        self.closed = False
        self.failure: str | None = None  # set when a rank failed mid-request: its peer may be stuck

    @classmethod
    def start(cls, config: WorldConfig) -> "World":
        world_comm = MPI.COMM_WORLD
        if world_comm.Get_size() > 1:  # launched by mpiexec with the workers beside us
            local = world_comm.Split(color=0, key=world_comm.Get_rank())
            world = cls(local.Create_intercomm(0, world_comm, 1, INTERCOMM_TAG), spawned=False)
        else:
            intercomm = MPI.COMM_SELF.Spawn(sys.executable, args=["-m", "pearl.dist.worker"],
                                            maxprocs=len(WORKER_RANKS))
            world = cls(intercomm, spawned=True)
        try:
            world._handshake(config)
        except BaseException:
            world.close()
            raise
        return world

    def _handshake(self, config: WorldConfig) -> None:
        for rank in WORKER_RANKS:
            self.endpoint.send(text_message(config.to_json()), rank, CONFIG)
        errors = []
        for _ in WORKER_RANKS:
            message, source, tag = self.endpoint.recv(tag=MPI.ANY_TAG, timeout=config.startup_timeout_s)
            if tag == ERROR:
                errors.append(f"{ROLE_NAMES[source]} rank: {message_text(message)}")
            elif tag == READY:
                pid, vocab, max_len, *eos = message.tolist()
                self.ranks[source] = RankInfo(pid, vocab, max_len, tuple(eos))
        if errors:
            raise WorldError("; ".join(errors))

    def begin(self, vocab_size: int) -> None:
        """Tell the workers the shared vocabulary; they serve requests from now on."""
        self._control([OP_START, vocab_size])

    def _control(self, values: list[int]) -> None:
        for rank in WORKER_RANKS:
            self.endpoint.send(np.array(values, dtype=np.int64), rank, CONTROL)

    def profile(self, max_tokens: dict[str, int], steps: int = 5, batch_size: int = 1) -> dict[str, list[float]]:
        """Per model: seconds of a forward over k new tokens for each of ``batch_size`` sequences,
        k = 1..max_tokens[role], measured on its own rank, one rank at a time (so neither disturbs the
        other's timing)."""
        seconds = {}
        for rank in WORKER_RANKS:
            role = ROLE_NAMES[rank]
            self.endpoint.send(np.array([OP_PROFILE, steps, max_tokens[role], batch_size], dtype=np.int64), rank,
                               CONTROL)
            seconds[role] = self.endpoint.recv_from(rank, PROFILE).tolist()
        return seconds

    def submit(self, request: GenerationRequest) -> None:
        if self.closed:
            raise WorldError("the worker ranks are shut down (the engine is closed)")
        if self.failure is not None:
            raise WorldError(f"the worker ranks failed earlier and must be restarted: {self.failure}")
        ints, floats = encode_request(request)
        for rank in WORKER_RANKS:
            self.endpoint.send(ints, rank, CONTROL)
            self.endpoint.send(floats, rank, SAMPLING)

    def cancel(self, request_id: int) -> None:
        """Ask the target to end the request after its current round (it then finishes as usual)."""
        if not self.closed and self.failure is None:
            self.endpoint.send(np.array([request_id], dtype=np.int64), TARGET_RANK, CANCEL)

    def results(self, request_id: int) -> Iterator[tuple[list[int], int] | np.ndarray]:
        """Yield (tokens, finish_reason) chunks from the target, then the STATS array, then stop."""
        finished = False
        while True:
            message, source, tag = self.endpoint.recv()
            if tag == ERROR:
                self.failure = f"{ROLE_NAMES[source]} rank failed on request {request_id}:\n{message_text(message)}"
                raise WorldError(self.failure)
            if tag == TOKENS and int(message[0]) == request_id and not finished:
                finished = int(message[1]) != 0
                yield message[2:].tolist(), int(message[1])
            elif tag == STATS and finished:
                yield message
                return

    def close(self, timeout: float = 30.0) -> None:
        """Shut the workers down and wait until their processes are gone; kill any that hang."""
        if self.closed:
            return
        self.closed = True
        self._control([OP_SHUTDOWN])
        if not self.spawned:
            return  # mpiexec's workers finalize MPI together with this process, after it exits
        self.intercomm.Disconnect()
        deadline = time.monotonic() + timeout
        for info in self.ranks.values():
            while process_alive(info.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            kill_if_alive(info.pid)  # e.g. stuck waiting for a peer that failed
