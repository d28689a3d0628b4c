"""The word-search task: parsing of model output, the MiniLM similarity score, warm start and prompts."""
import random

import pytest

import tasks
from tasks.wordsearch import (NON_EXACT_CAP, PAPER_TARGETS, RESPONSE_PREFIX, WARM_START_WORDS, WordSearch,
                              canonical_word, parse_words)

P = RESPONSE_PREFIX


@pytest.fixture(scope="module")
def task():
    return WordSearch("computer")


# -- parsing (no model needed) ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, words", [
    (P + 'laptop", "tablet"]}', ["laptop", "tablet"]),
    (P + ' Laptop ", "TABLET"]}', ["laptop", "tablet"]),  # stripped and lower-cased
    (P + 'laptop", "laptop", "mouse"]}', ["laptop", "mouse"]),  # duplicates removed
    (P + 'a", "b", "c", "d"]}', ["a", "b"]),  # at most two words per completion
    (P + 't-shirt", "x-"]}', ["t-shirt"]),  # inner hyphens allowed, a trailing one is not a word
    (P + 'laptop"]} and more: ["extra", "words"]', ["laptop"]),  # text after the list is ignored
    (P + 'laptop", "tabl', ["laptop"]),  # truncated: the unfinished string is dropped
    (P + 'laptop', []),  # truncated inside the first string
    (P + 'ice cream", "hot dog"]}', []),  # multi-word strings are not words
    (P + 'laptop, tablet"]}', ["laptop", "tablet"]),  # one string holding a comma-separated pair
    (P + '42", "3.14", "r2d2", "mouse"]}', ["mouse"]),  # numbers and digits are not words
    (P + 'café", "naïve", "日本", "mouse"]}', ["mouse"]),  # non-ASCII letters are not words
    (P + 'lap\\u0074op"]}', ["laptop"]),  # JSON escapes are decoded
    (P + 'bad\\', []),  # a bare backslash: no crash
    (P + '"]}', []),
    ('{"response": ["laptop", "tablet"]}', ["laptop", "tablet"]),  # no prefix: the key is not a word
    ('Sure! Here you go: ["laptop"]', ["laptop"]),
    ("laptop tablet", []),  # no JSON list at all
    ("", []),
    (P + 'a]b", "mouse"]}', ["mouse"]),  # a bracket inside a string does not close the list
])
def test_parse(text, words):
    assert parse_words(text) == words


def test_parse_adversarial_inputs_never_raise():
    t = WordSearch.__new__(WordSearch)  # parse needs no state; skip construction on purpose
    huge = P + '", "'.join(["x" * 50] * 100_000) + '", "mouse"]}'
    assert t.parse(huge) == []  # 50-letter words are too long, and "mouse" lies beyond the parsed prefix
    assert t.parse(P + "\x00\ud800\n" * 1000) == []
    assert t.parse(None) == []  # not even a string
    assert t.parse(P + "[" * 10_000 + "]" * 10_000) == []


def test_canonical_word():
    assert canonical_word("  Meatloaf\n") == "meatloaf"
    for bad in ["", " ", "two words", "abc1", "-abc", "a--b", "x" * 41, "über", "word.", 7]:
        assert canonical_word(bad) is None, bad


def test_render_parse_round_trip():
    t = WordSearch.__new__(WordSearch)
    for word in ["laptop", "t-shirt", "a"]:
        text = WordSearch.render(t, word)
        assert text.startswith(RESPONSE_PREFIX)
        assert t.parse(text) == [word]


def test_bad_targets_raise_value_error_naming_choices():
    for bad in ["two words", "", "r2d2", "über"]:
        with pytest.raises(ValueError, match="computer"):
            WordSearch(bad)
    assert WordSearch(" Skillet ").target == "skillet"


def test_registered_with_paper_presets():
    cls = tasks.task_class("wordsearch")
    assert cls is WordSearch
    d = cls.defaults
    p = d.presets
    assert (p["grpo"].alpha, p["grpo"].beta, p["grpo"].gamma) == (10, 0, 0)
    assert (p["grpo-greedy"].alpha, p["grpo-greedy"].beta, p["grpo-greedy"].gamma) == (9, 1, 0)
    assert (p["migrate"].alpha, p["migrate"].beta, p["migrate"].gamma) == (0, 0, 10)
    assert (p["migrate-opro"].topk, p["opro"].topk, p["migrate-evo"].mu) == (5, 10, 1)
    assert p["random"].alpha == 10 and p["ns"].gamma == 10 and p["opro"].gamma == 10
    assert (d.topk, d.mu, d.lr, d.lora_r, d.lora_alpha, d.max_new_tokens, d.iterations) == (3, 2, 5e-5, 64, 16, 64, 100)
    assert cls.target_sets["paper"] == PAPER_TARGETS and cls.default_target in PAPER_TARGETS


def test_prompts_end_with_the_response_prefix_and_show_scores_in_order():
    t = WordSearch("computer")
    for p in [t.prompt(), t.neighbourhood_prompt("laptop"), t.opro_prompt([("banana", 0.1), ("laptop", 0.7)])]:
        assert p.prefix == RESPONSE_PREFIX
        assert "computer" not in str(p.messages)  # the target stays hidden
    ns = t.neighbourhood_prompt("laptop").messages[-1]["content"]
    assert "laptop" in ns
    opro = t.opro_prompt([("banana", 0.1), ("laptop", 0.7)]).messages[-1]["content"]
    assert opro.index("banana: 0.100") < opro.index("laptop: 0.700")


# -- scoring with the real encoder --------------------------------------------------------------------------------

def test_exact_match_scores_one(task):
    assert task.score(["computer", " Computer "]) == [1.0, 1.0]


def test_scores_in_range_and_invalid_words_score_zero(task):
    scores = task.score(["laptop", "banana", "ice cream", "", "42", "computers", "zzzzqx"])
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores[2:5] == [0.0, 0.0, 0.0]
    assert 0.0 < scores[5] <= NON_EXACT_CAP  # a very close word never counts as solved


def test_related_word_beats_unrelated_word(task):
    laptop, software, banana, river = task.score(["laptop", "software", "banana", "river"])
    assert laptop > banana and software > banana and laptop > river


def test_score_is_symmetric(task):
    other = WordSearch("laptop")
    other.__dict__["encoder"] = task.encoder  # share the loaded encoder
    assert other.score(["computer"])[0] == pytest.approx(task.score(["laptop"])[0], abs=1e-5)


def test_cache_gives_same_scores_in_any_batch(task):
    fresh = WordSearch("computer")
    fresh.__dict__["encoder"] = task.encoder
    words = ["keyboard", "tiger", "cloud"]
    batch = fresh.score(words)
    again = WordSearch("computer")
    again.__dict__["encoder"] = task.encoder
    one_by_one = [again.score([w])[0] for w in words]
    assert batch == pytest.approx(one_by_one, abs=1e-5)


def test_warm_start_reproducible_and_valid(task):
    a = task.warm_start(random.Random(7))
    assert a == task.warm_start(random.Random(7))
    assert a != task.warm_start(random.Random(8))
    assert len(a) == len(set(a)) == WARM_START_WORDS
    assert all(canonical_word(w) == w and len(w) >= 3 and w != "computer" for w in a)
    assert all(0.0 <= s < 1.0 for s in task.score(a))
