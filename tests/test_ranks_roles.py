"""Rank roles: which model each worker serves, its TensorRT-LLM participants, and the world's launch command."""
import pytest

from pearl.backends.base import ModelSpec
from pearl.ranks.config import WorldConfig
from pearl.ranks.protocol import DRAFT_RANK, TARGET_RANK
from pearl.ranks.roles import WorldLayout


def test_the_torch_world_is_the_driver_and_one_rank_per_model():
    config = WorldConfig(draft=ModelSpec("d"), target=ModelSpec("t"))
    layout = WorldLayout.of(config)
    assert layout.num_workers == 2
    assert [(r.model, r.is_leader) for r in map(layout.role, range(2))] == [("draft", True), ("target", True)]
    assert (layout.role(DRAFT_RANK).model, layout.role(TARGET_RANK).model) == ("draft", "target")
    with pytest.raises(ValueError, match="tensor_parallel must be 1"):
        ModelSpec("t", tensor_parallel=4)  # the torch backend keeps one rank per model


def test_one_plus_four_gpus_give_the_target_four_ranks_led_by_worker_one():
    config = WorldConfig(draft=ModelSpec("d", backend="tensorrt_llm"),
                         target=ModelSpec("t", backend="tensorrt_llm", tensor_parallel=4))
    layout = WorldLayout.of(config)
    assert layout.num_workers == 5 and layout.ranks_of("target") == (1, 2, 3, 4)
    followers = [layout.role(w) for w in (2, 3, 4)]
    assert all(r.model == "target" and not r.is_leader for r in followers)
    assert [r.shard for r in followers] == [1, 2, 3]
    assert layout.role(3).participant_ids(world_offset=1) == [2, 3, 4, 5]  # under mpiexec
    assert layout.role(3).participant_ids(world_offset=0) == [1, 2, 3, 4]  # spawned: the workers' own world
    assert [layout.name(w) for w in range(5)] == ["draft", "target", "target shard 1", "target shard 2",
                                                 "target shard 3"]


def test_a_tensor_parallel_draft_keeps_the_leaders_at_workers_zero_and_one():
    layout = WorldLayout(draft_ranks=2, target_ranks=4)
    assert layout.ranks_of("draft") == (0, 2) and layout.ranks_of("target") == (1, 3, 4, 5)
    assert layout.role(2).participant_ids(1) == [1, 3]
    assert {layout.role(w).model for w in range(6)} == {"draft", "target"}
    with pytest.raises(ValueError, match="outside a world of 6 workers"):
        layout.role(6)


def test_the_launch_command_starts_the_driver_then_every_worker():
    command = WorldLayout(1, 4).launch_command("/opt/hpcx/ompi/bin/mpiexec", ["python", "-m", "pearl", "generate"])
    assert command == ("/opt/hpcx/ompi/bin/mpiexec -n 1 python -m pearl generate "
                       ": -n 5 python -m pearl.ranks.worker")
