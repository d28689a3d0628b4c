"""Makes tests/golden/families.json and tests/golden/families_logits.npz from transformers. Run once, by hand,
in a scratch environment that has the reference library (never the project's venv):

    python3 -m venv /tmp/fam-venv && /tmp/fam-venv/bin/pip install torch==2.13.0 transformers==5.24.0 safetensors
    cd /work/main && /tmp/fam-venv/bin/python tests/golden/make_families.py

For every case below: a tiny random model of one family (2 layers, width 64, vocabulary 320) built by transformers,
its weights replaced by tests/family_weights.py's random_weights (numpy's frozen legacy stream, so the test makes
the same tensors without transformers), saved with save_pretrained. The config.json transformers 5 writes is the
"new" layout (rope settings under rope_parameters); the "old" layout is the same file as transformers 4 wrote it
(rope_theta at the top level, rope_scaling null or the scaling dict, torch_dtype, no layer_types). Both folders
are loaded back with AutoModelForCausalLM (float32, eager attention) and must give the same logits on TOKENS,
which are saved. Also saved: the config.json transformers writes for families we refuse, and the config of the
bundled SmolLM2 GGUF as transformers re-saves it. Never imported by the project or the tests.
"""
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors import safe_open
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import assets  # noqa: E402
from tests.family_weights import TOKENS, random_weights  # noqa: E402

SIZES = dict(vocab_size=320, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
# name -> (config class, its settings, how many safetensors shards, fields the old layout adds as hub files have)
CASES = {
    "llama": ("LlamaConfig", dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0}), 1, {}),
    "llama3.2": ("LlamaConfig", dict(rope_parameters=LLAMA3_ROPE, rms_norm_eps=1e-5, tie_word_embeddings=True,
                                     max_position_embeddings=131072), 3, {}),
    "smollm2": ("LlamaConfig", dict(rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
                                    num_key_value_heads=1, rms_norm_eps=1e-5, tie_word_embeddings=True), 1, {}),
    "qwen2.5": ("Qwen2Config", dict(rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                                    tie_word_embeddings=True), 1,
                {"sliding_window": 32768, "max_window_layers": 21, "use_sliding_window": False}),
    "qwen2-untied": ("Qwen2Config", dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0}), 2, {}),
    "qwen3": ("Qwen3Config", dict(rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, head_dim=32,
                                  tie_word_embeddings=True), 1, {}),
    "qwen3-untied": ("Qwen3Config", dict(rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                                         head_dim=16), 2, {}),
    "mistral": ("MistralConfig", dict(rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                                      head_dim=32, sliding_window=None), 1, {}),
    # a window as long as the context never changes attention (Ministral-8B's config.json has 32768 for both)
    "mistral-full-window": ("MistralConfig", dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                                  sliding_window=4096, max_position_embeddings=4096), 1, {}),
}
# Families load_model refuses: the config.json transformers writes for each (architectures filled in as
# save_pretrained of the model does: the class AutoModelForCausalLM, or AutoModel for BERT, builds).
REFUSED = {
    "gemma": ("GemmaConfig", {}), "granite": ("GraniteConfig", dict(embedding_multiplier=12.0)),
    "smollm3": ("SmolLM3Config", {}), "mistral-sliding-window": ("MistralConfig", {}),
    "gemma3": ("Gemma3TextConfig", {}), "phi3": ("Phi3Config", {}), "olmo2": ("Olmo2Config", {}),
    "mixtral": ("MixtralConfig", {}), "qwen3-moe": ("Qwen3MoeConfig", {}), "gemma2": ("Gemma2Config", {}),
    "qwen2-sliding-window": ("Qwen2Config", dict(use_sliding_window=True, sliding_window=8, max_window_layers=1)),
    "bert": ("BertConfig", {}),
}


def old_layout(new: dict, extra: dict) -> dict:
    """config.json as transformers 4 wrote it: rope_theta at the top, rope_scaling beside it."""
    old = {k: v for k, v in new.items() if k not in ("rope_parameters", "dtype", "layer_types", "transformers_version")}
    rope = dict(new["rope_parameters"])
    old["rope_theta"] = rope.pop("rope_theta")
    old["rope_scaling"] = None if rope == {"rope_type": "default"} else rope
    old["torch_dtype"] = new["dtype"]
    return old | extra


def saved_shapes(folder: Path) -> dict[str, list[int]]:
    shapes = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            shapes.update({k: list(st.get_slice(k).get_shape()) for k in st.keys()})
    return shapes


def logits_of(folder: Path) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        return model(torch.tensor([TOKENS])).logits[0].float()  # (T, V)


def make_case(name: str, cls: str, settings: dict, shards: int, extra: dict, seed: int, tmp: Path) -> tuple:
    config = getattr(transformers, cls)(**(SIZES | settings))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager").eval()
    tied = config.tie_word_embeddings
    shapes = {k: list(v.shape) for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    weights = random_weights(shapes, seed)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    new_dir, old_dir = tmp / f"{name}-new", tmp / f"{name}-old"
    size = sum(w.numel() * 4 for w in weights.values())
    model.save_pretrained(str(new_dir), max_shard_size=size // shards + 1 if shards > 1 else "1GB")
    assert saved_shapes(new_dir) == shapes, f"{name}: transformers saved other tensors than the test writes"
    assert (len(list(new_dir.glob("*.safetensors"))) > 1) == (shards > 1), name
    new = json.loads((new_dir / "config.json").read_text())
    old = old_layout(new, extra)
    old_dir.mkdir()
    for f in new_dir.iterdir():
        (old_dir / f.name).write_bytes(f.read_bytes())
    (old_dir / "config.json").write_text(json.dumps(old, indent=2))
    with torch.no_grad():
        direct = model(torch.tensor([TOKENS])).logits[0].float()
    a, b = logits_of(new_dir), logits_of(old_dir)
    assert torch.equal(a, b) and torch.equal(a, direct), f"{name}: the two layouts load differently in transformers"
    case = {"seed": seed, "shards": shards, "shapes": shapes, "config_new": new, "config_old": old}
    return case, a.numpy()


def refused_config(cls: str, settings: dict, tmp: Path) -> dict:
    config = getattr(transformers, cls)(**(SIZES | settings))
    auto = AutoModel if cls == "BertConfig" else AutoModelForCausalLM
    config.architectures = [auto._model_mapping[type(config)].__name__]  # what save_pretrained of a model writes
    config.save_pretrained(str(tmp))
    return json.loads((tmp / "config.json").read_text())


def smollm2_config(tmp: Path) -> dict:
    """SmolLM2's config as transformers reads it from the bundled GGUF and writes it back."""
    path = assets.asset_path(assets.SMOLLM2_GGUF)
    AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(str(tmp))
    return json.loads((tmp / "config.json").read_text())


def main():
    torch.manual_seed(0)  # transformers' own initialisation, overwritten by random_weights anyway
    out = {"transformers": transformers.__version__, "tokens": TOKENS, "cases": {}, "refused": {}}
    logits = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for seed, (name, (cls, settings, shards, extra)) in enumerate(CASES.items()):
            out["cases"][name], logits[name] = make_case(name, cls, settings, shards, extra, seed, tmp)
            print(name, "ok", logits[name].shape)
        for name, (cls, settings) in REFUSED.items():
            out["refused"][name] = refused_config(cls, settings, tmp / f"refused-{name}")
        out["smollm2_gguf_config"] = smollm2_config(tmp / "smollm2")
    here = Path(__file__).parent
    (here / "families.json").write_text(json.dumps(out, indent=1) + "\n")
    np.savez_compressed(here / "families_logits.npz", **logits)
    print("wrote", here / "families.json", here / "families_logits.npz")


if __name__ == "__main__":
    main()
