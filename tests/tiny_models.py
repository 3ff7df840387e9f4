"""Tiny random-init causal LMs saved as HF folders: fast stand-ins for real models in tests."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

ARCHITECTURES = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}


def make_tiny_model(folder: Path, arch: str = "llama", seed: int = 0, vocab_size: int = 64,
                    num_layers: int = 2, init_std: float = 0.02, eos_token_id: int | None = None,
                    noise_from: Path | None = None, noise_std: float = 0.0) -> Path:
    """Save a random model; ``noise_from`` copies another tiny model and perturbs its weights instead.

    ``init_std`` sets how peaked its distributions are (large values give confident, varied logits).
    """
    config_cls, model_cls = ARCHITECTURES[arch]
    torch.manual_seed(seed)
    if noise_from is not None:
        model = model_cls.from_pretrained(noise_from)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param) * noise_std * param.std().clamp_min(1e-3))
    else:
        config = config_cls(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                            num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=512, initializer_range=init_std, tie_word_embeddings=False,
                            eos_token_id=eos_token_id, bos_token_id=None, pad_token_id=None)
        model = model_cls(config)
    model.save_pretrained(folder)
    return folder


def save_tiny_tokenizer(folder: Path, words: list[str], eos: str = "</s>") -> Path:
    """A word-level tokenizer over ``words`` (ids in that order, then ``eos``), saved beside a tiny model."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate([*words, eos])}
    core = Tokenizer(models.WordLevel(vocab, unk_token=words[0]))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=core, eos_token=eos, unk_token=words[0]).save_pretrained(folder)
    return folder


def quantized_engine(source: Path, out: Path, quantization: str, dtype: str = "float32") -> dict:
    """``source`` (a model folder with a tokenizer) built by `make engines`' code into ``out / quantization``
    with that quantization (int4 in groups of 32); returns the engine's info."""
    from pearl_build.config import parse_pair
    from pearl_build.sources import resolve
    from pearl_build.torch_engine import build_torch_engine

    pair = parse_pair({"dtype": dtype, "max_seq_len": 256, "max_draft_len": 4,
                       "draft": {"source": {"path": str(source)}},
                       "target": {"source": {"path": str(source)}, "quantization": quantization,
                                  "group_size": 32}}, default_name="quantized")
    return build_torch_engine(pair, pair.target, resolve(pair.target.source, out / "cache"), out / quantization,
                              "key")
