"""A world in this process: the real draft and target workers (``pearl.ranks.worker.Worker``, with their
schedulers) on two threads, their messages through in-memory mailboxes instead of MPI, the same protocol.

``World.local(config)`` returns a ``World`` over it, so an ``LLM(config, local=True)`` serves exactly as
over MPI, without processes: the fast test lane runs its lossless and batching checks this way. Both workers
share the process's torch threads, so it is for tests and debugging, not for speed.
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Callable, Hashable

import numpy as np
from mpi4py import MPI

from pearl.ranks.protocol import TAG_DTYPES


class Mailbox:
    """Messages waiting for their receivers: per receiver, (source, tag, array) in arrival order."""

    def __init__(self) -> None:
        self.boxes: dict[Hashable, list[tuple[int, int, np.ndarray]]] = defaultdict(list)
        self.arrived = threading.Condition()

    def put(self, receiver: Hashable, source: int, tag: int, array: np.ndarray) -> None:
        with self.arrived:
            self.boxes[receiver].append((source, tag, array))
            self.arrived.notify_all()

    def take(self, receiver: Hashable, source: int, tag: int, timeout: float | None,
             remove: bool = True) -> tuple[np.ndarray, int, int] | None:
        """The first message from ``source`` with ``tag`` (MPI.ANY_* match any), waiting up to ``timeout``
        (None: for ever; 0: not at all); None when there is none."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.arrived:
            while True:
                box = self.boxes[receiver]
                for i, (s, t, array) in enumerate(box):
                    if source in (MPI.ANY_SOURCE, s) and tag in (MPI.ANY_TAG, t):
                        if remove:
                            del box[i]
                        return array, s, t
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self.arrived.wait(left)


class LocalEndpoint:
    """``pearl.ranks.transport.Endpoint``'s interface over a Mailbox: ``box`` is where this side receives,
    ``rank`` what the other side calls it, ``others`` the other side's ranks -> their boxes."""

    def __init__(self, mailbox: Mailbox, box: Hashable, rank: int, others: dict[int, Hashable]) -> None:
        self.mailbox, self.box, self.rank, self.others = mailbox, box, rank, others

    def send(self, array: np.ndarray, dest: int, tag: int) -> None:
        self.mailbox.put(self.others[dest], self.rank, tag, np.array(array, dtype=TAG_DTYPES[tag]))

    def recv(self, source: int = MPI.ANY_SOURCE, tag: int = MPI.ANY_TAG, timeout: float | None = None,
             max_sleep: float = 0.0) -> tuple[np.ndarray, int, int]:
        message = self.mailbox.take(self.box, source, tag, timeout)
        if message is None:
            raise TimeoutError(f"no message (source {source}, tag {tag}) within {timeout} s")
        return message

    def has(self, source: int = MPI.ANY_SOURCE, tag: int = MPI.ANY_TAG) -> bool:
        return self.mailbox.take(self.box, source, tag, timeout=0, remove=False) is not None

    def recv_from(self, source: int, tag: int, timeout: float | None = None) -> np.ndarray:
        return self.recv(source, tag, timeout)[0]

    def wait_until(self, ready: Callable[[], bool], timeout: float | None = None) -> bool:
        """Wait (without probing) until ``ready()``, checked whenever a message arrives; False after ``timeout``."""
        with self.mailbox.arrived:  # re-entrant: ready() may look into the mailbox
            return self.mailbox.arrived.wait_for(ready, timeout)


def start_workers(num_workers: int) -> tuple[LocalEndpoint, list[threading.Thread]]:
    """The driver's endpoint to ``num_workers`` workers, each serving on a thread of its own."""
    from pearl.ranks.protocol import DRIVER_RANK
    from pearl.ranks.worker import Worker

    to_workers, peers = Mailbox(), Mailbox()
    driver = LocalEndpoint(to_workers, "driver", DRIVER_RANK, {rank: rank for rank in range(num_workers)})

    loading = threading.Lock()  # transformers' loading is not thread-safe (its meta-device init is global)

    def serve(rank: int) -> None:
        worker = Worker(LocalEndpoint(to_workers, rank, rank, {DRIVER_RANK: "driver"}),
                        LocalEndpoint(peers, rank, rank, {r: r for r in range(num_workers)}), rank)
        with loading:
            loaded = worker.load()
        if loaded:
            worker.serve()
        else:
            worker.wait_for_shutdown()

    threads = [threading.Thread(target=serve, args=(rank,), name=f"pearl-local-worker-{rank}", daemon=True)
               for rank in range(num_workers)]
    for thread in threads:
        thread.start()
    return driver, threads
