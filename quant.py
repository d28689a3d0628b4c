"""Faster weights for the sampler's one-token decode steps on CPU, kept beside the model's own weights.

The sampler's decode step multiplies a handful of rows (one per live completion) by every weight of the model,
so on CPU it is bound by how weights are read, not by arithmetic. Two kinds are offered (`sampling_weights`):
1. "packed": the same float32 weights reordered once into oneDNN's blocked layout (the rounding differs from
   MKL's only in summation order).
2. "int4": the block linears as 4-bit codes in groups of 32 through torch's own CPU kernel
   (aten._weight_int4pack_mm_for_cpu, bfloat16 activations, bfloat16 scale and zero per group), for a float32
   or a bfloat16 model (the kernel's own activation dtype: a bfloat16 model's rows go in and come out as they
   are). When the model was loaded from a GGUF file whose linears are Q4_0/Q4_1, the file's own codes are used,
   so the only new error is bfloat16 rounding of activations, scales and zeros; other weights are re-quantised
   (min/max per group), which adds more. The output head and weights the kernel cannot take (N not a multiple
   of 16, K not of 32) stay the model's own: the embedded model ships its head as Q8_0, not 4-bit.
Rows above FAST_ROWS (a prompt's prefill) go through the model's own modules; so does every training pass.
LoRA adapters are applied beside the fast base weight, in float32, read live from the LoRALinear modules.

Deliberately left out: int8 weights (slower than int4 here), quantised activations (down_proj inputs have
outliers far beyond int8), quantised KV caches, packed bfloat16 weights (oneDNN packs them only on CPUs with
AVX-512, which the project's AVX2 machine cannot check), GPUs (their bfloat16 matmuls are fast already).
"""
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import LoRALinear

KINDS = ("model", "packed", "int4")
GROUP = 32
# Measured with 1 thread on the project's AVX2 CPU (no AVX-512), the block linears of SmolLM2-135M alone: int4
# 1.8x float32 at 1 row, 1.3x at 10, about even at 16 (whole sampler at 16 rows: 0.95x, twice), so from 13 rows
# on, and for a prefill of a whole prompt, the model's own weights serve.
FAST_ROWS = 12


# ------------------------------------------------------------------------------------------- int4 codes

def quantise_int4(w: torch.Tensor, group: int = GROUP):
    """float weight (N, K) -> (q (N, K) int32 in 0..15, scale (N, K/group), low (N, K/group)), w ~ q*scale + low.

    Asymmetric min/max per group: the fallback for weights that do not come with 4-bit codes of their own."""
    N, K = w.shape
    g = w.float().reshape(N, K // group, group)
    low, high = g.amin(-1), g.amax(-1)
    scale = ((high - low) / 15).clamp(min=1e-12)
    q = ((g - low[..., None]) / scale[..., None]).round().clamp(0, 15)
    return q.reshape(N, K).to(torch.int32), scale, low


def dequantise_int4(q, scale, low, group: int = GROUP) -> torch.Tensor:
    """(q (N, K), scale, low (N, K/group)) -> float32 (N, K) = q*scale + low, in that order (as ggml's Q4_1)."""
    N, K = q.shape
    w = q.reshape(N, K // group, group).float() * scale[..., None].float() + low[..., None].float()
    return w.reshape(N, K)


class Int4Weight:
    """4-bit codes packed for torch's CPU kernel; x (M, K) float32 or bfloat16 -> (M, N) bfloat16.

    The kernel computes w = (q - 8) * scale + zero with bfloat16 scale and zero, so zero = low + 8 * scale."""

    def __init__(self, q, scale, low, group: int = GROUP):
        self.group = group
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 1)
        zero = low.float() + 8 * scale.float()
        self.scale_zero = torch.stack([scale.float().t(), zero.t()], -1).to(torch.bfloat16).contiguous()  # (K/g, N, 2)

    def __call__(self, x):
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), self.packed, self.group,
                                                          self.scale_zero)

    def dequantised(self, q) -> torch.Tensor:
        """The float32 weight this kernel stands for (bfloat16 scale and zero included): the slow twin's."""
        scale, zero = self.scale_zero.float().unbind(-1)  # (K/g, N) each
        return dequantise_int4(q.int() - 8, scale.t(), zero.t(), self.group)


def int4_fits(w: torch.Tensor, group: int = GROUP) -> bool:
    """The kernel needs N a multiple of 16 and K of the group size."""
    return w.dim() == 2 and w.shape[0] % 16 == 0 and w.shape[1] % group == 0


# ------------------------------------------------------------------------------------------- packed float32

class PackedWeight:
    """A float32 weight reordered once for oneDNN; x (M, K) float32 -> (M, N) float32."""

    def __init__(self, w: torch.Tensor):
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w.detach().float().contiguous(), FAST_ROWS)

    def __call__(self, x):
        return torch.ops.mkldnn._linear_pointwise(x.float().contiguous(), self.packed, None, "none", [], "")


# ------------------------------------------------------------------------------------------- the swap

class FastLinear(nn.Module):
    """Stands in for an nn.Linear or LoRALinear while sampling: a fast base weight for up to FAST_ROWS rows,
    the module itself (the slow twin) above that."""

    def __init__(self, module: nn.Module, fast):
        super().__init__()
        self.module, self.fast = module, fast

    @property
    def weight(self):  # callers that read the head's weight (device, dtype) see the module's own
        return self.module.weight

    def forward(self, x):
        if x.numel() > FAST_ROWS * x.shape[-1] or torch.is_grad_enabled():
            return self.module(x)
        m = self.module
        y = self.fast(x.reshape(-1, x.shape[-1])).view(*x.shape[:-1], -1).to(x.dtype)
        if m.bias is not None:
            y = y + m.bias
        # The adapter beside the frozen base, in float32; no dropout (sampling runs in eval mode).
        if isinstance(m, LoRALinear) and not m.disabled:
            y = y + m.delta(x.float()).to(x.dtype)  # each row's own adapter of the bank (model.adapter_rows)
        return y


def _linears(model):
    """(parent, attribute name, full name, module) of every block linear and of the output head."""
    for name, parent in model.named_modules():
        for child, m in parent.named_children():
            if isinstance(m, (nn.Linear, LoRALinear)):
                yield parent, child, f"{name}.{child}" if name else child, m


def _file_codes(model) -> dict:
    """The 4-bit codes of the GGUF file the model was loaded from ({} for other sources)."""
    source = str(getattr(model, "source", "") or "")
    if not source.endswith(".gguf"):
        return {}
    from checkpoint import gguf_4bit_codes
    return gguf_4bit_codes(source)


# The model dtypes each kind stands in for.
SERVES = {"packed": (torch.float32,), "int4": (torch.float32, torch.bfloat16)}


def _build(model, kind: str) -> dict:
    """{full name: FastLinear} for `kind`; linears left out stay as they are."""
    codes = _file_codes(model) if kind == "int4" else {}
    fast = {}
    for _, _, name, m in _linears(model):
        w = m.weight
        if w.device.type != "cpu" or w.dtype not in SERVES[kind]:
            continue
        if kind == "packed":
            fast[name] = FastLinear(m, PackedWeight(w))
        elif name != "lm_head" and int4_fits(w):
            q, scale, low = codes.get(name + ".weight", (None, None, None))
            # the file's codes, unless the weights changed since loading (a bfloat16 model holds them rounded)
            if q is None or not torch.equal(dequantise_int4(q, scale, low).to(w.dtype), w):
                q, scale, low = quantise_int4(w)
            fast[name] = FastLinear(m, Int4Weight(q, scale, low))
    return fast


def _fingerprint(model) -> tuple:
    """Changes when any base weight is replaced or written in place (so cached fast weights are stale)."""
    return tuple((id(m.weight), m.weight._version) for _, _, _, m in _linears(model))


@contextmanager
def sampling_weights(model, kind: str = "model"):
    """Inside the block the model's linears read `kind` weights (built once, then cached on the model)."""
    if kind not in KINDS:
        raise ValueError(f"sampling weights must be one of {KINDS}, got {kind!r}")
    if kind == "model":
        yield model
        return
    cache = model.__dict__.setdefault("_fast_weights", {})
    key = _fingerprint(model)
    if cache.get(kind, (None,))[0] != key:
        cache[kind] = (key, _build(model, kind))
    fast = cache[kind][1]
    swapped = [(parent, child, name, m) for parent, child, name, m in _linears(model) if name in fast]
    for parent, child, name, _ in swapped:
        setattr(parent, child, fast[name])
    try:
        yield model
    finally:
        for parent, child, _, m in swapped:
            setattr(parent, child, m)
