"""A draft's LM head cut to the first token ids (pearl.backends.vocab_limit): the kept columns are the whole
head's logits, end-of-sequence ids beyond the limit are kept, every other column is -inf, for float models and
int4 engines (whose stored head is cut before its kernel is made); a draft that proposes only part of the
vocabulary leaves greedy PEARL and SD token-identical to the target alone."""
import pytest
import torch

from pearl.backends.base import ModelSpec
from pearl.backends.linears import Int4Linear
from pearl.backends.torch_backend import TorchBackend
from pearl.backends.vocab_limit import LimitedHead
from pearl.params import SamplingParams
from pearl.sequence import Sequence
from tiny_models import make_tiny_model, quantized_engine, save_tiny_tokenizer

LIMIT = 32
EOS = 60  # beyond the limit, as Qwen's special tokens are
PROMPT = [3, 14, 15, 9, 2, 6, 5, 35, 50]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A tiny llama (64 tokens) whose end-of-sequence id lies beyond LIMIT, with a tokenizer (engines need one)."""
    folder = make_tiny_model(tmp_path_factory.mktemp("limited") / "llama", seed=11, init_std=0.3, eos_token_id=EOS)
    return save_tiny_tokenizer(folder, [f"w{i}" for i in range(63)])


def prompt_and_step_logits(spec: ModelSpec) -> tuple[TorchBackend, torch.Tensor]:
    """Logits over the prompt (a prefill's rows), then of one more token (a draft step's lone row)."""
    backend = TorchBackend.load(spec)
    seq = Sequence(0, PROMPT)
    rows = backend.forward([seq], [len(PROMPT)])[0]
    seq.tokens.append(7)
    return backend, torch.cat([rows, backend.forward([seq], [1])[0]])


def check_cut(cut: torch.Tensor, whole: torch.Tensor, kept: list[int], tolerance: float) -> None:
    others = [i for i in range(whole.shape[1]) if i not in kept]
    assert (cut[:, kept] - whole[:, kept]).abs().max() <= tolerance * whole.abs().max()
    assert torch.equal(cut[:, others], torch.full_like(cut[:, others], float("-inf")))


@pytest.mark.parametrize("exact_logits", [True, False])  # transformers' forward / the draft's fused one
def test_a_cut_head_keeps_the_first_ids_and_the_end_of_sequence_ones(model_path, exact_logits):
    backend, cut = prompt_and_step_logits(ModelSpec(str(model_path), vocab_limit=LIMIT, exact_logits=exact_logits))
    _, whole = prompt_and_step_logits(ModelSpec(str(model_path), exact_logits=exact_logits))
    check_cut(cut, whole, [*range(LIMIT), EOS], 1e-5)
    assert backend.vocab_size == 64 and backend.eos_token_ids == (EOS,)
    assert backend.model.lm_head.head.out_features == LIMIT  # the multiply covers the kept rows only


def test_an_int4_engine_has_its_stored_head_cut_before_its_kernel_is_made(model_path, tmp_path):
    quantized_engine(model_path, tmp_path, "int4")
    engine = str(tmp_path / "int4")
    backend, cut = prompt_and_step_logits(ModelSpec(engine, vocab_limit=LIMIT))
    _, whole = prompt_and_step_logits(ModelSpec(engine))
    check_cut(cut, whole, [*range(LIMIT), EOS], 0.02)  # the kernel multiplies in bfloat16
    head = backend.model.lm_head
    assert isinstance(head, LimitedHead) and isinstance(head.head, Int4Linear) and head.head.out_features == LIMIT


def test_a_limit_that_keeps_nothing_or_everything_is_refused(model_path):
    for limit in (0, 64):
        with pytest.raises(ValueError, match="vocab_limit must be"):
            TorchBackend.load(ModelSpec(str(model_path), vocab_limit=limit))


@pytest.mark.parametrize("mode", ["pearl", "sd"])
def test_a_draft_of_part_of_the_vocabulary_leaves_greedy_output_the_targets(llm_factory, model_path, mode):
    """The target drafts for itself: uncut, nearly all its tokens are accepted; cut, those at or beyond the
    limit cannot be proposed (about half of a random model's), and the output is still the target's."""
    whole = llm_factory(model_path, model_path)
    cut = llm_factory(model_path, model_path, draft_vocab_limit=LIMIT)
    params = SamplingParams(max_tokens=40, ignore_eos=True)
    reference = whole.generate(PROMPT, params, mode="ar").collect().token_ids
    beyond = sum(token >= LIMIT for token in reference)
    assert beyond > 5
    outs = {name: llm.generate(PROMPT, params, mode=mode, gamma=3).collect() for name, llm in
            (("whole", whole), ("cut", cut))}
    for out in outs.values():
        assert out.token_ids == reference
    assert outs["whole"].stats.acceptance_rate > 0.9
    assert outs["cut"].stats.accepted_draft_tokens < outs["cut"].stats.draft_tokens
    assert outs["cut"].stats.acceptance_rate < outs["whole"].stats.acceptance_rate
