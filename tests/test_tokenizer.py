"""Tokenizer tests on tiny hand-built vocabularies (no assets): byte map, regex translation, merge order,
special tokens, digit splitting, tokenizer.json / GGUF-metadata loading, SentencePiece refused, the fallback chat
layouts (templates themselves: test_chat_template.py)."""
import json
import re

import pytest

from tokenizer import GPT2_PATTERN, LLAMA3_PATTERN, PreTokenizer, Tokenizer, bytes_to_unicode, translate_regex

B2U = bytes_to_unicode()


def byte_vocab() -> dict[str, int]:
    """The 256 byte-characters as ids 0..255 (so every text is encodable)."""
    return {B2U[b]: b for b in range(256)}


def tiny(merges=(), added=None, pattern=GPT2_PATTERN, split_digits=False, **kw) -> Tokenizer:
    vocab = byte_vocab()
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return Tokenizer(vocab, list(merges), added or {}, PreTokenizer(pattern, split_digits), **kw)


def test_byte_map_is_gpt2s():
    # Printable ASCII maps to itself; space (0x20) is the 33rd non-printable byte -> chr(256 + 32) = 'Ġ';
    # newline (0x0a) is the 11th -> 'Ċ'.
    assert B2U[ord("a")] == "a" and B2U[0x20] == "Ġ" and B2U[0x0A] == "Ċ" and B2U[0] == "Ā"
    assert len(set(B2U.values())) == 256


def test_gpt2_regex_split():
    split = PreTokenizer(GPT2_PATTERN)
    assert split("Hello world's  end!! 123") == ["Hello", " world", "'s", " ", " end", "!!", " 123"]
    assert split("a  \n b") == ["a", "  \n", " b"]  # \s+(?!\S) leaves the last space to the next word
    assert split("né über") == ["né", " über"]  # accented letters are \p{L}


def test_digits_isolated_before_regex():
    split = PreTokenizer(GPT2_PATTERN, split_digits=True)
    assert split("abc 123x") == ["abc", " ", "1", "2", "3", "x"]


def test_llama3_regex_split():
    split = PreTokenizer(LLAMA3_PATTERN)
    # numbers in groups of three, case-insensitive contractions, a punctuation run keeps its trailing newline
    assert split("12345 DON'T stop!!\n\nok") == ["123", "45", " DON", "'T", " stop", "!!\n\n", "ok"]


def test_translate_regex_classes():
    pat = re.compile(translate_regex(r"\p{L}+|\p{N}|[^\s\p{L}\p{N}]+|\s+"))
    assert pat.findall("ab½ ?x") == ["ab", "½", " ", "?", "x"]
    with pytest.raises(ValueError):
        translate_regex(r"[\P{L}]")


def test_merge_order_by_rank_not_position():
    # "abc": rank 0 is (b, c), so b+c merges first even though (a, b) is leftmost, then (a, bc) has no merge.
    tok = tiny(merges=[("b", "c"), ("a", "b")])
    assert tok.encode("abc") == [tok.vocab["a"], tok.vocab["bc"]]
    assert tok.encode("abab") == [tok.vocab["ab"], tok.vocab["ab"]]
    # Overlapping pairs merge left to right: "aaa" with (a, a) -> "aa" + "a".
    tok = tiny(merges=[("a", "a")])
    assert tok.encode("aaa") == [tok.vocab["aa"], tok.vocab["a"]]


def test_merges_apply_to_space_prefixed_words():
    tok = tiny(merges=[("Ġ", "h"), ("Ġh", "i")])
    assert tok.encode("a hi") == [ord("a"), tok.vocab["Ġhi"]]


def test_ignore_merges_takes_whole_word():
    vocab = byte_vocab()
    vocab["abc"] = 300  # in the vocab but unreachable by merges
    plain = Tokenizer(vocab, [], {}, PreTokenizer(GPT2_PATTERN))
    whole = Tokenizer(vocab, [], {}, PreTokenizer(GPT2_PATTERN), ignore_merges=True)
    assert plain.encode("abc") == [97, 98, 99] and whole.encode("abc") == [300]


def test_special_tokens_kept_whole_longest_first():
    tok = tiny(added={"<|x|>": 400, "<|x|>y": 401})
    assert tok.encode("a<|x|>yb<|x|>") == [97, 401, 98, 400]
    assert tok.decode([97, 401, 98, 400]) == "a<|x|>yb<|x|>"


def test_decode_round_trips_and_replaces_partial_bytes():
    tok = tiny()
    text = "héllo 😀 \t\n 日本"
    assert tok.decode(tok.encode(text)) == text
    euro = "€".encode("utf-8")  # 3 bytes; a lone first byte cannot be decoded
    assert tok.decode([euro[0]]) == "\ufffd"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([100_000])


def test_from_files_tokenizer_json(tmp_path):
    vocab = byte_vocab()
    vocab["ab"] = 256
    spec = {"model": {"type": "BPE", "vocab": vocab, "merges": ["a b"]},
            "added_tokens": [{"id": 257, "content": "<|im_start|>", "special": True},
                             {"id": 258, "content": "<|im_end|>", "special": True}],
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
            "normalizer": None}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}, "chat_template": "{{ '<|im_start|>' }}"}))
    tok = Tokenizer.from_files(tmp_path / "tokenizer.json", tmp_path / "tokenizer_config.json")
    assert tok.encode("ab12<|im_end|>") == [256, ord("1"), ord("2"), 258]
    assert tok.bos_id == 257 and tok.eos_ids == {258} and tok.chat_format == "chatml" and tok.vocab_size == 259
    spec["pre_tokenizer"] = {"type": "Whitespace"}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="not supported"):
        Tokenizer.from_files(tmp_path / "tokenizer.json")


def test_from_gguf_metadata_llama3():
    tokens = [B2U[b] for b in range(256)] + ["ab", "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>",
                                             "<|end_header_id|>", "<|end_of_text|>"]
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "llama-bpe", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": [1] * 257 + [3] * 5, "tokenizer.ggml.merges": ["a b"],
            "tokenizer.ggml.bos_token_id": 257, "tokenizer.ggml.eos_token_id": 261}
    tok = Tokenizer.from_gguf(meta)
    assert tok.chat_format == "llama3" and tok.eos_ids == {258, 261} and tok.bos_id == 257
    assert tok.encode("1234") == [ord("1"), ord("2"), ord("3"), ord("4")]  # no merges: bytes, grouped 123|4
    text = tok.chat([{"role": "user", "content": " Hi \n"}], assistant_prefix="{")
    assert text == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n{")
    assert tok.encode(text)[:2] == [257, 259]
    assert 260 in Tokenizer.from_gguf({**meta, "tokenizer.ggml.eot_token_id": 260}).eos_ids
    qwen = Tokenizer.from_gguf({**meta, "tokenizer.ggml.pre": "qwen2"})  # NFC, as Qwen2's tokenizer.json
    assert qwen.encode("e\u0301") == qwen.encode("\u00e9") != tok.encode("e\u0301")
    with pytest.raises(ValueError, match="pre-tokenizer"):
        Tokenizer.from_gguf({**meta, "tokenizer.ggml.pre": "mystery"})


def test_chatml_fallback_layout():
    tok = tiny(added={"<|im_start|>": 300, "<|im_end|>": 301})
    msgs = [{"role": "user", "content": "Hi"}]
    assert tok.chat(msgs, assistant_prefix='{"') == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n{\""
    own = [{"role": "system", "content": "S"}, *msgs]
    assert tok.chat(own, add_generation_prompt=False) == ("<|im_start|>system\nS<|im_end|>\n"
                                                          "<|im_start|>user\nHi<|im_end|>\n")
    assert tok.end_of_turn == 301 and tok.eos_ids == {301}
    with pytest.raises(ValueError, match="role"):
        tok.chat([{"content": "no role"}])
    with pytest.raises(ValueError, match="assistant_prefix"):
        tok.chat(msgs, add_generation_prompt=False, assistant_prefix="{")


def sentencepiece_json(**changes) -> dict:
    """A Llama 2 style tokenizer.json: BPE over '▁'-marked words with byte fallback."""
    spec = {"model": {"type": "BPE", "vocab": {"<unk>": 0, "▁": 1, "a": 2, "▁a": 3}, "merges": ["▁ a"],
                      "byte_fallback": True},
            "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                               {"type": "Replace", "pattern": {"String": " "},
                                                                "content": "▁"}]},
            "pre_tokenizer": None, "decoder": {"type": "Sequence", "decoders": [{"type": "ByteFallback"}]}}
    spec.update(changes)
    return spec


@pytest.mark.parametrize("spec", [
    sentencepiece_json(),  # Llama 2, Mistral v1, Phi-3, Gemma
    sentencepiece_json(normalizer=None, pre_tokenizer={"type": "Metaspace", "replacement": "▁",
                                                       "prepend_scheme": "first", "split": False}),
    sentencepiece_json(model={"type": "Unigram", "vocab": [["<unk>", 0.0], ["▁a", -1.0]], "unk_id": 0})])
def test_sentencepiece_tokenizer_json_is_refused_by_name(tmp_path, spec):
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="SentencePiece tokenizers are not supported") as e:
        Tokenizer.from_files(tmp_path / "tokenizer.json")
    assert "\n" not in str(e.value)


def test_sentencepiece_model_file_and_gguf_are_refused_by_name(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(b"\x0a\x0b")
    with pytest.raises(ValueError, match="SentencePiece tokenizers are not supported"):
        Tokenizer.from_folder(tmp_path)
    with pytest.raises(ValueError, match="SentencePiece tokenizers are not supported"):
        Tokenizer.from_gguf({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["<unk>", "▁a"]})
    (tmp_path / "tokenizer.model").unlink()
    with pytest.raises(ValueError, match="no tokenizer.json"):
        Tokenizer.from_folder(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {}}}))
    with pytest.raises(ValueError, match="only byte-level BPE.*WordPiece"):
        Tokenizer.from_folder(tmp_path)
