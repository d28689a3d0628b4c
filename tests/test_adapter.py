"""adapter.py: the PEFT folder a run writes (names and adapter_config.json against peft's own output, kept in
tests/golden/peft_adapter.json by tests/golden/make_peft_adapter.py), reading adapters back exactly, refusing
what is not a plain LoRA of this model in one line, and the Hugging Face copy of a GGUF base model.

The heavy tests need peft and transformers (a scratch environment: see make_peft_adapter.py) and, for the
SmolLM2 copy, the embedded model: peft loads our folder onto a tiny base with our logits, and transformers loads
the copy of the embedded GGUF with our logits, token ids and chat prompt."""
import json
import re
import warnings
from pathlib import Path

import pytest
import torch

import adapter
from adapter import (AdapterError, check_adapter_fits, check_adapter_settings, read_adapter,
                     write_hf_base, write_peft_folder)
from checkpoint import GGUF_LAYER_NAMES, GGUF_TOP_NAMES, load_model, read_safetensors, write_safetensors
from model import add_lora, load_lora_state_dict, lora_state_dict
from tests.test_checkpoint import (gguf_metadata, gguf_tensors_of, llama_cpp_permute, logits_of, write_gguf,
                                   write_hf_folder)
from tests.tiny_model import tiny_model

GOLDEN = json.loads((Path(__file__).parent / "golden" / "peft_adapter.json").read_text())
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ALL_LINEAR_SORTED = tuple(sorted(ALL_LINEAR))
# the fields a consumer needs (llama.cpp reads lora_alpha and base_model_name_or_path, vLLM r and target_modules)
ESSENTIAL = ("peft_type", "task_type", "base_model_name_or_path", "r", "lora_alpha", "lora_dropout",
             "target_modules", "bias", "fan_in_fan_out", "use_dora", "use_rslora")


def trained_lora(targets=("q_proj", "v_proj"), r=4, alpha=8, seed=0, **model_overrides):
    """A tiny model with a LoRA whose B is non-zero (as after training), and its tensors in our names."""
    model = tiny_model(seed=seed, **model_overrides)
    torch.manual_seed(seed)
    add_lora(model, targets=targets, r=r, alpha=alpha)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0.0, 0.1)
    return model, lora_state_dict(model)


# ----------------------------------------------------------------------------------------------- PEFT names

@pytest.mark.parametrize("case", sorted(GOLDEN["cases"]))
def test_peft_names_and_config_match_peft(tmp_path, case):
    golden = GOLDEN["cases"][case]
    r, alpha, dropout, targets = (golden["settings"][k] for k in ("r", "lora_alpha", "lora_dropout", "target_modules"))
    _, tensors = trained_lora(tuple(targets), r, alpha)
    folder = write_peft_folder(tmp_path / "a", tensors, GOLDEN["base_model_name_or_path"], r, alpha, dropout, targets)
    written = read_safetensors(folder / "adapter_model.safetensors")
    assert {k: [str(v.dtype).removeprefix("torch."), list(v.shape)] for k, v in written.items()} == golden["tensors"]
    ours = json.loads((folder / "adapter_config.json").read_text())
    assert set(ESSENTIAL) <= set(ours)
    assert {k: golden["adapter_config"].get(k, "absent from peft's file") for k in ours} == ours
    for name, t in tensors.items():  # same values under the new name
        assert torch.equal(written[adapter.peft_name(name)], t)


def test_names_both_ways():
    ours = "model.layers.12.mlp.down_proj.lora_B"
    assert adapter.peft_name(ours) == "base_model.model.model.layers.12.mlp.down_proj.lora_B.weight"
    assert adapter.our_name(adapter.peft_name(ours)) == ours
    assert adapter.our_name("base_model.model.lm_head.lora_A.weight") == "lm_head.lora_A"
    for other in ("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector",
                  "base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias", "model.layers.0.q.lora_A.weight"):
        assert adapter.our_name(other) is None


# ----------------------------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("targets", [("q_proj", "v_proj"), ALL_LINEAR])
def test_peft_folder_round_trip_exact(tmp_path, targets):
    model, tensors = trained_lora(targets, r=3, alpha=5)
    folder = write_peft_folder(tmp_path / "a", tensors, "ORG/base", 3, 5, 0.1, targets)
    back = read_adapter(folder)
    assert back.tensors.keys() == tensors.keys() and all(torch.equal(back.tensors[k], tensors[k]) for k in tensors)
    assert (back.r, back.alpha, back.targets, back.dropout, back.base_model) == (3, 5, tuple(sorted(targets)), 0.1,
                                                                                "ORG/base")
    check_adapter_settings(back, 3, 5, targets)
    check_adapter_fits(back, model)  # the model it came from, LoRA applied
    check_adapter_fits(back, tiny_model())  # and a plain copy of its base
    assert read_adapter(folder / "adapter_model.safetensors").tensors.keys() == tensors.keys()


@pytest.mark.parametrize("form", ["peft", "ours"])
def test_a_model_started_from_a_saved_adapter_is_the_trained_one(tmp_path, form):
    """What a run given --init-adapter does: a fresh base, add_lora, the saved tensors loaded: the same logits."""
    trained, tensors = trained_lora(r=4, alpha=8, seed=2)
    if form == "peft":
        path = write_peft_folder(tmp_path / "a", tensors, None, 4, 8)
    else:
        path = tmp_path / "adapter.safetensors"
        write_safetensors(path, tensors, adapter.adapter_metadata(4, 8, 0.0, ("q_proj", "v_proj"), None))
    saved = read_adapter(path)
    fresh = tiny_model(seed=2)
    add_lora(fresh, r=saved.r, alpha=saved.alpha)
    check_adapter_settings(saved, 4, 8)
    check_adapter_fits(saved, fresh)
    load_lora_state_dict(fresh, saved.tensors)
    assert torch.equal(logits_of(fresh), logits_of(trained))


def test_our_file_with_metadata_or_in_its_run_folder(tmp_path):
    _, tensors = trained_lora(r=4, alpha=16)
    alone = tmp_path / "alone.safetensors"
    write_safetensors(alone, tensors, adapter.adapter_metadata(4, 16, 0.0, ("q_proj", "v_proj"), None))
    back = read_adapter(alone)
    assert (back.r, back.alpha, back.targets) == (4, 16.0, ("q_proj", "v_proj"))
    assert all(torch.equal(back.tensors[k], tensors[k]) for k in tensors)
    # a run folder as rundir.py writes it: RUN/config.json and RUN/TARGET/adapter.safetensors without metadata
    target = tmp_path / "run" / "computer"
    target.mkdir(parents=True)
    (tmp_path / "run" / "config.json").write_text(json.dumps({"settings": {"lora_alpha": 16, "model": None}}))
    write_safetensors(target / "adapter.safetensors", tensors)
    for path in (target, target / "adapter.safetensors"):
        back = read_adapter(path)
        assert (back.r, back.alpha, back.base_model) == (4, 16.0, adapter.EMBEDDED_BASE)


# ----------------------------------------------------------------------------------------------- refusals

def one_line_refusal(path, *words):
    with pytest.raises(AdapterError) as e:
        read_adapter(path)
    message = str(e.value)
    assert "\n" not in message and all(w in message for w in words), message


@pytest.mark.parametrize("field,value,words", [
    ("use_dora", True, ["use_dora", "DoRA"]), ("rank_pattern", {"q_proj": 8}, ["rank_pattern"]),
    ("peft_type", "IA3", ["IA3", "only LORA"]), ("fan_in_fan_out", True, ["fan_in_fan_out"]),
    ("use_rslora", True, ["rsLoRA"]), ("alpha_pattern", {"v_proj": 2}, ["alpha_pattern"]),
    ("bias", "all", ["bias"]), ("modules_to_save", ["lm_head"], ["modules_to_save"]),
    ("layers_to_transform", [0], ["some layers"]), ("init_lora_weights", "pissa", ["pissa"]),
    ("task_type", "SEQ_CLS", ["SEQ_CLS"]), ("r", 0, ["positive"]),
    ("alora_invocation_tokens", [5, 6], ["alora_invocation_tokens", "does not implement"]),
])
def test_peft_variants_are_refused(tmp_path, field, value, words):
    _, tensors = trained_lora()
    folder = write_peft_folder(tmp_path / "a", tensors, None, 4, 8)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, field: value}))
    one_line_refusal(folder, *words)


def test_a_folder_peft_wrote_reads(tmp_path):
    """peft's own adapter_config.json (every field peft 0.21.2 writes) beside tensors in its names."""
    golden = GOLDEN["cases"]["all_linear"]
    _, tensors = trained_lora(ALL_LINEAR, r=2, alpha=16)
    folder = write_peft_folder(tmp_path / "a", tensors, None, 2, 16, 0.05, ALL_LINEAR)
    (folder / "adapter_config.json").write_text(json.dumps(golden["adapter_config"]))
    back = read_adapter(folder)
    assert (back.r, back.alpha, back.dropout, back.targets, back.base_model) == (2, 16, 0.05, ALL_LINEAR_SORTED,
                                                                                "tiny-base")


def test_bad_files_are_refused(tmp_path):
    _, tensors = trained_lora()
    folder = write_peft_folder(tmp_path / "a", tensors, None, 4, 8)
    weights = folder / "adapter_model.safetensors"
    peft_tensors = read_safetensors(weights)

    def rewrite(ts):
        write_safetensors(weights, ts)

    magnitude = "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"
    rewrite({**peft_tensors, magnitude: torch.ones(32)})
    one_line_refusal(folder, "lora_magnitude_vector", "DoRA")
    rewrite({k: v for k, v in peft_tensors.items() if "layers.1.self_attn.v_proj.lora_B" not in k})
    one_line_refusal(folder, "model.layers.1.self_attn.v_proj.lora_A", "incomplete")
    a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    rewrite({**peft_tensors, a: torch.zeros(5, 32)})
    one_line_refusal(folder, "(5, 32)", "rank 4")
    weights.write_bytes(b"\x10\x00")
    one_line_refusal(folder, "truncated")
    weights.unlink()
    (folder / "adapter_model.bin").write_bytes(b"pickle")
    one_line_refusal(folder, "adapter_model.bin", "safe_serialization")
    (folder / "adapter_config.json").write_text("{")
    one_line_refusal(folder, "adapter_config.json")
    one_line_refusal(tmp_path / "missing", "neither")
    # our own file: PEFT names without their config, foreign tensors, no alpha anywhere
    write_safetensors(tmp_path / "peft_names.safetensors", peft_tensors)
    one_line_refusal(tmp_path / "peft_names.safetensors", "adapter_config.json")
    write_safetensors(tmp_path / "model.safetensors", {"model.embed_tokens.weight": torch.zeros(2, 2)})
    one_line_refusal(tmp_path / "model.safetensors", "not a LoRA adapter")
    write_safetensors(tmp_path / "bare.safetensors", tensors)
    one_line_refusal(tmp_path / "bare.safetensors", "alpha", "PEFT folder")
    write_safetensors(tmp_path / "only_b.safetensors", {k: v for k, v in tensors.items() if k.endswith("lora_B")})
    one_line_refusal(tmp_path / "only_b.safetensors", "has no model.layers.0.self_attn.q_proj.lora_A")


def test_settings_and_model_mismatches_are_refused(tmp_path):
    _, tensors = trained_lora(r=4, alpha=8)
    saved = read_adapter(write_peft_folder(tmp_path / "a", tensors, None, 4, 8))
    with pytest.raises(AdapterError, match="--lora-r 4 --lora-alpha 8"):
        check_adapter_settings(saved, 64, 16)
    with pytest.raises(AdapterError, match="adapts q_proj, v_proj; this run adapts k_proj, q_proj"):
        check_adapter_settings(saved, 4, 8, ("q_proj", "k_proj"))
    with pytest.raises(AdapterError, match="lacks model.layers.2.self_attn.q_proj.lora_A"):
        check_adapter_fits(saved, tiny_model(n_layers=3))
    with pytest.raises(AdapterError, match=r"has shape \(4, 32\), the model needs \(4, 48\)"):
        check_adapter_fits(saved, tiny_model(dim=48, n_heads=4, head_dim=12))


# ----------------------------------------------------------------------------------------------- HF base copy

TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}" \
           "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"


def tiny_gguf(path, model, f16=False):
    metadata = gguf_metadata(model.cfg)
    tokens = metadata["tokenizer.ggml.tokens"][1][1] + ["he", "ll", "hell"]  # 256 bytes, 2 control tokens, merges
    metadata.update({"tokenizer.chat_template": (8, TEMPLATE), "tokenizer.ggml.tokens": (9, (8, tokens)),
                     "tokenizer.ggml.token_type": (9, (5, [1] * 256 + [3, 3] + [1] * 3)),
                     "tokenizer.ggml.merges": (9, (8, ["h e", "l l", "he ll"]))})
    write_gguf(path, metadata, gguf_tensors_of(model, f16=f16))
    return path


FAMILIES = {"llama": {}, "qwen2": dict(qkv_bias=True), "qwen3": dict(qk_norm=True)}  # GGUF architecture -> model


def family_gguf(path, arch: str, model):
    """A float32 GGUF of `model` under another architecture: its metadata keys renamed, tensors in llama.cpp's
    names (q/k rows permuted only for llama, as llama.cpp converts)."""
    metadata = {k.replace("llama.", f"{arch}.", 1): v for k, v in gguf_metadata(model.cfg).items()}
    metadata["general.architecture"] = (8, arch)
    if arch == "qwen3":
        metadata["qwen3.attention.key_length"] = (4, model.cfg.head_dim)
    gguf_names = {v: k for k, v in GGUF_LAYER_NAMES.items()} | {v: k for k, v in GGUF_TOP_NAMES.items()}
    tensors = []
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and model.cfg.tie_embeddings:
            continue
        stem, _, leaf = name.rpartition(".")
        layer = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", stem)
        gguf = f"blk.{layer[1]}.{gguf_names[layer[2]]}.{leaf}" if layer else f"{gguf_names[stem]}.{leaf}"
        if arch == "llama" and stem.endswith(("q_proj", "k_proj")):
            t = llama_cpp_permute(t, model.cfg.n_heads if stem.endswith("q_proj") else model.cfg.n_kv_heads)
        tensors.append((gguf, tuple(t.shape), 0, t.float().contiguous().numpy().tobytes()))
    write_gguf(path, metadata, tensors)
    return path


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_hf_copy_of_each_gguf_family_loads_to_the_same_model(tmp_path, arch):
    model = tiny_model(seed=6, tie_embeddings=False, **FAMILIES[arch])
    out = write_hf_base(family_gguf(tmp_path / "m.gguf", arch, model), tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == arch and config["architectures"] == [adapter.HF_OF_GGUF[arch][1]]
    copy, _ = load_model(str(out))
    assert copy.cfg == load_model(str(tmp_path / "m.gguf"))[0].cfg
    assert torch.equal(logits_of(copy), logits_of(model))


@pytest.mark.parametrize("tied", [True, False])
def test_hf_copy_of_gguf_loads_to_the_same_model(tmp_path, tied):
    model = tiny_model(seed=4, tie_embeddings=tied)
    gguf = tiny_gguf(tmp_path / "m.gguf", model)
    out = write_hf_base(gguf, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert (config["architectures"], config["tie_word_embeddings"], config["torch_dtype"]) == \
           (["LlamaForCausalLM"], tied, "float32")
    assert ("lm_head.weight" in read_safetensors(out / "model.safetensors")) == (not tied)
    (m1, t1), (m2, t2) = load_model(str(gguf)), load_model(str(out))
    assert m2.cfg == m1.cfg and torch.equal(logits_of(m2), logits_of(m1))
    text = t1.chat([{"role": "user", "content": "hello 42"}], assistant_prefix='{"')
    assert t2.chat([{"role": "user", "content": "hello 42"}], assistant_prefix='{"') == text
    assert t2.encode(text) == t1.encode(text) and t2.eos_ids == t1.eos_ids and t2.bos_id == t1.bos_id
    assert t2.end_of_turn == t1.end_of_turn == 257 and t2.encode("hello") == [260, ord("o")]  # merges kept


def test_hf_copy_keeps_half_precision_when_exact(tmp_path):
    model = tiny_model(seed=5)
    out = write_hf_base(tiny_gguf(tmp_path / "m.gguf", model, f16=True), tmp_path / "hf")
    # the 2-D weights are F16 in the GGUF; the float32 norms of tiny_model are not all exact in float16
    dtypes = {str(t.dtype) for t in read_safetensors(out / "model.safetensors").values()}
    assert dtypes == {"torch.float32"}
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(p.half().float())
    out = write_hf_base(tiny_gguf(tmp_path / "h.gguf", model, f16=True), tmp_path / "hf16")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float16"
    assert torch.equal(logits_of(load_model(str(out))[0]), logits_of(load_model(str(tmp_path / "h.gguf"))[0]))


def test_hf_copy_refusals(tmp_path):
    model = tiny_model(seed=4)
    write_hf_folder(tmp_path / "hf", model)
    with pytest.raises(AdapterError, match="not a .gguf file"):
        write_hf_base(tmp_path / "hf", tmp_path / "copy")
    gguf = tiny_gguf(tmp_path / "m.gguf", model)
    with pytest.raises(AdapterError, match="is not empty"):
        write_hf_base(gguf, tmp_path / "hf")
    (tmp_path / "bad.gguf").write_bytes(b"GGML" + b"\0" * 64)
    with pytest.raises(AdapterError, match="not a GGUF file"):
        write_hf_base(tmp_path / "bad.gguf", tmp_path / "copy")


# ----------------------------------------------------------------------------------------------- heavy

def reference_libraries():
    peft = pytest.importorskip("peft", reason="needs peft (a scratch env: tests/golden/make_peft_adapter.py)")
    transformers = pytest.importorskip("transformers", reason="needs transformers (a scratch env)")
    return peft, transformers


@pytest.mark.heavy
@pytest.mark.parametrize("targets", [("q_proj", "v_proj"), ALL_LINEAR])
def test_peft_loads_our_folder_with_our_logits(tmp_path, targets):
    peft, transformers = reference_libraries()
    model, tensors = trained_lora(targets, r=4, alpha=8, seed=1, tie_embeddings=False)
    write_hf_folder(tmp_path / "base", tiny_model(seed=1, tie_embeddings=False), tied=False)
    folder = write_peft_folder(tmp_path / "a", tensors, str(tmp_path / "base"), 4, 8, 0.0, targets)
    def base():
        return transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32,
                                                                 attn_implementation="sdpa")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        theirs = peft.PeftModel.from_pretrained(base(), folder).eval()
    assert not [w for w in caught if "key" in str(w.message).lower()]  # no missing or unexpected tensor names
    tokens = torch.tensor([[1, 5, 9, 2, 44, 96, 0, 13]])
    with torch.no_grad():
        ours, got = model(tokens), theirs(tokens).logits
        with theirs.disable_adapter():
            untouched = theirs(tokens).logits
    assert (ours - untouched).abs().max() > 0.1  # the adapter changes the logits, so the comparison means something
    assert (ours - got).abs().max() <= 1e-6  # 0.0 measured on CPU with transformers 5.24, peft 0.21.2
    # peft reads our config as the one it writes itself for the same adapter
    reference = peft.get_peft_model(base(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=list(targets),
                                                          task_type="CAUSAL_LM"))
    reference.save_pretrained(tmp_path / "ref")
    mine, theirs_cfg = (peft.LoraConfig.from_pretrained(p).to_dict() for p in (folder, tmp_path / "ref"))
    assert mine == theirs_cfg


@pytest.mark.heavy
@pytest.mark.parametrize("arch", sorted(FAMILIES))
@pytest.mark.parametrize("tied", [True, False])
def test_transformers_runs_the_hf_copy_of_each_family_as_we_do(tmp_path, arch, tied):
    _, transformers = reference_libraries()
    model = tiny_model(seed=7, tie_embeddings=tied, **FAMILIES[arch])
    out = write_hf_base(family_gguf(tmp_path / "m.gguf", arch, model), tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="sdpa")
    assert type(hf).__name__ == adapter.HF_OF_GGUF[arch][1]
    tokens = torch.tensor([[1, 5, 9, 2, 44, 96, 0, 13]])
    with torch.no_grad():
        assert (hf(tokens).logits - model(tokens)).abs().max() <= 1e-6


@pytest.mark.heavy
def test_hf_copy_of_embedded_smollm2_matches_transformers(tmp_path):
    _, transformers = reference_libraries()
    import assets
    from tests.test_smollm2 import GOLDEN as SMOLLM2
    gguf = assets.asset_path(assets.SMOLLM2_GGUF)
    out = write_hf_base(None, tmp_path / "smollm2")  # None: the embedded model, as load_model(None)
    model, tok = load_model(str(gguf))
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="sdpa")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == tok.chat(messages)
    for text in SMOLLM2["sentences"] + [prompt]:
        assert hf_tok(text, add_special_tokens=True)["input_ids"] == tok.encode(text), text
    ids = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        diff = (hf(ids).logits - model(ids)).abs().max().item()
    assert diff <= 1e-5, diff  # 0.0 measured (sdpa attention, CPU, transformers 5.24); eager attention: 8.2e-5


@pytest.mark.heavy
@pytest.mark.parametrize("pre", ["smollm", "gpt2", "llama-bpe", "qwen2"])
def test_tokenizer_json_encodes_as_we_do(tmp_path, pre):
    """Each GGUF pre-tokenizer we read, written as tokenizer.json and loaded by transformers, encodes as we do
    (SmolLM2's vocabulary under each; llama-bpe with the BOS that add_bos_token puts in front)."""
    _, transformers = reference_libraries()
    import assets
    from checkpoint import read_gguf_header
    from tests.test_smollm2 import GOLDEN as SMOLLM2
    from tokenizer import Tokenizer
    _, metadata, _ = read_gguf_header(assets.asset_path(assets.SMOLLM2_GGUF))
    metadata = {**metadata, "tokenizer.ggml.pre": pre, "tokenizer.ggml.add_bos_token": pre == "llama-bpe"}
    (tmp_path / "tokenizer.json").write_text(json.dumps(adapter.hf_tokenizer(metadata)))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(adapter.hf_tokenizer_config(metadata, 8192)))
    ours, theirs = Tokenizer.from_gguf(metadata), transformers.AutoTokenizer.from_pretrained(tmp_path)
    bos = [metadata["tokenizer.ggml.bos_token_id"]] if pre == "llama-bpe" else []
    for text in SMOLLM2["sentences"] + SMOLLM2["chat_prompts"]:
        assert theirs(text)["input_ids"] == bos + ours.encode(text), text
        assert theirs.decode(ours.encode(text)) == text
