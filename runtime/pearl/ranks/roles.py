"""Which model each worker rank serves, and which ranks a model spans: one per tensor-parallel shard.

A world is the driver plus, for each model, as many worker ranks as its tensor-parallel size. Workers 0 and 1
are the leaders of the draft and of the target (``DRAFT_RANK``, ``TARGET_RANK`` of ``pearl.ranks.protocol``):
they hold shard 0, enqueue the model's requests and speak the PEARL protocol. The draft's other shards come
next (workers 2 ..), then the target's. A follower constructs its model's executor with the others (TensorRT-LLM's
LEADER mode: every participant constructs it, only the leader enqueues) and waits for its leader to shut down;
from the driver it only gets CONFIG and OP_SHUTDOWN, and answers READY or ERROR.

TensorRT-LLM names a model's ranks by their MPI_COMM_WORLD rank, leader first (``participant_ids``). Worker w is
world rank w when the driver spawned the workers (they form their own world) and w + 1 under mpiexec (the driver
is world rank 0): ``world_offset``. The torch backend runs each model on one rank: its world is driver + 2.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass

from pearl.ranks.protocol import DRAFT_RANK, TARGET_RANK

MODELS = ("draft", "target")


@dataclass(frozen=True)
class RankRole:
    model: str  # "draft" or "target"
    worker: int  # this rank among the workers
    ranks: tuple[int, ...]  # the model's workers, leader first: shard i runs on ranks[i]

    @property
    def is_leader(self) -> bool:
        return self.worker == self.ranks[0]

    @property
    def shard(self) -> int:
        return self.ranks.index(self.worker)

    def participant_ids(self, world_offset: int) -> list[int]:
        """The model's ranks in MPI_COMM_WORLD, leader first (TensorRT-LLM's ParallelConfig.participant_ids)."""
        return [rank + world_offset for rank in self.ranks]


@dataclass(frozen=True)
class WorldLayout:
    draft_ranks: int = 1
    target_ranks: int = 1

    def __post_init__(self) -> None:
        if self.draft_ranks < 1 or self.target_ranks < 1:
            raise ValueError(f"each model needs at least one rank, got draft {self.draft_ranks}, "
                             f"target {self.target_ranks}")

    @classmethod
    def of(cls, config) -> "WorldLayout":
        """The layout a WorldConfig asks for (each ModelSpec's tensor_parallel)."""
        return cls(config.draft.tensor_parallel, config.target.tensor_parallel)

    @property
    def num_workers(self) -> int:
        return self.draft_ranks + self.target_ranks

    def ranks_of(self, model: str) -> tuple[int, ...]:
        if model == "draft":
            return (DRAFT_RANK, *range(2, self.draft_ranks + 1))
        if model == "target":
            return (TARGET_RANK, *range(self.draft_ranks + 1, self.num_workers))
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")

    def role(self, worker: int) -> RankRole:
        for model in MODELS:
            if worker in self.ranks_of(model):
                return RankRole(model, worker, self.ranks_of(model))
        raise ValueError(f"worker rank {worker} is outside a world of {self.num_workers} workers")

    def name(self, worker: int) -> str:
        """The rank's name in messages: draft, target, or "target shard 2" for a follower."""
        role = self.role(worker)
        return role.model if role.is_leader else f"{role.model} shard {role.shard}"

    def describe(self) -> str:
        parts = [f"{model} on workers {', '.join(map(str, self.ranks_of(model)))} (leader {self.ranks_of(model)[0]})"
                 for model in MODELS]
        return f"1 driver + {self.num_workers} workers: " + "; ".join(parts)

    def launch_command(self, mpiexec: str, driver: list[str], python: str = "python") -> str:
        """mpiexec's MPMD form: the driver first (world rank 0), then every worker (world ranks 1 ..)."""
        worker = [python, "-m", "pearl.ranks.worker"]
        return (f"{shlex.quote(mpiexec)} -n 1 {shlex.join(driver)} "
                f": -n {self.num_workers} {shlex.join(worker)}")
