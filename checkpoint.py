"""Weights I/O without the safetensors, gguf or huggingface_hub packages: safetensors read/write, a GGUF v2/v3
reader with numpy dequantisation, and `load_model`, which turns a Hugging Face folder, a .gguf file or ORG/NAME
already in the local Hugging Face cache into (Transformer, Tokenizer).

A model either runs as transformers runs it or is refused: load_model first judges the declared architecture
(config.json's model_type and architectures, GGUF's general.architecture) against SUPPORTED_ARCHITECTURES /
SUPPORTED_GGUF_ARCHITECTURES, then every setting that changes the forward (model.ModelConfig.from_hf, or the GGUF
metadata), then the tensor names and shapes in the file headers, and only then reads a weight.

GGUF tensors come back in Hugging Face names and layout: dims reversed (GGUF lists the innermost first), q/k rows
of Llama files un-permuted (llama.cpp interleaves rotary pairs; HF uses rotate-half), quantised blocks (Q8_0,
Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K) expanded to float32. Every problem a user can cause (missing,
truncated or foreign files, an architecture or setting not implemented) raises ModelLoadError with one line
saying what is wrong and what to do.

Deliberately left out: writing GGUF; Q2_K, Q3_K, the i-quants and the other ggml block types (a clear error
names them); big-endian files; lazy/partial loading (the whole model is materialised in memory); downloading
(a model missing from the cache gets the command that would fetch it); every architecture outside the two
tables below (refused by name), and GGUF Llama-3.1 rope_freqs factors other than the standard llama3 rule.
"""
import json
import math
import os
import re
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from model import ModelConfig, Transformer, rope_inv_freq
from tokenizer import Tokenizer


class ModelLoadError(RuntimeError):
    """One-line, actionable message; entry scripts print it without a traceback."""


# The decoders this engine runs exactly as transformers does, by the Hugging Face model_type config.json declares:
# (the architecture class it names, the model families released under it). Refusals list these, and so should
# the README. model.HF_FAMILIES holds how each one's config.json is read.
SUPPORTED_ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "Llama 3.x, SmolLM2"),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2, Qwen2.5"),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3"),
    "mistral": ("MistralForCausalLM", "Mistral without sliding-window attention"),
}
# GGUF general.architecture values read here (llama.cpp writes SmolLM2 as "llama"; also Mixtral, whose experts
# are refused from the metadata).
SUPPORTED_GGUF_ARCHITECTURES = {"llama": "Llama 3.x, SmolLM2", "qwen2": "Qwen2, Qwen2.5", "qwen3": "Qwen3"}


def _hf_list() -> str:
    return ", ".join(f"{cls} ({names})" for cls, names in SUPPORTED_ARCHITECTURES.values())


def _gguf_list() -> str:
    return ", ".join(f"{arch} ({names})" for arch, names in SUPPORTED_GGUF_ARCHITECTURES.items())


def hf_model_type(cfg: dict, where="config.json") -> str:
    """The supported model_type a config.json declares, judged from `model_type` (what transformers builds by)
    and `architectures` before any weight is read; anything else raises ModelLoadError naming what it declares
    and listing what this engine runs."""
    mtype, archs = cfg.get("model_type"), cfg.get("architectures") or []
    if mtype is None:  # a hand-written config may name only its class
        mtype = next((t for t, (cls, _) in SUPPORTED_ARCHITECTURES.items() if archs == [cls]), None)
    expected = SUPPORTED_ARCHITECTURES.get(mtype, (None,))[0]
    if expected is None or any(a != expected for a in archs):
        declared = ", ".join(archs) or "no architecture"
        raise ModelLoadError(f"{where}: {declared} (model_type {mtype!r}) is not supported; this engine runs "
                             f"{_hf_list()}")
    return mtype


# ------------------------------------------------------------------------------------------------- safetensors

ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
             "BOOL": torch.bool}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}


def read_safetensors(path) -> dict[str, torch.Tensor]:
    """All tensors of one .safetensors file (copied out of a memory map)."""
    raw, header, base = _safetensors_header(path)
    out = {}
    for name, info in header.items():
        dtype, shape = ST_DTYPES[info["dtype"]], tuple(info["shape"])
        begin = info["data_offsets"][0]
        numel = math.prod(shape)
        if numel == 0:
            out[name] = torch.empty(shape, dtype=dtype)
        else:
            out[name] = torch.frombuffer(raw, dtype=dtype, count=numel, offset=base + begin).reshape(shape).clone()
    return out


def _safetensors_header(path) -> tuple[np.ndarray, dict, int]:
    """(memory map, {name: {dtype, shape, data_offsets}} checked against the file size, where the data starts).
    Reads only the header: the tensor bytes stay on disk until someone copies them out."""
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
    header.pop("__metadata__", None)
    for name, info in header.items():
        if info.get("dtype") not in ST_DTYPES:
            raise ModelLoadError(f"{path}: tensor {name} has dtype {info.get('dtype')!r}, which is not supported")
        begin, end = info["data_offsets"]
        if end - begin != math.prod(info["shape"]) * ST_DTYPES[info["dtype"]].itemsize or 8 + n + end > len(raw):
            raise ModelLoadError(f"{path}: tensor {name} lies outside the file or has the wrong size; the file is "
                                 "truncated or corrupt, download it again")
    return raw, header, 8 + n


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
    tensors = {}
    for f in _safetensors_files(folder):
        tensors.update(read_safetensors(f))
    _check_index_covered(folder, tensors)
    return tensors


def safetensors_folder_shapes(folder) -> dict[str, tuple]:
    """{name: shape} of every tensor in the folder's weights, from the headers alone."""
    shapes = {}
    for f in _safetensors_files(folder):
        shapes.update({name: tuple(info["shape"]) for name, info in _safetensors_header(f)[1].items()})
    _check_index_covered(folder, shapes)
    return shapes


def _safetensors_files(folder) -> list[Path]:
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        for shard in shards:
            if not (folder / shard).exists():
                raise ModelLoadError(f"{folder / shard} (listed in {index.name}) is missing; download every shard")
        return [folder / shard for shard in shards]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{folder} has no model.safetensors (nor an index of shards); download the weights")
    return files


def _check_index_covered(folder, names) -> None:
    index = Path(folder) / "model.safetensors.index.json"
    if index.exists():
        missing = sorted(set(json.loads(index.read_text())["weight_map"]) - set(names))
        if missing:
            raise ModelLoadError(f"{index.name} lists {missing[0]} but no shard holds it; download the shards again")


# -------------------------------------------------------------------------------------------------------- GGUF

# ggml type id -> (name, weights per block, bytes per block). Types we cannot dequantise are listed too, so a file
# that holds them is still read far enough for the error to name the type.
GGML_TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
              7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36), 10: ("Q2_K", 256, 84),
              11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210),
              15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
              19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82),
              23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8),
              28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54),
              35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17)}
# GGUF metadata value type -> struct format (8 = string, 9 = array are handled apart)
GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
GGUF_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8",
              12: "<f8"}


def dequantize(data: np.ndarray, ggml_type: int, n_elements: int) -> np.ndarray:
    """Raw little-endian ggml data (uint8) -> float32 array of n_elements."""
    name, block, size = GGML_TYPES.get(ggml_type, (str(ggml_type), 1, 1))
    if name not in DEQUANTIZERS:
        raise ValueError(f"ggml type {name} cannot be dequantised here (supported: {', '.join(DEQUANTIZERS)})")
    if n_elements % block or len(data) != n_elements // block * size:
        raise ValueError(f"{name}: {len(data)} bytes do not hold {n_elements} weights")
    data = np.ascontiguousarray(data, dtype=np.uint8)
    if block == 1:
        return DEQUANTIZERS[name](data)
    return DEQUANTIZERS[name](data.reshape(-1, size)).reshape(-1)  # (n_blocks, bytes per block)


# Block layouts are ggml's (ggml-common.h). Each function takes (n_blocks, bytes per block) uint8 and returns
# float32 weights that reshape to (n_blocks, weights per block). Arithmetic is float32 in ggml's order (scale
# times sub-block scale first, then times q), which makes us bit-exact with the gguf package, and in place, so a
# tensor costs one float32 copy plus a few bytes per weight.

def _f16(blocks: np.ndarray, at: int) -> np.ndarray:
    """(n_blocks, 1) float32 from the f16 at byte `at` of every block."""
    return blocks[:, at:at + 2].copy().view("<f2").astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(..., k) bytes -> (..., 2k) 4-bit values: all the low nibbles, then all the high ones (ggml's order)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _bits(qh: np.ndarray) -> np.ndarray:
    """(..., k) bytes -> (..., 8k) bits, least significant first (bit j of a little-endian integer is item j)."""
    return np.unpackbits(qh, axis=-1, bitorder="little")


def _q8_0(b):  # f16 d, 32 x int8 q: w = d * q
    return _f16(b, 0) * b[:, 2:].view(np.int8)


def _q4_0(b):  # f16 d, 16 bytes of nibbles: w = d * (q - 8)
    q = _nibbles(b[:, 2:18]).astype(np.float32)
    q -= 8
    q *= _f16(b, 0)
    return q


def _q4_1(b):  # f16 d, f16 m, 16 bytes of nibbles: w = d * q + m
    q = _nibbles(b[:, 4:20]).astype(np.float32)
    q *= _f16(b, 0)
    q += _f16(b, 2)
    return q


def _q5_0(b):  # f16 d, 4 bytes of fifth bits (bit j for weight j), 16 bytes of nibbles: w = d * (q - 16)
    q = (_nibbles(b[:, 6:22]) | _bits(b[:, 2:6]) << 4).astype(np.float32)
    q -= 16
    q *= _f16(b, 0)
    return q


def _q5_1(b):  # f16 d, f16 m, 4 bytes of fifth bits, 16 bytes of nibbles: w = d * q + m
    q = (_nibbles(b[:, 8:24]) | _bits(b[:, 4:8]) << 4).astype(np.float32)
    q *= _f16(b, 0)
    q += _f16(b, 2)
    return q


def _k_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 12 packed bytes of Q4_K/Q5_K -> (scales, mins), each (n_blocks, 8) 6-bit values. Sub-blocks 0-3 use
    the low 6 bits of bytes 0-3 (scale) and 4-7 (min); sub-blocks 4-7 take their low 4 bits from the nibbles
    of bytes 8-11 and their top 2 bits from the spare top bits of bytes 0-3 (scale) and 4-7 (min)."""
    scales = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 0x0F) | (s[:, 0:4] >> 6) << 4], axis=1)
    mins = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | (s[:, 4:8] >> 6) << 4], axis=1)
    return scales, mins


def _k_low4(qs: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K's 128 bytes -> (n_blocks, 8, 32) low 4 bits: each 32-byte run holds two sub-blocks, the even
    one in the low nibbles and the odd one in the high nibbles."""
    return _nibbles(qs.reshape(len(qs), 4, 32)).reshape(len(qs), 8, 32)


def _scale_and_shift(q: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K: w = d * scale * q - dmin * min per 32-weight sub-block; q is (n_blocks, 8, 32) float32."""
    scales, mins = _k_scales(b[:, 4:16])
    q *= (_f16(b, 0) * scales)[:, :, None]
    q -= (_f16(b, 2) * mins)[:, :, None]
    return q


def _q4_k(b):  # f16 d, f16 dmin, 12 bytes of scales and mins, 128 bytes of nibbles
    return _scale_and_shift(_k_low4(b[:, 16:144]).astype(np.float32), b)


def _q5_k(b):  # as Q4_K with 32 bytes of fifth bits before the nibbles: bit k of byte l -> weight l of sub-block k
    high = _bits(b[:, 16:48, None]).swapaxes(1, 2)  # (n_blocks, 8, 32)
    return _scale_and_shift((_k_low4(b[:, 48:176]) | high << 4).astype(np.float32), b)


def _q6_k(b):
    """128 bytes low 4 bits, 64 bytes high 2 bits, 16 int8 scales (one per 16 weights), f16 d: w = d * scale *
    (q - 32). Each half of 128 weights uses 64 low bytes (low nibbles, then high nibbles, give weights 0-127 in
    order) and 32 high bytes (bits 2g, 2g+1 of byte l belong to weight 32g + l)."""
    n = len(b)
    low = _nibbles(b[:, 0:128].reshape(n, 2, 64))  # (n, 2 halves, 128)
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8)[:, None]
    high = (b[:, 128:192].reshape(n, 2, 1, 32) >> shifts & 3).reshape(n, 2, 128)  # (n, 2, 4 x 32)
    q = (low | high << 4).astype(np.float32).reshape(n, 16, 16)  # (n, 16 groups of 16 weights)
    q -= 32
    q *= (_f16(b, 208) * b[:, 192:208].view(np.int8))[:, :, None]
    return q


DEQUANTIZERS = {
    "F32": lambda data: data.view("<f4").copy(),
    "F16": lambda data: data.view("<f2").astype(np.float32),
    "BF16": lambda data: (data.view("<u2").astype(np.uint32) << 16).view(np.float32),  # bf16 = top half of f32
    "Q8_0": _q8_0, "Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1,
    "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k,
}


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
    buf, metadata, infos = read_gguf_header(path)
    return metadata, gguf_tensor_views(buf, infos, path)


def read_gguf_header(path) -> tuple[np.ndarray, dict, list[tuple[str, tuple, int, int]]]:
    """(memory map, metadata, (name, shape in torch order, ggml type, absolute offset) per tensor). Reads only
    the header, so a file can be judged by its metadata before any weight is touched."""
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
    return buf, metadata, [(name, shape, gtype, start + offset) for name, shape, gtype, offset in infos]


def gguf_tensor_views(buf: np.ndarray, infos: list, path) -> list[tuple[str, tuple, int, np.ndarray]]:
    """(name, shape, ggml type, raw bytes view) per tensor of read_gguf_header's list, each checked to lie in the
    file; the views read nothing until used."""
    tensors = []
    for name, shape, gtype, begin in infos:
        if gtype not in GGML_TYPES:
            raise ModelLoadError(f"{path}: tensor {name} has unknown ggml type {gtype}; the file is corrupt or too new")
        _, block, size = GGML_TYPES[gtype]
        nbytes = math.prod(shape) // block * size
        if begin + nbytes > len(buf):
            raise ModelLoadError(f"{path} is truncated: tensor {name} needs bytes up to {begin + nbytes}, the file "
                                 f"has {len(buf)}; download it again")
        tensors.append((name, shape, gtype, buf[begin:begin + nbytes]))
    return tensors


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
    return metadata, dequantize_gguf(metadata, raw, path)


def dequantize_gguf(metadata: dict, raw: list, path) -> dict[str, torch.Tensor]:
    """read_gguf_raw's tensors as float32 in Hugging Face names and layout."""
    tensors = {}
    for name, shape, gtype, data in raw:
        try:
            w = dequantize(data, gtype, math.prod(shape)).reshape(shape)
        except ValueError as e:
            raise ModelLoadError(f"{path}: tensor {name}: {e}; pick a file of one of those types") from None
        n_head = _permuted_heads(metadata, name, path)
        tensors[hf_name(name)] = torch.from_numpy(unpermute(w, n_head) if n_head else w)
    return tensors


def _permuted_heads(metadata: dict, name: str, path) -> int | None:
    """Heads to un-permute the rows of tensor `name` by, or None: only llama.cpp's "llama" conversion permutes
    q/k."""
    arch = metadata.get("general.architecture", "llama")
    proj = hf_name(name).split(".")[-2]
    if arch != "llama" or proj not in ("q_proj", "k_proj"):
        return None
    n_head = metadata.get(f"{arch}.attention.head_count")
    if proj == "k_proj":
        n_head = metadata.get(f"{arch}.attention.head_count_kv", n_head)
    if not n_head:
        raise ModelLoadError(f"{path} lacks {arch}.attention.head_count; cannot un-permute {name}")
    return n_head


def gguf_4bit_codes(path) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The 4-bit codes of a GGUF's Q4_0 and Q4_1 tensors, for a sampler that multiplies with them directly:
    {Hugging Face name: (q (N, K) uint8 in 0..15, scale (N, K/32), low (N, K/32) float32)}, rows in Hugging Face
    order, with q * scale + low (float32, in that order) bit-equal to read_gguf's weight (Q4_0: low = -8 scale)."""
    metadata, raw = read_gguf_raw(path)
    codes = {}
    for name, shape, gtype, data in raw:
        kind = GGML_TYPES[gtype][0]
        if kind not in ("Q4_0", "Q4_1") or len(shape) != 2:
            continue
        b = np.ascontiguousarray(data).reshape(-1, GGML_TYPES[gtype][2])  # (n_blocks, bytes per block)
        at = 2 if kind == "Q4_0" else 4  # the nibbles follow d (and m)
        N, K = shape
        q = _nibbles(b[:, at:at + 16]).reshape(N, K)
        scale = _f16(b, 0).reshape(N, K // 32)
        low = -8 * scale if kind == "Q4_0" else _f16(b, 2).reshape(N, K // 32)
        n_head = _permuted_heads(metadata, name, path)
        if n_head:
            q, scale, low = (unpermute(a, n_head) for a in (q, scale, low))
        codes[hf_name(name)] = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in (q, scale, low))
    return codes


def config_from_gguf(metadata: dict, tie_embeddings: bool = True):
    """ModelConfig from GGUF metadata ({arch}.* keys; SmolLM2's file says arch "llama"). An architecture or a
    setting this engine does not run raises ModelLoadError; only the header is needed."""
    arch = metadata.get("general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise ModelLoadError(f"GGUF architecture {arch!r} is not supported; this engine runs GGUF {_gguf_list()}")

    def get(key, default=None):
        value = metadata.get(f"{arch}.{key}", default)
        if value is None:
            raise ModelLoadError(f"GGUF metadata lacks {arch}.{key}; the file is incomplete")
        return value

    dim, n_heads = int(get("embedding_length")), int(get("attention.head_count"))
    head_dim = int(get("attention.key_length", dim // n_heads))
    _refuse_gguf_features(metadata, arch, head_dim)
    vocab = metadata.get(f"{arch}.vocab_size") or len(metadata.get("tokenizer.ggml.tokens", []))
    return ModelConfig(
        vocab_size=int(vocab), dim=dim, n_layers=int(get("block_count")), n_heads=n_heads,
        n_kv_heads=int(get("attention.head_count_kv", n_heads)), head_dim=head_dim,
        ffn_dim=int(get("feed_forward_length")),
        rope_theta=f32(get("rope.freq_base", 10000.0)), rms_eps=f32(get("attention.layer_norm_rms_epsilon", 1e-5)),
        max_seq_len=int(get("context_length", 2048)), tie_embeddings=tie_embeddings,
        qkv_bias=arch == "qwen2", qk_norm=arch == "qwen3")


def _refuse_gguf_features(metadata: dict, arch: str, head_dim: int) -> None:
    """ModelLoadError for llama.cpp settings of a supported architecture that this engine does not implement:
    experts (Mixtral is written as "llama"), a rope scaling rule in the metadata, rotation of part of a head."""
    if metadata.get(f"{arch}.expert_count"):
        raise ModelLoadError(f"GGUF {arch} with {metadata[f'{arch}.expert_count']} experts (a mixture of experts) "
                             "is not supported; pick a dense model")
    scaling = metadata.get(f"{arch}.rope.scaling.type", "none")
    if scaling != "none":
        raise ModelLoadError(f"GGUF rope scaling {scaling!r} is not supported (plain rope, or Llama 3.1's "
                             "rope_freqs factors)")
    rotary = metadata.get(f"{arch}.rope.dimension_count", head_dim)
    if rotary != head_dim:
        raise ModelLoadError(f"GGUF rope over {rotary} of {head_dim} head dimensions is not supported")


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
    (config.json, *.safetensors, tokenizer.json), a .gguf file, or ORG/NAME found in the Hugging Face cache."""
    if spec is None:
        import assets
        try:
            spec = assets.asset_path(assets.SMOLLM2_GGUF)
        except assets.AssetError as e:
            raise ModelLoadError(str(e)) from None
    path = resolve_model_path(str(spec))
    if path.is_dir():
        cfg, tensors, tok = _hf_folder(path)
    elif path.suffix == ".gguf":
        cfg, tensors, tok = _gguf_file(path)
    else:
        raise ModelLoadError(f"{path} is neither a folder nor a .gguf file; pass a Hugging Face folder or a .gguf")
    model = _build(cfg, tensors, path, device, dtype)
    model.source = str(path)  # where the weights came from (quant.py reads a GGUF's own 4-bit codes from it)
    return model, tok


# A Hub repository id: two names of letters, digits, '-', '_', '.', each starting with a letter or digit (so
# "./x" or "../x" stay paths).
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def resolve_model_path(spec: str) -> Path:
    """A local folder or file as given; else ORG/NAME's current snapshot in the Hugging Face cache. A folder with
    no config.json that holds exactly one .gguf (a GGUF repository's snapshot) stands for that file."""
    path = Path(spec).expanduser()
    if not path.exists():
        if not REPO_ID.fullmatch(spec):
            raise ModelLoadError(f"{path} does not exist; pass a Hugging Face model folder, a .gguf file or ORG/NAME")
        path = hf_cache_snapshot(spec)
    if path.is_dir() and not (path / "config.json").exists():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ggufs[0]
        if ggufs:
            raise ModelLoadError(f"{path} holds {len(ggufs)} .gguf files; pass one of them, e.g. {ggufs[0]}")
    return path


def hf_cache_dir() -> Path:
    """Where huggingface_hub keeps downloads: $HF_HUB_CACHE, else $HF_HOME/hub, else
    $XDG_CACHE_HOME/huggingface/hub with XDG_CACHE_HOME defaulting to ~/.cache."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def hf_cache_snapshot(repo_id: str) -> Path:
    """The snapshot folder of a model in the Hugging Face cache (models--ORG--NAME/snapshots/COMMIT/): the commit
    that refs/main names when that snapshot is there, else the most recently written one. Reads only."""
    repo = hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    ref = repo / "refs" / "main"
    if ref.is_file():
        current = repo / "snapshots" / ref.read_text().strip()
        if current.is_dir():
            return current
    snapshots = [p for p in (repo / "snapshots").glob("*") if p.is_dir()]
    if not snapshots:
        raise ModelLoadError(f"{repo_id} is not a local path and not in the Hugging Face cache (looked in {repo}); "
                             f"fetch it with `hf download {repo_id}` (pip install huggingface_hub)")
    return max(snapshots, key=lambda p: p.stat().st_mtime)


def _hf_folder(path: Path):
    """Config, tokenizer and tensor names are all checked before a weight is read."""
    config = path / "config.json"
    if not config.exists():
        raise ModelLoadError(f"{path} has no config.json; it is not a Hugging Face model folder")
    try:
        declared = json.loads(config.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{config} is not valid JSON ({e}); download it again") from None
    family = hf_model_type(declared, config)
    try:
        cfg = ModelConfig.from_hf({**declared, "model_type": family})
    except ValueError as e:
        raise ModelLoadError(f"{config}: {SUPPORTED_ARCHITECTURES[family][0]}: {e}") from None
    try:
        tok = Tokenizer.from_folder(path)
    except (ValueError, KeyError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path}: {e}") from None
    _check_tensors(cfg, safetensors_folder_shapes(path), path)
    return cfg, read_safetensors_folder(path), tok


def _gguf_file(path: Path):
    """Architecture, settings and tensor names come from the header; weights are dequantised only after."""
    buf, metadata, infos = read_gguf_header(path)
    shapes = {hf_name(name): shape for name, shape, _, _ in infos}
    cfg = config_from_gguf(metadata, tie_embeddings="lm_head.weight" not in shapes)
    _check_tensors(cfg, {k: v for k, v in shapes.items() if k != "rope_freqs.weight"}, path)
    try:
        tok = Tokenizer.from_gguf(metadata)
    except (ValueError, KeyError) as e:
        raise ModelLoadError(f"{path}: tokenizer: {e}") from None
    tensors = dequantize_gguf(metadata, gguf_tensor_views(buf, infos, path), path)
    factors = tensors.pop("rope_freqs.weight", None)
    if factors is not None:
        cfg = replace(cfg, rope_scaling=llama3_scaling_from_factors(factors, cfg))
    return cfg, tensors, tok


def _check_tensors(cfg, shapes: dict[str, tuple], path: Path) -> None:
    """ModelLoadError unless the checkpoint holds exactly the tensors, of the shapes, that cfg implies."""
    with torch.device("meta"):  # shapes only
        own = {k: tuple(v.shape) for k, v in Transformer(cfg).state_dict().items()}
    optional = {"lm_head.weight"} if cfg.tie_embeddings else set()
    missing = sorted(set(own) - set(shapes) - optional)
    unexpected = sorted(k for k in set(shapes) - set(own) if not k.endswith("rotary_emb.inv_freq"))
    if missing or unexpected:
        what = f"lacks {missing[0]}" if missing else f"has an unexpected tensor {unexpected[0]}"
        raise ModelLoadError(f"{path} {what} ({len(missing)} missing, {len(unexpected)} unexpected); "
                             "its weights do not match its config")
    for k in set(own) & set(shapes):
        if tuple(shapes[k]) != own[k]:
            raise ModelLoadError(f"{path}: {k} has shape {tuple(shapes[k])}, the config implies {own[k]}")


def _build(cfg, tensors: dict[str, torch.Tensor], path: Path, device, dtype):
    """The model on cfg with the checkpoint's tensors (already checked by _check_tensors) assigned in place."""
    with torch.device("meta"):  # shapes only: no random init to throw away (gigabytes at 8B)
        model = Transformer(cfg)
    expected = set(model.state_dict())
    model.load_state_dict({k: v for k, v in tensors.items() if k in expected}, strict=False, assign=True)
    if cfg.tie_embeddings:  # assign gave the head its own Parameter object; make it the embedding's again
        model.lm_head.weight = model.model.embed_tokens.weight
    model.inv_freq = rope_inv_freq(cfg)  # the one buffer a checkpoint does not hold
    return model.to(device=device, dtype=dtype).eval()
