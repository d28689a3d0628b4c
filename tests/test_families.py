"""Every family load_model claims runs as transformers runs it; every other family is refused by name before a
weight is read.

Goldens: tests/golden/families.json and families_logits.npz, made by tests/golden/make_families.py with
transformers 5.24 in a scratch venv (see there). Each case is a tiny random model of one family (2 layers, width
64, vocabulary 320) whose weights are tests/family_weights.py's random_weights(shapes, seed), saved by
save_pretrained; its config.json in both layouts (transformers 5's rope_parameters, transformers 4's rope_theta
beside rope_scaling); the logits of AutoModelForCausalLM (float32, eager attention) on TOKENS, which transformers
gives identically for both layouts. Here the same weights are written by our own safetensors writer (sharded
where the case is), next to each config.json and a byte-level tokenizer, and loaded by load_model: logits must
equal transformers' within 1e-4 (measured: at most 1.1e-6; a wrong rope_theta moves them by 0.06 or more).

Refusals: the config.json transformers writes for other families, with the weight readers replaced by a function
that fails the test, so a refusal that comes after reading weights cannot pass; and GGUF headers of unsupported
architectures or settings whose tensor data is absent or undecodable.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import checkpoint
from checkpoint import (SUPPORTED_ARCHITECTURES, SUPPORTED_GGUF_ARCHITECTURES, ModelLoadError, hf_model_type,
                        load_model, write_safetensors)
from model import HF_FAMILIES, ModelConfig
from tests.family_weights import random_weights
from tests.test_checkpoint import gguf_metadata, gguf_tensors_of, tokenizer_json, write_gguf
from tests.tiny_model import tiny_model

GOLDEN_DIR = Path(__file__).parent / "golden"
GOLDEN = json.loads((GOLDEN_DIR / "families.json").read_text())
LOGITS = dict(np.load(GOLDEN_DIR / "families_logits.npz"))
TOLERANCE = 1e-4  # float32 on both sides; only the order of summation differs (SDPA here, eager there)


def write_folder(folder: Path, config: dict, tensors: dict, shards: int = 1) -> Path:
    """A Hugging Face folder: config.json, the tensors (in `shards` files with an index when more than one), a
    byte-level tokenizer."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json()))
    if shards == 1:
        write_safetensors(folder / "model.safetensors", tensors, {"format": "pt"})
        return folder
    names, weight_map = sorted(tensors), {}
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors(folder / fname, {k: tensors[k] for k in names[s::shards]}, {"format": "pt"})
        weight_map.update({k: fname for k in names[s::shards]})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


@pytest.fixture
def weights_never_read(monkeypatch):
    """Make reading any weight fail the test: a refusal must come from the config or header alone."""
    def fail(*args, **kwargs):
        pytest.fail("load_model read weights before refusing")
    monkeypatch.setattr(checkpoint, "read_safetensors", fail)
    monkeypatch.setattr(checkpoint, "dequantize_gguf", fail)


# ------------------------------------------------------------------------------------------ supported families

@pytest.mark.parametrize("layout", ["config_new", "config_old"])
@pytest.mark.parametrize("name", GOLDEN["cases"])
def test_logits_equal_transformers(tmp_path, name, layout):
    case = GOLDEN["cases"][name]
    tensors = random_weights(case["shapes"], case["seed"])
    folder = write_folder(tmp_path / name, case[layout], tensors, case["shards"])
    model, _ = load_model(str(folder))
    with torch.no_grad():
        logits = model(torch.tensor([GOLDEN["tokens"]]))[0]  # (T, V)
    want = torch.from_numpy(LOGITS[name])
    assert logits.shape == want.shape
    assert (logits - want).abs().max().item() <= TOLERANCE
    tied = case[layout]["tie_word_embeddings"]
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied


@pytest.mark.parametrize("name", GOLDEN["cases"])
def test_both_layouts_read_as_the_same_config(name):
    case = GOLDEN["cases"][name]
    assert ModelConfig.from_hf(case["config_new"]) == ModelConfig.from_hf(case["config_old"])


def test_goldens_cover_every_family_tied_untied_sharded_and_llama3_rope():
    cases = [c["config_new"] for c in GOLDEN["cases"].values()]
    assert {c["model_type"] for c in cases} == set(SUPPORTED_ARCHITECTURES)
    assert {c["tie_word_embeddings"] for c in cases} == {True, False}
    assert any(c["shards"] > 1 for c in GOLDEN["cases"].values())
    assert any(c["rope_parameters"]["rope_type"] == "llama3" for c in cases)
    assert set(SUPPORTED_ARCHITECTURES) == set(HF_FAMILIES)  # every family named has a reader, and back


# --------------------------------------------------------------------------------------------------- refusals

ARCHITECTURE_REFUSALS = ["gemma", "granite", "smollm3", "gemma3", "phi3", "olmo2", "mixtral", "qwen3-moe", "gemma2",
                         "bert"]


@pytest.mark.parametrize("name", ARCHITECTURE_REFUSALS)
def test_other_families_are_refused_by_name(tmp_path, name, weights_never_read):
    config = GOLDEN["refused"][name]
    tensors = {"model.embed_tokens.weight": torch.zeros(4, 4)}
    folder = write_folder(tmp_path / name, config, tensors)
    with pytest.raises(ModelLoadError) as err:
        load_model(str(folder))
    message = str(err.value)
    assert "\n" not in message
    assert f"{config['architectures'][0]} (model_type {config['model_type']!r}) is not supported" in message
    for cls, families in SUPPORTED_ARCHITECTURES.values():
        assert f"{cls} ({families})" in message


@pytest.mark.parametrize("name,message", [
    ("mistral-sliding-window", r"MistralForCausalLM: sliding-window attention \(window 4096 < context 131072\)"),
    ("qwen2-sliding-window", r"Qwen2ForCausalLM: sliding-window attention \(window 8 < context 32768\)"),
])
def test_supported_families_with_unimplemented_features_are_refused(tmp_path, name, message, weights_never_read):
    folder = write_folder(tmp_path / name, GOLDEN["refused"][name], {"x": torch.zeros(1)})
    with pytest.raises(ModelLoadError, match=message):
        load_model(str(folder))


@pytest.mark.parametrize("declared,accepted", [
    ({"architectures": ["LlamaForCausalLM"]}, "llama"),  # no model_type: the class names the family
    ({"model_type": "qwen3"}, "qwen3"),  # no architectures
    ({"model_type": "llama", "architectures": ["LlamaForSequenceClassification"]}, None),  # another head
    ({"model_type": "llama", "architectures": ["MistralForCausalLM"]}, None),  # contradicts itself
    ({"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"],
      "text_config": {"model_type": "llama"}}, None),  # a decoder inside a multimodal wrapper
    ({}, None),
])
def test_architecture_is_judged_from_model_type_and_architectures(declared, accepted):
    if accepted:
        assert hf_model_type(declared) == accepted
    else:
        with pytest.raises(ModelLoadError, match="is not supported; this engine runs LlamaForCausalLM"):
            hf_model_type(declared)


def test_feature_refusals_name_the_architecture_and_the_setting(tmp_path, weights_never_read):
    config = dict(GOLDEN["cases"]["llama3.2"]["config_new"])
    config["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}
    folder = write_folder(tmp_path / "yarn", config, {"x": torch.zeros(1)})
    with pytest.raises(ModelLoadError, match=r"config.json: LlamaForCausalLM: rope type 'yarn' is not supported"):
        load_model(str(folder))


def test_tensor_names_are_checked_before_weights_are_read(tmp_path, weights_never_read):
    case = GOLDEN["cases"]["llama"]
    tensors = random_weights(case["shapes"], 0)
    tensors["model.layers.0.self_attn.o_proj.bias"] = torch.zeros(64)
    folder = write_folder(tmp_path / "extra", case["config_new"], tensors)
    with pytest.raises(ModelLoadError, match="unexpected tensor model.layers.0.self_attn.o_proj.bias"):
        load_model(str(folder))


# ------------------------------------------------------------------------------------------------------- GGUF

def gguf_with(path: Path, changes: dict, drop_data=False, undecodable=False):
    """The tiny llama GGUF of test_checkpoint with metadata changed; its tensor data cut off, or its embedding
    turned into a type we cannot dequantise, so that reading weights would fail on its own."""
    model = tiny_model(seed=2)
    tensors = gguf_tensors_of(model)
    if undecodable:
        V, D = model.cfg.vocab_size, model.cfg.dim
        tensors = [t for t in tensors if t[0] != "token_embd.weight"]
        tensors.append(("token_embd.weight", (V, D), 20, b"\0" * (V * D // 32 * 18)))  # IQ4_NL
    write_gguf(path, gguf_metadata(model.cfg) | changes, tensors)
    if drop_data:
        path.write_bytes(path.read_bytes()[:-4096])
    return path


@pytest.mark.parametrize("drop_data,undecodable", [(True, False), (False, True)])
def test_gguf_of_another_architecture_is_refused_from_its_header(tmp_path, drop_data, undecodable, weights_never_read):
    path = gguf_with(tmp_path / "g.gguf", {"general.architecture": (8, "gemma3")}, drop_data, undecodable)
    with pytest.raises(ModelLoadError) as err:
        load_model(str(path))
    message = str(err.value)
    assert "GGUF architecture 'gemma3' is not supported" in message and "\n" not in message
    for arch, families in SUPPORTED_GGUF_ARCHITECTURES.items():
        assert f"{arch} ({families})" in message


@pytest.mark.parametrize("changes,message", [
    ({"llama.expert_count": (4, 8), "llama.expert_used_count": (4, 2)}, "8 experts"),
    ({"llama.rope.scaling.type": (8, "yarn"), "llama.rope.scaling.factor": (6, 4.0)}, "rope scaling 'yarn'"),
    ({"llama.rope.dimension_count": (4, 4)}, "rope over 4 of 8 head dimensions"),
])
def test_gguf_settings_we_do_not_implement_are_refused_from_the_header(tmp_path, changes, message,
                                                                         weights_never_read):
    with pytest.raises(ModelLoadError, match=message):
        load_model(str(gguf_with(tmp_path / "s.gguf", changes, undecodable=True)))


def test_gguf_tensor_names_are_checked_before_dequantising(tmp_path, weights_never_read):
    model = tiny_model(seed=2)
    tensors = gguf_tensors_of(model) + [("blk.0.ffn_gate_inp.weight", (4, model.cfg.dim), 0, b"\0" * 16 * 32)]
    write_gguf(tmp_path / "moe.gguf", gguf_metadata(model.cfg), tensors)
    with pytest.raises(ModelLoadError, match="unexpected tensor blk.0.ffn_gate_inp.weight"):
        load_model(str(tmp_path / "moe.gguf"))
