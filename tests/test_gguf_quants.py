"""ggml block types beyond Q8_0/Q4_0/Q4_1: Q5_0, Q5_1, Q4_K, Q5_K, Q6_K.

Three independent checks:
- hand-built blocks: each test packs known quants, scales and mins into bytes with its own small encoder written
  from the layout in llama.cpp's ggml-common.h, and expects d * scale * q - dmin * min (or the type's formula)
  computed by hand; values are chosen so every weight is exact in float32, and a few are spelled out as numbers;
- tests/golden/gguf_quants.npz: random blocks and the `gguf` package's own dequantisation of them (made by
  tests/golden/make_gguf_quants.py in a scratch venv, see there), which also pins the encoders' bit order;
- a heavy test that asks the `gguf` package directly on fresh random blocks (skipped when it is not installed).
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from checkpoint import GGML_TYPES, ModelLoadError, dequantize, load_model, read_gguf
from tests.test_checkpoint import gguf_metadata, gguf_tensors_of, logits_of, write_gguf
from tests.tiny_model import tiny_model

TYPE_ID = {name: i for i, (name, _, _) in GGML_TYPES.items()}
GOLDEN = Path(__file__).parent / "golden" / "gguf_quants.npz"


# ------------------------------------------------------------------------------------------- tiny encoders

def f16(x: float) -> bytes:
    return np.float16(x).tobytes()


def pack_nibbles(low, high) -> bytes:
    """byte j = low[j] | high[j] << 4."""
    return bytes(int(a) | int(b) << 4 for a, b in zip(low, high, strict=True))


def pack_bits(bits) -> bytes:
    """bit j -> bit j % 8 of byte j // 8 (a little-endian integer)."""
    out = bytearray(len(bits) // 8)
    for j, b in enumerate(bits):
        out[j // 8] |= int(b) << (j % 8)
    return bytes(out)


def q5_block(q, d, m=None) -> bytes:
    """Q5_0 (m None) or Q5_1 of 32 quants 0..31: fifth bits as one u32, then the low nibbles (j | j+16)."""
    head = f16(d) + (b"" if m is None else f16(m))
    return head + pack_bits([v >> 4 for v in q]) + pack_nibbles([v & 15 for v in q[:16]], [v & 15 for v in q[16:]])


def k_scales(sc, mn) -> bytes:
    """8 six-bit scales and mins -> 12 bytes: low 6 bits of 0-3 in bytes 0-3 (scales) and 4-7 (mins); 4-7 keep
    their low 4 bits in bytes 8-11 (scale low nibble, min high nibble) and their top 2 bits in bits 6-7 of
    bytes 0-3 (scales) and 4-7 (mins)."""
    return bytes([sc[j] | (sc[j + 4] >> 4) << 6 for j in range(4)] + [mn[j] | (mn[j + 4] >> 4) << 6 for j in range(4)]
                 + [(sc[j + 4] & 15) | (mn[j + 4] & 15) << 4 for j in range(4)])


def k_low_nibbles(q) -> bytes:
    """8 sub-blocks of 32 -> 128 bytes: 32-byte run i holds sub-block 2i low, 2i+1 high."""
    return b"".join(pack_nibbles([v & 15 for v in q[2 * i]], [v & 15 for v in q[2 * i + 1]]) for i in range(4))


def q4_k_block(q, d, dmin, sc, mn) -> bytes:
    return f16(d) + f16(dmin) + k_scales(sc, mn) + k_low_nibbles(q)


def q5_k_block(q, d, dmin, sc, mn) -> bytes:
    qh = [sum((q[k][l] >> 4) << k for k in range(8)) for l in range(32)]  # bit k of byte l: sub-block k, weight l
    return f16(d) + f16(dmin) + k_scales(sc, mn) + bytes(qh) + k_low_nibbles(q)


def q6_k_block(q, d, sc) -> bytes:
    """256 quants 0..63 -> ql (128), qh (64), 16 int8 scales, f16 d. In each half of 128 weights, weight i's low
    4 bits are the low (i < 64) or high (i >= 64) nibble of ql byte i % 64, and its top 2 bits are bits 2g, 2g+1
    of qh byte l, where g, l = divmod(i, 32)."""
    ql, qh = bytearray(128), bytearray(64)
    for w, v in enumerate(q):
        h, i = divmod(w, 128)
        ql[64 * h + i % 64] |= (v & 15) << (4 if i >= 64 else 0)
        g, l = divmod(i, 32)
        qh[32 * h + l] |= (v >> 4) << (2 * g)
    return bytes(ql) + bytes(qh) + np.array(sc, dtype=np.int8).tobytes() + f16(d)


def deq(block: bytes, name: str, n: int) -> list:
    return dequantize(np.frombuffer(block, dtype=np.uint8), TYPE_ID[name], n).tolist()


# Sub-block scales and mins with their top bits set for 4-7, so the 6-bit packing is exercised.
SC, MN = [1, 2, 3, 4, 33, 40, 50, 63], [0, 1, 2, 3, 17, 20, 48, 62]


# ------------------------------------------------------------------------------------------- hand-built blocks

def test_q5_0_and_q5_1():
    q = [(7 * j + 3) % 32 for j in range(32)]  # every fifth-bit pattern position used, both halves
    assert deq(q5_block(q, 0.5), "Q5_0", 32) == [0.5 * (v - 16) for v in q]
    assert deq(q5_block(q, 0.25, m=-2.0), "Q5_1", 32) == [0.25 * v - 2.0 for v in q]
    # by hand: weight 19 has q = (133 + 3) % 32 = 8, so Q5_0 gives 0.5 * (8 - 16) = -4
    assert deq(q5_block(q, 0.5), "Q5_0", 32)[19] == -4.0
    # two blocks in a row are independent
    two = q5_block(q, 0.5) + q5_block([31] * 32, 1.0)
    assert deq(two, "Q5_0", 64)[32:] == [15.0] * 32


def test_q4_k():
    q = [[(l + k) % 16 for l in range(32)] for k in range(8)]
    out = deq(q4_k_block(q, 1.0, 0.5, SC, MN), "Q4_K", 256)
    assert out == [1.0 * SC[k] * q[k][l] - 0.5 * MN[k] for k in range(8) for l in range(32)]
    # by hand: sub-block 4, weight 5: q = 9, scale 33, min 17 -> 33 * 9 - 0.5 * 17 = 288.5
    assert out[4 * 32 + 5] == 288.5


def test_q5_k():
    q = [[(3 * l + 5 * k) % 32 for l in range(32)] for k in range(8)]
    out = deq(q5_k_block(q, 0.25, 1.0, SC, MN), "Q5_K", 256)
    assert out == [0.25 * SC[k] * q[k][l] - MN[k] for k in range(8) for l in range(32)]
    # by hand: sub-block 7, weight 10: q = (30 + 35) % 32 = 1, scale 63, min 62 -> 0.25 * 63 - 62 = -46.25
    assert out[7 * 32 + 10] == -46.25


def test_q6_k():
    q = [(7 * w) % 64 for w in range(256)]
    sc = [-128, -7, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, -7, -1, 0, 127]
    out = deq(q6_k_block(q, 0.25, sc), "Q6_K", 256)
    assert out == [0.25 * sc[w // 16] * (q[w] - 32) for w in range(256)]
    # by hand: weight 200: q = 1400 % 64 = 56, group 12 has scale -7 -> 0.25 * -7 * 24 = -42
    assert out[200] == -42.0


def test_unsupported_types_are_named():
    for name in ("Q3_K", "IQ4_XS", "Q8_K"):
        _, block, size = GGML_TYPES[TYPE_ID[name]]
        with pytest.raises(ValueError, match=f"ggml type {name} cannot be dequantised.*Q6_K"):
            dequantize(np.zeros(size, np.uint8), TYPE_ID[name], block)
    with pytest.raises(ValueError, match="Q4_K: 143 bytes do not hold 256 weights"):
        dequantize(np.zeros(143, np.uint8), TYPE_ID["Q4_K"], 256)


# ------------------------------------------------------------------------------------------------ references

def test_matches_gguf_package_golden():
    golden = np.load(GOLDEN)
    for name in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"):
        want = golden[f"{name}_weights"]
        got = dequantize(golden[f"{name}_bytes"], TYPE_ID[name], len(want))
        np.testing.assert_array_equal(got, want, err_msg=name)  # same float32 operations in the same order


@pytest.mark.heavy
def test_matches_gguf_package_on_random_blocks():
    """Needs `pip install gguf` (a reference only; never a run-time dependency)."""
    gguf = pytest.importorskip("gguf")
    from gguf.quants import dequantize as reference
    rng = np.random.default_rng(0)
    f16_fields = {"Q5_0": [0], "Q5_1": [0, 2], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}
    for name, fields in f16_fields.items():
        qtype = gguf.GGMLQuantizationType[name]
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        blocks = rng.integers(0, 256, (300, size), dtype=np.uint8)
        for at in fields:  # finite scales (random bytes would give NaN and inf)
            blocks[:, at:at + 2] = rng.normal(0.0, 1.0, (300, 1)).astype("<f2").view(np.uint8)
        want = reference(blocks, qtype).reshape(-1)
        np.testing.assert_array_equal(dequantize(blocks.reshape(-1), TYPE_ID[name], 300 * block), want, err_msg=name)


# ------------------------------------------------------------------------------------------------ in a file

def test_gguf_file_with_k_quants_loads(tmp_path):
    """A file whose embedding is Q4_K and two FFN weights are Q5_K / Q6_K (rows of 256, as K-quants need) loads
    to the weights the hand formulas give, row by row, and to the logits of a model holding those weights."""
    model = tiny_model(seed=4, dim=256, head_dim=64)  # head_dim = dim // n_heads, as GGUF implies
    V, F = model.cfg.vocab_size, model.cfg.ffn_dim
    q4 = [[(l + k) % 16 for l in range(32)] for k in range(8)]
    q5 = [[(3 * l + 5 * k) % 32 for l in range(32)] for k in range(8)]
    q6 = [(7 * w) % 64 for w in range(256)]
    sc6 = [(-1) ** g * (g + 1) for g in range(16)]
    d = 1 / 1024  # a power of two: the hand formulas stay exact and the weights small
    blocks = {"token_embd.weight": (V, 12, q4_k_block(q4, d, d, SC, MN),
                                    [d * SC[k] * q4[k][l] - d * MN[k] for k in range(8) for l in range(32)]),
              "blk.0.ffn_up.weight": (F, 13, q5_k_block(q5, d, 2 * d, SC, MN),
                                      [d * SC[k] * q5[k][l] - 2 * d * MN[k] for k in range(8) for l in range(32)]),
              "blk.1.ffn_gate.weight": (F, 14, q6_k_block(q6, d, sc6),
                                        [d * sc6[w // 16] * (q6[w] - 32) for w in range(256)])}
    tensors = [t for t in gguf_tensors_of(model) if t[0] not in blocks]
    for name, (rows, gtype, block, _) in blocks.items():
        tensors.append((name, (rows, 256), gtype, block * rows))  # every row is the same block
    write_gguf(tmp_path / "k.gguf", gguf_metadata(model.cfg), tensors)

    _, sd = read_gguf(tmp_path / "k.gguf")
    hf = {"token_embd.weight": "model.embed_tokens.weight", "blk.0.ffn_up.weight": "model.layers.0.mlp.up_proj.weight",
          "blk.1.ffn_gate.weight": "model.layers.1.mlp.gate_proj.weight"}
    expected = {hf[name]: torch.tensor([row] * rows) for name, (rows, _, _, row) in blocks.items()}
    for key, want in expected.items():
        assert torch.equal(sd[key], want), key
    loaded, _ = load_model(str(tmp_path / "k.gguf"))
    model.load_state_dict(expected, strict=False)
    assert torch.equal(logits_of(loaded), logits_of(model))


def test_gguf_file_with_unsupported_type_names_it(tmp_path):
    model = tiny_model(seed=4, dim=256, head_dim=64)  # head_dim = dim // n_heads, as GGUF implies
    tensors = [t for t in gguf_tensors_of(model) if t[0] != "token_embd.weight"]
    tensors.append(("token_embd.weight", (model.cfg.vocab_size, 256), TYPE_ID["IQ4_XS"],
                    b"\0" * (136 * model.cfg.vocab_size)))
    write_gguf(tmp_path / "iq.gguf", gguf_metadata(model.cfg), tensors)
    with pytest.raises(ModelLoadError, match="token_embd.weight: ggml type IQ4_XS cannot be dequantised"):
        load_model(str(tmp_path / "iq.gguf"))
