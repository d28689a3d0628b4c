"""Our MiniLM encoder and WordPiece tokenizer against sentence-transformers on the real all-MiniLM-L6-v2 weights.

tests/golden/minilm_embeddings.json was produced once in the scratch reference environment (never imported here):

    HF_HUB_OFFLINE=1 /tmp/refenv/bin/python make_minilm_golden.py tests/golden/minilm_embeddings.json

with make_minilm_golden.py:

    import json, os, sys
    os.environ["HF_HUB_OFFLINE"] = "1"
    sys.path.insert(0, "/work/main")
    import assets
    from sentence_transformers import SentenceTransformer
    folder = str(assets.asset_path(assets.MINILM_DIR))
    sentences = [
        "What is a computer?", "What is a laptop?", "What is a banana?", "What is a café?",
        "Naïve résumé, Ångström & façade", "What is a xqzvbnmplkwj?", "What is a 🙂 or 한국어?",
        "日本語のテキスト mixed with English", "  tabs\\tand\\nnewlines \\u200b zero-width \\x00 nul  ",
        "", "Hello, world! (test) -- \\"quotes\\" [brackets] {braces} #hash @at 3.14",
        "İstanbul ﬁne ＡＢＣ",
        " ".join(["polyethylene"] * 150),
    ]
    model = SentenceTransformer(folder, device="cpu")
    emb = model.encode(sentences, batch_size=4, convert_to_numpy=True, normalize_embeddings=False)
    tok = model.tokenizer
    ids = [tok(s, truncation=True, max_length=model.max_seq_length)["input_ids"] for s in sentences]
    out = {"source": "sentence-transformers SentenceTransformer(asset folder).encode, HF_HUB_OFFLINE=1",
           "sentences": sentences, "input_ids": ids, "embeddings": [[round(float(x), 7) for x in e] for e in emb]}
    json.dump(out, open(sys.argv[1], "w"))

(the model folder's modules.json includes the Normalize module, so the reference vectors are unit vectors.)
"""
import json
from pathlib import Path

import pytest
import torch

from tasks.minilm import MAX_TOKENS, MiniLM, WordPiece, basic_words

GOLDEN = json.loads((Path(__file__).parent / "golden" / "minilm_embeddings.json").read_text())


@pytest.fixture(scope="module")
def minilm():
    return MiniLM()


def test_token_ids_match_reference(minilm):
    for sentence, ids in zip(GOLDEN["sentences"], GOLDEN["input_ids"]):
        assert minilm.tokenizer.encode(sentence) == ids, sentence[:40]


def test_golden_covers_accents_unknown_words_and_truncation(minilm):
    # the golden set must keep exercising the hard paths, or the comparison above proves less than it seems
    ids = dict(zip(GOLDEN["sentences"], GOLDEN["input_ids"]))
    assert 100 in ids["What is a 🙂 or 한국어?"]  # [UNK]
    assert ids["What is a café?"][4] == minilm.tokenizer.vocab["cafe"]  # the accent was stripped
    assert max(map(len, GOLDEN["input_ids"])) == MAX_TOKENS
    assert len(ids["What is a xqzvbnmplkwj?"]) > 8  # an out-of-vocabulary word split into many pieces


def test_embeddings_match_sentence_transformers(minilm):
    ours = minilm.embed(GOLDEN["sentences"])
    ref = torch.tensor(GOLDEN["embeddings"])
    assert ours.shape == (len(GOLDEN["sentences"]), 384)
    assert (ours - ref).abs().max().item() < 1e-4


def test_batching_and_padding_do_not_change_embeddings(minilm):
    sentences = GOLDEN["sentences"][:6]
    together = minilm.embed(sentences)  # one padded batch
    alone = torch.cat([minilm.embed([s]) for s in sentences])  # no padding
    assert torch.allclose(together, alone, atol=1e-5)
    assert torch.allclose(together.norm(dim=1), torch.ones(len(sentences)), atol=1e-5)
    assert minilm.embed([]).shape == (0, 384)


def test_basic_tokenisation_by_hand():
    assert basic_words("Héllo, WORLD!") == ["hello", ",", "world", "!"]
    assert basic_words("a\u200bb\x00c\tx") == ["abc", "x"]  # format / control characters vanish, tab splits
    assert basic_words("日本 ab") == ["日", "本", "ab"]  # every CJK ideograph is its own word
    assert basic_words("naïve—ok") == ["naive", "—", "ok"]  # Unicode punctuation splits too


def test_wordpiece_greedy_longest_match_and_unknown_words():
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "unaff", "##aff", "##able",
                                         "##a", "##ble", "run"])}
    tok = WordPiece(vocab)
    assert tok.word_ids("unaffable") == [vocab["unaff"], vocab["##able"]]  # longest prefix first, not un + ##aff
    assert tok.word_ids("unx") == [vocab["[UNK]"]]  # one unknown piece makes the whole word unknown
    assert tok.word_ids("u" * 101) == [vocab["[UNK]"]]
    assert tok.encode("Run UN!") == [2, vocab["run"], vocab["un"], 1, 3]  # "!" is not in this vocabulary
    assert tok.encode("run " * 10, max_tokens=5) == [2, 10, 10, 10, 3]
