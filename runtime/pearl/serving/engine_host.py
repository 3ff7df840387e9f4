"""The engine host: a process of its own that owns one Engine (the MPI driver and its worker ranks) and
serves it to its parent, :class:`pearl.serving.engine_process.EngineProcess`, over a pipe.

Why a process of its own: when a worker rank dies, MPICH's process manager kills the process that spawned
the ranks. Here that is this host, not the Triton model that owns it, so the model survives, fails the
requests that were running and starts a new host.

Protocol: one JSON object per line. The parent writes to the host's stdin, the host answers on its stdout
(stdin and stdout are moved away from fds 0 and 1 first, so the MPI process manager, which forwards
stdin to the ranks, and anything that prints cannot touch them).

    parent -> host  {"op": "generate", "id": n, "prompt_ids": [...], "sampling": {SamplingParams fields},
                     "mode": "pearl" | "sd" | "ar", "gamma": g | "auto"}
                    {"op": "cancel", "id": n}           end request n after the ranks' current round
                    {"op": "close"}                     shut the world down and exit (so does EOF)
    host -> parent  {"event": "ready", "eos_token_ids": [...], "vocab_size": v, "max_seq_len": m,
                     "max_batch_size": b, "ranks": {"draft": pid, "target": pid},
                     "helpers": [pids of the MPI process manager], "shm": [/dev/shm files the world maps]}
                    {"event": "start_failed", "message": "..."}   then the host exits
                    {"event": "tokens", "id": n, "tokens": [...]}
                    {"event": "done", "id": n, "finish_reason": "stop" | ..., "stats": {RequestStats fields}}
                    {"event": "failed", "id": n, "message": "..."}

Requests run concurrently (a thread each; the engine batches them on the ranks), so events of different
requests interleave. Closing waits for the running requests to finish. A rank that fails while serving
fails every request in flight; the host then exits with code 3 so that the parent starts a new world.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import IO

from pearl.engine import Engine
from pearl.processes import process_tree
from pearl.params import SamplingParams


def take_protocol_streams() -> tuple[IO[str], IO[str]]:
    """Private copies of stdin/stdout for the protocol; fd 0 becomes /dev/null and fd 1 stderr, which is
    what the MPI process manager and the ranks inherit."""
    protocol_in = os.fdopen(os.dup(0), "r", encoding="utf-8")
    protocol_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    sys.stdin, sys.stdout = open(os.devnull), sys.stderr
    return protocol_in, protocol_out


def process_manager_pids(rank_pids: list[int]) -> list[int]:
    """MPICH's mpiexec and its proxy: everything below this host but the ranks. The proxy and the ranks run in
    sessions of their own, so a signal to the host's process group misses them: the parent kills them by pid."""
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
    def __init__(self, engine: Engine, out: IO[str]) -> None:
        self.engine, self.out = engine, out
        self.requests: queue.Queue[dict | None] = queue.Queue()
        self.cancelled: set[int] = set()
        self._write_lock = threading.Lock()

    def send(self, message: dict) -> None:
        with self._write_lock:
            self.out.write(json.dumps(message) + "\n")
            self.out.flush()

    def read(self, protocol_in: IO[str]) -> None:
        """Reader thread: cancels take effect at once; everything else queues for the main loop."""
        for line in protocol_in:
            message = json.loads(line)
            if message["op"] == "cancel":
                self.cancelled.add(message["id"])
            elif message["op"] == "close":
                break
            else:
                self.requests.put(message)
        self.requests.put(None)  # close, or the parent is gone

    def serve(self) -> None:
        running = []
        while (message := self.requests.get()) is not None:
            running = [thread for thread in running if thread.is_alive()]
            running.append(threading.Thread(target=self.run, args=(message,), name=f"request-{message['id']}"))
            running[-1].start()
        for thread in running:
            thread.join()

    def run(self, message: dict) -> None:
        request_id = message["id"]
        try:
            self.generate(request_id, message)
        except Exception:
            self.send({"event": "failed", "id": request_id, "message": traceback.format_exc(limit=4)})
            if self.engine.world.failure is not None:  # a rank raised: the batch is lost, this world is done
                self.requests.put(None)  # the host exits (code 3) and the parent starts a new one
        self.cancelled.discard(request_id)

    def generate(self, request_id: int, message: dict) -> None:
        sampling = message["sampling"]
        sampling = SamplingParams(**{**sampling, "stop_token_ids": tuple(map(tuple, sampling["stop_token_ids"]))})
        stream = self.engine.generate(message["prompt_ids"], sampling, message["mode"], message["gamma"])
        cancelling = False
        for chunk in stream:
            self.send({"event": "tokens", "id": request_id, "tokens": chunk})
            if request_id in self.cancelled and not cancelling:
                stream.cancel()  # the ranks end it after this round; the rest still drains
                cancelling = True
        self.send({"event": "done", "id": request_id, "finish_reason": stream.finish_reason,
                   "stats": asdict(stream.stats)})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument("--threads-per-rank", type=int)
    parser.add_argument("--check-hashes", action="store_true", help="verify every engine file's sha256 first")
    args = parser.parse_args()
    protocol_in, protocol_out = take_protocol_streams()
    try:
        engine = Engine.from_engine_dir(args.engines, args.threads_per_rank, args.check_hashes)
        engine.ensure_costs()  # now, not at the first adaptive request
    except Exception as exc:
        protocol_out.write(json.dumps({"event": "start_failed", "message": str(exc)}) + "\n")
        protocol_out.flush()
        return 1
    ranks = {engine.world.name(rank): info.pid for rank, info in engine.world.ranks.items()}
    host = Host(engine, protocol_out)
    host.send({"event": "ready", "eos_token_ids": list(engine.eos_token_ids), "vocab_size": engine.vocab_size,
               "max_seq_len": engine.max_seq_len, "max_batch_size": engine.max_batch_size,
               "ranks": ranks,
               "helpers": process_manager_pids(list(ranks.values())),
               "shm": shared_memory_of([os.getpid(), *ranks.values()])})
    threading.Thread(target=host.read, args=(protocol_in,), daemon=True).start()
    try:
        host.serve()
    finally:
        engine.close()
    return 3 if engine.world.failure is not None else 0


if __name__ == "__main__":
    sys.exit(main())
