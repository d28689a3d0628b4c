"""Llama-family decoder in plain torch, with a hand-written LoRA.

What is here: RMSNorm, rotary embeddings in the Hugging Face "rotate half" layout (with the optional Llama-3
frequency rescaling), grouped-query attention through F.scaled_dot_product_attention, a SwiGLU MLP, a tied or
untied output head, optional q/k/v biases (Qwen2) and per-head q/k RMSNorm before the rotation (Qwen3); that is
Llama, Mistral (without a sliding window), Qwen2 and Qwen3, whose config.json ModelConfig.from_hf reads as
transformers does, refusing any setting it does not implement.
Parameter names are exactly those of Hugging Face's LlamaForCausalLM, so an HF state dict loads as is.
The forward pass can read and write a preallocated KV cache (`KVCache`) at explicit slots; the sampler owns the
cache policy (padding, masks, which slots). LoRA: `LoRALinear` keeps the frozen base weight under its original
name (`...q_proj.weight`) next to a bank of adapters `lora_A` / `lora_B`, one per search of a lockstep sweep
(`adapter_rows` says which rows use which), so checkpoints load before or after `add_lora`.

Deliberately left out: tokenisation (the model only sees ids), sliding-window attention, MoE, rope types other
than the default and "llama3", quantised matmuls (weights are dequantised by the loader), tensor parallelism.
"""
import contextlib
import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

# enable_gqa (torch >= 2.5) lets SDPA share kv heads without copying them.
_HAS_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


@dataclass
class ModelConfig:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    max_seq_len: int = 2048
    tie_embeddings: bool = True
    qkv_bias: bool = False
    qk_norm: bool = False
    rope_scaling: dict | None = None  # {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    #                                     "original_max_position_embeddings"}

    def __post_init__(self):
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        kind = (self.rope_scaling or {}).get("rope_type", (self.rope_scaling or {}).get("type", "default"))
        if kind not in ("default", "llama3"):
            raise ValueError(f"rope_scaling type {kind!r} is not supported (only 'llama3')")

    @classmethod
    def from_hf(cls, cfg: dict) -> "ModelConfig":
        """Read a Hugging Face config.json of a Llama, Mistral, Qwen2 or Qwen3 decoder (its `model_type`) as
        transformers reads it: that family's defaults for absent fields, rope settings in either layout. A setting
        this model does not implement raises ValueError naming it, so nothing is silently run differently."""
        family = cfg.get("model_type")
        if family not in HF_FAMILIES:
            raise ValueError(f"model_type {family!r} is not one of {', '.join(HF_FAMILIES)}")
        defaults = HF_FAMILIES[family]
        try:
            n_heads, dim = cfg["num_attention_heads"], cfg["hidden_size"]
            vocab, n_layers, ffn = cfg["vocab_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
        except KeyError as e:
            raise ValueError(f"config.json lacks {e.args[0]!r}; is it a decoder's config?") from None
        n_kv = cfg.get("num_key_value_heads", defaults["num_key_value_heads"]) or n_heads  # null means n_heads
        head_dim = cfg.get("head_dim") or defaults["head_dim"] or dim // n_heads
        max_pos = int(cfg.get("max_position_embeddings") or defaults["max_position_embeddings"])
        _refuse_unimplemented(cfg, family, max_pos)
        theta, scaling = _hf_rope(cfg, max_pos)
        return cls(vocab_size=vocab, dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv,
                   head_dim=head_dim, ffn_dim=ffn, rope_theta=theta, rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                   max_seq_len=max_pos, tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                   qkv_bias=family == "qwen2", qk_norm=family == "qwen3", rope_scaling=scaling)


# The Hugging Face families this model runs exactly, by config.json `model_type`, with the defaults transformers'
# config class of each fills in for an absent field (head_dim None: hidden_size / num_attention_heads; sliding
# window: the class default, which Qwen applies only with use_sliding_window). Every family defaults to
# rms_norm_eps 1e-6, rope_theta 10000, untied embeddings and silu. Their layouts differ only in the q/k/v biases
# (Qwen2 always), the per-head q/k norms (Qwen3), and the biases Llama's attention_bias / mlp_bias and Qwen3's
# attention_bias would add, which are refused.
HF_FAMILIES = {
    "llama": dict(num_key_value_heads=None, head_dim=None, max_position_embeddings=2048, sliding_window=None),
    "mistral": dict(num_key_value_heads=8, head_dim=None, max_position_embeddings=131072, sliding_window=4096),
    "qwen2": dict(num_key_value_heads=32, head_dim=None, max_position_embeddings=32768, sliding_window=4096),
    "qwen3": dict(num_key_value_heads=32, head_dim=128, max_position_embeddings=32768, sliding_window=4096),
}


def _refuse_unimplemented(cfg: dict, family: str, max_pos: int) -> None:
    """ValueError for a setting of `family` that changes transformers' forward and that this model lacks."""
    act = cfg.get("hidden_act", "silu")
    if act not in ("silu", "swish"):  # transformers maps both names to SiLU
        raise ValueError(f"hidden_act {act!r} is not supported (only silu)")
    if family in ("llama", "qwen3") and cfg.get("attention_bias"):
        raise ValueError("attention_bias (biases on q/k/v/o projections) is not supported")
    if family == "llama" and cfg.get("mlp_bias"):
        raise ValueError("mlp_bias (biases on the MLP projections) is not supported")
    window = _active_sliding_window(cfg, family, max_pos)
    if window:
        raise ValueError(f"sliding-window attention (window {window} < context {max_pos}) is not supported")


def _active_sliding_window(cfg: dict, family: str, max_pos: int) -> int | None:
    """The attention window transformers would apply to some layer, or None. A window at least as long as the
    context never masks anything within it, so it counts as none."""
    window = cfg.get("sliding_window", HF_FAMILIES[family]["sliding_window"])
    if family in ("qwen2", "qwen3"):  # Qwen uses the window only when asked, on the layers layer_types marks
        window = window if cfg.get("use_sliding_window", False) else None
        first = cfg.get("max_window_layers", 28)
        types = cfg.get("layer_types") or ["sliding_attention" if window is not None and i >= first
                                           else "full_attention" for i in range(cfg["num_hidden_layers"])]
        if any(t not in ("full_attention", "sliding_attention") for t in types):
            raise ValueError(f"layer_types {sorted(set(types))} are not supported (only full_attention)")
        if "sliding_attention" not in types:
            return None
        if window is None:
            raise ValueError("layer_types asks for sliding_attention without a sliding_window; not supported")
    elif family == "llama":  # LlamaForCausalLM has no window, whatever the config says
        return None
    return window if window is not None and window < max_pos else None


def _hf_rope(cfg: dict, max_pos: int) -> tuple[float, dict | None]:
    """(rope_theta, llama3 scaling or None) from either layout: transformers 5's rope_parameters, or the older
    top-level rope_theta beside rope_scaling (which wins when both are there, as in transformers)."""
    params = dict(cfg.get("rope_scaling") or cfg.get("rope_parameters") or {})
    if any(isinstance(v, dict) for v in params.values()):
        raise ValueError(f"per-layer rope parameters ({', '.join(params)}) are not supported")
    theta = float(params.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
    partial = params.get("partial_rotary_factor", cfg.get("partial_rotary_factor"))
    if partial is not None and partial != 1:
        raise ValueError(f"partial_rotary_factor {partial} is not supported (rotary over the whole head only)")
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind != "llama3":
        raise ValueError(f"rope type {kind!r} is not supported (default or llama3)")
    try:
        scaling = {"rope_type": "llama3", "factor": params["factor"], "low_freq_factor": params["low_freq_factor"],
                   "high_freq_factor": params["high_freq_factor"]}
    except KeyError as e:
        raise ValueError(f"llama3 rope settings lack {e.args[0]!r}") from None
    # transformers takes the pretraining context from a top-level field first, then the dict, then the context
    scaling["original_max_position_embeddings"] = cfg.get(
        "original_max_position_embeddings", params.get("original_max_position_embeddings", max_pos))
    return theta, scaling


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies (head_dim // 2,) float32, rescaled by the Llama-3 rule when the config asks."""
    inv = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim)
    if not cfg.rope_scaling:
        return inv
    s = cfg.rope_scaling
    factor, lo, hi = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_ctx = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    # Long wavelengths (low frequencies) are slowed down by `factor`, short ones kept, the band between blended.
    smooth = (old_ctx / wavelen - lo) / (hi - lo)
    blended = (1 - smooth) * inv / factor + smooth * inv
    out = torch.where(wavelen > old_ctx / lo, inv / factor, blended)
    return torch.where(wavelen < old_ctx / hi, inv, out)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        # Normalise in float32 (as HF does) and scale in the input's dtype.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


@dataclass
class KVCache:
    """Preallocated keys and values for every layer, written at explicit slots.

    k, v: (n_layers, B, n_kv_heads, S, head_dim). Before each forward the caller sets:
    slots  (T,) long: the cache slots the T new tokens are written to (the same for every row);
    length: attention reads slots [0, length);
    mask   (B, 1, T, length) bool, True = may attend, or None = causal (then slots must start at 0 when T > 1).
    """
    k: torch.Tensor
    v: torch.Tensor
    slots: torch.Tensor | None = None
    length: int = 0
    mask: torch.Tensor | None = None

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, max_len: int, device=None, dtype=torch.float32) -> "KVCache":
        shape = (cfg.n_layers, batch, cfg.n_kv_heads, max_len, cfg.head_dim)
        return cls(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))


@dataclass
class SharedPrefix:
    """Keys and values of the prompts that the rows of a batch continue, kept with their autograd graph.

    Training scores G completions of the same prompt. Running the prompt once and letting every completion
    attend to its keys and values gives the same hidden states and gradients as G full rows, for the price of
    one prompt instead of G. A forward pass over the prompts, tokens (U, P), fills an empty SharedPrefix; the
    next pass, tokens (B, T), reads it: each row continues its prompt at the prompt's length.

    One prompt (U = 1) is read by every row. A lockstep sweep trains U searches at once, each with its own
    prompt: then `rows[u]` contiguous rows continue prompt u, and prompts of other lengths are left-padded by
    `pad[u]` tokens, which no row attends to.
    """
    k: list = field(default_factory=list)  # per layer (U, n_kv_heads, P, head_dim)
    v: list = field(default_factory=list)
    rows: list[int] | None = None  # completion rows per prompt; None: one prompt for every row
    pad: torch.Tensor | None = None  # (U,) left padding of each prompt; None: none

    def __len__(self) -> int:
        return self.k[0].shape[2] if self.k else 0

    def check_rows(self, B: int) -> None:
        """Reading: every row continues exactly one prompt."""
        U = self.k[0].shape[0]
        if (self.rows is None and U != 1) or (self.rows is not None and (len(self.rows) != U or sum(self.rows) != B)):
            raise ValueError(f"a shared prefix of {U} prompts read by {B} rows needs rows per prompt summing to {B}, "
                             f"got {self.rows}")

    def positions(self, B: int, T: int, device) -> torch.Tensor:
        """(B, T) rotary positions: of the prompt tokens while filling, of the rows' tokens after."""
        t = torch.arange(T, device=device)
        if not self.k:  # filling: 0 at each prompt's first real token
            return (t - (self.pad[:, None] if self.pad is not None else 0)).clamp(min=0).expand(B, T)
        length = len(self) - (self.pad if self.pad is not None else torch.zeros(1, dtype=torch.long, device=device))
        return (self.per_row(length)[:, None] + t).expand(B, T)

    def per_row(self, x: torch.Tensor) -> torch.Tensor:
        """x (U, ...) -> (B, ...): each prompt's entry repeated for its rows."""
        if self.rows is None:
            return x
        return x.repeat_interleave(torch.tensor(self.rows, device=x.device), dim=0)

    def fill_mask(self, P: int, device) -> torch.Tensor | None:
        """(U, 1, P, P) causal attention over each prompt's real tokens (a padding query sees itself, so no
        softmax row is empty), or None (plain causal) without padding."""
        if self.pad is None or not self.pad.any():
            return None
        slots = torch.arange(P, device=device)
        real = slots[None, :] >= self.pad[:, None]  # (U, P)
        causal = slots[:, None] >= slots[None, :]
        return (causal & (real[:, None, :] | torch.eye(P, dtype=torch.bool, device=device)))[:, None]

    def read(self, layer: int, k, v, T: int):
        """Keys and values of every row: its prompt's, then its own (B, n_kv_heads, P + T, head_dim), and the
        mask (B or 1, 1, T, P + T): the whole real prompt, then the row's own tokens causally."""
        P = len(self)
        B = k.shape[0]
        kp, vp = self.k[layer], self.v[layer]
        if self.rows is None:
            kp, vp = kp.expand(B, -1, -1, -1), vp.expand(B, -1, -1, -1)
        else:
            kp, vp = self.per_row(kp), self.per_row(vp)
        mask = torch.ones(T, P + T, dtype=torch.bool, device=k.device).tril(diagonal=P)
        if self.pad is not None and self.pad.any():
            real = torch.arange(P + T, device=k.device)[None, :] >= self.per_row(self.pad)[:, None]  # (B, P + T)
            mask = (mask[None] & real[:, None, :])[:, None]
        return torch.cat([kp, k], dim=2), torch.cat([vp, v], dim=2), mask


def decode_attention(q, k, v, mask):
    """Attention for one new token per row: q (B, H, 1, hd), k/v (B, H_kv, S, hd), mask (B, 1, 1, S) or None.

    Two batched matmuls with the query heads of each kv group stacked as rows, so kv heads are never copied.
    On CPU this is ~1.2x faster than F.scaled_dot_product_attention in float32 and 4-6x in bfloat16 (measured
    with 16 rows, 9 heads, 40-300 keys), and the decode loop calls it once per layer per token.
    """
    B, H, _, hd = q.shape
    kv = k.shape[1]
    scores = q.view(B, kv, H // kv, hd) @ k.transpose(-1, -2) * hd ** -0.5  # (B, n_kv_head, group, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)
    return (probs @ v).view(B, H, 1, hd)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        h, kv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, h * hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.dim, kv * hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.dim, kv * hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(h * hd, cfg.dim, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(hd, cfg.rms_eps)
            self.k_norm = RMSNorm(hd, cfg.rms_eps)

    def forward(self, x, cos, sin, layer: int, cache: KVCache | None, prefix: SharedPrefix | None = None):
        B, T, _ = x.shape
        cfg = self.cfg
        q = self.q_proj(x).view(B, T, cfg.n_heads, cfg.head_dim)  # (B, T, n_head, head_dim)
        k = self.k_proj(x).view(B, T, cfg.n_kv_heads, cfg.head_dim)
        v = self.v_proj(x).view(B, T, cfg.n_kv_heads, cfg.head_dim)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, n_head, T, head_dim)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        mask = None
        if cache is not None:
            cache.k[layer].index_copy_(2, cache.slots, k)
            cache.v[layer].index_copy_(2, cache.slots, v)
            k = cache.k[layer][:, :, : cache.length]  # (B, n_kv_head, S, head_dim)
            v = cache.v[layer][:, :, : cache.length]
            mask = cache.mask
        if prefix is not None and len(prefix.k) <= layer:  # filling: this layer's prompt keys and values
            prefix.k.append(k)
            prefix.v.append(v)
            mask = prefix.fill_mask(T, x.device)
        elif prefix is not None:  # reading: every row sees its whole prompt, then its own tokens causally
            k, v, mask = prefix.read(layer, k, v, T)
        causal = mask is None and T > 1
        if T == 1:
            y = decode_attention(q, k, v, mask)
        elif _HAS_GQA:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                               enable_gqa=cfg.n_kv_heads != cfg.n_heads)
        else:
            rep = cfg.n_heads // cfg.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        y = y.transpose(1, 2).reshape(B, T, cfg.n_heads * cfg.head_dim)
        return self.o_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.rms_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.rms_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, layer, cache, prefix=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, layer, cache, prefix)
        return x + self.mlp(self.post_attention_layernorm(x))


class _Backbone(nn.Module):
    """Holds the modules under the `model.` prefix, as in Hugging Face's LlamaForCausalLM."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.rms_eps)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.model = _Backbone(cfg)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)
        self._register_load_state_dict_pre_hook(self._fill_tied_head)
        self.checkpointing = False  # recompute each layer in backward instead of keeping its activations

    def _apply(self, fn, recurse=True):
        # model.to(bfloat16) would round the rotary frequencies too (an angle error of ~2 rad at position 1000):
        # they follow the model's device but stay float32, recomputed exactly from the config.
        super()._apply(fn, recurse)
        self.inv_freq = rope_inv_freq(self.cfg).to(self.inv_freq.device)
        return self

    def _fill_tied_head(self, state_dict, prefix, *args):
        # Tied checkpoints usually omit lm_head.weight; it is the embedding matrix.
        if self.cfg.tie_embeddings and prefix + "lm_head.weight" not in state_dict:
            emb = state_dict.get(prefix + "model.embed_tokens.weight")
            if emb is not None:
                state_dict[prefix + "lm_head.weight"] = emb

    def rope(self, positions: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (B, 1, T, head_dim) for integer positions (B, T)."""
        freqs = positions[:, None, :, None].float() * self.inv_freq  # (B, 1, T, head_dim // 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, tokens, positions=None, cache: KVCache | None = None, return_hidden=False,
                prefix: SharedPrefix | None = None):
        """tokens (B, T) long -> logits (B, T, V) float32, or final-norm hidden states (B, T, D).

        positions (B, T): rotary positions; default 0..T-1, cache.slots when a cache is given, or as the prefix
        says (SharedPrefix.positions).
        cache: read and written as described in KVCache (inference).
        prefix: filled when empty, else read, as described in SharedPrefix (training).
        """
        B, T = tokens.shape
        if cache is not None and prefix is not None:
            raise ValueError("a forward pass takes a KV cache or a shared prefix, not both")
        if prefix is not None and prefix.k:
            prefix.check_rows(B)
        if positions is None and prefix is not None:
            positions = prefix.positions(B, T, tokens.device)
        elif positions is None:
            positions = (cache.slots if cache is not None else torch.arange(T, device=tokens.device)).expand(B, T)
        x = self.model.embed_tokens(tokens)  # (B, T, D)
        cos, sin = self.rope(positions, x.dtype)
        # Activation checkpointing (training only): keep each layer's input, recompute its inside in backward. A
        # prefix being filled is not checkpointed: its recomputation would append the prompt's keys again.
        recompute = self.checkpointing and torch.is_grad_enabled() and cache is None and (prefix is None or len(prefix))
        if recompute:  # the recomputation in backward runs under the adapter rows of this forward
            rows = next((m.rows for m in self.modules() if isinstance(m, LoRALinear)), None)
            same_rows = lambda: (contextlib.nullcontext(), adapter_rows(self, rows))  # noqa: E731
        for i, layer in enumerate(self.model.layers):
            if recompute:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, i, cache, prefix, use_reentrant=False,
                                                      context_fn=same_rows)
            else:
                x = layer(x, cos, sin, i, cache, prefix)
        x = self.model.norm(x)
        if return_hidden:
            return x
        return self.lm_head(x).float()


# ----------------------------------------------------------------------------------------------------- LoRA

class LoRALinear(nn.Module):
    """y = x W^T + b + scale * dropout(x) A_s^T B_s^T, with W, b frozen and s the adapter of each row.

    A bank of S adapters, one per search of a lockstep sweep (S = 1 for one search): lora_A (S, r, in) and
    lora_B (S, out, r). Which rows use which adapter is `rows` (set by `adapter_rows`): None sends every row
    to adapter 0, else rows[s] contiguous rows go to adapter s, in adapter order (0 rows: not in use). A is
    kaiming-uniform and B zero, so an adapter starts as the identity change. The base parameters keep their names
    (`weight`, `bias`); A and B are float32 master weights, cast to the compute dtype in forward."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0, adapters: int = 1):
        super().__init__()
        if r <= 0:
            raise ValueError(f"LoRA rank must be positive, got {r}")
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        # The adapters (and so AdamW's state) are float32 whatever the base dtype: in bfloat16 most of an update
        # of size lr ~ 1e-5 would round away. The forward casts them to the input's dtype.
        self.lora_A = nn.Parameter(torch.empty(adapters, r, base.in_features, device=base.weight.device,
                                               dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(adapters, base.out_features, r, device=base.weight.device,
                                               dtype=torch.float32))
        for A in self.lora_A.data:
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))  # the nn.Linear default init, per (r, in) adapter
        self.scale = alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.disabled = False
        self.rows: list[int] | None = None

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        return y if self.disabled else y + self.delta(x)

    def delta(self, x):
        """scale * dropout(x) A_s^T B_s^T for the adapter s of each row of x (B, ..., in), in x's dtype."""
        A, B = self.lora_A.to(x.dtype), self.lora_B.to(x.dtype)  # (S, r, in), (S, out, r)
        x = self.dropout(x)
        if self.rows is None:
            return F.linear(F.linear(x, A[0]), B[0]) * self.scale
        used = [s for s, n in enumerate(self.rows) if n]
        if len({self.rows[s] for s in used}) == 1:  # one equal block per adapter in use: a batched product over
            # the adapter axis
            if len(used) < A.shape[0]:
                A, B = A[used], B[used]
            h = x.reshape(len(used), -1, x.shape[-1])  # (U, rows * T, in)
            out = torch.bmm(torch.bmm(h, A.transpose(1, 2)), B.transpose(1, 2))  # (U, rows * T, out)
            return out.reshape(*x.shape[:-1], -1) * self.scale
        # Blocks of other sizes (rows that finished sampling have left): one product per adapter, the slow twin
        # of the batched one above.
        parts = [F.linear(F.linear(xs, A[s]), B[s]) for s, xs in enumerate(x.split(self.rows)) if self.rows[s]]
        return torch.cat(parts) * self.scale


def _lora_modules(model: nn.Module):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


LORA_TARGETS = ("q_proj", "v_proj")  # the layers MiGrATe adapts, as the paper's runs did


def add_lora(model: nn.Module, targets=LORA_TARGETS, r=8, alpha=16, dropout=0.0,
             adapters: int = 1) -> list[nn.Parameter]:
    """Freeze every parameter, wrap each nn.Linear whose name ends in one of `targets` with a bank of `adapters`
    LoRA adapters; return the LoRA parameters (each (adapters, ...)), A then B of each module in module order."""
    if _lora_modules(model):
        raise ValueError("model already has LoRA adapters; reuse them")
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and child_name in targets:
                lora = LoRALinear(child, r, alpha, dropout, adapters)
                setattr(module, child_name, lora)
                wrapped += [lora.lora_A, lora.lora_B]
    if not wrapped:
        raise ValueError(f"no nn.Linear named any of {tuple(targets)} in the model")
    return wrapped


def seeded_adapter(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The adapter add_lora makes after torch.manual_seed(seed): A kaiming-uniform from that seed, module by
    module, B zero. A sweep gives each search the adapter of its own seed."""
    torch.manual_seed(seed)
    out = {}
    for name, m in _lora_modules(model):
        A = torch.empty(m.lora_A.shape[1:], device=m.lora_A.device, dtype=torch.float32)
        nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        out[f"{name}.lora_A"], out[f"{name}.lora_B"] = A, torch.zeros(m.lora_B.shape[1:], device=A.device)
    return out


def lora_state_dict(model: nn.Module, adapter: int = 0) -> dict[str, torch.Tensor]:
    """One adapter of the bank, under the module's names (`...q_proj.lora_A` (r, in), `...lora_B` (out, r))."""
    return {k: v[adapter].detach().clone() for k, v in model.state_dict().items() if ".lora_" in k}


def load_lora_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], adapter: int = 0) -> None:
    own = {k: v for k, v in model.state_dict().items() if ".lora_" in k}
    if set(own) != set(sd):
        missing, extra = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
        raise ValueError(f"LoRA state dict does not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for k, v in sd.items():
            if own[k].shape[1:] != v.shape:
                raise ValueError(f"LoRA tensor {k} has shape {tuple(v.shape)}, model expects "
                                 f"{tuple(own[k].shape[1:])}")
            own[k][adapter].copy_(v)


class adapter_rows:  # noqa: N801  a context manager, used as a function
    """Inside the block, rows[s] contiguous rows of every batch use adapter s (None: adapter 0 for all). It may
    be entered again (activation checkpointing re-enters it to recompute a layer under the same rows)."""

    def __init__(self, model: nn.Module, rows: list[int] | None):
        self.mods, self.rows, self.saved = [m for _, m in _lora_modules(model)], rows, []

    def __enter__(self):
        self.saved.append([m.rows for m in self.mods])
        for m in self.mods:
            m.rows = self.rows

    def __exit__(self, *exc):
        for m, before in zip(self.mods, self.saved.pop()):
            m.rows = before


@contextmanager
def lora_disabled(model: nn.Module):
    """Run the base model (adapters switched off) inside the block, e.g. for a KL reference."""
    mods = [m for _, m in _lora_modules(model)]
    before = [m.disabled for m in mods]
    for m in mods:
        m.disabled = True
    try:
        yield model
    finally:
        for m, b in zip(mods, before):
            m.disabled = b
