"""The trained LoRA adapter in and out, and the Hugging Face base that goes with a GGUF model.

Out: write_peft_folder writes a run's adapter as a PEFT LoRA folder (adapter_config.json and
adapter_model.safetensors under PEFT's tensor names) that peft's `PeftModel.from_pretrained`, vLLM's
`--enable-lora` and llama.cpp's convert_lora_to_gguf.py read. write_hf_base writes a Hugging Face copy of a GGUF
model (config.json, model.safetensors, tokenizer files), so the adapter of a run on a GGUF has a base those tools
load; it holds the GGUF's weights as dequantised here, so its logits are ours.

In: read_adapter reads our adapter.safetensors or a PEFT folder back, in our tensor names
(model.layers.N.self_attn.q_proj.lora_A, lora_A (r, in), lora_B (out, r), scale alpha / r), with the rank, alpha
and target modules it was trained with; check_adapter_settings and check_adapter_fits compare those with a run's
settings and model. Anything else is refused in one line (AdapterError).

Deliberately left out: every PEFT variant other than plain LoRA (DoRA, rsLoRA, rank or alpha patterns, LoRA
biases, embedding or token adapters, modules_to_save, adapters on some layers only, PiSSA/OLoRA/LoftQ bases),
the pickle format (adapter_model.bin), writing GGUF (llama.cpp's converter does that from the PEFT folder), and
an HF copy of a model that is already a Hugging Face folder.
"""
import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

import assets
from checkpoint import (ModelLoadError, load_model, read_gguf_header, read_safetensors, resolve_model_path,
                        write_safetensors)
from settings import UsageError

PEFT_FOLDER = "peft-adapter"  # the PEFT folder a finished target writes beside its adapter.safetensors
PEFT_PREFIX = "base_model.model."  # PeftModel.base_model (LoraModel) .model (the causal LM)
# The nn.Linear leaves of model.Transformer, by their Hugging Face names: what a LoRA here can adapt.
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")
OUR_NAME = re.compile(r"(?P<module>(?:model\.layers\.\d+\.(?:self_attn|mlp)\.)?(?P<leaf>\w+))\.lora_(?P<ab>[AB])")
# The model the embedded GGUF (assets.SMOLLM2_GGUF) was quantised from; its Q4_1 weights differ from this one's,
# so exact logits need the copy write_hf_base makes.
EMBEDDED_BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


class AdapterError(UsageError):
    """An adapter, or a base model to copy, that cannot be read or used as it is; reported as one line."""


@dataclass
class SavedAdapter:
    tensors: dict[str, torch.Tensor]  # our names: {module}.lora_A (r, in) and {module}.lora_B (out, r)
    r: int
    alpha: float  # scale = alpha / r
    targets: tuple[str, ...]  # the module leaves it adapts, sorted: ("q_proj", "v_proj")
    dropout: float = 0.0
    base_model: str | None = None  # the model it was trained on, as its files name it
    source: str = ""


# ----------------------------------------------------------------------------------------------------------
# Names

def peft_name(ours: str) -> str:
    """model.layers.0.self_attn.q_proj.lora_A -> base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"""
    return f"{PEFT_PREFIX}{ours}.weight"


def our_name(peft: str) -> str | None:
    """The inverse of peft_name, or None for a tensor that is not a plain LoRA A/B weight."""
    if not (peft.startswith(PEFT_PREFIX) and peft.endswith(".weight")):
        return None
    ours = peft[len(PEFT_PREFIX):-len(".weight")]
    return ours if OUR_NAME.fullmatch(ours) else None


def adapter_targets(tensors: dict) -> tuple[str, ...]:
    return tuple(sorted({OUR_NAME.fullmatch(k)["leaf"] for k in tensors}))


def base_model_name(model_spec: str | None) -> str | None:
    """What adapter_config.json's base_model_name_or_path says for a run's --model: ORG/NAME as given, a local
    folder or .gguf as its absolute path, the embedded model as the Hugging Face id it was quantised from."""
    if model_spec is None:
        return EMBEDDED_BASE
    path = Path(model_spec).expanduser()
    return str(path.resolve()) if path.exists() else model_spec


# ----------------------------------------------------------------------------------------------------------
# Out: a PEFT folder

def peft_config(base_model: str | None, r: int, alpha: float, dropout: float, targets) -> dict:
    """adapter_config.json of a plain LoRA on a causal LM: the fields that say what it computes, and none that
    only recent peft releases know (an older peft refuses a field it does not know). peft 0.21 reads it as the
    config it writes itself for the same adapter, whose other fields hold their defaults (tests/test_adapter.py)."""
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model, "revision": None,
        "r": int(r), "lora_alpha": alpha, "lora_dropout": float(dropout), "target_modules": sorted(targets),
        "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "rank_pattern": {},
        "alpha_pattern": {}, "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None,
        "init_lora_weights": True, "inference_mode": True,
    }


def write_peft_folder(folder, lora_tensors: dict, base_model: str | None, r: int, alpha: float,
                      dropout: float = 0.0, targets=("q_proj", "v_proj")) -> Path:
    """Write `lora_tensors` (our names, as model.lora_state_dict gives them) as a PEFT LoRA folder; returns it."""
    check_tensors(lora_tensors, r, "the adapter to write")
    if adapter_targets(lora_tensors) != tuple(sorted(targets)):
        raise ValueError(f"the adapter's tensors adapt {adapter_targets(lora_tensors)}, not {tuple(targets)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = peft_config(base_model, r, alpha, dropout, targets)
    write_safetensors(folder / "adapter_model.safetensors",
                      {peft_name(k): v.detach().float() for k, v in lora_tensors.items()}, {"format": "pt"})
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def adapter_metadata(r: int, alpha: float, dropout: float, targets, base_model: str | None) -> dict[str, str]:
    """What our adapter.safetensors can carry in its header so that read_adapter needs no run folder around it
    (write_safetensors(path, tensors, adapter_metadata(...)))."""
    return {"format": "pt", "lora_r": str(int(r)), "lora_alpha": str(alpha), "lora_dropout": str(float(dropout)),
            "target_modules": ",".join(sorted(targets)), "base_model": base_model or ""}


# ----------------------------------------------------------------------------------------------------------
# In: our file or a PEFT folder

def read_adapter(path) -> SavedAdapter:
    """An adapter from a PEFT folder (adapter_config.json + adapter_model.safetensors), our adapter.safetensors
    (alpha from its header, else from the run's config.json), or a finished target's folder holding one."""
    path = Path(path).expanduser()
    if path.is_dir() and (path / "adapter_config.json").exists():
        return read_peft_folder(path)
    if path.is_dir() and (path / "adapter.safetensors").exists():
        path = path / "adapter.safetensors"
    if path.is_file() and path.name == "adapter_model.safetensors":
        return read_peft_folder(path.parent)
    if not path.is_file():
        raise AdapterError(f"{path} is neither a PEFT adapter folder (adapter_config.json) nor an adapter "
                           ".safetensors file; pass one of those")
    return read_our_file(path)


def read_peft_folder(folder: Path) -> SavedAdapter:
    config = _json(folder / "adapter_config.json")
    refuse_peft_variants(config, folder)
    weights = folder / "adapter_model.safetensors"
    if not weights.exists():
        pickle = " (only adapter_model.bin, a pickle: re-save it with safe_serialization=True)"
        raise AdapterError(f"{folder} has no adapter_model.safetensors"
                           f"{pickle if (folder / 'adapter_model.bin').exists() else ''}; pass a complete folder")
    tensors = {}
    for name, t in _read(weights).items():
        ours = our_name(name)
        if ours is None:
            raise AdapterError(f"{weights}: tensor {name} is not a plain LoRA A/B weight of a causal LM "
                               f"({what_tensor_is(name)}); only plain LoRA adapters load")
        tensors[ours] = t.float()
    r, alpha = config.get("r"), config.get("lora_alpha")
    if not (isinstance(r, int) and r > 0 and isinstance(alpha, (int, float)) and alpha > 0):
        raise AdapterError(f"{folder / 'adapter_config.json'}: r {r!r} and lora_alpha {alpha!r} must be positive "
                           "numbers")
    check_tensors(tensors, r, weights)
    return SavedAdapter(tensors, r, alpha, adapter_targets(tensors), float(config.get("lora_dropout") or 0.0),
                        config.get("base_model_name_or_path"), str(folder))


# adapter_config.json field -> (the value plain LoRA has, what a different value means). Fields peft added later
# are absent from older files, which is the same as their plain value.
PLAIN_LORA = {
    "use_dora": (False, "DoRA"), "use_rslora": (False, "rsLoRA (scale alpha / sqrt(r))"),
    "rank_pattern": ({}, "per-module ranks"), "alpha_pattern": ({}, "per-module alphas"),
    "fan_in_fan_out": (False, "fan_in_fan_out (Conv1D weights)"), "bias": ("none", "trained biases"),
    "lora_bias": (False, "LoRA biases"), "modules_to_save": (None, "modules_to_save (whole trained modules)"),
    "layers_to_transform": (None, "an adapter on some layers only"), "layer_replication": (None, "layer replication"),
    "target_parameters": (None, "adapters on parameters"), "trainable_token_indices": (None, "trainable tokens"),
    "use_qalora": (False, "QALoRA"), "use_bdlora": (None, "block-diagonal LoRA"),
}


# Fields that do not change what a plain LoRA computes once its tensors are known (peft 0.21 writes them all).
INERT_FIELDS = {"peft_type", "task_type", "base_model_name_or_path", "revision", "r", "lora_alpha", "lora_dropout",
                "target_modules", "exclude_modules", "layers_pattern", "init_lora_weights", "inference_mode",
                "peft_version", "auto_mapping", "megatron_config", "megatron_core", "qalora_group_size",
                "loftq_config", "ensure_weight_tying"}


def refuse_peft_variants(config: dict, folder: Path) -> None:
    """AdapterError unless the config is a plain LoRA on a causal LM."""
    where = folder / "adapter_config.json"
    if config.get("peft_type") != "LORA":
        raise AdapterError(f"{where}: peft_type {config.get('peft_type')!r} is not supported (only LORA)")
    if config.get("task_type") not in ("CAUSAL_LM", None):
        raise AdapterError(f"{where}: task_type {config['task_type']!r} is not supported (only CAUSAL_LM)")
    for field, (plain, meaning) in PLAIN_LORA.items():
        value = config.get(field, plain)
        if value != plain and (value or plain):  # {}, null and false all mean "none" where the plain value does
            raise AdapterError(f"{where}: {field} {value!r} ({meaning}) is not supported; only plain LoRA adapters "
                               "load")
    init = config.get("init_lora_weights", True)
    if init not in (True, False, "gaussian"):  # pissa, olora, loftq, corda, eva... change the base weights
        raise AdapterError(f"{where}: init_lora_weights {init!r} changes the base model's weights; not supported "
                           "(convert it to a plain LoRA with peft first)")
    unknown = next((k for k, v in config.items() if k not in PLAIN_LORA and k not in INERT_FIELDS and v), None)
    if unknown is not None:  # a feature of a newer peft (aLoRA, Arrow, KaSA, ...): it may change the forward
        raise AdapterError(f"{where}: {unknown} {config[unknown]!r} is a peft feature this engine does not "
                           "implement; only plain LoRA adapters load")


def what_tensor_is(name: str) -> str:
    for marker, meaning in (("lora_magnitude_vector", "DoRA"), ("lora_embedding", "an embedding adapter"),
                            ("modules_to_save", "a whole trained module"), ("trainable_tokens", "trainable tokens"),
                            (".bias", "a bias"), ("original_module", "a whole module")):
        if marker in name:
            return meaning
    return "an unknown module"


def read_our_file(path: Path) -> SavedAdapter:
    """Our adapter.safetensors: rank and targets from the tensors; alpha, dropout and base model from its header,
    else from the settings in the config.json of the run folder it lies in."""
    tensors = _read(path)
    if any(k.startswith(PEFT_PREFIX) for k in tensors):
        raise AdapterError(f"{path} holds PEFT tensor names; pass the folder with its adapter_config.json")
    bad = next((k for k in tensors if not OUR_NAME.fullmatch(k)), None)
    if bad is not None or not tensors:
        raise AdapterError(f"{path} is not a LoRA adapter of this engine ({'tensor ' + bad if bad else 'no tensors'})")
    first_a = next((t for k, t in sorted(tensors.items()) if k.endswith("lora_A")), torch.empty(0))
    r = first_a.shape[0]
    check_tensors(tensors, r, path)
    info = safetensors_metadata(path) or run_settings_of(path)
    if "lora_alpha" not in info:
        raise AdapterError(f"{path} does not record its LoRA alpha (no header metadata, no run config.json above "
                           "it); pass the PEFT folder written beside it, or the file inside its run folder")
    try:
        alpha, dropout = float(info["lora_alpha"]), float(info.get("lora_dropout") or 0.0)
    except (TypeError, ValueError):
        raise AdapterError(f"{path}: its recorded LoRA alpha {info['lora_alpha']!r} is not a number") from None
    return SavedAdapter({k: v.float() for k, v in tensors.items()}, r, alpha, adapter_targets(tensors), dropout,
                        info.get("base_model") or None, str(path))


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The __metadata__ strings of a safetensors header that record a LoRA ({} when it has none)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        meta = json.loads(f.read(n)).get("__metadata__") or {}
    return meta if "lora_alpha" in meta else {}


def run_settings_of(path: Path) -> dict:
    """LoRA settings of the run whose folder holds `path` (RUN/TARGET/adapter.safetensors, RUN/config.json)."""
    for folder in (path.parent, path.parent.parent):
        config = folder / "config.json"
        if config.exists():
            settings = _json(config).get("settings") or {}
            if "lora_alpha" in settings:
                return dict(lora_alpha=settings["lora_alpha"], lora_dropout=settings.get("lora_dropout", 0.0),
                            base_model=base_model_name(settings.get("model")))
    return {}


def check_tensors(tensors: dict, r: int, where) -> None:
    """Every module has an A of r rows and a B of r columns, both 2-D; one line naming the first that does not."""
    for k, t in tensors.items():
        m = OUR_NAME.fullmatch(k)
        if m is None or m["leaf"] not in LINEAR_MODULES:
            raise AdapterError(f"{where}: {k} adapts no linear layer of a Llama-family model (those are "
                               f"{', '.join(LINEAR_MODULES)})")
        other = f"{m['module']}.lora_{'B' if m['ab'] == 'A' else 'A'}"
        if other not in tensors:
            raise AdapterError(f"{where}: {k} has no {other}; the adapter is incomplete")
        if t.dim() != 2 or t.shape[0 if m["ab"] == "A" else 1] != r:
            raise AdapterError(f"{where}: {k} has shape {tuple(t.shape)}, not rank {r}")


# ----------------------------------------------------------------------------------------------------------
# A run starting from a saved adapter

def check_adapter_settings(adapter: SavedAdapter, r: int, alpha: float, targets=("q_proj", "v_proj")) -> None:
    """AdapterError unless the adapter has the run's rank, alpha and target modules (its scale alpha / r and the
    layers it touches would otherwise change what the run trains)."""
    if tuple(sorted(targets)) != adapter.targets:
        raise AdapterError(f"{adapter.source} adapts {', '.join(adapter.targets)}; this run adapts "
                           f"{', '.join(sorted(targets))}")
    if (adapter.r, float(adapter.alpha)) != (r, float(alpha)):
        raise AdapterError(f"{adapter.source} is a LoRA of rank {adapter.r} and alpha {adapter.alpha:g}; run with "
                           f"--lora-r {adapter.r} --lora-alpha {adapter.alpha:g}")


def check_adapter_fits(adapter: SavedAdapter, model: torch.nn.Module) -> None:
    """AdapterError unless the adapter holds exactly one A and B of the right shapes for every linear layer of
    `model` named in its targets (with or without model.add_lora applied)."""
    expected = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if name.rpartition(".")[2] in adapter.targets and weight is not None and weight.dim() == 2:
            out_f, in_f = weight.shape
            expected[f"{name}.lora_A"], expected[f"{name}.lora_B"] = (adapter.r, in_f), (out_f, adapter.r)
    missing, extra = sorted(set(expected) - set(adapter.tensors)), sorted(set(adapter.tensors) - set(expected))
    if missing or extra:
        what = f"lacks {missing[0]}" if missing else f"has {extra[0]}, which the model lacks"
        raise AdapterError(f"{adapter.source} does not fit the model: it {what} ({len(missing)} missing, "
                           f"{len(extra)} extra); was it trained on another base model?")
    for k, shape in expected.items():
        if tuple(adapter.tensors[k].shape) != shape:
            raise AdapterError(f"{adapter.source}: {k} has shape {tuple(adapter.tensors[k].shape)}, the model "
                               f"needs {shape}; was it trained on another base model?")


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        return read_safetensors(path)
    except ModelLoadError as e:
        raise AdapterError(str(e)) from None


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise AdapterError(f"cannot read {path} ({e}); restore the file") from None
    if not isinstance(value, dict):
        raise AdapterError(f"{path} is not a JSON object; restore the file")
    return value


# ----------------------------------------------------------------------------------------------------------
# The Hugging Face base of a GGUF model

# GGUF general.architecture -> (transformers' model_type, its class, fields its config.json adds)
HF_OF_GGUF = {
    "llama": ("llama", "LlamaForCausalLM", dict(attention_bias=False, mlp_bias=False, pretraining_tp=1)),
    "qwen2": ("qwen2", "Qwen2ForCausalLM", dict(use_sliding_window=False, sliding_window=None)),
    "qwen3": ("qwen3", "Qwen3ForCausalLM", dict(attention_bias=False, use_sliding_window=False, sliding_window=None)),
}
# The names transformers gives a tokenizer's special tokens, and the GGUF keys of their ids.
GGUF_SPECIAL_KEYS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
                     "pad_token": "padding_token_id"}


def write_hf_base(model_spec: str | None, out_folder) -> Path:
    """A Hugging Face folder of a GGUF model (a --model value; None: the embedded one): config.json
    (transformers 4's layout, which transformers 5, vLLM and llama.cpp's converter read too), model.safetensors
    (the weights as load_model dequantises them, in the narrowest of bfloat16, float16 and float32 that holds
    every one exactly), tokenizer.json, tokenizer_config.json (with the chat template) and
    generation_config.json. Returns the folder."""
    try:
        spec = str(model_spec) if model_spec is not None else str(assets.asset_path(assets.SMOLLM2_GGUF))
        path = resolve_model_path(spec)
        if path.suffix != ".gguf":
            raise AdapterError(f"{path} is not a .gguf file; a Hugging Face folder is already the base peft and "
                               "vLLM load")
        _, metadata, _ = read_gguf_header(path)
        model, _ = load_model(str(path))
    except (ModelLoadError, assets.AssetError) as e:
        raise AdapterError(str(e)) from None
    out = Path(out_folder)
    if out.exists() and any(out.iterdir()):
        raise AdapterError(f"{out} is not empty; choose a new folder for the model copy")
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v for k, v in model.state_dict().items() if not (model.cfg.tie_embeddings and k == "lm_head.weight")}
    dtype = narrowest_exact_dtype(weights.values())
    write_safetensors(out / "model.safetensors", {k: v.to(dtype) for k, v in weights.items()}, {"format": "pt"})
    files = {"config.json": hf_config(model.cfg, metadata, dtype), "tokenizer.json": hf_tokenizer(metadata),
             "tokenizer_config.json": hf_tokenizer_config(metadata, model.cfg.max_seq_len),
             "generation_config.json": hf_generation_config(metadata)}
    for name, content in files.items():
        (out / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def narrowest_exact_dtype(tensors) -> torch.dtype:
    """bfloat16 or float16 when every weight survives the round trip through it (a BF16 or F16 GGUF), else float32
    (dequantised blocks: d * q + m needs float32's mantissa)."""
    tensors = list(tensors)
    for dtype in (torch.bfloat16, torch.float16):
        if all(torch.equal(t.to(dtype).float(), t.float()) for t in tensors):
            return dtype
    return torch.float32


def hf_config(cfg, metadata: dict, dtype: torch.dtype) -> dict:
    """config.json for ModelConfig `cfg` of a GGUF whose metadata names the architecture; rope_theta and
    rope_scaling at the top level (transformers 4's layout; transformers 5 reads it as well)."""
    model_type, cls, extra = HF_OF_GGUF[metadata["general.architecture"]]
    return {"architectures": [cls], "model_type": model_type, "vocab_size": cfg.vocab_size, "hidden_size": cfg.dim,
            "intermediate_size": cfg.ffn_dim, "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
            "hidden_act": "silu", "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.rms_eps,
            "rope_theta": cfg.rope_theta, "rope_scaling": cfg.rope_scaling, "tie_word_embeddings": cfg.tie_embeddings,
            "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True,
            "bos_token_id": metadata.get("tokenizer.ggml.bos_token_id"),
            "eos_token_id": metadata.get("tokenizer.ggml.eos_token_id"),
            "torch_dtype": str(dtype).removeprefix("torch."), **extra}


def hf_tokenizer(metadata: dict) -> dict:
    """tokenizer.json (the `tokenizers` library's format) of a GGUF byte-level BPE vocabulary: the same
    pre-tokenizer chain, normaliser and merges as tokenizer.Tokenizer.from_gguf reads from it."""
    from tokenizer import GGUF_NORMALIZER, GGUF_PRE, GPT2_PATTERN
    if metadata.get("tokenizer.ggml.model") != "gpt2":
        raise AdapterError(f"GGUF tokenizer {metadata.get('tokenizer.ggml.model')!r} cannot be written as "
                           "tokenizer.json here (only byte-level BPE, 'gpt2')")
    pre = metadata.get("tokenizer.ggml.pre", "default")
    split_digits, pattern, ignore_merges = GGUF_PRE[pre]
    tokens = metadata["tokenizer.ggml.tokens"]
    types = metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if pattern == GPT2_PATTERN:
        steps = [{"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]
    else:
        steps = [{"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
                 {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]
    if split_digits:
        steps.insert(0, {"type": "Digits", "individual_digits": True})
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": kind == 3}
                         for i, (t, kind) in enumerate(zip(tokens, types)) if kind in (3, 4)],
        "normalizer": {"type": GGUF_NORMALIZER[pre]} if pre in GGUF_NORMALIZER else None,
        "pre_tokenizer": steps[0] if len(steps) == 1 else {"type": "Sequence", "pretokenizers": steps},
        "post_processor": bos_post_processor(metadata, byte_level),
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": ignore_merges, "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": list(metadata.get("tokenizer.ggml.merges", []))},
    }


def bos_post_processor(metadata: dict, byte_level: dict) -> dict:
    """What encode() adds around a text: the BOS token in front when the GGUF says add_bos_token (Llama 3)."""
    bos = metadata.get("tokenizer.ggml.bos_token_id")
    if not metadata.get("tokenizer.ggml.add_bos_token") or bos is None:
        return byte_level
    text = metadata["tokenizer.ggml.tokens"][bos]
    first = {"SpecialToken": {"id": text, "type_id": 0}}
    template = {"type": "TemplateProcessing",
                "single": [first, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [first, {"Sequence": {"id": "A", "type_id": 0}},
                         first, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {text: {"id": text, "ids": [bos], "tokens": [text]}}}
    return {"type": "Sequence", "processors": [byte_level, template]}


def special_token_texts(metadata: dict) -> dict[str, str]:
    tokens = metadata["tokenizer.ggml.tokens"]
    return {name: tokens[metadata[f"tokenizer.ggml.{key}"]] for name, key in GGUF_SPECIAL_KEYS.items()
            if 0 <= metadata.get(f"tokenizer.ggml.{key}", -1) < len(tokens)}


def hf_tokenizer_config(metadata: dict, max_len: int) -> dict:
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **special_token_texts(metadata),
              "add_bos_token": bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
              "add_eos_token": bool(metadata.get("tokenizer.ggml.add_eos_token", False)),
              "clean_up_tokenization_spaces": False, "model_max_length": max_len}
    if metadata.get("tokenizer.chat_template"):
        config["chat_template"] = metadata["tokenizer.chat_template"]
    return config


def hf_generation_config(metadata: dict) -> dict:
    """The ids that end generation: the GGUF's end-of-sequence, end-of-turn and end-of-message tokens."""
    ends = [metadata[f"tokenizer.ggml.{k}"] for k in ("eos_token_id", "eot_token_id", "eom_token_id")
            if f"tokenizer.ggml.{k}" in metadata]
    ends = list(dict.fromkeys(ends))
    config = {"bos_token_id": metadata.get("tokenizer.ggml.bos_token_id"),
              "eos_token_id": ends[0] if len(ends) == 1 else ends or None}
    if "tokenizer.ggml.padding_token_id" in metadata:
        config["pad_token_id"] = metadata["tokenizer.ggml.padding_token_id"]
    return config
