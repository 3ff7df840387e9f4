"""The world host: a process of its own that owns one LLM (the MPI driver and its worker ranks) and serves
it to its owner, :class:`pearl.serving.world_process.WorldProcess`, over a pipe
(``pearl.serving.host_protocol``).

Why a process of its own: when a worker rank dies, MPICH's process manager kills the process that spawned
the ranks. Here that is this host, not the Triton model that owns it, so the model survives, resumes the
requests that were running in a new world and starts a new host.

One event loop (``Host.serve``) over the pipe and the MPI world owns every request's lifecycle: a request
arrives validated, goes to the ranks, each of its reports goes back as an event, its last one ends it. No
thread per request: the ranks batch the requests, the loop only routes. stdin and stdout are moved away
from fds 0 and 1 first, so the MPI process manager (which forwards stdin to the ranks) and anything that
prints cannot touch them.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import IO

from pearl.llm import LLM
from pearl.processes import process_tree
from pearl.ranks.transport import MIN_SLEEP_S
from pearl.ranks.world import POLL_MAX_SLEEP_S, Report, World, WorldError
from pearl.serving import host_protocol
from pearl.stopping import FinishReason

ABANDON_S = 10.0  # with its owner gone, how long the cancelled requests get to end before the world shuts down


def take_protocol_streams() -> tuple[int, IO[str]]:
    """Private copies of stdin (a raw fd, read without blocking) and stdout for the protocol; fd 0 becomes
    /dev/null and fd 1 stderr, which is what the MPI process manager and the ranks inherit."""
    protocol_in = os.dup(0)
    protocol_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    sys.stdin, sys.stdout = open(os.devnull), sys.stderr
    return protocol_in, protocol_out


def process_manager_pids(rank_pids: list[int]) -> list[int]:
    """MPICH's mpiexec and its proxy: everything below this host but the ranks. The proxy and the ranks run in
    sessions of their own, so a signal to the host's process group misses them: the owner kills them by pid."""
    return sorted(process_tree(os.getpid()) - {os.getpid(), *rank_pids})


def shared_memory_of(pids: list[int]) -> list[str]:
    """The /dev/shm files these processes map (MPICH's segments): a killed world leaves them behind."""
    paths = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as maps:
                paths.update(line.split()[-1] for line in maps if " /dev/shm/" in line
                             and not line.rstrip().endswith("(deleted)"))
        except OSError:
            pass
    return sorted(paths)


class Host:
    """The event loop. ``running``: the requests on the ranks; the loop ends once it is closing and they
    are done (or, when the owner is gone, ``ABANDON_S`` after it cancelled them)."""

    def __init__(self, world: World, protocol_in: int, out: IO[str]) -> None:
        self.world, self.protocol_in, self.out = world, protocol_in, out
        self.running: set[int] = set()
        self.closing = False  # "close" or end of file: no more requests come
        self.abandon_at: float | None = None  # the owner is gone: stop waiting for the requests then
        self._buffer = b""

    def serve(self) -> None:
        while not (self.closing and (not self.running or time.monotonic() > self.abandon_at)):
            self._wait()
            for message in self._messages():
                self._handle(message)
            while (report := self.world.poll()) is not None:
                self._report(report)

    def _wait(self) -> None:
        """Until the pipe or the world has something: the pipe at once (select), the world within
        POLL_MAX_SLEEP_S (an MPI probe has no file descriptor)."""
        sleep = MIN_SLEEP_S
        while not self.world.has_report():
            if self.closing:  # the pipe is done: pace the probes, back to serve() to check the deadline
                time.sleep(POLL_MAX_SLEEP_S)
                return
            if select.select([self.protocol_in], [], [], sleep)[0]:
                return
            sleep = min(2 * sleep, POLL_MAX_SLEEP_S)

    def _messages(self) -> list[dict]:
        """The complete lines that have arrived (never blocks)."""
        if self.closing or not select.select([self.protocol_in], [], [], 0)[0]:
            return []
        data = os.read(self.protocol_in, 1 << 16)
        if not data:  # end of file: the owner closed the pipe, or died without closing the world
            return [{"op": "abandon"}]
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        return [json.loads(line) for line in lines]

    def _handle(self, message: dict) -> None:
        op = message["op"]
        if op == "generate":
            request = host_protocol.decode_request(message["request"])
            self.running.add(request.request_id)  # first: a world that failed fails it too
            self.world.submit(request)
        elif op == "cancel" and message["id"] in self.running:
            self.world.cancel(message["id"])  # the ranks end it after this round; it then reports "cancelled"
        elif op == "close":
            self.closing, self.abandon_at = True, float("inf")
        elif op == "abandon" and self.abandon_at != float("inf"):
            self.closing, self.abandon_at = True, time.monotonic() + ABANDON_S
            for request_id in self.running:
                self.world.cancel(request_id)

    def _report(self, report: Report) -> None:
        event = {"id": report.request_id, "tokens": report.tokens, "counters": report.counters.tolist()}
        if report.finished:
            self.running.discard(report.request_id)
            self.send({"event": "done", **event, "finish_reason": FinishReason(report.finish_reason).label})
        else:
            self.send({"event": "tokens", **event})

    def fail_all(self, message: str) -> None:
        for request_id in sorted(self.running):
            self.send({"event": "failed", "id": request_id, "message": message})
        self.running.clear()

    def send(self, message: dict) -> None:
        try:
            self.out.write(host_protocol.encode(message))
            self.out.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass  # the owner is gone; the loop ends by itself


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument("--threads-per-rank", type=int)
    parser.add_argument("--check-hashes", action="store_true", help="verify every engine file's sha256 first")
    args = parser.parse_args()
    protocol_in, protocol_out = take_protocol_streams()
    try:
        llm = LLM.from_engine_dir(args.engines, args.threads_per_rank, args.check_hashes)
        llm.ensure_costs()  # now, not at the first adaptive request
    except Exception as exc:
        protocol_out.write(host_protocol.encode({"event": "start_failed", "message": str(exc)}))
        protocol_out.flush()
        return 1
    host = Host(llm.world, protocol_in, protocol_out)
    ranks = {llm.world.name(rank): info.pid for rank, info in llm.world.ranks.items()}
    host.send({"event": "ready", "limits": asdict(llm.limits), "ranks": ranks,
               "helpers": process_manager_pids(list(ranks.values())),
               "shm": shared_memory_of([os.getpid(), *ranks.values()])})
    try:
        host.serve()
    except WorldError as exc:  # a rank raised: the batch's state is lost, this world is done
        host.fail_all(str(exc))
    finally:
        llm.close()
    return host_protocol.EXIT_RANK_FAILED if llm.world.failure is not None else 0


if __name__ == "__main__":
    sys.exit(main())
