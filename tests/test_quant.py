"""quant.py: each fast weight against its slow twin (the float32 matmul of the weight it stands for), the GGUF's
own 4-bit codes, LoRA beside the fast base, and the swap in and out of the model.

Tolerances: packed float32 against F.linear 1e-5 (summation order only). int4 against the float32 matmul of the
same dequantised codes: the kernel rounds activations and its output to bfloat16, so 1e-2 of the output's
largest magnitude (bfloat16 has an 8-bit significand: 2^-8 = 0.004 per rounding).
"""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import quant
from checkpoint import gguf_4bit_codes, load_model, read_gguf
from model import add_lora
from quant import FAST_ROWS, Int4Weight, PackedWeight, dequantise_int4, quantise_int4, sampling_weights
from tests.test_checkpoint import gguf_metadata, gguf_tensors_of, write_gguf
from tests.tiny_model import tiny_model


def test_int4_kernel_equals_float32_matmul_of_its_codes():
    torch.manual_seed(0)
    w = torch.randn(64, 96) * 0.05
    q, scale, low = quantise_int4(w)
    fast = Int4Weight(q, scale, low)
    slow_w = fast.dequantised(q)  # the codes with the kernel's bfloat16 scale and zero
    for rows in (1, 5, 16):
        x = torch.randn(rows, 96)
        ref = F.linear(x, slow_w)
        torch.testing.assert_close(fast(x).float(), ref, atol=1e-2 * ref.abs().max().item(), rtol=0)
    # the bfloat16 scale and zero move each weight by at most a few parts in a thousand of its group's range
    assert (slow_w - dequantise_int4(q, scale, low)).abs().max() < 0.01 * (w.max() - w.min())


def test_quantise_int4_round_trip_within_half_a_step():
    torch.manual_seed(1)
    w = torch.randn(32, 64)
    q, scale, low = quantise_int4(w)
    assert q.min() >= 0 and q.max() <= 15 and q.dtype == torch.int32
    err = (dequantise_int4(q, scale, low) - w).abs().reshape(32, 2, 32)
    assert (err <= scale[..., None] / 2 + 1e-6).all()


def test_packed_equals_f_linear():
    torch.manual_seed(2)
    w, x = torch.randn(48, 40), torch.randn(7, 40)
    torch.testing.assert_close(PackedWeight(w)(x), F.linear(x, w), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------- GGUF codes

def q4_blocks(q: np.ndarray, d: np.ndarray, m: np.ndarray | None) -> bytes:
    """Q4_1 (m given) or Q4_0 blocks of 32 codes each: f16 d, [f16 m], byte j = q[j] | q[j + 16] << 4."""
    out = b""
    for qb, db, mb in zip(q.reshape(-1, 32), d.reshape(-1), m.reshape(-1) if m is not None else d.reshape(-1)):
        out += np.float16(db).tobytes() + (np.float16(mb).tobytes() if m is not None else b"")
        out += bytes(int(a) | int(b) << 4 for a, b in zip(qb[:16], qb[16:]))
    return out


def gguf_with_4bit_linears(path, seed=0):
    """A tiny model's GGUF whose block linears are Q4_1 (Q4_0 for the MLP down projections), random codes."""
    model = tiny_model(seed)
    rng = np.random.default_rng(seed)
    tensors = []
    for name, shape, gtype, raw in gguf_tensors_of(model):
        if name.startswith("blk.") and len(shape) == 2:
            q = rng.integers(0, 16, size=shape)
            d = rng.uniform(0.001, 0.02, size=(shape[0], shape[1] // 32))
            q4_0 = "ffn_down" in name
            m = None if q4_0 else rng.uniform(-0.1, 0.0, size=d.shape)
            tensors.append((name, shape, 2 if q4_0 else 3, q4_blocks(q, d, m)))
        else:
            tensors.append((name, shape, gtype, raw))
    write_gguf(path, gguf_metadata(model.cfg), tensors)
    return path


def test_gguf_codes_are_the_loaded_weights(tmp_path):
    path = gguf_with_4bit_linears(tmp_path / "m.gguf")
    _, weights = read_gguf(path)
    codes = gguf_4bit_codes(path)
    assert len(codes) == 7 * 2  # every block linear of both layers, q/k rows un-permuted as read_gguf does
    for name, (q, scale, low) in codes.items():
        assert q.dtype == torch.uint8 and int(q.max()) <= 15
        assert torch.equal(dequantise_int4(q, scale, low), weights[name]), name


def test_int4_sampling_uses_the_files_codes(tmp_path, monkeypatch):
    model, _ = load_model(str(gguf_with_4bit_linears(tmp_path / "m.gguf")))
    monkeypatch.setattr(quant, "quantise_int4", lambda w: pytest.fail("re-quantised a weight that has codes"))
    x = torch.randn(3, 1, model.cfg.dim)
    with torch.inference_mode():
        ref = model.model.layers[0].mlp.up_proj(x)
        with sampling_weights(model, "int4"):
            fast = model.model.layers[0].mlp.up_proj(x)
    torch.testing.assert_close(fast, ref, atol=1e-2 * ref.abs().max().item(), rtol=0)


def test_int4_serves_a_bfloat16_model_with_the_files_codes(tmp_path, monkeypatch):
    # a bfloat16 model holds the file's weights rounded: its codes still stand for them, and rows stay bfloat16
    model, _ = load_model(str(gguf_with_4bit_linears(tmp_path / "m.gguf")), dtype=torch.bfloat16)
    monkeypatch.setattr(quant, "quantise_int4", lambda w: pytest.fail("re-quantised a weight that has codes"))
    x = torch.randn(3, 1, model.cfg.dim, dtype=torch.bfloat16)
    with torch.inference_mode():
        ref = model.model.layers[0].mlp.up_proj(x)  # the slow twin: the model's own bfloat16 weight
        with sampling_weights(model, "int4"):
            fast_mod = model.model.layers[0].mlp.up_proj
            assert isinstance(fast_mod, quant.FastLinear)
            fast = fast_mod(x)
    assert fast.dtype == torch.bfloat16
    torch.testing.assert_close(fast.float(), ref.float(), atol=1e-2 * ref.abs().max().item(), rtol=0)


# ------------------------------------------------------------------------------------------- the swap

@pytest.mark.parametrize("kind,tol", [("packed", 1e-5), ("int4", None)])
def test_fast_linear_with_lora_equals_the_module(kind, tol):
    model = tiny_model(3)
    add_lora(model, r=4, alpha=8)
    lora = model.model.layers[1].self_attn.q_proj
    with torch.no_grad():
        lora.lora_B.normal_(0, 0.1)  # a trained adapter, so the term beside the base weight matters
    x = torch.randn(4, 1, model.cfg.dim)
    with torch.inference_mode(), sampling_weights(model, kind):
        fast_mod = model.model.layers[1].self_attn.q_proj
        assert isinstance(fast_mod, quant.FastLinear)
        fast = fast_mod(x)
        lora.disabled = True
        fast_off = fast_mod(x)
        lora.disabled = False
    with torch.inference_mode():
        base_w = lora.weight if kind == "packed" else fast_mod.fast.dequantised(quantise_int4(lora.weight)[0])
        ref_off = F.linear(x, base_w)
        ref = ref_off + F.linear(F.linear(x, lora.lora_A[0]), lora.lora_B[0]) * lora.scale
    for got, want in ((fast, ref), (fast_off, ref_off)):
        torch.testing.assert_close(got, want, atol=tol or 1e-2 * want.abs().max().item(), rtol=0)


def test_int4_with_lora_on_a_bfloat16_model_equals_the_module():
    model = tiny_model(3).to(torch.bfloat16)
    add_lora(model, r=4, alpha=8)
    lora = model.model.layers[1].self_attn.q_proj
    with torch.no_grad():
        lora.lora_B.normal_(0, 0.1)
    x = torch.randn(4, 1, model.cfg.dim, dtype=torch.bfloat16)
    with torch.inference_mode():
        module = lora(x).float()  # bfloat16 base weight, the adapter cast to bfloat16
        with sampling_weights(model, "int4"):
            fast_mod = model.model.layers[1].self_attn.q_proj
            assert isinstance(fast_mod, quant.FastLinear)
            fast = fast_mod(x)
        # the slow twin in float32: the weight the codes stand for, the float32 adapter beside it
        base_w = fast_mod.fast.dequantised(quantise_int4(lora.weight)[0])
        ref = F.linear(x.float(), base_w) + F.linear(F.linear(x.float(), lora.lora_A[0]), lora.lora_B[0]) * lora.scale
    assert fast.dtype == torch.bfloat16
    torch.testing.assert_close(fast.float(), ref, atol=1e-2 * ref.abs().max().item(), rtol=0)  # bfloat16 rounding
    # and the module itself, up to the 4-bit codes re-quantised from its random weight
    torch.testing.assert_close(fast.float(), module, atol=1e-1 * module.abs().max().item(), rtol=0)


def test_many_rows_and_training_use_the_module_itself():
    model = tiny_model(4)
    lin = model.model.layers[0].mlp.gate_proj
    big = torch.randn(FAST_ROWS + 1, model.cfg.dim)
    with sampling_weights(model, "int4"):
        fast_mod = model.model.layers[0].mlp.gate_proj
        with torch.inference_mode():
            assert torch.equal(fast_mod(big), lin(big))  # a prefill: exact
        small = torch.randn(2, model.cfg.dim, requires_grad=True)
        fast_mod(small).sum().backward()  # grad enabled: the module's own float32 path, with its gradient
        assert small.grad is not None
        torch.testing.assert_close(small.grad, lin.weight.sum(0).expand(2, -1))


def test_swap_restores_the_model_and_rebuilds_after_a_weight_change():
    model = tiny_model(5)
    before = [(n, m) for n, m in model.named_modules()]
    with pytest.raises(RuntimeError):
        with sampling_weights(model, "packed"):
            raise RuntimeError("boom")
    assert [(n, m) for n, m in model.named_modules()] == before
    x = torch.randn(1, model.cfg.dim)
    head = model.lm_head
    with torch.inference_mode(), sampling_weights(model, "packed"):
        first = model.lm_head(x)
    with torch.no_grad():
        head.weight.mul_(2)  # e.g. a merged adapter: cached fast weights are stale
    with torch.inference_mode(), sampling_weights(model, "packed"):
        second = model.lm_head(x)
    torch.testing.assert_close(second, 2 * first, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="sampling weights"):
        with sampling_weights(model, "int3"):
            pass


def test_head_and_unfit_shapes_keep_the_model_weights():
    # the kernel needs N % 16 == 0 and K % 32 == 0; those linears and the output head are not swapped
    model = tiny_model(7)
    model.model.layers[0].mlp.up_proj = nn.Linear(model.cfg.dim, 72, bias=False)
    model.model.layers[0].mlp.down_proj = nn.Linear(72, model.cfg.dim, bias=False)
    fast = quant._build(model, "int4")
    assert "model.layers.0.mlp.down_proj" not in fast and "model.layers.0.mlp.up_proj" not in fast
    assert "lm_head" not in fast
    assert isinstance(fast["model.layers.0.mlp.gate_proj"].fast, Int4Weight)
    with sampling_weights(model, "int4"):
        assert isinstance(model.model.layers[0].mlp.down_proj, nn.Linear)
        assert isinstance(model.model.layers[1].mlp.down_proj, quant.FastLinear)
