"""llama.cpp model engines: a draft's GGUF source as it is (llama.cpp runs its own quantized formats), beside
its tokenizer and an engine.json, so that the pair's folder holds everything its ranks load.

The GGUF is hard-linked from the source cache when both are on one filesystem (no second copy), else copied.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from pearl.engine_files import GGUF_FILE
from pearl_build.artifacts import finish_model_engine, partial_folder, save_engine_tokenizer
from pearl_build.config import ModelConfig, PairConfig
from pearl_build.sources import Resolved


def build_gguf_engine(pair: PairConfig, model: ModelConfig, resolved: Resolved, out_dir: Path,
                      build_key: str) -> dict:
    """Write ``out_dir`` (via a ``.partial`` folder renamed at the end) and return its engine.json."""
    from transformers import AutoConfig

    started = time.time()
    partial = partial_folder(out_dir)
    try:
        os.link(resolved.path, partial / GGUF_FILE)
    except OSError:  # another filesystem
        shutil.copyfile(resolved.path, partial / GGUF_FILE)
    tokenizer = save_engine_tokenizer(model, resolved.path, partial)
    config = AutoConfig.from_pretrained(resolved.path.parent, gguf_file=resolved.path.name, local_files_only=True)
    return finish_model_engine(
        partial, out_dir, pair, model, resolved, build_key, started,
        backend="llama_cpp",
        dtype="float32",  # its logits; the weights keep the GGUF's own types
        architecture=(config.architectures or [config.model_type])[0],
        num_layers=config.num_hidden_layers,
        quantization={"method": "gguf"},
        vocab_size=config.vocab_size,
        tokenizer_size=len(tokenizer),
        max_seq_len=min(pair.max_seq_len, int(config.max_position_embeddings)))
