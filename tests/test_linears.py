"""CPU linear kernels and quantized engines (pearl.backends.linears): each kernel computes what its weights
stand for, quantized engines load from their stored tensors, and their logits stay close to the float model's."""
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from pearl.backends.base import ModelSpec
from pearl.backends.linears import (ALIGNMENT, INT4_DENSE_ROWS, ONEDNN_MIN_ROWS, FbgemmFp16Linear, Int4Linear,
                                    Int8Linear, OnednnLinear, bf16_native, dequantize, fused_multiply, has_fbgemm,
                                    int4_dense_copy, linear_names, quantize_int4, quantize_int8, resolve_kernel)
from pearl.backends.loading import load_model
from pearl.tokenizers import load_tokenizer
from pearl.backends.torch_backend import TorchBackend
from pearl.engine_files import read_engine_json
from pearl.sequence import Sequence
from pearl_build.config import parse_pair
from pearl_build.sources import resolve as resolve_source
from pearl_build.torch_engine import build_torch_engine, choose_quantization
from tiny_models import quantized_engine, save_tiny_tokenizer

needs_fbgemm = pytest.mark.skipif(not has_fbgemm(), reason="this torch has no FBGEMM (not x86)")


@pytest.fixture(scope="module")
def weight() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(48, 128) * 0.05


def test_int8_keeps_each_weight_within_half_a_step_of_its_row(weight):
    parts = quantize_int8(weight)
    assert parts["qweight"].dtype == torch.int8 and parts["scales"].shape == (48,)
    error = (dequantize("int8", parts) - weight).abs()
    assert (error <= parts["scales"][:, None] / 2 + 1e-7).all()
    assert parts["qweight"].abs().amax(dim=1).eq(127).all()  # each row's largest weight uses the full range


@pytest.mark.parametrize("group_size", [32, 64])
def test_int4_keeps_each_weight_within_half_a_step_of_its_group(weight, group_size):
    parts = quantize_int4(weight, group_size)
    assert parts["qweight"].dtype == torch.uint8 and parts["qweight"].shape == (48, 64)
    assert parts["scales"].shape == parts["mins"].shape == (48, 128 // group_size)
    step = parts["scales"].repeat_interleave(group_size, dim=1)
    assert ((dequantize("int4", parts) - weight).abs() <= step / 2 + 1e-6).all()


def test_int4_refuses_shapes_its_kernel_cannot_take(weight):
    with pytest.raises(ValueError, match="group_size 256 does not divide"):
        quantize_int4(weight, 256)
    with pytest.raises(ValueError, match="multiple of 16 outputs"):
        quantize_int4(weight[:40], 32)
    with pytest.raises(ValueError, match="must be one of"):
        quantize_int4(weight, 48)


def kernels(weight: torch.Tensor):
    """(name, module, the float32 weight it stands for, its tolerance relative to the output's scale)."""
    bias = torch.linspace(-1, 1, weight.shape[0])
    int8, int4 = quantize_int8(weight), quantize_int4(weight, 32)
    yield "int8", Int8Linear(int8, bias), dequantize("int8", int8), 0.02
    yield "int4", Int4Linear(int4, bias), dequantize("int4", int4), 0.02
    if bf16_native():
        yield "int4 with its bfloat16 copy", Int4Linear(int4, bias, dense=True), dequantize("int4", int4), 0.02
    yield "onednn float32", OnednnLinear(weight, bias), weight, 1e-5
    if has_fbgemm():
        yield "fbgemm float16", FbgemmFp16Linear(weight, bias), weight.half().float(), 1e-3
    if bf16_native():
        yield "onednn bfloat16", OnednnLinear(weight.bfloat16(), bias), weight.bfloat16().float(), 0.02


def test_each_kernel_computes_its_weights_product(weight):
    torch.manual_seed(1)
    bias = torch.linspace(-1, 1, weight.shape[0])
    for name, module, stands_for, tolerance in kernels(weight):
        for shape in ((1, 128), (3, 5, 128)):  # a decode row, and a batch of windows
            x = torch.randn(*shape)
            expected = x @ stands_for.T + bias
            got = module(x.to(module.compute_dtype if name.startswith("onednn") else x.dtype)).float()
            assert got.shape == expected.shape, name
            scale = expected.abs().max()
            assert (got - expected).abs().max() <= tolerance * scale, name


def test_onednn_multiplies_a_few_rows_as_the_same_rows_of_a_wider_call(weight):
    """Fewer than ONEDNN_MIN_ROWS rows run padded, on the wider call's kernel: a row gets the same bits alone
    (a decode step) as among a short verify's rows."""
    torch.manual_seed(4)
    bias = torch.linspace(-1, 1, weight.shape[0])
    x = torch.randn(ONEDNN_MIN_ROWS, 128)
    for dtype in (torch.float32, torch.bfloat16) if bf16_native() else (torch.float32,):
        layer = OnednnLinear(weight.to(dtype), bias)
        wide = layer(x.to(dtype))
        for count in range(1, ONEDNN_MIN_ROWS):
            assert torch.equal(layer(x[:count].to(dtype)), wide[:count]), (dtype, count)


@pytest.mark.skipif(not bf16_native(), reason="the bfloat16 copy needs a CPU with native bfloat16")
def test_int4_multiplies_wide_inputs_on_its_bfloat16_copy_and_narrow_ones_in_4_bits(weight):
    torch.manual_seed(3)
    int4 = quantize_int4(weight, 32)
    bias = torch.linspace(-1, 1, weight.shape[0])
    layer, four_bit = Int4Linear(int4, bias, dense=True), Int4Linear(int4, bias)
    copy = OnednnLinear(dequantize("int4", int4).bfloat16(), bias)
    assert "dense_weight" not in layer.state_dict()  # rebuilt at load from the stored 4-bit tensors
    narrow, wide = torch.randn(INT4_DENSE_ROWS - 1, 128).bfloat16(), torch.randn(INT4_DENSE_ROWS, 128).bfloat16()
    assert torch.equal(layer(narrow), four_bit(narrow))
    assert torch.equal(layer(wide), copy(wide)) and not torch.equal(layer(wide), four_bit(wide))
    assert int4_dense_copy("auto") and int4_dense_copy("onednn") and not int4_dense_copy("default")


@pytest.mark.parametrize("method", ["int8", "int4", "int4 with its bfloat16 copy"])
def test_fused_linears_give_each_part_its_own_bits_in_one_call(method):
    """A layer's q, k and v (or gate and up) in one kernel call give each part's outputs exactly as the part
    computes them, and the parts, whose weights are now views of the fused ones, still do."""
    if method == "int4 with its bfloat16 copy" and not bf16_native():
        pytest.skip("the bfloat16 copy needs a CPU with native bfloat16")
    torch.manual_seed(5)
    weights = [torch.randn(rows, 128) * 0.05 for rows in (128, 64, 64)]  # int4: whole INT4_PACK_BLOCKs
    biases = [torch.linspace(-1, 1, 128), None, torch.linspace(0, 1, 64)]
    if method == "int8":
        parts = [Int8Linear(quantize_int8(w), b) for w, b in zip(weights, biases)]
    else:
        parts = [Int4Linear(quantize_int4(w, 32), b, dense=method != "int4") for w, b in zip(weights, biases)]
    for count in (1, 3, INT4_DENSE_ROWS + 2):  # decode rows; a window wide enough for the bfloat16 copy
        x = torch.randn(count, 128).bfloat16()
        before = torch.cat([part(x) for part in parts], dim=-1)
        fused = fused_multiply(parts, torch.bfloat16)
        assert torch.equal(fused(x), before), count
        assert torch.equal(torch.cat([part(x) for part in parts], dim=-1), before), count
    storages = {(part.qweight if method == "int8" else part.packed).untyped_storage().data_ptr() for part in parts}
    assert len(storages) == 1  # the parts hold views of the fused weights: stored once


def test_only_int4_and_int8_weights_of_whole_packed_blocks_are_fused():
    """Other kernels gain nothing from one call (their caller multiplies them one by one); int4 parts that end
    inside a packed block of the kernel's layout cannot be concatenated."""
    torch.manual_seed(6)
    assert fused_multiply([OnednnLinear(torch.randn(64, 128), None) for _ in range(2)], torch.float32) is None
    assert fused_multiply([Int4Linear(quantize_int4(torch.randn(rows, 128), 32), None) for rows in (32, 32)],
                          torch.bfloat16) is None
    mixed = [Int8Linear(quantize_int8(torch.randn(64, 128)), None),
             Int4Linear(quantize_int4(torch.randn(64, 128), 32), None)]
    assert fused_multiply(mixed, torch.bfloat16) is None


def test_an_int8_weight_read_from_a_file_where_it_lands_is_aligned_before_the_kernel_runs():
    """A weight read from safetensors starts wherever the file put it: torch 2.13's int8 kernel crashed on a
    weight 56 bytes off a 64-byte boundary at 32+ rows (avx512 CPUs), so the layer keeps an aligned copy."""
    torch.manual_seed(2)
    weight = torch.randn(576, 576)
    tensors = quantize_int8(weight)
    buffer = torch.empty(tensors["qweight"].numel() + 128, dtype=torch.int8)
    start = (ALIGNMENT - buffer.data_ptr() % ALIGNMENT) % ALIGNMENT + 56
    unaligned = buffer[start:start + tensors["qweight"].numel()].view_as(tensors["qweight"])
    unaligned.copy_(tensors["qweight"])
    assert unaligned.data_ptr() % ALIGNMENT == 56
    layer = Int8Linear({"qweight": unaligned, "scales": tensors["scales"]}, None)
    assert layer.qweight.data_ptr() % ALIGNMENT == 0 and torch.equal(layer.qweight, tensors["qweight"])
    x = torch.randn(52, 576)
    expected = x @ dequantize("int8", tensors).T
    assert (layer(x.bfloat16()).float() - expected).abs().max() <= 0.02 * expected.abs().max()


def test_auto_picks_a_kernel_this_host_runs():
    assert resolve_kernel("auto", "float32") == "onednn"
    assert resolve_kernel("auto", "bfloat16") == ("onednn" if bf16_native() else "fbgemm" if has_fbgemm() else "default")
    assert resolve_kernel("auto", "float16") == "default"
    assert resolve_kernel("auto", "int8") == resolve_kernel("onednn", "int4") == "default"  # weight-only kernels


def test_a_kernel_the_host_cannot_run_is_refused_with_what_to_use():
    if bf16_native():
        assert resolve_kernel("onednn", "bfloat16") == "onednn"
    else:
        with pytest.raises(ValueError, match="native bfloat16 support.*use cpu_linear auto or fbgemm"):
            resolve_kernel("onednn", "bfloat16")
    with pytest.raises(ValueError, match="cpu_linear must be one of"):
        resolve_kernel("mkl", "float32")


@pytest.fixture(scope="module")
def source(tiny, tmp_path_factory):
    """The tiny qwen target with a tokenizer (an engine needs one)."""
    folder = tmp_path_factory.mktemp("source") / "qwen"
    shutil.copytree(tiny["qwen_target"], folder)
    return save_tiny_tokenizer(folder, [f"w{i}" for i in range(63)])


def logits_of(spec: ModelSpec, prompts: list[list[int]]) -> list[torch.Tensor]:
    """Each prompt's logits at every position after the first, through the runtime's backend."""
    backend = TorchBackend.load(spec)
    rows = []
    for i, prompt in enumerate(prompts):
        seq = Sequence(i, prompt[:1])
        backend.forward([seq], [1])
        seq.tokens += prompt[1:]
        rows.append(backend.forward([seq], [len(prompt) - 1])[0])
    return rows


def dequantized_model(engine: Path, float_source: Path) -> ModelSpec:
    """A float32 HF folder whose linears hold what the engine's stored int8 / int4 tensors stand for."""
    model = AutoModelForCausalLM.from_pretrained(float_source)
    stored = load_file(engine / "model.safetensors")
    method = read_engine_json(engine)["quantization"]["method"]
    for name in linear_names(model):
        parts = {key.rpartition(".")[2]: value for key, value in stored.items() if key.rpartition(".")[0] == name}
        model.get_submodule(name).weight.data = dequantize(method, parts)
    model.save_pretrained(engine.parent / f"{engine.name}-dequantized")
    return ModelSpec(str(engine.parent / f"{engine.name}-dequantized"))


@pytest.mark.parametrize("quantization", ["int8", "int4"])
def test_a_quantized_engine_computes_what_its_stored_weights_stand_for(source, tmp_path, quantization):
    info = quantized_engine(source, tmp_path, quantization)
    folder = tmp_path / quantization
    assert info["quantization"]["method"] == quantization and read_engine_json(folder)["quantization"] == \
        info["quantization"]
    model = load_model(ModelSpec(str(folder)))
    quantized = [m for m in model.modules() if isinstance(m, (Int8Linear, Int4Linear))]
    assert len(quantized) == 2 * 7 + 1 and not any(type(m) is torch.nn.Linear for m in model.modules())
    assert not any(p.is_meta for p in model.parameters())
    prompts = [[3, 14, 15, 9, 2, 6, 5, 35], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]
    reference = logits_of(dequantized_model(folder, source), prompts)
    for got, expected in zip(logits_of(ModelSpec(str(folder)), prompts), reference):
        # the kernels multiply in bfloat16: rounding, nothing else
        assert (got - expected).abs().max() <= 0.05 * expected.abs().max()
    if quantization == "int8":  # 255 levels a row: the float model's logits within a few percent
        for got, expected in zip(logits_of(ModelSpec(str(folder)), prompts), logits_of(ModelSpec(str(source)), prompts)):
            assert (got - expected).abs().max() <= 0.05 * expected.abs().max()


def test_quantized_engines_are_smaller_and_refuse_gpus(source, tmp_path):
    quantized_engine(source, tmp_path, "int4")
    plain = sum(p.numel() * 4 for p in load_model(ModelSpec(str(source))).parameters())
    assert (tmp_path / "int4" / "model.safetensors").stat().st_size < plain
    with pytest.raises(ValueError, match="quantized engines run on the CPU"):
        load_model(ModelSpec(str(tmp_path / "int4"), device="cuda:0"))
    with pytest.raises(ValueError, match="quantized torch engines run on the CPU"):
        parse_pair({"draft": {"source": {"path": "d"}},
                    "target": {"source": {"path": "t"}, "devices": [0], "quantization": "int8"}}, "gpu")


TEXT = ("def quicksort(arr):\n    if len(arr) <= 1:\n        return arr\n    pivot = arr[len(arr) // 2]\n"
        "The three primary colors are red, yellow and blue. Mixing them gives every other color.")


@pytest.mark.parametrize("quantization, agreement", [("int8", 0.9), ("int4", 0.7)])
def test_quantized_smollm2_keeps_the_float_models_choices(smollm2, tmp_path, quantization, agreement):
    """Real weights: the next-token choice of a quantized SmolLM2-135M is the float model's at most positions
    of a real text (int4 in groups of 64, its hidden size 576 being 9 of them)."""
    pair = parse_pair({"max_seq_len": 256, "draft": {"source": {"path": str(smollm2)}},
                       "target": {"source": {"path": str(smollm2)}, "quantization": quantization, "group_size": 64}},
                      default_name="smollm2-quantized")
    build_torch_engine(pair, pair.target, resolve_source(pair.target.source, tmp_path), tmp_path / "engine", "key")
    ids = load_tokenizer(str(smollm2))(TEXT).input_ids
    expected, got = (logits_of(ModelSpec(str(folder)), [ids])[0] for folder in (smollm2, tmp_path / "engine"))
    same = (expected.argmax(-1) == got.argmax(-1)).float().mean().item()
    assert same >= agreement, same  # measured: int8 0.94, int4 0.79 (its GGUF source is 4-bit already)


def test_auto_quantization_keeps_the_format_that_decodes_faster_here(source, tmp_path):
    info = quantized_engine(source, tmp_path, "auto")
    seconds = info["quantization"]["auto_step_s"]
    assert set(seconds) == {"none", "int8", "int4"} and all(s > 0 for s in seconds.values())
    method = info["quantization"]["method"]
    assert method == choose_quantization(seconds)
    assert info["quantization"].get("group_size") == (32 if method == "int4" else None)
    model = load_model(ModelSpec(str(tmp_path / "auto")))
    kinds = {type(m) for m in model.modules()}
    assert (Int8Linear in kinds, Int4Linear in kinds) == (method == "int8", method == "int4")


@pytest.mark.parametrize("seconds, kept", [
    ({"none": 0.080, "int8": 0.072, "int4": 0.042}, "int4"),  # the default draft on an avx512 CPU
    ({"none": 0.090, "int8": 0.083, "int4": 0.090}, "int8"),  # on an AVX2 one: int4 no faster
    ({"none": 0.070, "int8": 0.083, "int4": 0.065}, "none"),  # int4 faster, but within the noise
    ({"none": 0.069, "int8": 0.083, "int4": 0.059}, "int4"),  # 1.17x faster than the best of the others
])
def test_auto_keeps_int4_only_where_it_is_clearly_faster(seconds, kept):
    assert choose_quantization(seconds) == kept
