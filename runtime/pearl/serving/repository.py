"""The Triton model repository: ``triton_repo/`` holds templates, filled from an engine directory.

Placeholders are ``${name}`` (as in TensorRT-LLM's all_models and its tools/fill_template.py); unlike that
tool, a repository is refused while any placeholder is left unfilled, so a typo cannot reach the server. The
blocks that repeat the schema's fields (optional inputs, statistics outputs, the ensemble's maps) are always
generated from ``pearl.schema``.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from string import Template

from pearl.engine_files import pair_models
from pearl.schema import pbtxt_blocks

PLACEHOLDER = re.compile(r"\$\{(\w+)\}")
DEFAULTS = {
    "triton_max_batch_size": "64",  # requests Triton may hand a model at once (each still holds one prompt)
    "preprocessing_instance_count": "1",
    "postprocessing_instance_count": "1",
    "add_special_tokens": "true",
    "skip_special_tokens": "true",
    "apply_chat_template": "false",  # true: text_input is a user message, wrapped in the chat template
    "threads_per_rank": "",  # empty: the engine directory's setting
    "max_queue_size": "64",  # requests waiting for the world; more are refused (UNAVAILABLE)
    "request_timeout_s": "600",  # a request not finished this long after it arrived ends with an error (0: off)
    "verify_engine_hashes": "true",  # the pearl model checks every engine file's sha256 at load (once, not at restarts)
    # true: pearl and pearl_bls are decoupled (responses streamed as they are accepted; gRPC streaming and HTTP
    # generate_stream). false: one response per request, so HTTP infer and gRPC unary infer work; no streaming
    "decoupled_mode": "true",
    # times in a row a request may be resumed in a new world after a rank died, with no token streamed in
    # between; then UNAVAILABLE
    "max_resumes": "2",
    # true: a second world loads in the background and takes over at once when the serving one dies (a resume
    # then costs a prefill instead of a world's start); the models' memory twice
    "spare_world": "false",
}
BOOLEANS = ("add_special_tokens", "skip_special_tokens", "apply_chat_template", "verify_engine_hashes",
            "decoupled_mode", "spare_world")


class RepositoryError(ValueError):
    """A template that cannot be filled (unknown or missing values)."""


def model_parameter(args: dict, key: str) -> str:
    """A filled ``parameters`` value, as a Triton python model's ``initialize(args)`` receives it."""
    return json.loads(args["model_config"])["parameters"][key]["string_value"]


def template_overrides(items: list[str]) -> dict[str, str]:
    """``--set KEY=VALUE`` arguments (``pearl serve``, ``pearl soak``) as template values."""
    malformed = [item for item in items if "=" not in item]
    if malformed:
        raise RepositoryError(f"template values are KEY=VALUE, got {malformed}")
    return dict(item.split("=", 1) for item in items)


def values_for_engines(engine_dir: str | Path, **overrides: str) -> dict[str, str]:
    """Every placeholder's value for a pair built by ``make engines``."""
    engine_dir = Path(engine_dir).resolve()
    # refuses a folder that is not a built pair; its files are checked when the pearl model loads it
    target = pair_models(engine_dir, check_files=False)["target"][0]
    values = dict(DEFAULTS, engine_dir=str(engine_dir), tokenizer_dir=str(target.resolve()))
    unknown = set(overrides) - set(values)
    if unknown:
        raise RepositoryError(f"unknown template values {sorted(unknown)}; known: {sorted(values)}")
    values.update(overrides)
    for key in BOOLEANS:
        if values[key] not in ("true", "false"):
            raise RepositoryError(f"template value {key} must be true or false, got {values[key]!r}")
    return values


def fill_text(text: str, values: dict[str, str], where: str) -> str:
    """The template with ``values`` and the blocks generated from ``pearl.schema`` filled in."""
    filled = Template(text).safe_substitute({**pbtxt_blocks(), **values})
    missing = sorted(set(PLACEHOLDER.findall(filled)))
    if missing:
        raise RepositoryError(f"{where}: no value for {', '.join(missing)}")
    return filled


def build_repository(templates: Path, out: Path, values: dict[str, str]) -> Path:
    """Copy the template repository to ``out`` (replacing it) with every config.pbtxt filled."""
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(templates, staging, ignore=shutil.ignore_patterns("__pycache__", ".gitkeep"))
    for config in staging.glob("*/config.pbtxt"):
        config.write_text(fill_text(config.read_text(), values, str(config.relative_to(staging))))
    shutil.rmtree(out, ignore_errors=True)
    staging.replace(out)
    return out
