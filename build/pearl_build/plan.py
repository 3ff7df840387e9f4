"""The build plan of a pair: which steps run, on which devices, writing which folders.

``make engines DRY_RUN=1`` prints it (``pipeline.plan_pair`` makes it from each backend's ``model_steps``);
the TensorRT-LLM build executes exactly these commands. Each model has its own lane of steps, run in order; the draft and target lanes run in parallel, each pinned to its
own GPU(s) with CUDA_VISIBLE_DEVICES. Steps without a command run inside ``make engines`` itself. The plan
also names the pinned TensorRT-LLM release (tensorrt_llm pairs) and the MPI world the engines run in: its
ranks (``pearl.ranks.roles``) and the mpiexec command that launches it.
"""
from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pearl.backends import trtllm_pin
from pearl.ranks.roles import MODELS, WorldLayout
from pearl_build.config import ModelConfig, PairConfig


@dataclass(frozen=True)
class BuildStep:
    role: str
    what: str
    output: Path
    command: tuple[str, ...] = ()  # empty: done in-process
    env: dict[str, str] = field(default_factory=dict)

    def render(self) -> str:
        if not self.command:
            return f"(in-process) {self.what} -> {self.output}"
        env = " ".join(f"{k}={v}" for k, v in self.env.items())
        return f"{env} {shlex.join(self.command)}".strip()


@dataclass(frozen=True)
class BuildPlan:
    pair: PairConfig
    out: Path
    lanes: dict[str, list[BuildStep]]  # role -> steps, in order
    after: list[str]  # in-process steps once both lanes are done

    def render(self) -> str:
        p = self.pair
        lines = [f"# build plan for {p.name}: backend {p.backend}, dtype {p.dtype}, max_seq_len {p.max_seq_len}, "
                 f"max_draft_len {p.max_draft_len}", f"# output: {self.out}"]
        if p.backend == "tensorrt_llm":
            lines.append(f"# pinned: {trtllm_pin.describe()}; make engines and the runtime refuse any other")
        for model in p.models:
            where = "cpu" if not model.on_gpu else f"GPU {','.join(model.devices)} (tp_size {model.tp_size})"
            lines.append(f"\n## {model.role} on {where}; source {model.source.kind}: {model.source.location}")
            lines += [f"{i}. {step.render()}" for i, step in enumerate(self.lanes[model.role], 1)]
        lines.append("\n## then")
        lines += [f"- {what}" for what in self.after]
        return "\n".join(lines + ["", *world_lines(p, self.out)])


def world_lines(pair: PairConfig, out: Path) -> list[str]:
    """The MPI world that serves the pair: its ranks, TensorRT-LLM's participants, the mpiexec launch."""
    layout = WorldLayout(pair.draft.tp_size, pair.target.tp_size)
    python = _shown(Path(sys.executable))  # the venv running make engines: the one that has the pair's backend
    if pair.backend == "tensorrt_llm":  # TensorRT-LLM links the container's Open MPI: launch with its mpiexec
        mpiexec = f"{trtllm_pin.CONTAINER_MPI_HOME}/bin/mpiexec"
    else:
        mpiexec = _shown(Path(sys.executable).parent / "mpiexec")
    lines = ["## world", f"- {layout.describe()}"]
    for model in MODELS:
        role = layout.role(layout.ranks_of(model)[0])
        config = getattr(pair, model)
        where = f"GPU {','.join(config.devices)}" if config.on_gpu else "cpu"
        lines.append(f"- {model}: {len(role.ranks)} rank(s) on {where}; TensorRT-LLM LEADER mode, participant_ids "
                     f"{role.participant_ids(world_offset=1)} under mpiexec" if pair.backend == "tensorrt_llm"
                     else f"- {model}: 1 rank on {where}")
    driver = [python, "-m", "pearl", "generate", "--engines", str(out), "--prompt", "<prompt>"]
    lines.append(f"- launch: {layout.launch_command(mpiexec, driver, python)}")
    lines.append(f"- or let the driver spawn the {layout.num_workers} workers itself (MPI_Comm_spawn): "
                 f"`{python} -m pearl generate --engines {out} ...`, `make serve PAIR={pair.name}`")
    return lines


def _shown(path: Path) -> str:
    """A path as a reader would type it here: relative when it lies under the working directory."""
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def gpu_env(model: ModelConfig) -> dict[str, str]:
    """Pin a model's processes to its own GPUs; inside them the GPUs are renumbered 0..n-1."""
    return {"CUDA_VISIBLE_DEVICES": ",".join(model.devices)} if model.on_gpu else {}
