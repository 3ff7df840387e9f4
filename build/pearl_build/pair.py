"""The steps of a pair once both models are built: the tokenizer check, the pair's engine.json, the profile.

Shared by every backend's builder (``torch_engine``, ``trtllm``).
"""
from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from pearl.tokenizers import load_tokenizer
from pearl.engine_files import ROLES, read_engine_json, write_engine_json
from pearl.llm import check_tokenizers, shared_vocab_size
from pearl_build.artifacts import build_key
from pearl_build.config import ConfigError, PairConfig

PROFILE_FORMAT = 9  # 2: a target step alone per batch size (what adaptive windows compare drafting with);
# 3: the draft's feed per token (what catching up costs) and the target's verifies alone; 4: the draft's step on
# target_alone_threads (an SD round's: the target waits, the draft has the pair's cores); 5: int4 models' wide
# forwards (a feed, a longer verify) on their bfloat16 copy (pearl.backends.linears), and the draft's feed on
# target_alone_threads (a catch-up in an SD round); 6: oneDNN's 1- and 2-row forwards padded to its faster
# 4-row kernel (a decode step, a short verify); 7: a draft step and the target's verifies timed with the
# other model computing beside them, as in a PEARL round; 8: a lone sequence's forward without transformers'
# framework (pearl.backends.direct_forward: the draft's step 1.2x faster on 2 threads); 9: the draft's fused
# forward (direct_forward.FusedForward: its step 1.15x faster again)


def log(message: str) -> None:
    tqdm.write(f"[make engines] {message}")


def finish_pair(pair: PairConfig, out: Path, keys: dict[str, str], profile: bool, reprofile: bool) -> None:
    """Check the tokenizers, write the pair's engine.json, and profile the pair unless that is current."""
    tokenizers = {role: load_tokenizer(str(out / role)) for role in ROLES}
    vocab = check_pair_vocabulary(tokenizers, out)
    if pair.draft_vocab_limit is not None and pair.draft_vocab_limit >= vocab:
        raise ConfigError(f"draft_vocab_limit {pair.draft_vocab_limit} keeps the whole vocabulary of {vocab} "
                          f"tokens: give fewer, or leave it out")
    key = build_key(keys, pair.threads_per_rank, pair.max_draft_len, pair.max_batch_size, pair.cpu_linear,
                    pair.attention, pair.draft_acceptance, pair.target_alone_threads, pair.draft_off_batch_size,
                    pair.draft_vocab_limit, PROFILE_FORMAT)
    previous = read_engine_json(out) or {}
    info = {"pair": pair.name, "backend": pair.backend, "models": {role: role for role in ROLES},
            "threads_per_rank": pair.threads_per_rank, "shared_vocab_size": vocab, "build_key": key,
            "config": pair.to_dict(), "profile": previous.get("profile") if previous.get("build_key") == key else None}
    if pair.eos_tokens:  # what generations end on, not what a forward costs: no new profile
        info["eos_token_ids"] = eos_token_ids(pair.eos_tokens, tokenizers["target"], vocab)
    if info != previous:
        write_engine_json(out, info)
    if not profile:
        log("profiling skipped: gamma=auto will measure the speed ratio when an LLM starts")
    elif info["profile"] is not None and not reprofile:
        log(f"profile is up to date (recommended gamma {info['profile']['recommended_gamma']})")
    else:
        from pearl_build.profile import profile_pair
        log("profiling the pair on this host (both ranks, one at a time)")
        info["profile"] = profile_pair(out, pair.max_draft_len, pair.max_batch_size, pair.draft_acceptance)
        write_engine_json(out, info)
        p = info["profile"]
        log(f"draft step {1000 * p['draft_step_s']:.1f} ms, target step {1000 * p['target_step_s']:.1f} ms "
            f"({1000 * p['target_alone_step_s']:.1f} ms alone), draft feed {1000 * p['draft_feed_s']:.1f} ms a "
            f"token ({1000 * p['draft_alone_feed_s']:.1f} ms alone), speed ratio {p['speed_ratio']:.2f}, "
            f"window at acceptance {p['draft_acceptance']}: {p['recommended_gamma']}")
        if len(p["by_batch_size"]) > 1:
            log("gamma by batch size: " + ", ".join(f"{size}: {row['recommended_gamma']}"
                                                    for size, row in p["by_batch_size"].items()))


def eos_token_ids(tokens: tuple[str, ...], tokenizer, vocab: int) -> list[int]:
    """The ids of the pair's ``eos_tokens`` in its target's ``tokenizer``; each must be one token of it, among
    the logits both models share."""
    ids = []
    for token in tokens:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or tokenizer.convert_ids_to_tokens(token_id) != token or token_id >= vocab:
            raise ConfigError(f"eos_tokens: {token!r} is not one token of the target's tokenizer (within its "
                              f"{vocab} shared ids); its own EOS is {tokenizer.eos_token!r}")
        ids.append(int(token_id))
    return ids


def check_pair_vocabulary(tokenizers: dict, out: Path) -> int:
    """Refuse a pair whose ``tokenizers`` (by role) disagree; the logits columns both share (padded vocabularies
    cut)."""
    check_tokenizers(tokenizers["draft"], tokenizers["target"])
    sizes = {role: read_engine_json(out / role)["vocab_size"] for role in ROLES}
    return shared_vocab_size(tokenizers["target"], sizes["draft"], sizes["target"])
