"""Checkpoint I/O tests without assets: safetensors round trips (single and sharded), HF folder loading to
identical logits, hand-computed ggml dequantisation, a hand-built GGUF (with llama.cpp's q/k permutation) loading
to the same logits, and the error messages for broken inputs."""
import json
import struct

import numpy as np
import pytest
import torch

from checkpoint import (ModelLoadError, dequantize, llama3_scaling_from_factors, load_model, read_gguf,
                        read_safetensors, unpermute, write_safetensors)
from model import rope_inv_freq
from tests.tiny_model import tiny_model
from tokenizer import bytes_to_unicode

B2U = bytes_to_unicode()


# ----------------------------------------------------------------------------------------------- helpers

def hf_config(cfg, tied: bool) -> dict:
    return {"model_type": "llama", "vocab_size": cfg.vocab_size, "hidden_size": cfg.dim,
            "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim, "intermediate_size": cfg.ffn_dim,
            "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.rms_eps, "max_position_embeddings": cfg.max_seq_len,
            "tie_word_embeddings": tied}


def tokenizer_json() -> dict:
    vocab = {B2U[b]: b for b in range(256)}
    vocab["ab"] = 256
    return {"model": {"type": "BPE", "vocab": vocab, "merges": [["a", "b"]]},
            "added_tokens": [{"id": 257, "content": "<|im_start|>", "special": True},
                             {"id": 258, "content": "<|im_end|>", "special": True}],
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}}


def write_hf_folder(folder, model, tied=True, shards=1):
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf_config(model.cfg, tied)))
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json()))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    sd = {k: v for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    if shards == 1:
        write_safetensors(folder / "model.safetensors", sd, {"format": "pt"})
        return
    names = sorted(sd)
    weight_map = {}
    for s in range(shards):
        part = names[s::shards]
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors(folder / fname, {k: sd[k] for k in part})
        weight_map.update({k: fname for k in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def logits_of(model, tokens=((1, 5, 9, 2, 44, 96, 0, 13),)):
    with torch.no_grad():
        return model(torch.tensor(tokens))


# GGUF writing, just enough for the tests: (value type, value) metadata and raw tensor blobs.
def gguf_value(vtype: int, value) -> bytes:
    scal = {4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q"}
    if vtype == 8:
        raw = value.encode("utf-8")
        return struct.pack("<Q", len(raw)) + raw
    if vtype == 9:
        item, items = value
        return struct.pack("<IQ", item, len(items)) + b"".join(gguf_value(item, v) for v in items)
    return struct.pack(scal[vtype], value)


def write_gguf(path, metadata: dict, tensors: list, alignment=32, version=3):
    """tensors: (name, torch shape, ggml type, raw bytes); dims are written innermost first."""
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(metadata))
    for key, (vtype, value) in metadata.items():
        head += gguf_value(8, key) + struct.pack("<I", vtype) + gguf_value(vtype, value)
    offset, blobs = 0, b""
    for name, shape, gtype, raw in tensors:
        head += gguf_value(8, name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in reversed(shape))
        head += struct.pack("<IQ", gtype, offset)
        pad = -len(raw) % alignment
        blobs += raw + b"\0" * pad
        offset += len(raw) + pad
    head += b"\0" * (-len(head) % alignment)
    path.write_bytes(head + blobs)


def llama_cpp_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """What llama.cpp's converter does to HF q/k rows (interleave each head's two rotary halves)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


HF_TO_GGUF = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
              "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down"}


def gguf_tensors_of(model, f16=False) -> list:
    out = []
    cfg = model.cfg
    for k, v in model.state_dict().items():
        if k == "lm_head.weight" and cfg.tie_embeddings:
            continue
        if k.startswith("model.layers."):
            _, _, i, *mid, leaf = k.split(".")
            name = f"blk.{i}.{HF_TO_GGUF['.'.join(mid)]}.{leaf}"
        else:
            name = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                    "lm_head.weight": "output.weight"}[k]
        if name.endswith("attn_q.weight"):
            v = llama_cpp_permute(v, cfg.n_heads)
        if name.endswith("attn_k.weight"):
            v = llama_cpp_permute(v, cfg.n_kv_heads)
        if f16 and v.dim() == 2:
            out.append((name, tuple(v.shape), 1, v.half().numpy().tobytes()))
        else:
            out.append((name, tuple(v.shape), 0, v.float().numpy().tobytes()))
    return out


def gguf_metadata(cfg) -> dict:
    tokens = [B2U[b] for b in range(256)] + ["<|im_start|>", "<|im_end|>"]
    return {
        "general.architecture": (8, "llama"), "llama.block_count": (4, cfg.n_layers),
        "llama.context_length": (4, cfg.max_seq_len), "llama.embedding_length": (4, cfg.dim),
        "llama.feed_forward_length": (4, cfg.ffn_dim), "llama.attention.head_count": (4, cfg.n_heads),
        "llama.attention.head_count_kv": (4, cfg.n_kv_heads), "llama.rope.freq_base": (6, cfg.rope_theta),
        "llama.attention.layer_norm_rms_epsilon": (6, cfg.rms_eps), "llama.vocab_size": (4, cfg.vocab_size),
        "tokenizer.ggml.model": (8, "gpt2"), "tokenizer.ggml.pre": (8, "smollm"),
        "tokenizer.ggml.tokens": (9, (8, tokens)), "tokenizer.ggml.token_type": (9, (5, [1] * 256 + [3, 3])),
        "tokenizer.ggml.merges": (9, (8, [])), "tokenizer.ggml.bos_token_id": (4, 256),
        "tokenizer.ggml.eos_token_id": (4, 257), "tokenizer.ggml.add_bos_token": (7, False),
    }


def f16_bytes(x: float) -> bytes:
    return np.float16(x).tobytes()


# ----------------------------------------------------------------------------------------------- safetensors

def test_safetensors_round_trip_dtypes(tmp_path):
    tensors = {"a": torch.randn(3, 5), "b": torch.randn(7).half(), "c": torch.randn(2, 2, 3).bfloat16(),
               "d": torch.arange(6, dtype=torch.int64).reshape(2, 3), "e": torch.zeros(0, 4)}
    write_safetensors(tmp_path / "x.safetensors", tensors, {"format": "pt"})
    raw = (tmp_path / "x.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    assert n % 8 == 0 and header["__metadata__"] == {"format": "pt"}
    # widest first, then by name: d (I64, 48 bytes), a (F32, 60), e (F32, 0), b (F16, 14), c (BF16, 24)
    assert header["c"] == {"dtype": "BF16", "shape": [2, 2, 3], "data_offsets": [122, 146]}
    assert all(header[k]["data_offsets"][0] % tensors[k].element_size() == 0 for k in tensors)
    back = read_safetensors(tmp_path / "x.safetensors")
    assert set(back) == set(tensors)
    for k in tensors:
        assert back[k].dtype == tensors[k].dtype and torch.equal(back[k], tensors[k])


def test_safetensors_truncated(tmp_path):
    write_safetensors(tmp_path / "x.safetensors", {"a": torch.randn(64)})
    raw = (tmp_path / "x.safetensors").read_bytes()
    (tmp_path / "x.safetensors").write_bytes(raw[:-10])
    with pytest.raises(ModelLoadError, match="truncated"):
        read_safetensors(tmp_path / "x.safetensors")


# ------------------------------------------------------------------------------------------------ HF folder

@pytest.mark.parametrize("tied,shards", [(True, 1), (False, 1), (False, 3)])
def test_hf_folder_loads_to_identical_logits(tmp_path, tied, shards):
    model = tiny_model(seed=1, tie_embeddings=tied)
    write_hf_folder(tmp_path / "m", model, tied=tied, shards=shards)
    loaded, tok = load_model(str(tmp_path / "m"))
    assert torch.equal(logits_of(loaded), logits_of(model))
    assert tok.encode("ab<|im_end|>") == [256, 258] and tok.eos_ids == {258}
    half, _ = load_model(str(tmp_path / "m"), dtype=torch.bfloat16)
    assert half.model.embed_tokens.weight.dtype == torch.bfloat16
    # built on the meta device and assigned: every tensor is real, and a tied head is the embedding itself
    for m in (loaded, half):
        assert not any(t.is_meta for t in [*m.parameters(), *m.buffers()])
        assert (m.lm_head.weight is m.model.embed_tokens.weight) == tied
    assert torch.equal(loaded.inv_freq, model.inv_freq)


def test_hf_folder_errors(tmp_path):
    model = tiny_model(seed=1)
    write_hf_folder(tmp_path / "m", model)
    (tmp_path / "m" / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path / "m"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nowhere"))
    # a tensor missing from the weights
    write_hf_folder(tmp_path / "m2", model)
    sd = read_safetensors(tmp_path / "m2" / "model.safetensors")
    del sd["model.layers.1.mlp.up_proj.weight"]
    write_safetensors(tmp_path / "m2" / "model.safetensors", sd)
    with pytest.raises(ModelLoadError, match="lacks model.layers.1.mlp.up_proj.weight"):
        load_model(str(tmp_path / "m2"))
    # no tokenizer.json, and weights that are not safetensors
    write_hf_folder(tmp_path / "m4", model)
    (tmp_path / "m4" / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match="no tokenizer.json"):
        load_model(str(tmp_path / "m4"))
    (tmp_path / "m2" / "model.safetensors").write_bytes(struct.pack("<Q", 5) + b"hello" + b"\0" * 16)
    with pytest.raises(ModelLoadError, match="not a safetensors file"):
        load_model(str(tmp_path / "m2"))
    # a shard listed in the index but absent
    write_hf_folder(tmp_path / "m3", model, tied=False, shards=2)
    (tmp_path / "m3" / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        load_model(str(tmp_path / "m3"))


# --------------------------------------------------------------------------------------------- dequantisation

def test_dequantize_q8_0():
    q = np.arange(-16, 16, dtype=np.int8)
    block = f16_bytes(0.5) + q.tobytes()
    out = dequantize(np.frombuffer(block * 2, dtype=np.uint8), 8, 64)
    assert out.dtype == np.float32 and out.shape == (64,)
    assert out[0] == -8.0 and out[1] == -7.5 and out[31] == 7.5 and out[32] == -8.0


def test_dequantize_q4_0_nibble_order():
    qs = bytes((j | ((15 - j) << 4)) for j in range(16))  # weight j = j (low nibble), weight j+16 = 15-j (high)
    out = dequantize(np.frombuffer(f16_bytes(2.0) + qs, dtype=np.uint8), 2, 32)
    expected = [2.0 * (j - 8) for j in range(16)] + [2.0 * (15 - j - 8) for j in range(16)]
    assert out.tolist() == expected


def test_dequantize_q4_1():
    qs = bytes((j | (3 << 4)) for j in range(16))
    out = dequantize(np.frombuffer(f16_bytes(0.25) + f16_bytes(-1.0) + qs, dtype=np.uint8), 3, 32)
    assert out.tolist() == [0.25 * j - 1.0 for j in range(16)] + [0.25 * 3 - 1.0] * 16


def test_dequantize_float_types():
    x = np.array([1.5, -2.25, 3e-3], dtype=np.float32)
    assert dequantize(np.frombuffer(x.tobytes(), np.uint8), 0, 3).tolist() == x.tolist()
    assert dequantize(np.frombuffer(x.astype(np.float16).tobytes(), np.uint8), 1, 3).tolist() == \
        x.astype(np.float16).astype(np.float32).tolist()
    bf = torch.tensor(x).bfloat16()
    assert dequantize(np.frombuffer(bf.view(torch.uint8).numpy().tobytes(), np.uint8), 30, 3).tolist() == \
        bf.float().tolist()
    with pytest.raises(ValueError, match="Q3_K"):  # a ggml type we do not dequantise, named
        dequantize(np.zeros(110, np.uint8), 11, 256)


def test_unpermute_inverts_llama_cpp_permute():
    w = torch.randn(4 * 8, 5)
    assert torch.equal(unpermute(llama_cpp_permute(w, 4), 4), w)
    # Head 0 of a head_dim-4 weight: llama.cpp order is rows (0, 2, 1, 3) of the HF order.
    w = torch.arange(4.0)[:, None]
    assert llama_cpp_permute(w, 1)[:, 0].tolist() == [0.0, 2.0, 1.0, 3.0]


# ------------------------------------------------------------------------------------------------------ GGUF

@pytest.mark.parametrize("tied", [True, False])
def test_gguf_round_trip_same_logits(tmp_path, tied):
    model = tiny_model(seed=2, tie_embeddings=tied)
    write_gguf(tmp_path / "m.gguf", gguf_metadata(model.cfg), gguf_tensors_of(model))
    loaded, tok = load_model(str(tmp_path / "m.gguf"))
    assert loaded.cfg == model.cfg
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == tied
    assert torch.equal(logits_of(loaded), logits_of(model))
    assert tok.bos_id == 256 and tok.eos_ids == {257} and tok.encode("1<|im_end|>") == [ord("1"), 257]


def test_gguf_f16_and_q8_0_tensors(tmp_path):
    model = tiny_model(seed=3)
    tensors = gguf_tensors_of(model, f16=True)
    # Replace the embedding with a Q8_0 tensor whose every block is scale 0.5, q = -16..15.
    V, D = model.cfg.vocab_size, model.cfg.dim
    block = f16_bytes(0.5) + np.arange(-16, 16, dtype=np.int8).tobytes()
    tensors = [t for t in tensors if t[0] != "token_embd.weight"]
    tensors.append(("token_embd.weight", (V, D), 8, block * (V * D // 32)))
    write_gguf(tmp_path / "m.gguf", gguf_metadata(model.cfg), tensors, alignment=64)
    meta, sd = read_gguf(tmp_path / "m.gguf")
    assert meta["llama.block_count"] == model.cfg.n_layers and meta["tokenizer.ggml.tokens"][256] == "<|im_start|>"
    emb = sd["model.embed_tokens.weight"]
    assert emb.shape == (V, D) and emb[0, :3].tolist() == [-8.0, -7.5, -7.0] and emb[5, 31].item() == 7.5
    q = model.state_dict()["model.layers.0.self_attn.q_proj.weight"]
    assert torch.equal(sd["model.layers.0.self_attn.q_proj.weight"], q.half().float())


def test_gguf_errors(tmp_path):
    model = tiny_model(seed=2)
    good = tmp_path / "m.gguf"
    write_gguf(good, gguf_metadata(model.cfg), gguf_tensors_of(model))
    raw = good.read_bytes()
    cases = {
        "bad_magic.gguf": (b"GGML" + raw[4:], "not a GGUF file"),
        "header.gguf": (raw[:200], "truncated inside its header"),
        "data.gguf": (raw[:-100], "truncated: tensor"),
        "version.gguf": (raw[:4] + struct.pack("<I", 9) + raw[8:], "version 9"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ModelLoadError, match=message):
            load_model(str(tmp_path / name))
    wide = tiny_model(seed=2, dim=256, head_dim=64)  # rows of 256, as K-quants need
    tensors = [t for t in gguf_tensors_of(wide) if t[0] != "token_embd.weight"]
    V = wide.cfg.vocab_size
    tensors.append(("token_embd.weight", (V, 256), 11, b"\0" * (V * 110)))  # a Q3_K tensor
    write_gguf(tmp_path / "q3k.gguf", gguf_metadata(wide.cfg), tensors)
    with pytest.raises(ModelLoadError, match="Q3_K"):
        load_model(str(tmp_path / "q3k.gguf"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="neither a folder nor a .gguf"):
        load_model(str(tmp_path / "weights.bin"))


def test_llama3_rope_factors_recovered():
    """Llama-3.1 GGUFs carry rope_freqs.weight = base frequency / scaled frequency; the rule is recovered."""
    cfg = tiny_model().cfg.__class__(vocab_size=8, dim=64, n_layers=1, n_heads=1, n_kv_heads=1, head_dim=64,
                                     ffn_dim=8, rope_theta=500000.0)
    rule = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}
    factors = rope_inv_freq(cfg) / rope_inv_freq(cfg.__class__(**{**cfg.__dict__, "rope_scaling": rule}))
    assert factors[0] == 1.0 and factors[-1] == 32.0  # high frequencies kept, the lowest divided by the factor
    assert llama3_scaling_from_factors(factors, cfg) == rule
    with pytest.raises(ModelLoadError, match="rope_freqs"):
        llama3_scaling_from_factors(torch.linspace(1, 32, 32), cfg)
