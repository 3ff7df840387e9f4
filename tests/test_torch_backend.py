"""The torch backend: window forwards match one-token forwards, rollback leaves exactly the kept tokens."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from pearl.backends.base import ModelSpec
from pearl.backends.linears import FbgemmFp16Linear, OnednnLinear, bf16_native, has_fbgemm
from pearl.backends.loading import load_model
from pearl.tokenizers import ModelPathError, resolve
from pearl.backends.torch_backend import TorchBackend
from pearl.sampling import Verdict
from pearl.sequence import Sequence


@pytest.fixture(scope="module")
def backend(tiny):
    return TorchBackend.load(ModelSpec(str(tiny["target"])))


def test_window_rows_match_token_by_token(backend):
    tokens = [3, 14, 15, 9, 2, 6, 5]
    one = Sequence(1, tokens[:3])
    rows = [backend.forward([one], [1])[0][0]]
    for t in tokens[3:]:
        one.tokens.append(t)
        rows.append(backend.forward([one], [1])[0][0])
    window = Sequence(2, tokens[:3])
    backend.forward([window], [1])
    window.tokens += tokens[3:]
    out = backend.forward([window], [len(tokens) - 3])[0]
    assert torch.allclose(out, torch.stack(rows[1:]), atol=1e-5)
    assert window.num_cached == len(tokens) == backend.cache_length(window)


def test_rollback_leaves_exactly_the_accepted_tokens(backend):
    seq = Sequence(3, [1, 2, 3, 4])
    backend.forward([seq], [1])
    seq.tokens += [5, 6, 7]  # three draft tokens; the target rejects the second
    backend.forward([seq], [3])
    keep = seq.apply_verdict(Verdict(1, 9))
    backend.truncate(seq, keep)
    assert backend.cache_length(seq) == seq.num_cached == 5  # prompt + the one accepted token
    after = backend.forward([seq], [1])[0]  # feeds only the correction
    fresh = Sequence(4, seq.tokens)
    assert torch.allclose(after, backend.forward([fresh], [1])[0], atol=1e-5)


def test_greedy_decoding_matches_transformers_generate(tiny, backend):
    prompt = [5, 9, 11]
    seq = Sequence(5, prompt)
    for _ in range(12):
        seq.tokens.append(int(backend.forward([seq], [1])[0][0].argmax()))
    model = AutoModelForCausalLM.from_pretrained(tiny["target"])
    expected = model.generate(torch.tensor([prompt]), max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert seq.tokens == expected[0].tolist()


def test_layer_truncated_draft(tiny):
    model = load_model(ModelSpec(str(tiny["target"]), num_layers=1))
    assert len(model.model.layers) == 1
    with pytest.raises(ValueError, match="only 2 layers"):
        load_model(ModelSpec(str(tiny["target"]), num_layers=5))


def test_unloadable_paths_are_refused(tmp_path):
    with pytest.raises(ModelPathError, match="does not exist"):
        resolve(str(tmp_path / "missing"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelPathError, match="not a .gguf"):
        resolve(str(tmp_path / "weights.bin"))
    with pytest.raises(ModelPathError, match="no config.json"):
        resolve(str(tmp_path))


@pytest.mark.parametrize("model", ["target", "qwen_target"])
def test_a_ragged_batch_matches_each_sequence_alone(tiny, model):
    """Sequences with different cached lengths, new tokens and rollbacks in one forward give the logits each
    gives alone (the lossless base of continuous batching), and keep their own cache lengths."""
    batched, alone = (TorchBackend.load(ModelSpec(str(tiny[model]))) for _ in range(2))
    prompts = [[3, 14, 15, 9, 2], [6, 5], [1, 2, 3, 4, 5, 6, 7, 8, 9], [11]]
    seqs = {backend: [Sequence(i, p) for i, p in enumerate(prompts)] for backend in (batched, alone)}

    def extend(new_tokens: list[list[int]]) -> None:
        for backend_seqs in seqs.values():
            for seq, tokens in zip(backend_seqs, new_tokens):
                seq.tokens += tokens

    def check(num_logits: list[int]) -> None:
        together = batched.forward(seqs[batched], num_logits)
        for seq, n, rows in zip(seqs[alone], num_logits, together):
            expected = alone.forward([seq], [n])[0]
            assert rows.shape == expected.shape and torch.allclose(rows, expected, atol=1e-4)
            assert torch.equal(rows.argmax(-1), expected.argmax(-1))

    check([1, 1, 2, 1])  # prefills of different lengths
    for step in range(4):  # windows of 1-3 tokens, as PEARL's verifications send them
        extend([[7 + step] * (1 + i % 3) for i in range(4)])
        check([1 + i % 3 for i in range(4)])
    for backend, backend_seqs in seqs.items():  # sequence 2's last two tokens are rejected, a correction follows
        rejected = backend_seqs[2]
        backend.truncate(rejected, len(rejected.tokens) - 2)
        rejected.tokens = rejected.tokens[:-2] + [5]
    extend([[3], [3], [], [3]])
    check([1, 1, 1, 1])
    assert [batched.cache_length(s) for s in seqs[batched]] == [len(s.tokens) for s in seqs[batched]]


def test_a_long_prefill_does_not_pad_the_decodes_of_its_batch(tiny):
    backend = TorchBackend.load(ModelSpec(str(tiny["target"])))
    assert backend._groups([200, 1, 3, 1]) == [[0], [2, 1, 3]]  # the prompt alone, the windows together
    assert backend._groups([5, 1, 1, 1, 2]) == [[0, 4, 1, 2, 3]]  # windows of a few tokens share a forward
    assert backend._groups([120, 110, 1]) == [[0, 1], [2]]  # prefills of similar length share one
    assert backend._groups([120, 100, 1]) == [[0], [1], [2]]  # but 20 pad tokens cost more than a forward


ONEDNN, FBGEMM = {"cpu_linear": "onednn"}, {"cpu_linear": "fbgemm"}
GROUPED, EAGER = {"attention": "grouped"}, {"attention": "eager"}
KERNEL_CLASSES = {"onednn": OnednnLinear, "fbgemm": FbgemmFp16Linear}
needs_bf16 = pytest.mark.skipif(not bf16_native(), reason="oneDNN's packed bfloat16 needs native bfloat16 support")
needs_fbgemm = pytest.mark.skipif(not has_fbgemm(), reason="this torch has no FBGEMM (not x86)")


@pytest.mark.parametrize("model, dtype, tolerance, setting, reference", [
    ("target", "float32", 1e-4, ONEDNN, {}), ("qwen_target", "float32", 1e-4, ONEDNN, {}),
    # bfloat16: its rounding of a sum depends on the kernel's order
    pytest.param("qwen_target", "bfloat16", 0.03, ONEDNN, {}, marks=needs_bf16),
    # float16 weights multiplied in float32: the float32 model's logits within float16's rounding
    pytest.param("target", "float32", 0.01, FBGEMM, {}, marks=needs_fbgemm),
    pytest.param("qwen_target", "bfloat16", 0.03, FBGEMM, {}, marks=needs_fbgemm),
    ("target", "float32", 1e-4, GROUPED, {}), ("qwen_target", "float32", 1e-4, GROUPED, {}),
    # In bfloat16 (the CPU pair's dtype) sdpa rounds its softmax differently from eager (logits apart by ~0.1
    # here); the grouped attention keeps eager's float32 softmax and its rounding to bfloat16.
    ("qwen_target", "bfloat16", 0.01, GROUPED, EAGER)])
def test_cpu_settings_give_the_reference_logits(tiny, model, dtype, tolerance, setting, reference):
    """cpu_linear onednn and fbgemm (every decoder linear and the LM head swapped) and the grouped attention
    change nothing but rounding against the default settings (or ``reference``), in a ragged batch with windows
    or alone."""
    expected_backend, tuned = (TorchBackend.load(ModelSpec(str(tiny[model]), dtype=dtype, **kwargs))
                               for kwargs in (reference, setting))
    if "cpu_linear" in setting:
        swapped = [m for m in tuned.model.modules() if isinstance(m, KERNEL_CLASSES[setting["cpu_linear"]])]
        assert swapped and not any(type(m) is torch.nn.Linear for m in tuned.model.modules())
    else:
        assert tuned.model.config._attn_implementation == setting["attention"]
    prompts = [[3, 14, 15, 9, 2], [6, 5], [1, 2, 3, 4, 5, 6, 7, 8, 9]]
    for backend in (expected_backend, tuned):
        backend.seqs = [Sequence(i, p) for i, p in enumerate(prompts)]
    for num_logits in ([1, 2, 3], [1, 1, 1], [2, 2, 2], [1, 1, 1]):
        expected, got = (b.forward(b.seqs, num_logits) for b in (expected_backend, tuned))
        for e, g in zip(expected, got):
            assert torch.allclose(e, g, atol=tolerance, rtol=tolerance) and torch.equal(e.argmax(-1), g.argmax(-1))
        for backend in (expected_backend, tuned):
            for i, seq in enumerate(backend.seqs):
                seq.tokens += [7 + i] * (2 if num_logits == [1, 1, 1] else 1)
    expected, got = (b.forward(b.seqs[1:2], [1]) for b in (expected_backend, tuned))  # one sequence alone
    assert torch.allclose(expected[0], got[0], atol=tolerance, rtol=tolerance)


def test_a_steady_batch_keeps_its_cache_and_gives_each_sequence_its_rows_back(tiny):
    """Rounds over the same sequences reuse the batch's cache (no copy in and out); a rollback leaves holes
    the mask hides; a sequence that goes on alone takes exactly its rows back; logits stay each one's own."""
    batched, alone = (TorchBackend.load(ModelSpec(str(tiny["target"]))) for _ in range(2))
    prompts = [[3, 14, 15, 9, 2], [6, 5], [1, 2, 3, 4, 5, 6, 7, 8, 9]]
    seqs = {backend: [Sequence(i, p) for i, p in enumerate(prompts)] for backend in (batched, alone)}

    def forward(indices: list[int], num_logits: list[int]) -> None:
        together = batched.forward([seqs[batched][i] for i in indices], num_logits)
        for i, n, rows in zip(indices, num_logits, together):
            expected = alone.forward([seqs[alone][i]], [n])[0]
            assert torch.allclose(rows, expected, atol=1e-4) and torch.equal(rows.argmax(-1), expected.argmax(-1))

    forward([0, 1, 2], [1, 1, 1])
    kept = batched._batch.cache
    for step in range(3):
        for backend_seqs in seqs.values():
            for i, seq in enumerate(backend_seqs):
                seq.tokens += [20 + step] * (1 + i)
        forward([0, 1, 2], [1, 2, 3])
        assert batched._batch.cache is kept and sorted(batched._batch.request_ids) == [0, 1, 2]
    for backend, backend_seqs in seqs.items():  # sequence 2 loses its last 2 tokens: holes in its row
        backend.truncate(backend_seqs[2], len(backend_seqs[2].tokens) - 2)
        del backend_seqs[2].tokens[-2:]
        backend_seqs[2].tokens.append(4)
        backend_seqs[0].tokens.append(4)
    assert batched.cache_length(seqs[batched][2]) == len(seqs[batched][2].tokens) - 1
    forward([2], [1])  # alone: the batch gives every sequence its own cache back
    assert batched._batch is None
    assert [batched.cache_length(s) for s in seqs[batched]] == [len(s.tokens) - (i == 0) for i, s in
                                                                 enumerate(seqs[batched])]
    for backend_seqs in seqs.values():
        backend_seqs[1].tokens.append(4)
    forward([0, 1], [1, 1])
    batched.release(seqs[batched][1])
    assert batched._batch is None and batched.cache_length(seqs[batched][0]) == len(seqs[batched][0].tokens)


# a prefill, a window (wide enough for int4's bfloat16 copy), a rollback then the correction and one more, and
# single steps: (tokens appended, logits rows, length truncated to first)
SEQUENCE_SCRIPT = (([], 1, None), ([5, 8, 1, 4, 9, 10], 6, None), ([11, 10], 2, 8), ([12], 1, None),
                   ([13], 1, None), ([2], 1, None))


def scripted_logits(tested: TorchBackend, reference: TorchBackend):
    """Both backends through ``SEQUENCE_SCRIPT`` on the same sequence: (tested's logits, reference's, tested's
    sequence) at each step."""
    seqs = {backend: Sequence(1, [3, 14, 15, 9, 2, 6]) for backend in (tested, reference)}
    for extend, num_logits, truncate_to in SEQUENCE_SCRIPT:
        for backend, seq in seqs.items():
            if truncate_to is not None:
                backend.truncate(seq, truncate_to)
                del seq.tokens[truncate_to:]
            seq.tokens += extend
        got, expected = (backend.forward([seqs[backend]], [num_logits])[0] for backend in (tested, reference))
        yield got, expected, seqs[tested]


@pytest.mark.parametrize("model, dtype, setting", [
    ("target", "float32", {}), ("qwen_target", "float32", {}), ("qwen_target", "bfloat16", {}),
    pytest.param("qwen_target", "bfloat16", ONEDNN, marks=needs_bf16), ("target", "bfloat16", {"cpu_linear": "auto"})])
def test_the_direct_forward_of_a_lone_sequence_gives_transformers_logits_bit_for_bit(tiny, model, dtype, setting):
    """A lone sequence's forward skips transformers' framework (``DirectForward``) yet computes the very same
    logits through a prefill, a window, a rollback and single steps, in both architectures, dtypes and kernels.
    The reference is transformers' forward of the same model, with the same (grouped) attention."""
    direct, reference = (TorchBackend.load(ModelSpec(str(tiny[model]), dtype=dtype, **GROUPED, **setting))
                         for _ in range(2))
    reference._direct = None  # transformers' forward
    for got, expected, seq in scripted_logits(direct, reference):
        assert torch.equal(got, expected)
    assert direct._direct is not None and direct.cache_length(seq) == len(seq.tokens)


def test_the_direct_forward_is_only_taken_where_it_reproduces_the_model(tiny):
    from pearl.backends.direct_forward import DirectForward

    grouped = load_model(ModelSpec(str(tiny["qwen_target"]), **GROUPED))
    assert DirectForward.for_model(grouped, "grouped", 64) is not None
    assert DirectForward.for_model(grouped, "sdpa", 64) is None  # sdpa's kernel rounds otherwise
    grouped.config.rope_scaling = {"rope_type": "linear", "factor": 2.0}
    grouped.model.rotary_emb.rope_type = "linear"
    assert DirectForward.for_model(grouped, "grouped", 64) is None


@pytest.mark.parametrize("model, dtype, method, tolerance", [
    ("target", "float32", "none", 1e-4), ("qwen_target", "float32", "none", 1e-4),
    ("qwen_target", "bfloat16", "none", 0.05), ("qwen_target", "bfloat16", "int4", 0.05)])
def test_a_drafts_fused_forward_computes_transformers_logits_up_to_rounding(tiny, model, dtype, method, tolerance):
    """A draft's lone sequence runs ``FusedForward`` (``exact_logits`` False): fused linears, torch's RMSNorm and
    attention kernels. Through a prefill, a window, a rollback and single steps its logits stay within rounding
    of transformers' forward of the same model, and it picks the same tokens."""
    from pearl.backends.direct_forward import FusedForward
    from pearl.backends.linears import quantize_in_place

    loaded = load_model(ModelSpec(str(tiny[model]), dtype=dtype, **GROUPED))
    if method != "none":
        quantize_in_place(loaded, method, group_size=32)
    fused, reference = TorchBackend(loaded, "grouped", exact_logits=False), TorchBackend(loaded, "grouped")
    reference._direct = None  # transformers' forward
    for got, expected, seq in scripted_logits(fused, reference):
        assert (got - expected).abs().max() <= tolerance * expected.abs().max()
        assert torch.equal(got.argmax(-1), expected.argmax(-1))
    assert isinstance(fused._direct, FusedForward) and fused.cache_length(seq) == len(seq.tokens)


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_the_direct_forward_of_a_quantized_model_gives_its_logits_bit_for_bit(tiny, method):
    """Quantized linears (the default pair's int4 draft) run their kernels on the same rows through the
    direct forward as through transformers' forward."""
    from pearl.backends.linears import quantize_in_place

    model = load_model(ModelSpec(str(tiny["qwen_target"]), dtype="bfloat16", **GROUPED))
    quantize_in_place(model, method, group_size=32)
    direct, reference = TorchBackend(model, "grouped"), TorchBackend(model, "grouped")
    reference._direct = None
    for got, expected, _ in scripted_logits(direct, reference):
        assert torch.equal(got, expected)
    assert direct._direct is not None
