"""A worker rank: loads its model, then serves the driver's requests until told to shut down.

Started by the driver with ``MPI.COMM_SELF.Spawn`` or by ``mpiexec`` (driver first, workers after), as
``python -m pearl.ranks.worker``. Rank 0 of the workers leads the draft, rank 1 the target; the other ranks are
tensor-parallel followers of one of them (``pearl.ranks.roles``).
"""
from __future__ import annotations

import os
import signal
import sys
import time
import traceback

import numpy as np
import torch
from mpi4py import MPI

from pearl.backends import load_backend
from pearl.ranks.config import WorldConfig
from pearl.ranks.draft_rank import DraftRank
from pearl.ranks.protocol import (CANCEL, CONFIG, CONTROL, COSTS, DRAFT_RANK, DRIVER_RANK, ERROR, OP_GENERATE,
                                 OP_PROFILE, OP_SHUTDOWN, OP_START, PROFILE, READY, SAMPLING, TARGET_RANK,
                                 decode_request, message_text, text_message)
from pearl.ranks.roles import WorldLayout
from pearl.ranks.target_rank import TargetRank
from pearl.ranks.transport import MAX_SLEEP_S, MIN_SLEEP_S, Endpoint, wait_until
from pearl.processes import die_with_parent
from pearl.profiling import forward_seconds
from pearl.speculation import SpeculationCosts

INTERCOMM_TAG = 77
# A rank with no request in its batch (the target between requests, the draft once it is off) notices a
# new one up to 10 ms late, once per request. Its probes run on the cores of the rank that works, and a
# thread preempted stalls the other at the next barrier: frequent polls slow the working rank
# (docs/results/HISTORY.md, "Continuous batching, change by change").
IDLE_MAX_SLEEP_S = 10e-3
# At a round boundary the target probes this long after the driver's last message (<1% a round): what it
# admits is what arrived. The draft admits what the target's PLAN names, waiting for a request not here yet,
# so it handles what has arrived and drafts: in an SD round the target waits for it.
DRAIN_QUIET_S = {TARGET_RANK: 1e-3, DRAFT_RANK: 0.0}


class Shutdown(Exception):
    """The driver said OP_SHUTDOWN."""


def connect() -> tuple[MPI.Intercomm, MPI.Intracomm, bool]:
    """(driver intercommunicator, workers' communicator, spawned?) for this worker."""
    parent = MPI.Comm.Get_parent()
    if parent != MPI.COMM_NULL:
        return parent, MPI.COMM_WORLD, True
    world = MPI.COMM_WORLD  # under mpiexec: world rank 0 is the driver, the others are workers
    workers = world.Split(color=1, key=world.Get_rank())
    return workers.Create_intercomm(0, world, DRIVER_RANK, INTERCOMM_TAG), workers, False


class Worker:
    def __init__(self, driver: Endpoint, peers: Endpoint, rank: int, world_offset: int = 0) -> None:
        """``world_offset``: this world's MPI_COMM_WORLD rank of worker 0 (see pearl.ranks.roles)."""
        self.driver, self.peers, self.rank, self.world_offset = driver, peers, rank, world_offset
        self.config = WorldConfig.from_json(message_text(driver.recv_from(DRIVER_RANK, CONFIG)))
        self.role = WorldLayout.of(self.config).role(rank)
        self.backend = None
        self.scheduler: TargetRank | DraftRank | None = None

    def load(self) -> bool:
        torch.set_num_threads(self.config.threads_per_rank)
        spec = self.config.spec_for(self.role.model)
        try:
            self.backend = load_backend(spec, self.role.participant_ids(self.world_offset))
        except Exception as exc:  # reported to the driver, which refuses to start the world
            self.driver.send(text_message(f"loading {spec.path}: {exc}"), DRIVER_RANK, ERROR)
            return False
        b = self.backend
        self.driver.send(np.array([os.getpid(), b.vocab_size, b.max_seq_len, *b.eos_token_ids]), DRIVER_RANK, READY)
        return True

    def serve(self) -> None:
        """Answer the driver and run the scheduler's rounds until OP_SHUTDOWN. A failure while serving is
        reported (ERROR) and ends the serving: the batch's state is lost and the world must be restarted.
        A follower only keeps its shard of the model running until its leader shuts down."""
        if not self.role.is_leader:
            self.backend.follow()
            self.wait_for_shutdown()
            return
        if self.rank == TARGET_RANK:
            self.scheduler = TargetRank(self.backend, self.driver, self.peers, self.config)
        else:
            self.scheduler = DraftRank(self.backend, self.peers, self.handle_driver_message,
                                       self.config.draft_stop_confidence)
        try:
            while True:
                wait_until(lambda: self.driver.has(DRIVER_RANK) or self.scheduler.ready(),
                           max_sleep=MAX_SLEEP_S if self.scheduler.busy else IDLE_MAX_SLEEP_S)
                self.drain_driver(DRAIN_QUIET_S[self.rank])
                if self.scheduler.ready():
                    self.scheduler.step()
        except Shutdown:
            return
        except Exception:
            self.driver.send(text_message(traceback.format_exc()), DRIVER_RANK, ERROR)
            self.wait_for_shutdown()

    def drain_driver(self, quiet_s: float) -> None:
        """Handle every message the driver has sent, until none shows for ``quiet_s`` (0: none shows now).
        MPICH reads what arrived during a long forward a little per probe: one probe right after a round saw
        one of six requests sent a second before, and the other five missed that round's admission."""
        quiet_since = time.monotonic()
        while True:
            if self.driver.has(DRIVER_RANK):
                self.handle_driver_message()
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= quiet_s:
                return
            else:
                time.sleep(MIN_SLEEP_S)

    def handle_driver_message(self) -> None:
        """Receive the driver's next message (waiting for it) and act on it."""
        message, _, tag = self.driver.recv(DRIVER_RANK)
        if tag == CANCEL:  # the target's only: the draft hears of a cancellation in the target's PLAN
            self.scheduler.cancel(int(message[0]))
            return
        if tag == COSTS:
            self.scheduler.costs = SpeculationCosts.from_message(message)
            return
        op = int(message[0])
        if op == OP_SHUTDOWN:
            raise Shutdown
        if op == OP_START:
            self.scheduler.vocab_size = int(message[1])
        elif op == OP_PROFILE:  # between rounds: a batch in flight would slow the timings down
            threads = torch.get_num_threads()
            torch.set_num_threads(int(message[4]) or self.config.threads_per_rank)
            seconds = forward_seconds(self.backend, max_tokens=int(message[2]), steps=int(message[1]),
                                      batch_size=int(message[3]), feed=bool(message[5]))
            torch.set_num_threads(threads)
            self.driver.send(np.array(seconds), DRIVER_RANK, PROFILE)
        elif op == OP_GENERATE:
            sampling = self.driver.recv_from(DRIVER_RANK, SAMPLING)
            self.scheduler.add(decode_request(message, sampling))

    def wait_for_shutdown(self) -> None:
        while int(self.driver.recv_from(DRIVER_RANK, CONTROL)[0]) != OP_SHUTDOWN:
            pass

    def close(self) -> None:
        """Release the model; a tensor-parallel leader's shutdown is what lets its followers return."""
        if (close := getattr(self.backend, "close", None)) is not None:
            close()


def main() -> None:
    sys.stdout = sys.stderr  # the driver's stdout may carry --json output; workers never write there
    die_with_parent(signal.SIGKILL)  # the MPI process manager's proxy: a rank never outlives its world's
    intercomm, workers, spawned = connect()
    world_offset = MPI.COMM_WORLD.Get_rank() - workers.Get_rank()
    worker = Worker(Endpoint(intercomm), Endpoint(workers), workers.Get_rank(), world_offset)
    if worker.load():
        worker.serve()
    else:
        worker.wait_for_shutdown()
    worker.close()
    if spawned:
        intercomm.Disconnect()


if __name__ == "__main__":
    main()
