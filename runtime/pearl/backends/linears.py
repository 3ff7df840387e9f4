"""CPU linear kernels of the torch backend, and the weight formats of quantized engines.

What a model engine stores (``quantization``, per model, applied once by ``make engines``):
  none   the weights in the engine dtype (``save_pretrained``)
  int8   per output channel, symmetric: ``qweight`` int8 [out, in], ``scales`` float32 [out]
  int4   group-wise, asymmetric: ``qweight`` uint8 [out, in / 2] (two 4-bit values a byte, the even input
         first, in the low nibble), ``scales`` and ``mins`` float32 [out, in / group_size];
         a weight is ``q * scale + min`` with q in 0..15
Every linear of the decoder layers and the LM head is quantized; embeddings and norms keep the engine dtype.

Which kernels run the linears (``cpu_linear``, chosen when a rank loads its model, CPU only):
  default  torch's own: ``nn.Linear``; int8 and int4 weights through the weight-only kernels
           ``aten._weight_int8pack_mm`` / ``aten._weight_int4pack_mm_for_cpu``
  onednn   float32 / bfloat16 weights packed for oneDNN's GEMM (bfloat16 needs a CPU with native bfloat16
           support: avx512bw+vl+dq or avx_ne_convert); int8 as ``default``; int4 as ``default`` up to
           ``INT4_DENSE_ROWS - 1`` rows, and from ``INT4_DENSE_ROWS`` rows (a prefill, a draft catching up, a
           verify of a longer window) on a bfloat16 copy of the same values in oneDNN, which a CPU with
           native bfloat16 gets: the int4 kernel's time grows with its rows (on an avx512_bf16 CPU a prefill
           of 110 tokens took the int4 draft 1.0 s and its copy 0.44 s), while at 1-4 rows reading a quarter
           of the bytes wins. The copy costs the model's size in bfloat16 again in memory; ``default`` has none
  fbgemm   FBGEMM's x86 linear for float32 / bfloat16 weights: stored as float16, multiplied in float32
           (bfloat16 values keep their 8-bit mantissa; only magnitudes below float16's range, ~6e-5, lose
           bits); int8 and int4 as ``default``. (FBGEMM's int8 linear also quantizes each input to 8 bits on
           the fly: faster, but it cut the default draft's agreement with the target from ~0.8 to ~0.5 on
           chat prompts, so int8 weights always run weight-only.)
  auto     float32 weights: ``onednn``; bfloat16: ``onednn`` on a CPU with native bfloat16, otherwise
           ``fbgemm`` where torch has it, else ``default``; float16, int8 and int4: ``default`` (int4 with
           ``onednn``'s bfloat16 copy where the CPU has native bfloat16)
A kernel's activations stay in the model's dtype between layers; each kernel converts a layer's input to
what it multiplies in and its output back.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch

QUANTIZATIONS = ("none", "int8", "int4")
CPU_LINEARS = ("default", "onednn", "fbgemm", "auto")
INT4_GROUP_SIZES = (32, 64, 128, 256)  # what _weight_int4pack_mm_for_cpu takes
# From this many rows an int4 linear multiplies on its bfloat16 copy, where it has one: the int4 kernel took the
# default draft (avx512_bf16 CPU, 1 and 2 threads) 93 / 69 ms for 5 rows against 77 / 57 on the copy, and 64 /
# 40 ms for 4 rows against 78 / 60 (its cost jumps past 4 rows)
INT4_DENSE_ROWS = 5
INT4_PACK_BLOCK = 64  # outputs _convert_weight_to_int4pack_for_cpu lays out together


# -- the portable formats ------------------------------------------------------------------------------

def quantize_int8(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per output channel, symmetric: the largest magnitude of a row maps to 127."""
    weight = weight.detach().float()
    scales = (weight.abs().amax(dim=1) / 127).clamp(min=1e-10)
    qweight = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return {"qweight": qweight, "scales": scales}


def quantize_int4(weight: torch.Tensor, group_size: int) -> dict[str, torch.Tensor]:
    """Group-wise, asymmetric: each group's minimum maps to 0 and its maximum to 15."""
    out_features, in_features = weight.shape
    check_int4_shape(out_features, in_features, group_size)
    groups = weight.detach().float().reshape(out_features, in_features // group_size, group_size)
    mins, maxs = groups.amin(dim=-1), groups.amax(dim=-1)
    scales = ((maxs - mins) / 15).clamp(min=1e-10)
    q = torch.round((groups - mins[..., None]) / scales[..., None]).clamp(0, 15).to(torch.uint8)
    q = q.reshape(out_features, in_features)
    return {"qweight": q[:, 0::2] | (q[:, 1::2] << 4), "scales": scales, "mins": mins}


def check_int4_shape(out_features: int, in_features: int, group_size: int) -> None:
    if group_size not in INT4_GROUP_SIZES:
        raise ValueError(f"int4 group_size must be one of {INT4_GROUP_SIZES}, got {group_size}")
    if in_features % group_size:
        raise ValueError(f"int4 group_size {group_size} does not divide a linear's {in_features} inputs; "
                         f"choose a group size that does")
    if out_features % 16:
        raise ValueError(f"int4 needs a multiple of 16 outputs per linear, got {out_features}")


def int4_values(qweight: torch.Tensor) -> torch.Tensor:
    """The 4-bit values of a packed ``qweight``, as int32 [out, in]."""
    low, high = qweight & 0x0F, qweight >> 4
    return torch.stack([low, high], dim=-1).reshape(qweight.shape[0], -1).to(torch.int32)


def dequantize(method: str, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The float32 weight a portable quantized format stands for."""
    if method == "int8":
        return tensors["qweight"].float() * tensors["scales"][:, None]
    values = int4_values(tensors["qweight"]).float()
    group_size = values.shape[1] // tensors["scales"].shape[1]
    scales = tensors["scales"].repeat_interleave(group_size, dim=1)
    return values * scales + tensors["mins"].repeat_interleave(group_size, dim=1)


# -- kernels --------------------------------------------------------------------------------------------

def bf16_native() -> bool:
    """Whether oneDNN has native bfloat16 kernels on this CPU (its packed bfloat16 path refuses others)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def has_fbgemm() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines


def resolve_kernel(cpu_linear: str, weights: str) -> str:
    """The kernel family that runs linears holding ``weights`` (a dtype name, or int8 / int4) on this host."""
    if cpu_linear not in CPU_LINEARS:
        raise ValueError(f"cpu_linear must be one of {CPU_LINEARS}, got {cpu_linear!r}")
    if weights in ("int8", "int4"):
        return "default"  # their weight-only kernels, whatever cpu_linear says
    if cpu_linear == "auto":
        if weights == "float16":
            return "default"
        if weights == "float32" or bf16_native():
            return "onednn"
        return "fbgemm" if has_fbgemm() else "default"
    if cpu_linear == "onednn" and weights == "bfloat16" and not bf16_native():
        raise ValueError("cpu_linear onednn with bfloat16 weights needs a CPU with native bfloat16 support "
                         "(avx512bw, avx512vl and avx512dq, or avx_ne_convert), which this one lacks; "
                         "use cpu_linear auto or fbgemm")
    if cpu_linear in ("onednn", "fbgemm") and weights == "float16":
        raise ValueError(f"cpu_linear {cpu_linear} needs float32, bfloat16, int8 or int4 weights, got float16")
    if cpu_linear == "fbgemm" and not has_fbgemm():
        raise ValueError("cpu_linear fbgemm needs a torch build with FBGEMM (x86)")
    return cpu_linear


def int4_dense_copy(cpu_linear: str) -> bool:
    """Whether int4 linears keep a bfloat16 copy for wide inputs under ``cpu_linear`` on this host."""
    return cpu_linear in ("onednn", "auto") and bf16_native()


ALIGNMENT = 64  # bytes: what torch's CPU allocator gives every tensor it allocates


def aligned(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``, copied where its data does not start on a ``ALIGNMENT`` boundary: a tensor read from a
    safetensors file sits wherever the file put it, and torch 2.13's ``_weight_int8pack_mm`` crashes (SIGSEGV)
    on such a weight once a call has 32 rows or more on avx512 CPUs."""
    tensor = tensor.contiguous()
    return tensor.clone() if tensor.data_ptr() % ALIGNMENT else tensor


class _FlatLinear(torch.nn.Module):
    """A kernel over 2-D inputs: flattens the leading dims, casts to the kernel's dtype and back."""

    compute_dtype: torch.dtype

    def __init__(self, out_features: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features = out_features
        bias = None if bias is None else bias.detach().to(self.compute_dtype)
        self.register_buffer("bias", bias, persistent=False)  # loaders hand it over; state_dict has none

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).to(self.compute_dtype)
        y = self.multiply(rows)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def multiply(self, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


ONEDNN_ROWS_HINT = 8  # oneDNN's packing is tuned for about this many rows; any number works
# oneDNN multiplies fewer rows than this padded with zero rows: it takes a slower path for 1 and 2 rows. On an
# avx512_bf16 CPU the 1.5B target's forward over 1 / 2 / 4 tokens took 213 / 245 / 170 ms on one thread and
# 118-150 / 139 / 102 ms on two; padded to 4 rows, 1 and 2 tokens took what 4 do (float32 weights alike).
# A row then gets the same bits whether it is multiplied alone or among up to 4 rows.
ONEDNN_MIN_ROWS = 4


def onednn_pack(weight: torch.Tensor) -> torch.Tensor:
    """A float32 / bfloat16 weight packed once for oneDNN's GEMM (``onednn_multiply``)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), ONEDNN_ROWS_HINT)


def onednn_multiply(rows: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    count = rows.shape[0]
    if count < ONEDNN_MIN_ROWS:
        padded = rows.new_zeros(ONEDNN_MIN_ROWS, rows.shape[1])
        padded[:count] = rows
        return torch.ops.mkldnn._linear_pointwise(padded, packed, bias, "none", [], "")[:count]
    return torch.ops.mkldnn._linear_pointwise(rows, packed, bias, "none", [], "")


class OnednnLinear(_FlatLinear):
    """A float32 / bfloat16 weight that oneDNN packed once at load, for its own GEMM. PyTorch's default CPU
    GEMM stays far from the memory bandwidth for the 1-48 rows of a decode or a batched round."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.compute_dtype = weight.dtype
        super().__init__(weight.shape[0], bias)
        self.register_buffer("weight", onednn_pack(weight))

    def multiply(self, rows: torch.Tensor) -> torch.Tensor:
        return onednn_multiply(rows, self.weight, self.bias)


class FbgemmFp16Linear(_FlatLinear):
    """FBGEMM's float16-weight linear: weights read as float16, multiplied in float32 (AVX2 and up)."""

    compute_dtype = torch.float32

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__(weight.shape[0], bias)
        self.packed = torch.ops.quantized.linear_prepack_fp16(weight.detach().float(), self.bias)

    def multiply(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic_fp16(rows, self.packed)


class Int8Linear(_FlatLinear):
    """int8 weights, one scale per output channel, weight-only (``_weight_int8pack_mm``, bfloat16 activations)."""

    compute_dtype = torch.bfloat16

    def __init__(self, tensors: dict[str, torch.Tensor], bias: torch.Tensor | None) -> None:
        super().__init__(tensors["qweight"].shape[0], bias)
        self.register_buffer("qweight", aligned(tensors["qweight"]), persistent=False)
        self.register_buffer("scales", aligned(tensors["scales"].to(self.compute_dtype)), persistent=False)

    def multiply(self, rows: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int8pack_mm(rows, self.qweight, self.scales)
        return y if self.bias is None else y + self.bias


class Int4Linear(_FlatLinear):
    """4-bit weights in groups (``_weight_int4pack_mm_for_cpu``, bfloat16 activations): the kernel keeps a
    scale and a zero point per group, ``(q - 8) * scale + zero``, so zero = min + 8 * scale. With ``dense``,
    also the weights' bfloat16 values packed for oneDNN, which multiply ``INT4_DENSE_ROWS`` rows or more."""

    compute_dtype = torch.bfloat16

    def __init__(self, tensors: dict[str, torch.Tensor], bias: torch.Tensor | None, dense: bool = False) -> None:
        out_features, groups = tensors["scales"].shape
        super().__init__(out_features, bias)
        values = int4_values(tensors["qweight"])
        self.group_size = values.shape[1] // groups
        check_int4_shape(out_features, values.shape[1], self.group_size)
        scales, zeros = tensors["scales"], tensors["mins"] + 8 * tensors["scales"]
        scales_and_zeros = torch.stack([scales, zeros], dim=-1).transpose(0, 1).contiguous()  # [groups, out, 2]
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(values, 1),
                             persistent=False)
        self.register_buffer("scales_and_zeros", scales_and_zeros.to(self.compute_dtype), persistent=False)
        dense_weight = onednn_pack(dequantize("int4", tensors).to(self.compute_dtype)) if dense else None
        self.register_buffer("dense_weight", dense_weight, persistent=False)

    def multiply(self, rows: torch.Tensor) -> torch.Tensor:
        if self.dense_weight is not None and rows.shape[0] >= INT4_DENSE_ROWS:
            return onednn_multiply(rows, self.dense_weight, self.bias)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.packed, self.group_size, self.scales_and_zeros)
        return y if self.bias is None else y + self.bias


def concatenated(modules: list[torch.nn.Module]):
    """rows -> the outputs of all ``modules`` side by side, each module called on its own."""
    return lambda rows: torch.cat([module(rows) for module in modules], dim=-1)


def fused_multiply(modules: list[torch.nn.Module], dtype: torch.dtype):
    """One multiply over 2-D rows (``dtype``: the model's activations, in and out) giving the outputs of all
    ``modules`` side by side (a layer's q, k and v projections, or its gate and up ones): one kernel call where
    they are int4 or int8 weights of ours, their weights concatenated by output (each output column is computed
    as its own kernel computes it: the same bits); None for any other modules (nothing to gain: a caller
    multiplies them one by one). The parts' weights become views into the concatenated ones, so the model's
    own modules (transformers' path) keep working without a second copy."""
    kinds = {type(m) for m in modules}
    if len(kinds) != 1 or kinds.pop() not in (Int4Linear, Int8Linear):
        return None
    first, compute = modules[0], modules[0].compute_dtype
    biases = [m.bias for m in modules]
    bias = None if all(b is None for b in biases) else torch.cat(
        [b if b is not None else torch.zeros(m.out_features, dtype=compute) for b, m in zip(biases, modules)])
    if isinstance(first, Int8Linear):
        qweight, scales = _concat_rows(modules, "qweight"), torch.cat([m.scales for m in modules])

        def multiply(rows: torch.Tensor) -> torch.Tensor:
            y = torch.ops.aten._weight_int8pack_mm(rows.to(compute), qweight, scales)
            return (y if bias is None else y + bias).to(dtype)
        return multiply
    # the CPU kernel's packed layout blocks INT4_PACK_BLOCK outputs together: only whole blocks concatenate
    if len({m.group_size for m in modules}) != 1 or any(m.out_features % INT4_PACK_BLOCK for m in modules[:-1]):
        return None
    packed, group_size = _concat_rows(modules, "packed"), first.group_size
    scales_and_zeros = torch.cat([m.scales_and_zeros for m in modules], dim=1)
    separate = concatenated(modules) if any(m.dense_weight is not None for m in modules) else None

    def multiply(rows: torch.Tensor) -> torch.Tensor:
        if separate is not None and rows.shape[0] >= INT4_DENSE_ROWS:  # each part on its bfloat16 copy
            return separate(rows)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows.to(compute), packed, group_size, scales_and_zeros)
        return (y if bias is None else y + bias).to(dtype)
    return multiply


def _concat_rows(modules: list[torch.nn.Module], name: str) -> torch.Tensor:
    """The modules' ``name`` buffers (one row per output) concatenated; each module's buffer becomes a view
    of its rows where that view starts on an ``ALIGNMENT`` boundary (see ``aligned``), so the weights are
    held once."""
    whole = torch.cat([getattr(m, name) for m in modules])
    start = 0
    for m in modules:
        rows = getattr(m, name).shape[0]
        if (view := whole[start:start + rows]).data_ptr() % ALIGNMENT == 0:
            setattr(m, name, view)
        start += rows
    return whole


# -- whole models ---------------------------------------------------------------------------------------

def linear_names(model: torch.nn.Module) -> list[str]:
    """The linears a quantization or a kernel covers: every one of the decoder layers', and the LM head."""
    names = [f"model.layers.{i}.{name}" for i, layer in enumerate(model.model.layers)
             for name, module in layer.named_modules() if isinstance(module, torch.nn.Linear)]
    return names + ["lm_head"]


def replace_linears(model: torch.nn.Module, make) -> None:
    """Swap each of ``linear_names`` for ``make(name, linear)``. A tied LM head gets a module of its own beside
    the embedding (its size in memory again): a decode step reads it whole, in the kernel's format.
    The new modules are made on every core: packing the weights (FBGEMM's fp16 prepack above all, ~12 ns a
    weight) is most of a model's load, so of a world's restart, and torch releases the GIL while it packs
    (the default pair's target: 20 s on one core, 18 s on two; the packing scales poorly)."""
    names = linear_names(model)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        made = list(pool.map(lambda name: make(name, model.get_submodule(name)), names))
    for name, module in zip(names, made):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module)


def quantize_linears(model: torch.nn.Module, method: str, group_size: int) -> dict[str, torch.Tensor]:
    """The portable tensors (``<linear>.qweight`` ...) of every linear the quantization covers; a linear's
    bias stays a float tensor of the model's state (``<linear>.bias``)."""
    tensors = {}
    for name in linear_names(model):
        weight = model.get_submodule(name).weight
        parts = quantize_int8(weight) if method == "int8" else quantize_int4(weight, group_size)
        tensors.update({f"{name}.{part}": value for part, value in parts.items()})
    return tensors


def quantize_in_place(model: torch.nn.Module, method: str, group_size: int = 128) -> None:
    """Swap the model's linears for quantized ones now (what a quantized engine would load)."""
    tensors = quantize_linears(model, method, group_size)
    for name in linear_names(model):
        if model.get_submodule(name).bias is not None:
            tensors[f"{name}.bias"] = model.get_submodule(name).bias
    use_cpu_kernels(model, "default", method, tensors)


def use_cpu_kernels(model: torch.nn.Module, cpu_linear: str, weights: str,
                    state: dict[str, torch.Tensor] | None = None) -> str:
    """Put the kernels ``cpu_linear`` resolves to on this host in place of the model's linears, which hold
    ``weights`` (the model's dtype name, or int8 / int4). A quantized model's linears are built from its
    engine's ``state`` (each one's portable tensors and bias, which this takes out of ``state``); the others
    from the linears in place. Returns the kernel family used."""
    kernel = resolve_kernel(cpu_linear, weights)
    dense = weights == "int4" and int4_dense_copy(cpu_linear)

    def make(name: str, linear: torch.nn.Module) -> torch.nn.Module:
        if weights in ("int8", "int4"):
            parts = {key.removeprefix(f"{name}."): state.pop(key) for key in list(state)
                     if key.rpartition(".")[0] == name}
            bias = parts.pop("bias", None)
            return Int8Linear(parts, bias) if weights == "int8" else Int4Linear(parts, bias, dense)
        if kernel == "onednn":
            return OnednnLinear(linear.weight, linear.bias)
        return FbgemmFp16Linear(linear.weight, linear.bias)

    if weights in ("int8", "int4") or kernel != "default":
        replace_linears(model, make)
    return kernel
