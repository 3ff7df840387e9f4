"""The llama.cpp backend (a GGUF model run by llama.cpp) on SmolLM2's real GGUF: its cache bookkeeping, a pair
whose draft is built as a llama_cpp engine, and PEARL with it as the draft of the torch target staying
token-identical to the target alone; and a pair whose target runs in llama.cpp, whose speculative output is
that llama.cpp target's own.

Needs llama-cpp-python: `make test` installs it first (`make setup-llama-cpp`, which compiles llama.cpp once);
a bare pytest without it skips this module."""
from __future__ import annotations

import pytest
import torch

from conftest import CACHE_DIR, SMOLLM2_DRAFT_LAYERS, SMOLLM2_PAIR
from pearl.backends import check_model_path, load_backend
from pearl.backends.base import ModelSpec
from pearl.engine_files import GGUF_FILE, load_pair, read_engine_json
from pearl.llm import LLM
from pearl.params import SamplingParams
from pearl.sequence import Sequence
from pearl.tokenizers import ModelPathError, load_tokenizer
from pearl_build.config import load_pair_config, parse_pair
from pearl_build.pipeline import build_pair

pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def draft(smollm2_gguf):
    return load_backend(ModelSpec(str(smollm2_gguf), backend="llama_cpp"))


def build_smollm2_pair(name: str, folder, draft: dict, target: dict):
    """A pair of SmolLM2's GGUF source (``draft`` and ``target``: each model's other keys), built by
    `make engines`' code."""
    source = load_pair_config(SMOLLM2_PAIR).target.source.to_dict()
    source = {source.pop("kind"): source.pop("location"), **source}
    pair = parse_pair({"backend": "torch", "max_seq_len": 512, "max_draft_len": 6, "max_batch_size": 2,
                       "draft": {"source": source, **draft}, "target": {"source": source, **target}},
                      default_name=name)
    return build_pair(pair, folder, CACHE_DIR, profile=False)


@pytest.fixture(scope="module")
def llamacpp_pair(smollm2_engines, tmp_path_factory):
    """SmolLM2's GGUF drafting in llama.cpp for its own float32 torch engine."""
    return build_smollm2_pair("smollm2-llamacpp", tmp_path_factory.mktemp("engines"), {"backend": "llama_cpp"}, {})


@pytest.fixture(scope="module")
def llamacpp_target_pair(smollm2_engines, tmp_path_factory):
    """SmolLM2's GGUF as the target in llama.cpp, drafted for by its first layers as a torch engine (a draft
    that is often wrong, so rejections happen)."""
    return build_smollm2_pair("smollm2-llamacpp-target", tmp_path_factory.mktemp("engines"),
                              {"num_layers": SMOLLM2_DRAFT_LAYERS}, {"backend": "llama_cpp"})


def test_a_path_that_is_no_gguf_is_refused(smollm2):
    with pytest.raises(ModelPathError, match="neither a .gguf file nor a llama_cpp engine folder"):
        check_model_path(ModelSpec(str(smollm2), backend="llama_cpp"))


def test_the_draft_engine_is_the_gguf_as_it_is(llamacpp_pair, smollm2_gguf):
    info = read_engine_json(llamacpp_pair / "draft")
    assert info["backend"] == "llama_cpp" and info["max_seq_len"] == 512
    assert (llamacpp_pair / "draft" / GGUF_FILE).read_bytes() == smollm2_gguf.read_bytes()
    config, costs = load_pair(llamacpp_pair, check_hashes=True)
    assert config.draft.backend == "llama_cpp" and config.target.backend == "torch" and costs is None
    backend = load_backend(config.draft)
    assert backend.max_seq_len == 512 and backend.vocab_size == info["vocab_size"]


def test_steps_rollback_and_release_keep_the_cache_in_step(draft):
    prompt = list(range(100, 120))
    whole = Sequence(1, prompt + [7, 8, 9])
    rows = draft.forward([whole], [3])[0]
    assert rows.shape == (3, draft.vocab_size) and rows.dtype == torch.float32
    assert whole.num_cached == draft.cache_length(whole) == 23

    stepped = Sequence(2, prompt)
    draft.forward([stepped], [1])
    for token in (7, 8, 9):
        stepped.tokens.append(token)
        last = draft.forward([stepped], [1])[0]
    # llama.cpp's kernels depend on how many rows a call has: close, not bit-equal
    assert torch.equal(last.argmax(-1), rows[-1:].argmax(-1))
    assert (last - rows[-1:]).abs().max() < 1.0

    draft.truncate(whole, 20)  # a rejected window
    assert whole.num_cached == draft.cache_length(whole) == 20
    whole.tokens[20:] = [7, 8, 9]
    again = draft.forward([whole], [3])[0]
    assert torch.equal(again.argmax(-1), rows.argmax(-1)) and (again - rows).abs().max() < 1.0

    together = draft.forward([Sequence(3, prompt + [7, 8, 9]), Sequence(4, [5, 6])], [3, 1])
    assert [t.shape[0] for t in together] == [3, 1] and torch.equal(together[0].argmax(-1), rows.argmax(-1))
    for request_id in range(1, 5):
        draft.release(Sequence(request_id, [1]))
    for request_id in range(10, 50):  # slots come back: many more sequences than slots, one after another
        seq = Sequence(request_id, [1, 2, 3])
        draft.forward([seq], [1])
        draft.release(seq)


@pytest.mark.parametrize("world", ["local", pytest.param("mpi", marks=pytest.mark.mpi)])
def test_pearl_with_a_llamacpp_draft_is_the_target_alone(llamacpp_pair, world):
    """Greedy PEARL (fixed and adaptive windows) with the GGUF draft gives the torch target's own tokens."""
    config, _ = load_pair(llamacpp_pair)
    tokenizer = load_tokenizer(config.target.path)
    with LLM(config, local=world == "local") as llm:
        for text in ("def fibonacci(n):", "The capital of France is"):
            ids = tokenizer(text)["input_ids"]
            params = SamplingParams(max_tokens=32, ignore_eos=True)
            alone = [t for chunk in llm.generate(ids, params, mode="ar") for t in chunk]
            for gamma in (4, "auto"):
                stream = llm.generate(ids, params, mode="pearl", gamma=gamma)
                assert [t for chunk in stream for t in chunk] == alone, (text, gamma)
                if gamma == 4:  # the draft did propose, and some of it was right (a real draft, not noise)
                    assert stream.stats.accepted_draft_tokens > 0


@pytest.mark.parametrize("world", ["local", pytest.param("mpi", marks=pytest.mark.mpi)])
def test_speculation_for_a_llamacpp_target_is_that_target_alone(llamacpp_target_pair, world):
    """A llama_cpp target stops at llama.cpp's end-of-generation tokens, and greedy SD and PEARL (fixed and
    adaptive windows) give its own tokens while the torch draft's are often rejected."""
    config, _ = load_pair(llamacpp_target_pair, check_hashes=True)
    assert config.target.backend == "llama_cpp" and config.draft.backend == "torch"
    tokenizer = load_tokenizer(config.target.path)
    with LLM(config, local=world == "local") as llm:
        assert tokenizer.convert_tokens_to_ids("<|im_end|>") in llm.eos_token_ids
        for text in ("def fibonacci(n):", "The capital of France is"):
            ids = tokenizer(text)["input_ids"]
            params = SamplingParams(max_tokens=32, ignore_eos=True)
            alone = [t for chunk in llm.generate(ids, params, mode="ar") for t in chunk]
            for mode, gamma in (("sd", 3), ("pearl", 4), ("pearl", "auto")):
                stream = llm.generate(ids, params, mode=mode, gamma=gamma)
                assert [t for chunk in stream for t in chunk] == alone, (text, mode, gamma)
                if gamma != "auto":
                    assert 0 < stream.stats.accepted_draft_tokens < stream.stats.draft_tokens
