"""Word search: find a hidden word whose only feedback is a semantic-similarity score.

The score is the paper's: cosine(embed("What is a {target}?"), embed("What is a {guess}?")) with the real
all-MiniLM-L6-v2 sentence encoder (tasks/minilm.py), clipped into [0, 1], and 1.0 on an exact match. Guesses are
stripped of surrounding white space and lower-cased.

What counts as a word (our choice; the paper only lower-cases and strips): ASCII letters, optionally joined by
single hyphens ("t-shirt"), at most 40 characters. Anything else (several words, digits, accents, punctuation)
is not a candidate, so it scores 0. A non-exact guess is capped just below 1.0, so only the target itself solves.

The group, as in the paper's code (defaults.pack; loop.pack_group): alpha and gamma count words, asked for in
one on-policy call and one neighbourhood call; the iteration's words are pooled, sorted by score and packed into
answers of 2 words (answer_size), each rewarded with its better word and trained under the on-policy prompt that
asks for 2 words. `--no-pack` gives instead one 2-word answer per member, rewarded with its better word.

Simplifications against the paper's code, each deliberate:
1. A parsed answer keeps at most the number of words its prompt asked for (the paper kept any number).
2. The warm start draws its 20 random words from the encoder's own vocabulary (whole-word, alphabetic entries of
   at least 3 letters of vocab.txt, the target excluded), not from an external word list: no extra asset.
3. The encoder loads lazily on the first score, so building the task (e.g. to list its prompts) is cheap.
4. Prompts are ours, tuned for SmolLM2-135M with bench/prompt_parse.py: every answer is forced to start with
   '{"response": ["'; the on-policy prompt shows its example as an earlier answer marked wrong (so it is not
   copied); a string holding "laptop, tablet" counts as two words.
"""
import json
import re
from functools import cached_property
from pathlib import Path

import tasks

PAPER_TARGETS = ["airbase", "birthstone", "cement", "computer", "filament", "machetes", "meatloaf", "mob",
                 "polyethylene", "skillet"]

RESPONSE_PREFIX = '{"response": ["'
RESPONSE_CLOSE = '"]}'
WORDS_PER_ANSWER = 2
MAX_WORDS_PER_CALL = 50  # a prompt may ask for many words at once (packing); the loop keeps what it asked for
MAX_WORD_CHARS = 40
MAX_TEXT_CHARS = 10_000  # parse at most this much of a completion
NON_EXACT_CAP = 0.999  # a different word never reaches the solved score, however close its sentence embedding
WARM_START_WORDS = 20

_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")
# a JSON string literal on one line, or the bracket that closes the list
_STRING_OR_CLOSE = re.compile(r'"((?:[^"\\\n]|\\.)*)"|\]')

# Real words in the format example: a 135M model copies placeholders such as "word1" verbatim. These two are far
# from every paper target (cosine 0.08-0.33), so a copied example earns little.
EXAMPLE = ["river", "candle"]


def canonical_word(text: str) -> str | None:
    """The lower-cased, stripped word, or None if `text` is not a single word. Never raises."""
    if not isinstance(text, str):
        return None
    word = text.strip().lower()
    if not word or len(word) > MAX_WORD_CHARS or not word.isascii() or not _WORD.fullmatch(word):
        return None
    return word


def unescape(raw: str) -> str:
    try:
        return json.loads(f'"{raw}"')
    except ValueError:  # a bare backslash the model wrote: keep the text as it is
        return raw


def list_strings(text: str) -> list[str]:
    """The string literals of the first JSON list in `text`, up to its closing bracket or the end of the text
    (a truncated last string is dropped). Text with the response prefix is read from the prefix's open list;
    other text from its first '['; text with no list gives []."""
    if text.startswith(RESPONSE_PREFIX):
        body = '"' + text[len(RESPONSE_PREFIX):]  # reopen the string the prefix left open
    else:
        start = text.find("[")
        if start < 0:
            return []
        body = text[start + 1:]
    out = []
    for match in _STRING_OR_CLOSE.finditer(body):
        if match.group(1) is None:  # the list's closing bracket
            break
        out.append(unescape(match.group(1)))
    return out


def parse_words(text: str, limit: int = WORDS_PER_ANSWER) -> list[str]:
    """Up to `limit` distinct valid words from a completion, in order. A string holding a comma-separated list
    ("laptop, tablet") counts as its parts; a string of several words ("ice cream") counts as nothing."""
    found: list[str] = []
    for string in list_strings(text[:MAX_TEXT_CHARS]):
        for piece in string.split(","):
            word = canonical_word(piece)
            if word is not None and word not in found:
                found.append(word)
                if len(found) == limit:
                    return found
    return found


def vocabulary_words(vocab_path, min_len: int = 3) -> list[str]:
    """Whole-word, purely alphabetic entries of a WordPiece vocab.txt ("##" pieces and [SPECIAL] tokens left
    out), at least `min_len` letters, sorted."""
    words = set()
    with open(vocab_path, encoding="utf-8") as f:
        for line in f:
            w = line.strip()
            if len(w) >= min_len and w.isascii() and w.isalpha():
                words.add(w.lower())
    return sorted(words)


# Each strategy's group, as the released code ran it (scripts/semantle/*.sh; random, ns and opro from
# semantle_inference.py): alpha on-policy, beta greedy and gamma neighbourhood words an iteration (pooled and
# packed into answers of two), the top-k that parents are drawn from (OPRO: listed), mu steps per group.
PRESETS = {  # strategy:    alpha beta gamma topk mu
    "random":       tasks.Preset(10, 0,  0,  3, 2),
    "ns":           tasks.Preset( 0, 0, 10,  3, 2),
    "opro":         tasks.Preset( 0, 0, 10, 10, 2),
    "grpo":         tasks.Preset(10, 0,  0,  3, 2),
    "grpo-greedy":  tasks.Preset( 9, 1,  0,  3, 2),
    "migrate":      tasks.Preset( 0, 0, 10,  3, 2),
    "migrate-opro": tasks.Preset( 0, 0, 10,  5, 2),
    "migrate-evo":  tasks.Preset( 0, 0, 10,  3, 1),
    "discover":     tasks.Preset( 0, 0,  8,  3, 1),  # TTT-Discover: 8 rollouts of one state, one step (its recipe)
}


@tasks.register
class WordSearch(tasks.Task):
    """Guess a hidden English word from the similarity scores of past guesses."""
    name = "wordsearch"
    stop = ('"]',)  # the close of the JSON list: nothing after it is read
    defaults = tasks.TaskDefaults(
        PRESETS, lr=5e-5, lora_r=64, lora_alpha=16, max_new_tokens=64, iterations=100, pack=True,
        # the paper's budget is 100 iterations; a CPU demo with the 135M model fits in a few minutes at about 10
        extra={"demo_iterations": 10,
               "score_meaning": "best score: cosine similarity of the best guess to the hidden word (all-MiniLM-L6-v2"
                                " sentence embeddings); 1.0 = the hidden word itself was found"},
    )
    target_sets = {"paper": PAPER_TARGETS}
    default_target = "computer"
    answer_size = WORDS_PER_ANSWER

    def __init__(self, target: str = default_target, minilm_dir=None, **options):
        word = canonical_word(target)
        if word is None:
            raise ValueError(f"wordsearch target must be a single word of letters (hyphens allowed), got "
                             f"{target!r}; e.g. one of {', '.join(PAPER_TARGETS)}")
        super().__init__(word, **options)
        self.minilm_dir = minilm_dir  # None: the pinned all-MiniLM-L6-v2 asset
        self.cache: dict[str, float] = {}  # word -> score, so a word repeated within one batch is embedded once

    # -- lazily loaded oracle -------------------------------------------------------------------------------------
    @cached_property
    def encoder(self):
        from tasks.minilm import MiniLM
        return MiniLM(self.minilm_dir)

    @cached_property
    def target_embedding(self):
        return self.encoder.embed([sentence(self.target)])[0]  # (384,)

    def vocabulary_path(self) -> Path:
        folder = self.minilm_dir
        if folder is None:
            import assets
            folder = assets.asset_path(assets.MINILM_DIR)
        return Path(folder) / "vocab.txt"

    @cached_property
    def vocabulary(self) -> list[str]:
        """The warm-start word list (see the module docstring)."""
        return vocabulary_words(self.vocabulary_path())

    # -- prompts --------------------------------------------------------------------------------------------------
    def _system(self) -> dict:
        return {"role": "system", "content": "You are playing a word guessing game. You answer with JSON only."}

    def _format(self, n: int) -> str:
        return (f"Answer with a JSON object holding a list of {n} different single English words, "
                f"like {json.dumps({'response': EXAMPLE})}")

    def prompt(self, n: int | None = None) -> tasks.Prompt:
        # The example sits in a past, "wrong" assistant turn rather than in the instructions: with the example in
        # the instructions SmolLM2-135M copied it in 77% of answers, this way in none (bench/prompt_parse.py).
        n = n or WORDS_PER_ANSWER
        ask = (f"Guess the secret word. It is a common English noun. Answer with a JSON object holding a list of "
               f"{n} different single English words.")
        return tasks.Prompt([self._system(), {"role": "user", "content": ask},
                             {"role": "assistant", "content": json.dumps({"response": EXAMPLE})},
                             {"role": "user", "content": f"Wrong. Guess {n} other common nouns."}],
                            RESPONSE_PREFIX)

    def neighbourhood_prompt(self, parent: str, n: int | None = None) -> tasks.Prompt:
        n = n or WORDS_PER_ANSWER
        user = (f'Here is a word: "{parent}". Write {n} new words that are related to it or '
                f"variations of it. {self._format(n)}")
        return tasks.Prompt([self._system(), {"role": "user", "content": user}], RESPONSE_PREFIX)

    def opro_prompt(self, ranked: list[tuple[str, float]], n: int | None = None) -> tasks.Prompt:
        n = n or WORDS_PER_ANSWER
        shown = "\n".join(f"{word}: {score:.3f}" for word, score in ranked)
        user = (f"Guess the secret word. Here are past guesses with their scores, from worst to best (a higher "
                f"score means closer to the secret word):\n{shown}\nWrite {n} new words that "
                f"score higher than all of these. {self._format(n)}")
        return tasks.Prompt([self._system(), {"role": "user", "content": user}], RESPONSE_PREFIX)

    # -- candidates -----------------------------------------------------------------------------------------------
    def parse(self, completion: str) -> list[str]:
        try:
            return parse_words(completion, MAX_WORDS_PER_CALL)
        except Exception:  # the protocol promises never to raise on model output
            return []

    def render(self, candidate: str) -> str:
        return self.render_answer([candidate])

    def render_answer(self, candidates: list[str]) -> str:
        return RESPONSE_PREFIX + '", "'.join(candidates) + RESPONSE_CLOSE

    def score(self, candidates: list[str]) -> list[float]:
        words = [canonical_word(c) for c in candidates]
        todo = [w for w in dict.fromkeys(words) if w is not None and w not in self.cache and w != self.target]
        if todo:
            sims = self.encoder.embed([sentence(w) for w in todo]) @ self.target_embedding  # (N,) cosines
            for w, s in zip(todo, sims.tolist()):
                self.cache[w] = min(NON_EXACT_CAP, max(0.0, s))
        return [0.0 if w is None else 1.0 if w == self.target else self.cache[w] for w in words]

    def warm_start(self, rng) -> list[str]:
        pool = [w for w in self.vocabulary if w != self.target]
        return rng.sample(pool, WARM_START_WORDS)


def sentence(word: str) -> str:
    """The paper's template: both the target and every guess are embedded inside the same question."""
    return f"What is a {word}?"
