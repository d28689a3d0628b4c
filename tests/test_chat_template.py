"""Prompts rendered with the checkpoint's own chat template equal transformers' apply_chat_template, text and ids.

Golden values in tests/golden/chat_templates.json come from tests/golden/make_chat_templates.py, run by hand in a
scratch environment with transformers (see its docstring): the published templates of Llama 3.1 and 3.2, Qwen2.5,
Qwen3, SmolLM2, Mistral Nemo, Phi-3.5, Gemma 2 and a DeepSeek-R1 distill, rendered by apply_chat_template on four
conversations (add_generation_prompt=True, date_string fixed) and tokenised by a PreTrainedTokenizerFast. Ids are
compared on a small byte-level BPE given each family's pre-tokenizer chain and added tokens, on SmolLM2's real
vocabulary (the project's GGUF), and, in a heavy test, on the real Llama 3 and Qwen2 vocabularies.
"""
import json
import os
from datetime import datetime
from pathlib import Path

import pytest

import assets
from checkpoint import read_gguf_raw
from tokenizer import Tokenizer, bytes_to_unicode

GOLDEN = json.loads((Path(__file__).parent / "golden" / "chat_templates.json").read_text(encoding="utf-8"))
DATE, PREFIX = GOLDEN["date_string"], GOLDEN["prefix"]
# The token each template writes after an assistant's answer: what the loop appends to greedy members.
END_OF_TURN = {"llama-3.1": "<|eot_id|>", "llama-3.2": "<|eot_id|>", "qwen2.5": "<|im_end|>", "qwen3": "<|im_end|>",
               "smollm2": "<|im_end|>", "mistral-nemo": "</s>", "phi-3.5": "<|end|>", "gemma": "<end_of_turn>",
               "deepseek-r1-distill-llama": "<｜end▁of▁sentence｜>"}
B2U = bytes_to_unicode()


def write_folder(folder: Path, family: dict, template=True) -> Path:
    """A Hugging Face tokenizer folder for one family, as the make script gave it to transformers."""
    bpe, n = GOLDEN["bpe"], len(GOLDEN["bpe"]["vocab"])
    added = [{"id": n + i, "content": t, "special": True} for i, t in enumerate(family["added_tokens"])]
    spec = {"added_tokens": added,
            "normalizer": family["normalizer"], "pre_tokenizer": family["pre_tokenizer"],
            "model": {"type": "BPE", "vocab": bpe["vocab"], "merges": bpe["merges"],
                      "ignore_merges": family["ignore_merges"]}}
    folder.mkdir(exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    config = {**family["special_tokens"], **({"chat_template": family["template"]} if template else {})}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def family_tokenizer(tmp_path, name) -> Tokenizer:
    return Tokenizer.from_folder(write_folder(tmp_path / name, GOLDEN["families"][name]))


def assert_matches_reference(tok: Tokenizer, reference: dict):
    for name, ref in reference.items():
        conv = GOLDEN["conversations"][name]
        if "error" in ref:
            with pytest.raises(ValueError, match=ref["error"]):
                tok.chat(conv, date_string=DATE)
            continue
        text = tok.chat(conv, date_string=DATE)
        assert text == ref["text"], name
        assert tok.encode(text) == ref["ids"], name
        assert tok.encode(tok.chat(conv, assistant_prefix=PREFIX, date_string=DATE)) == ref["prefix_ids"], name
        assert tok.chat(conv, add_generation_prompt=False, date_string=DATE) == ref["no_generation_prompt"], name


@pytest.mark.parametrize("name", sorted(GOLDEN["families"]))
def test_prompt_text_and_ids_equal_apply_chat_template(tmp_path, name):
    tok = family_tokenizer(tmp_path, name)
    assert tok.chat_template == GOLDEN["families"][name]["template"]
    assert_matches_reference(tok, GOLDEN["families"][name]["reference"])


@pytest.mark.parametrize("name", sorted(GOLDEN["families"]))
def test_end_of_turn_is_what_the_template_closes_an_answer_with(tmp_path, name):
    tok = family_tokenizer(tmp_path, name)
    assert tok.end_of_turn == tok.added[END_OF_TURN[name]] and tok.end_of_turn in tok.eos_ids
    eos = tok.added[GOLDEN["families"][name]["special_tokens"]["eos_token"]]
    assert eos in tok.eos_ids


def test_paper_llama_32_prompt_carries_its_preamble(tmp_path):
    tok = family_tokenizer(tmp_path, "llama-3.2")
    text = tok.chat(GOLDEN["conversations"]["loop"], date_string=DATE)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                           f"Cutting Knowledge Date: December 2023\nToday Date: {DATE}\n\nYou are an expert chemist.")
    # Without date_string the template asks strftime_now for today's date, as in transformers.
    today = datetime.now().strftime("%d %b %Y")
    assert f"Today Date: {today}\n" in tok.chat(GOLDEN["conversations"]["loop"])
    # A pinned day reaches strftime_now: the same prompt as date_string gives, on any day.
    pinned = datetime.strptime(DATE, "%d %b %Y")
    assert tok.chat(GOLDEN["conversations"]["loop"], today=pinned) == text
    # Llama 3.1's template writes its own fixed date instead, pinned day or not.
    llama31 = family_tokenizer(tmp_path, "llama-3.1")
    for day in (None, pinned):
        assert "Today Date: 26 Jul 2024\n" in llama31.chat(GOLDEN["conversations"]["user"], today=day)


def test_smollm2_gguf_template_and_ids_equal_apply_chat_template():
    real = GOLDEN["real_vocab"]["SmolLM2-135M-Instruct.Q4_1.gguf"]
    tok = Tokenizer.from_gguf(read_gguf_raw(assets.asset_path(assets.SMOLLM2_GGUF))[0])
    assert tok.special_tokens == real["special_tokens"]  # what transformers' GGUF loader hands the template
    assert tok.chat_template == GOLDEN["families"]["smollm2"]["template"]
    assert tok.decode([tok.end_of_turn]) == "<|im_end|>" and tok.end_of_turn == 2
    for name, ref in real["reference"].items():  # the template writes no date: DATE is ignored
        conv = GOLDEN["conversations"][name]
        assert tok.chat(conv) == ref["text"] and tok.encode(tok.chat(conv)) == ref["ids"], name
        assert tok.encode(tok.chat(conv, assistant_prefix=PREFIX)) == ref["prefix_ids"], name


@pytest.mark.heavy
@pytest.mark.parametrize("file", ["ggml-vocab-llama-bpe.gguf", "ggml-vocab-qwen2.gguf"])
def test_real_llama3_and_qwen2_vocabularies(file):
    """Needs MIGRATE_LLAMA_CPP_MODELS: the models/ folder of the llama-cpp-python 0.3.36 source distribution."""
    folder = os.environ.get("MIGRATE_LLAMA_CPP_MODELS")
    if not folder:
        pytest.skip("set MIGRATE_LLAMA_CPP_MODELS to llama.cpp's models/ folder")
    real = GOLDEN["real_vocab"][file]
    metadata = read_gguf_raw(Path(folder) / file)[0]
    tok = Tokenizer.from_gguf({**metadata, "tokenizer.chat_template": GOLDEN["families"][real["family"]]["template"]})
    tok.special_tokens.update(real["special_tokens"])
    assert_matches_reference(tok, real["reference"])


# ------------------------------------------------------------------------------------------- where it comes from
def test_chat_template_jinja_wins_over_the_config(tmp_path):
    folder = write_folder(tmp_path / "m", GOLDEN["families"]["qwen2.5"])
    (folder / "chat_template.jinja").write_text("{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}",
                                                encoding="utf-8")
    tok = Tokenizer.from_folder(folder)
    assert tok.chat([{"role": "user", "content": "Hi"}], assistant_prefix="{") == "[user]Hi{"


def test_named_templates_in_the_config_take_default(tmp_path):
    folder = write_folder(tmp_path / "m", GOLDEN["families"]["qwen2.5"], template=False)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": "PLAIN"}]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert Tokenizer.from_folder(folder).chat([{"role": "user", "content": "x"}]) == "PLAIN"


def test_generation_config_eos_ids_end_generation(tmp_path):
    folder = write_folder(tmp_path / "m", GOLDEN["families"]["llama-3.2"])
    tok = Tokenizer.from_folder(folder)
    eom = tok.added["<|python_tag|>"]  # stands in for an id listed only in generation_config.json
    assert eom not in tok.eos_ids
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [eom, tok.end_of_turn]}))
    assert eom in Tokenizer.from_folder(folder).eos_ids


def test_no_template_falls_back_with_one_notice(tmp_path, capsys):
    tok = Tokenizer.from_folder(write_folder(tmp_path / "q", GOLDEN["families"]["qwen2.5"], template=False))
    assert tok.chat_template is None and tok.chat_format == "chatml"
    conv = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]
    assert tok.chat(conv, assistant_prefix="{") == ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                                                    "<|im_start|>assistant\n{")
    tok.chat(conv)
    err = capsys.readouterr().err
    assert err.count("carries no chat template") == 1 and "chatml" in err and len(err.strip().splitlines()) == 1
    assert tok.end_of_turn == tok.added["<|im_end|>"]
    llama = Tokenizer.from_folder(write_folder(tmp_path / "l", GOLDEN["families"]["llama-3.2"], template=False))
    assert llama.chat_format == "llama3" and llama.end_of_turn == llama.added["<|eot_id|>"]
    assert llama.chat([{"role": "user", "content": " Hi "}]) == ("<|begin_of_text|><|start_header_id|>user"
                                                                 "<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>"
                                                                 "assistant<|end_header_id|>\n\n")


# ------------------------------------------------------------------------------------------------ the sandbox
def tiny_with_template(template: str) -> Tokenizer:
    from tokenizer import PreTokenizer, GPT2_PATTERN
    vocab = {B2U[b]: b for b in range(256)}
    return Tokenizer(vocab, [], {"<e>": 256}, PreTokenizer(GPT2_PATTERN), chat_template=template,
                     special_tokens={"eos_token": "<e>"})


USER = [{"role": "user", "content": 'a <b> & "c" é'}]


def test_environment_helpers_behave_as_transformers():
    assert tiny_with_template("{{ messages[0].content | tojson }}").chat(USER) == '"a <b> & \\"c\\" é"'  # no escaping
    assert tiny_with_template("{{ {'k': 1} | tojson(indent=2) }}").chat(USER) == '{\n  "k": 1\n}'
    assert tiny_with_template("{% for m in messages %}{% generation %}{{ m.role }}{% endgeneration %}{% endfor %}"
                              ).chat(USER) == "user"
    assert tiny_with_template("{% for i in range(5) %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}"
                              ).chat(USER) == "01"
    assert tiny_with_template("{% set ns = namespace(n=1) %}{% set ns.n = ns.n + 1 %}{{ ns.n }}").chat(USER) == "2"
    # blocks eat their newline and leading indentation (trim_blocks, lstrip_blocks)
    assert tiny_with_template("  {% if true %}\nx\n  {% endif %}\ny").chat(USER) == "x\ny"
    assert tiny_with_template("{{ eos_token }}|{{ bos_token is defined }}|{{ add_generation_prompt }}"
                              ).chat(USER, add_generation_prompt=False) == "<e>|False|False"
    # tools and documents are defined, as None, as apply_chat_template passes them
    assert tiny_with_template("{{ tools is defined }} {{ tools }} {{ documents }}").chat(USER) == "True None None"
    with pytest.raises(ValueError, match="refused the conversation: no users"):
        tiny_with_template("{{ raise_exception('no users') }}").chat(USER)


@pytest.mark.parametrize("template", ["{{ messages.__class__.__mro__ }}", "{{ messages.append(1) }}",
                                      "{% set ns = namespace() %}{% set ns._x = 1 %}"])
def test_sandbox_refuses_reaching_python(template):
    with pytest.raises(ValueError, match="refused"):
        tiny_with_template(template).chat(USER)
    assert tiny_with_template("[{{ ''.__class__ }}]").chat(USER) == "[]"  # unsafe attributes are undefined


def test_template_that_does_not_compile_fails_at_load():
    with pytest.raises(ValueError, match="does not compile"):
        tiny_with_template("{% if messages %}unclosed")


def test_end_of_turn_falls_back_to_eos_when_the_template_shows_none():
    tok = tiny_with_template("{% for m in messages %}{{ m.content }}{% endfor %}")
    assert tok.end_of_turn == 256 and tok.eos_ids == {256}
