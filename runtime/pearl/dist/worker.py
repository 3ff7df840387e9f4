"""A worker rank: loads its model, then serves the driver's requests until told to shut down.

Started by the driver with ``MPI.COMM_SELF.Spawn`` or by ``mpiexec`` (driver first, workers after), as
``python -m pearl.dist.worker``. Rank 0 of the workers runs the draft, rank 1 the target.
"""
from __future__ import annotations

import os
import sys
import traceback

import numpy as np
import torch
from mpi4py import MPI

from pearl.backends import load_backend
from pearl.decoding import RankState, TargetState, run_draft, run_target
from pearl.dist.config import WorldConfig
from pearl.dist.links import MpiDraftLink, MpiTargetLink
from pearl.dist.protocol import (CONFIG, CONTROL, DRIVER_RANK, ERROR, OP_GENERATE, OP_PROFILE,
                                 OP_SHUTDOWN, OP_START, PROFILE, READY, SAMPLING, STATS, TARGET_RANK,
                                 decode_request, message_text, text_message)
from pearl.dist.transport import Endpoint
from pearl.profiling import forward_seconds
from pearl.sampling import DRAFT_STREAM, TARGET_STREAM

INTERCOMM_TAG = 77


def connect() -> tuple[MPI.Intercomm, MPI.Intracomm, bool]:
    """(driver intercommunicator, workers' communicator, spawned?) for this worker."""
    parent = MPI.Comm.Get_parent()
    if parent != MPI.COMM_NULL:
        return parent, MPI.COMM_WORLD, True
    world = MPI.COMM_WORLD  # under mpiexec: world rank 0 is the driver, the others are workers
    workers = world.Split(color=1, key=world.Get_rank())
    return workers.Create_intercomm(0, world, DRIVER_RANK, INTERCOMM_TAG), workers, False


class Worker:
    def __init__(self, driver: Endpoint, peers: Endpoint, rank: int) -> None:
        self.driver, self.peers, self.rank = driver, peers, rank
        self.config = WorldConfig.from_json(message_text(driver.recv_from(DRIVER_RANK, CONFIG)))
        self.backend = None
        self.vocab_size = 0

    def load(self) -> bool:
        torch.set_num_threads(self.config.threads_per_rank)
        spec = self.config.spec_for(self.rank)
        try:
            self.backend = load_backend(spec)
        except Exception as exc:  # reported to the driver, which refuses to start the world
            self.driver.send(text_message(f"loading {spec.path}: {exc}"), DRIVER_RANK, ERROR)
            return False
        b = self.backend
        self.driver.send(np.array([os.getpid(), b.vocab_size, b.max_seq_len, *b.eos_token_ids]), DRIVER_RANK, READY)
        return True

    def serve(self) -> None:
        """Answer CONTROL messages until OP_SHUTDOWN."""
        while True:
            control = self.driver.recv_from(DRIVER_RANK, CONTROL)
            op = int(control[0])
            if op == OP_SHUTDOWN:
                return
            if op == OP_START:
                self.vocab_size = int(control[1])
            elif op == OP_PROFILE:
                seconds = forward_seconds(self.backend, max_tokens=int(control[2]), steps=int(control[1]),
                                          batch_size=int(control[3]))
                self.driver.send(np.array(seconds), DRIVER_RANK, PROFILE)
            elif op == OP_GENERATE:
                sampling = self.driver.recv_from(DRIVER_RANK, SAMPLING)
                self.generate(decode_request(control, sampling))

    def generate(self, request) -> None:
        try:
            if self.rank == TARGET_RANK:
                state = TargetState(request, self.backend, self.vocab_size, TARGET_STREAM)
                link = MpiTargetLink(self.peers, self.driver, request.request_id, request.sampling.greedy,
                                     self.backend.device)
                stats = run_target(state, link)
                self.driver.send(stats, DRIVER_RANK, STATS)
            else:
                state = RankState(request, self.backend, self.vocab_size, DRAFT_STREAM)
                run_draft(state, MpiDraftLink(self.peers, request.request_id))
            state.release()
        except Exception:
            self.driver.send(text_message(traceback.format_exc()), DRIVER_RANK, ERROR)


def main() -> None:
    sys.stdout = sys.stderr  # the driver's stdout may carry --json output; workers never write there
    intercomm, workers, spawned = connect()
    worker = Worker(Endpoint(intercomm), Endpoint(workers), workers.Get_rank())
    if worker.load():
        worker.serve()
    else:
        while int(worker.driver.recv_from(DRIVER_RANK, CONTROL)[0]) != OP_SHUTDOWN:
            pass
    if spawned:
        intercomm.Disconnect()


if __name__ == "__main__":
    main()
