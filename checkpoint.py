"""Weights I/O without the safetensors or gguf packages: safetensors read/write, a GGUF v2/v3 reader with numpy
dequantisation, and `load_model`, which turns a Hugging Face folder or a .gguf file into (Transformer, Tokenizer).

GGUF tensors come back in Hugging Face names and layout: dims reversed (GGUF lists the innermost first), q/k rows
of Llama files un-permuted (llama.cpp interleaves rotary pairs; HF uses rotate-half), quantised blocks expanded to
float32. Every problem a user can cause (missing, truncated or foreign files) raises ModelLoadError with one line
saying what is wrong and what to do.

Deliberately left out: writing GGUF, k-quants and the other ggml block types (a clear error names them),
big-endian files, lazy/partial loading (the whole model is materialised in memory), architectures other than
llama / qwen2 / qwen3, and GGUF Llama-3.1 rope_freqs factors other than the standard llama3 rule.
"""
import json
import math
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from model import ModelConfig, Transformer, rope_inv_freq
from tokenizer import Tokenizer


class ModelLoadError(RuntimeError):
    """One-line, actionable message; entry scripts print it without a traceback."""


# ------------------------------------------------------------------------------------------------- safetensors

ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
             "BOOL": torch.bool}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}


def read_safetensors(path) -> dict[str, torch.Tensor]:
    """All tensors of one .safetensors file (copied out of a memory map)."""
    path = Path(path)
    try:
        raw = np.memmap(path, dtype=np.uint8, mode="c")  # copy-on-write: writable for torch, file untouched
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read {path} ({e}); check that the file exists and is not empty") from None
    if len(raw) < 8:
        raise ModelLoadError(f"{path} is truncated ({len(raw)} bytes); download it again")
    n = int(raw[:8].view("<u8")[0])
    if 8 + n > len(raw):
        raise ModelLoadError(f"{path}: header says {n} bytes but the file has {len(raw)}; it is truncated or "
                             "not a safetensors file, download it again")
    try:
        header = json.loads(bytes(raw[8:8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelLoadError(f"{path} has no valid safetensors JSON header; it is not a safetensors file") from None
    base, out = 8 + n, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info.get("dtype") not in ST_DTYPES:
            raise ModelLoadError(f"{path}: tensor {name} has dtype {info.get('dtype')!r}, which is not supported")
        dtype, shape = ST_DTYPES[info["dtype"]], tuple(info["shape"])
        begin, end = info["data_offsets"]
        numel = math.prod(shape)
        if end - begin != numel * dtype.itemsize or base + end > len(raw):
            raise ModelLoadError(f"{path}: tensor {name} lies outside the file or has the wrong size; the file is "
                                 "truncated or corrupt, download it again")
        if numel == 0:
            out[name] = torch.empty(shape, dtype=dtype)
        else:
            out[name] = torch.frombuffer(raw, dtype=dtype, count=numel, offset=base + begin).reshape(shape).clone()
    return out


def write_safetensors(path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    # Widest dtypes first (then by name), so every tensor starts at a multiple of its element size.
    for name in sorted(tensors, key=lambda k: (-tensors[k].element_size(), k)):
        t = tensors[name].detach().cpu().contiguous()
        if t.dtype not in ST_NAMES:
            raise ValueError(f"cannot write tensor {name} of dtype {t.dtype} to safetensors")
        blob = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": ST_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # pad so the tensor data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def read_safetensors_folder(folder) -> dict[str, torch.Tensor]:
    """model.safetensors, or the shards listed in model.safetensors.index.json."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).exists():
                raise ModelLoadError(f"{folder / shard} (listed in {index.name}) is missing; download every shard")
            tensors.update(read_safetensors(folder / shard))
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise ModelLoadError(f"{index.name} lists {missing[0]} but no shard holds it; download the shards again")
        return tensors
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{folder} has no model.safetensors (nor an index of shards); download the weights")
    tensors = {}
    for f in files:
        tensors.update(read_safetensors(f))
    return tensors


# -------------------------------------------------------------------------------------------------------- GGUF

# ggml type id -> (name, weights per block, bytes per block)
GGML_TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
              7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36), 10: ("Q2_K", 256, 84),
              11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210),
              15: ("Q8_K", 256, 292), 24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8),
              28: ("F64", 1, 8), 30: ("BF16", 1, 2)}
# GGUF metadata value type -> struct format (8 = string, 9 = array are handled apart)
GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
GGUF_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8",
              12: "<f8"}


def dequantize(data: np.ndarray, ggml_type: int, n_elements: int) -> np.ndarray:
    """Raw little-endian ggml data (uint8) -> float32 array of n_elements."""
    name, block, size = GGML_TYPES.get(ggml_type, (str(ggml_type), 1, 1))
    if n_elements % block or len(data) != n_elements // block * size:
        raise ValueError(f"{name}: {len(data)} bytes do not hold {n_elements} weights")
    data = np.ascontiguousarray(data, dtype=np.uint8)
    if name == "F32":
        return data.view("<f4").copy()
    if name == "F16":
        return data.view("<f2").astype(np.float32)
    if name == "BF16":  # bfloat16 is the top half of a float32
        return (data.view("<u2").astype(np.uint32) << 16).view(np.float32)
    blocks = data.reshape(-1, size)  # (n_blocks, bytes per block)
    d = blocks[:, 0:2].copy().view("<f2").astype(np.float32)  # (n_blocks, 1) scale
    if name == "Q8_0":
        return (d * blocks[:, 2:].view(np.int8)).reshape(-1)
    if name in ("Q4_0", "Q4_1"):
        qs = blocks[:, 2:18] if name == "Q4_0" else blocks[:, 4:20]
        q = np.empty((len(blocks), 32), dtype=np.float32)
        q[:, :16], q[:, 16:] = qs & 0x0F, qs >> 4  # byte j holds weight j (low nibble) and j + 16 (high)
        if name == "Q4_0":
            q -= 8
            q *= d
            return q.reshape(-1)
        q *= d
        q += blocks[:, 2:4].copy().view("<f2").astype(np.float32)  # + m
        return q.reshape(-1)
    raise ValueError(f"ggml type {name} cannot be dequantised here (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)")


class _Reader:
    """Little-endian cursor over a memory-mapped file that turns running off the end into ModelLoadError."""

    def __init__(self, buf: np.ndarray, path: Path):
        self.buf, self.mv, self.pos, self.path = buf, memoryview(buf), 0, path

    def scalar(self, fmt: str):
        try:
            (v,) = struct.unpack_from(fmt, self.mv, self.pos)
        except struct.error:
            raise ModelLoadError(f"{self.path} is truncated inside its header; download it again") from None
        self.pos += struct.calcsize(fmt)
        return v

    def string(self) -> str:
        n = self.scalar("<Q")
        if self.pos + n > len(self.buf):
            raise ModelLoadError(f"{self.path} is truncated inside its header; download it again")
        s = bytes(self.mv[self.pos:self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def value(self, vtype: int):
        if vtype == 8:
            return self.string()
        if vtype == 9:
            item, count = self.scalar("<I"), self.scalar("<Q")
            if item in GGUF_NUMPY:  # numeric arrays in one numpy read
                nbytes = count * np.dtype(GGUF_NUMPY[item]).itemsize
                if self.pos + nbytes > len(self.buf):
                    raise ModelLoadError(f"{self.path} is truncated inside its header; download it again")
                arr = np.frombuffer(self.buf, dtype=GGUF_NUMPY[item], count=count, offset=self.pos)
                self.pos += nbytes
                return arr.tolist()
            return [self.value(item) for _ in range(count)]
        if vtype not in GGUF_SCALARS:
            raise ModelLoadError(f"{self.path} has an unknown metadata value type {vtype}; it is corrupt or too new")
        return self.scalar(GGUF_SCALARS[vtype])


def read_gguf_raw(path) -> tuple[dict, list[tuple[str, tuple, int, np.ndarray]]]:
    """Metadata and (name, shape in torch order, ggml type, raw bytes view) for every tensor."""
    path = Path(path)
    try:
        buf = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read {path} ({e}); check that the file exists and is not empty") from None
    if bytes(buf[:4]) != b"GGUF":
        raise ModelLoadError(f"{path} is not a GGUF file (starts with {bytes(buf[:4])!r}); pass a .gguf model file")
    r = _Reader(buf, path)
    r.pos = 4
    version = r.scalar("<I")
    if version not in (2, 3):
        raise ModelLoadError(f"{path} is GGUF version {version}; only versions 2 and 3 are supported")
    n_tensors, n_kv = r.scalar("<Q"), r.scalar("<Q")
    metadata = {}
    for _ in range(n_kv):
        key = r.string()
        metadata[key] = r.value(r.scalar("<I"))
    infos = []
    for _ in range(n_tensors):
        name = r.string()
        dims = [r.scalar("<Q") for _ in range(r.scalar("<I"))]
        infos.append((name, tuple(reversed(dims)), r.scalar("<I"), r.scalar("<Q")))  # torch order: outermost first
    align = int(metadata.get("general.alignment", 32))
    start = -(-r.pos // align) * align
    tensors = []
    for name, shape, gtype, offset in infos:
        if gtype not in GGML_TYPES:
            raise ModelLoadError(f"{path}: tensor {name} has unknown ggml type {gtype}; the file is corrupt or too new")
        _, block, size = GGML_TYPES[gtype]
        nbytes = math.prod(shape) // block * size
        begin = start + offset
        if begin + nbytes > len(buf):
            raise ModelLoadError(f"{path} is truncated: tensor {name} needs bytes up to {begin + nbytes}, the file "
                                 f"has {len(buf)}; download it again")
        tensors.append((name, shape, gtype, buf[begin:begin + nbytes]))
    return metadata, tensors


GGUF_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
GGUF_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def hf_name(gguf_name: str) -> str:
    """blk.3.attn_q.weight -> model.layers.3.self_attn.q_proj.weight; unknown names are kept as they are."""
    stem, _, leaf = gguf_name.rpartition(".")
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in GGUF_LAYER_NAMES:
        return f"model.layers.{parts[1]}.{GGUF_LAYER_NAMES[parts[2]]}.{leaf}"
    if stem in GGUF_TOP_NAMES:
        return f"{GGUF_TOP_NAMES[stem]}.{leaf}"
    return gguf_name


def unpermute(w, n_head: int):
    """Undo llama.cpp's q/k row permutation: within each head it stores rotary pairs interleaved (x0, y0, x1, y1,
    ...); Hugging Face's rotate-half wants all x then all y. Works on weights (d_out, d_in) and biases (d_out,),
    numpy arrays or torch tensors. A row gather, not a transpose of the whole weight."""
    rows = np.arange(len(w)).reshape(n_head, -1, 2).transpose(0, 2, 1).reshape(-1)  # (n_head, 2, head_dim//2)
    return w[rows] if isinstance(w, np.ndarray) else w[torch.from_numpy(rows)]


def read_gguf(path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Metadata and dequantised float32 tensors in Hugging Face names and layout."""
    metadata, raw = read_gguf_raw(path)
    arch = metadata.get("general.architecture", "llama")
    heads = {"q_proj": metadata.get(f"{arch}.attention.head_count"),
             "k_proj": metadata.get(f"{arch}.attention.head_count_kv", metadata.get(f"{arch}.attention.head_count"))}
    tensors = {}
    for name, shape, gtype, data in raw:
        try:
            w = dequantize(data, gtype, math.prod(shape)).reshape(shape)
        except ValueError as e:
            raise ModelLoadError(f"{path}: tensor {name}: {e}; convert the model to F16, Q8_0, Q4_0 or Q4_1") from None
        key = hf_name(name)
        proj = key.split(".")[-2]
        if arch == "llama" and proj in heads:  # only llama.cpp's "llama" conversion permutes q/k
            if not heads[proj]:
                raise ModelLoadError(f"{path} lacks {arch}.attention.head_count; cannot un-permute {name}")
            w = unpermute(w, heads[proj])
        tensors[key] = torch.from_numpy(w)
    return metadata, tensors


def config_from_gguf(metadata: dict, tie_embeddings: bool = True):
    """ModelConfig from GGUF metadata ({arch}.* keys; SmolLM2's file says arch "llama")."""
    arch = metadata.get("general.architecture")
    if arch not in ("llama", "qwen2", "qwen3"):
        raise ModelLoadError(f"GGUF architecture {arch!r} is not supported (llama, qwen2, qwen3)")

    def get(key, default=None):
        value = metadata.get(f"{arch}.{key}", default)
        if value is None:
            raise ModelLoadError(f"GGUF metadata lacks {arch}.{key}; the file is incomplete")
        return value

    dim, n_heads = int(get("embedding_length")), int(get("attention.head_count"))
    vocab = metadata.get(f"{arch}.vocab_size") or len(metadata.get("tokenizer.ggml.tokens", []))
    return ModelConfig(
        vocab_size=int(vocab), dim=dim, n_layers=int(get("block_count")), n_heads=n_heads,
        n_kv_heads=int(get("attention.head_count_kv", n_heads)),
        head_dim=int(get("attention.key_length", dim // n_heads)), ffn_dim=int(get("feed_forward_length")),
        rope_theta=f32(get("rope.freq_base", 10000.0)), rms_eps=f32(get("attention.layer_norm_rms_epsilon", 1e-5)),
        max_seq_len=int(get("context_length", 2048)), tie_embeddings=tie_embeddings,
        qkv_bias=arch == "qwen2", qk_norm=arch == "qwen3")


def f32(x) -> float:
    """A float32 metadata value as the short decimal it was written from (1e-05, not 9.999999747378752e-06)."""
    return float(str(np.float32(x)))


def llama3_scaling_from_factors(factors: torch.Tensor, cfg) -> dict:
    """Llama-3.1-style GGUFs store per-frequency rope divisors (rope_freqs.weight) instead of the rule's numbers.
    Recover the rule with Meta's standard band (1, 4, 8192) and check that it reproduces every factor."""
    scaling = {"rope_type": "llama3", "factor": float(factors.max()), "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    base = rope_inv_freq(replace(cfg, rope_scaling=None))
    got = base / rope_inv_freq(replace(cfg, rope_scaling=scaling))
    if got.shape != factors.shape or not torch.allclose(got, factors.float(), rtol=1e-3):
        raise ModelLoadError("rope_freqs.weight does not follow the standard llama3 rule; this GGUF is not supported")
    return scaling


# ------------------------------------------------------------------------------------------------- load_model

def load_model(spec: str | None = None, device="cpu", dtype=torch.float32):
    """(Transformer, Tokenizer) from None (the bundled SmolLM2-135M-Instruct GGUF), a Hugging Face folder
    (config.json, *.safetensors, tokenizer.json) or a .gguf file."""
    if spec is None:
        import assets
        try:
            spec = assets.asset_path(assets.SMOLLM2_GGUF)
        except assets.AssetError as e:
            raise ModelLoadError(str(e)) from None
    path = Path(spec).expanduser()
    if not path.exists():
        raise ModelLoadError(f"{path} does not exist; pass a Hugging Face model folder or a .gguf file")
    if path.is_dir():
        cfg, tensors, tok = _hf_folder(path)
    elif path.suffix == ".gguf":
        cfg, tensors, tok = _gguf_file(path)
    else:
        raise ModelLoadError(f"{path} is neither a folder nor a .gguf file; pass a Hugging Face folder or a .gguf")
    return _build(cfg, tensors, path, device, dtype), tok


def _hf_folder(path: Path):
    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path} has no config.json; it is not a Hugging Face model folder")
    try:
        cfg = ModelConfig.from_hf(json.loads((path / "config.json").read_text()))
    except (ValueError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path / 'config.json'}: {e}") from None
    if not (path / "tokenizer.json").exists():
        raise ModelLoadError(f"{path} has no tokenizer.json; download it with the weights")
    try:
        tok = Tokenizer.from_files(path / "tokenizer.json", path / "tokenizer_config.json")
    except (ValueError, KeyError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path / 'tokenizer.json'}: {e}") from None
    return cfg, read_safetensors_folder(path), tok


def _gguf_file(path: Path):
    metadata, tensors = read_gguf(path)
    cfg = config_from_gguf(metadata, tie_embeddings="lm_head.weight" not in tensors)
    factors = tensors.pop("rope_freqs.weight", None)
    if factors is not None:
        cfg = replace(cfg, rope_scaling=llama3_scaling_from_factors(factors, cfg))
    try:
        tok = Tokenizer.from_gguf(metadata)
    except (ValueError, KeyError) as e:
        raise ModelLoadError(f"{path}: tokenizer: {e}") from None
    return cfg, tensors, tok


def _build(cfg, tensors: dict[str, torch.Tensor], path: Path, device, dtype):
    with torch.device("meta"):  # shapes only: no random init to throw away (gigabytes at 8B)
        model = Transformer(cfg)
    own = model.state_dict()
    expected = set(own)
    optional = {"lm_head.weight"} if cfg.tie_embeddings else set()
    missing = sorted(expected - set(tensors) - optional)
    unexpected = sorted(k for k in set(tensors) - expected if not k.endswith("rotary_emb.inv_freq"))
    if missing or unexpected:
        what = f"lacks {missing[0]}" if missing else f"has an unexpected tensor {unexpected[0]}"
        raise ModelLoadError(f"{path} {what} ({len(missing)} missing, {len(unexpected)} unexpected); "
                             "it does not match its config or is not a Llama/Qwen decoder")
    for k in expected & set(tensors):
        want = tuple(own[k].shape)
        if tuple(tensors[k].shape) != want:
            raise ModelLoadError(f"{path}: {k} has shape {tuple(tensors[k].shape)}, the config implies {want}")
    model.load_state_dict({k: v for k, v in tensors.items() if k in expected}, strict=False, assign=True)
    if cfg.tie_embeddings:  # assign gave the head its own Parameter object; make it the embedding's again
        model.lm_head.weight = model.model.embed_tokens.weight
    model.inv_freq = rope_inv_freq(cfg)  # the one buffer a checkpoint does not hold
    return model.to(device=device, dtype=dtype).eval()
