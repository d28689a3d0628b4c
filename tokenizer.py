"""Byte-level BPE tokenizer (GPT-2 family: SmolLM2, Llama 3, Qwen2/3) and the model's own chat template.

Text -> ids in four steps, as Hugging Face `tokenizers` does for these models:
1. added/special tokens ("<|im_start|>") are cut out of the text first and kept whole (longest match first);
2. the rest is optionally Unicode-normalised (NFC for Qwen) and pre-tokenised into pieces: SmolLM2 isolates every
   digit, then applies the GPT-2 regex; Llama 3 and Qwen use their own regexes;
3. each piece's UTF-8 bytes are mapped to printable characters (GPT-2's byte-to-unicode table);
4. merges are applied by rank (lowest first, leftmost on ties) with a per-piece cache.
Python's `re` lacks \\p{L} and \\p{N}, so those (and \\s, taken as Unicode White_Space) are rewritten into explicit
character classes built from `unicodedata`.

Conversations become prompt text with the Jinja chat template the checkpoint carries (chat_template.jinja,
`chat_template` in tokenizer_config.json, or `tokenizer.chat_template` in a GGUF), rendered as transformers'
apply_chat_template renders it: same sandboxed environment, helpers and variables (bos_token, eos_token, ...,
add_generation_prompt), no BOS added outside the template. A checkpoint without a template gets one of two
hand-written layouts (ChatML, Llama 3) and a notice. The token that closes an assistant turn is read off the
template; it and the checkpoint's end-of-sequence ids end generation.

Loaded from tokenizer.json (+ tokenizer_config.json) or from GGUF metadata. Deliberately left out: SentencePiece
tokenizers (refused by name), WordPiece, byte fallback, added-token flags (lstrip, rstrip, single_word), offsets,
and the template features the loop never uses (tools, documents, continuing a final message, control-token
sanitising).
"""
import json
import re
import sys
import unicodedata
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                  r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")

# GGUF `tokenizer.ggml.pre` -> (isolate digits first, regex, whole-word lookup before merging). Names from llama.cpp.
GGUF_PRE = {
    "default": (False, GPT2_PATTERN, False), "gpt2": (False, GPT2_PATTERN, False),
    "gpt-2": (False, GPT2_PATTERN, False),
    "smollm": (True, GPT2_PATTERN, False), "starcoder": (True, GPT2_PATTERN, False),
    "refact": (True, GPT2_PATTERN, False),
    "llama-bpe": (False, LLAMA3_PATTERN, True), "llama3": (False, LLAMA3_PATTERN, True),
    "qwen2": (False, QWEN2_PATTERN, False), "deepseek-r1-qwen": (False, QWEN2_PATTERN, False),
}
# The normaliser of the published tokenizer.json of a GGUF pre-tokenizer family (Qwen2's is NFC; GGUF keeps none).
GGUF_NORMALIZER = {"qwen2": "NFC", "deepseek-r1-qwen": "NFC"}
# GGUF `tokenizer.ggml.model` values that name SentencePiece vocabularies (llama.cpp: SPM and Unigram).
GGUF_SENTENCEPIECE = ("llama", "t5")
# Unicode White_Space (what \s means in the reference regex engine).
WHITE_SPACE = "\\t\\n\\x0b\\x0c\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
# End-of-text / end-of-turn tokens that also end generation when a checkpoint has them (llama.cpp keeps such a
# list too): a folder without generation_config.json still stops at <|endoftext|>.
STOP_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "<|eom_id|>")
# The special-token names transformers hands a chat template (its special_tokens_map), and their GGUF keys.
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
GGUF_SPECIAL_IDS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
                    "sep_token": "seperator_token_id", "pad_token": "padding_token_id", "cls_token": "cls_token_id",
                    "mask_token": "mask_token_id"}
# The two layouts written by hand for checkpoints that carry no template: (turn, generation prompt, turn closer).
FALLBACK_LAYOUTS = {
    "chatml": ("<|im_start|>{role}\n{content}<|im_end|>\n", "<|im_start|>assistant\n", "<|im_end|>"),
    "llama3": ("<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>",
               "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table: printable Latin-1 bytes map to themselves, the
    other 68 bytes to code points 256.. in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@lru_cache(maxsize=None)
def category_class(prefix: str) -> str:
    """Body of a regex character class holding every code point whose Unicode category starts with `prefix`
    ("L" letters, "N" numbers, "Lu" ...), as \\U ranges. Built once per process (~0.3 s)."""
    parts, start = [], None
    for cp in range(sys.maxunicode + 2):
        hit = cp <= sys.maxunicode and unicodedata.category(chr(cp)).startswith(prefix)
        if hit and start is None:
            start = cp
        elif not hit and start is not None:
            parts.append(f"\\U{start:08x}" if start == cp - 1 else f"\\U{start:08x}-\\U{cp - 1:08x}")
            start = None
    return "".join(parts)


def translate_regex(pattern: str) -> str:
    """Rewrite a tokenizers/Oniguruma pattern for Python's `re`: \\p{X} and \\s become explicit classes."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            if nxt == "p" and pattern.startswith("{", i + 2):
                end = pattern.index("}", i)
                body, i = category_class(pattern[i + 3:end]), end + 1
            elif nxt == "s":
                body, i = WHITE_SPACE, i + 2
            elif nxt == "S" and not in_class:
                out.append(f"[^{WHITE_SPACE}]")
                i += 2
                continue
            elif nxt in "PS":
                raise ValueError(f"pre-tokenizer regex uses \\{nxt} inside a class, which is not supported: {pattern!r}")
            else:
                out.append(pattern[i:i + 2])
                i += 2
                continue
            out.append(body if in_class else f"[{body}]")
            continue
        if c == "[" and not in_class:
            in_class = True
        elif c == "]" and in_class:
            in_class = False
        out.append(c)
        i += 1
    return "".join(out)


class PreTokenizer:
    """Splits text into pieces: optional digit isolation, then regex matches (every character kept)."""

    def __init__(self, pattern: str | None, split_digits: bool = False, digits_individually: bool = True):
        self.regex = re.compile(translate_regex(pattern)) if pattern else None
        num = category_class("N")
        self.digits = None
        if split_digits:
            self.digits = re.compile(f"([{num}])" if digits_individually else f"([{num}]+)")

    def __call__(self, text: str) -> list[str]:
        pieces = [text]
        if self.digits is not None:
            pieces = [p for p in self.digits.split(text) if p]
        if self.regex is not None:
            pieces = [m for p in pieces for m in self.regex.findall(p)]
        return pieces


class Tokenizer:
    """Byte-level BPE encode/decode plus chat rendering.

    `chat_template` is the checkpoint's Jinja template (None: the `chat_format` layout written by hand);
    `special_tokens` maps transformers' names (bos_token, eos_token, ...) to the strings the template sees.
    `end_of_turn` is the id of the token that closes an assistant turn (None if the tokenizer has none) and
    `eos_ids` every id that ends generation, end_of_turn included."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], added: dict[str, int],
                 pre: PreTokenizer, *, normalizer=None, ignore_merges=False, bos_id=None, eos_ids=(),
                 chat_format="chatml", chat_template: str | None = None, special_tokens: dict | None = None):
        self.vocab = vocab
        self.ranks = {pair: r for r, pair in enumerate(merges)}
        self.added = added  # content -> id, matched whole before pre-tokenisation
        self.pre, self.normalizer, self.ignore_merges = pre, normalizer, ignore_merges
        self.bos_id = bos_id
        self.vocab_size = max([*vocab.values(), *added.values()]) + 1
        self.byte_encoder = bytes_to_unicode()
        byte_decoder = {ch: b for b, ch in self.byte_encoder.items()}
        self.id_bytes: list[bytes] = [b""] * self.vocab_size  # id -> the raw bytes it stands for
        for tok, i in vocab.items():
            self.id_bytes[i] = bytes(byte_decoder[ch] for ch in tok) if all(ch in byte_decoder for ch in tok) \
                else tok.encode("utf-8")
        for tok, i in added.items():
            self.id_bytes[i] = tok.encode("utf-8")
        ordered = sorted(added, key=len, reverse=True)  # longest first, so "<|im_start|>" beats a prefix of it
        self.added_regex = re.compile("(" + "|".join(map(re.escape, ordered)) + ")") if ordered else None
        self.cache: dict[str, list[int]] = {}

        self.chat_format, self.chat_template = chat_format, chat_template or None
        self.special_tokens = dict(special_tokens or {})
        if bos_id is not None and 0 <= bos_id < self.vocab_size:
            self.special_tokens.setdefault("bos_token", self.decode([bos_id]))
        if self.chat_template is not None:
            compile_template(self.chat_template)  # a template that does not compile fails at load, not mid-run
        self.fallback_noticed = False
        self.end_of_turn = self.closing_token()
        self.eos_ids = set(eos_ids) | ({self.end_of_turn} if self.end_of_turn is not None else set())

    # ------------------------------------------------------------------------------------------ encode / decode
    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"Tokenizer.encode expects str, got {type(text).__name__}")
        chunks = self.added_regex.split(text) if self.added_regex else [text]
        ids = []
        for k, chunk in enumerate(chunks):
            if k % 2 == 1:  # odd chunks are the captured special tokens
                ids.append(self.added[chunk])
            elif chunk:
                ids += self.encode_ordinary(chunk)
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text with no special-token handling."""
        if self.normalizer:
            text = unicodedata.normalize(self.normalizer, text)
        ids = []
        for piece in self.pre(text):
            ids += self.bpe("".join(self.byte_encoder[b] for b in piece.encode("utf-8")))
        return ids

    def bpe(self, word: str) -> list[int]:
        """Merge the byte-characters of one piece by rank; returns its ids (cached)."""
        hit = self.cache.get(word)
        if hit is not None:
            return hit
        if self.ignore_merges and word in self.vocab:  # Llama 3: a piece that is a whole token stays one
            parts = [word]
        else:
            parts = list(word)
            while len(parts) > 1:
                ranks = [self.ranks.get(pair, sys.maxsize) for pair in zip(parts, parts[1:])]
                best = min(ranks)
                if best == sys.maxsize:
                    break
                pair, merged, i = (parts[ranks.index(best)], parts[ranks.index(best) + 1]), [], 0
                while i < len(parts):  # merge every occurrence of the best pair, left to right
                    if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                        merged.append(parts[i] + parts[i + 1])
                        i += 2
                    else:
                        merged.append(parts[i])
                        i += 1
                parts = merged
        try:
            ids = [self.vocab[p] for p in parts]
        except KeyError as e:
            raise ValueError(f"token {e.args[0]!r} is not in the vocabulary (incomplete byte-level vocab?)") from None
        if len(self.cache) > 200_000:
            self.cache.clear()
        self.cache[word] = ids
        return ids

    def decode(self, ids: list[int]) -> str:
        try:
            raw = b"".join(self.id_bytes[int(i)] for i in ids)
        except IndexError:
            bad = [int(i) for i in ids if not 0 <= int(i) < self.vocab_size]
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (size {self.vocab_size})") from None
        return raw.decode("utf-8", errors="replace")  # only a partial multi-byte sequence can be replaced

    # ------------------------------------------------------------------------------------------------- chat
    def chat(self, messages: list[dict], add_generation_prompt=True, assistant_prefix="", today: datetime | None = None,
             **variables) -> str:
        """The prompt text for a conversation, as the model's template writes it; `assistant_prefix` starts the
        assistant's answer (e.g. '{"') after the generation prompt. `variables` reach the template as
        apply_chat_template's extra keyword arguments do (date_string="26 Jul 2024", enable_thinking=False).
        `today` is the date a template's strftime_now reads (Llama 3.2's "Today Date"), now if not given: a run
        that pins it writes the same prompt on every day it is resumed."""
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise ValueError(f"each chat message needs string 'role' and 'content', got {m!r}")
        if assistant_prefix and not add_generation_prompt:
            raise ValueError("assistant_prefix needs add_generation_prompt=True")
        if self.chat_template is None and not self.fallback_noticed:
            print(f"note: the model carries no chat template; prompts use the built-in {self.chat_format} layout",
                  file=sys.stderr)
            self.fallback_noticed = True
        if today is not None:
            variables = {"strftime_now": today.strftime, **variables}  # a render variable shadows the global
        return self.render(messages, add_generation_prompt, variables) + assistant_prefix

    def render(self, messages: list[dict], add_generation_prompt: bool, variables: dict) -> str:
        if self.chat_template is None:
            return fallback_layout(self.chat_format, messages, add_generation_prompt)
        return render_template(self.chat_template, messages, add_generation_prompt,
                               {**self.special_tokens, **variables})

    def closing_token(self) -> int | None:
        """Id of the token written right after an assistant answer's text (<|eot_id|>, <|im_end|>, </s>,
        <end_of_turn>, <|end|>): what a finished answer ends with. The eos token if the layout shows none."""
        answer = "Four."
        try:
            text = self.render([{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": answer}],
                               add_generation_prompt=False, variables={})
        except ValueError:  # a template that cannot show an answer; the eos token stands in
            text = ""
        closer = self.added_regex.match(text.partition(answer)[2]) if self.added_regex and answer in text else None
        if closer:
            return self.added[closer.group(0)]
        eos = self.special_tokens.get("eos_token")
        return self.added.get(eos, self.vocab.get(eos)) if eos else None

    # ---------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_folder(cls, folder) -> "Tokenizer":
        """From a Hugging Face model folder; one holding only a SentencePiece tokenizer.model is refused."""
        folder = Path(folder)
        if not (folder / "tokenizer.json").exists():
            if (folder / "tokenizer.model").exists():
                raise ValueError(f"{folder} has only a SentencePiece tokenizer.model; SentencePiece tokenizers are "
                                 "not supported (byte-level BPE tokenizer.json only)")
            raise ValueError(f"{folder} has no tokenizer.json; download it with the weights")
        return cls.from_files(folder / "tokenizer.json", folder / "tokenizer_config.json")

    @classmethod
    def from_files(cls, tokenizer_json_path, tokenizer_config_path=None) -> "Tokenizer":
        """From a Hugging Face tokenizer.json (BPE model) and, optionally, its tokenizer_config.json; beside the
        tokenizer.json, chat_template.jinja (which wins over the config's template, as in transformers) and
        generation_config.json (its eos ids end generation) are read when present."""
        path = Path(tokenizer_json_path)
        spec = json.loads(path.read_text(encoding="utf-8"))
        conf = read_json(tokenizer_config_path) if tokenizer_config_path is not None else {}
        check_byte_level_bpe(spec, path)
        model = spec["model"]
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        added = {t["content"]: t["id"] for t in spec.get("added_tokens") or []}
        pre = pre_tokenizer_from_json(spec.get("pre_tokenizer"))
        norm = normalizer_from_json(spec.get("normalizer"))

        def token_id(text):
            return added.get(text, model["vocab"].get(text)) if text else None

        special = special_tokens_of(conf, read_json(path.with_name("special_tokens_map.json")))
        generation = read_json(path.with_name("generation_config.json")).get("eos_token_id")
        eos = {token_id(special.get("eos_token"))} | set(generation if isinstance(generation, list) else [generation])
        template = template_of(conf, path.with_name("chat_template.jinja"))
        return cls(model["vocab"], merges, added, pre, normalizer=norm,
                   ignore_merges=bool(model.get("ignore_merges")), bos_id=token_id(special.get("bos_token")),
                   eos_ids=(eos - {None}) | stop_ids(added), chat_format=chat_format_of(added, template or ""),
                   chat_template=template, special_tokens=special)

    @classmethod
    def from_gguf(cls, metadata: dict) -> "Tokenizer":
        """From GGUF metadata: tokenizer.ggml.{model, tokens, merges, token_type, pre, *_token_id} and
        tokenizer.chat_template."""
        kind = metadata.get("tokenizer.ggml.model")
        if kind in GGUF_SENTENCEPIECE:
            raise ValueError(f"the GGUF tokenizer is SentencePiece ({kind!r}); SentencePiece tokenizers are not "
                             "supported (only byte-level BPE, 'gpt2')")
        if kind != "gpt2":
            raise ValueError(f"GGUF tokenizer model {kind!r} is not supported (only byte-level BPE, 'gpt2')")
        pre_name = metadata.get("tokenizer.ggml.pre", "default")
        if pre_name not in GGUF_PRE:
            raise ValueError(f"GGUF pre-tokenizer {pre_name!r} is not supported; known: {sorted(GGUF_PRE)}")
        split_digits, pattern, ignore_merges = GGUF_PRE[pre_name]
        tokens = metadata["tokenizer.ggml.tokens"]
        types = metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens)
        # Types 3 (control) and 4 (user-defined) are added tokens matched whole; the rest are BPE tokens.
        added = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (3, 4)}
        vocab = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty not in (3, 4)}
        merges = [tuple(m.split(" ", 1)) for m in metadata.get("tokenizer.ggml.merges", [])]
        special = {name: tokens[metadata[f"tokenizer.ggml.{key}"]] for name, key in GGUF_SPECIAL_IDS.items()
                   if 0 <= metadata.get(f"tokenizer.ggml.{key}", -1) < len(tokens)}
        eos = {metadata.get(f"tokenizer.ggml.{key}") for key in ("eos_token_id", "eot_token_id", "eom_token_id")}
        template = metadata.get("tokenizer.chat_template") or None
        return cls(vocab, merges, added, PreTokenizer(pattern, split_digits), ignore_merges=ignore_merges,
                   normalizer=GGUF_NORMALIZER.get(pre_name), bos_id=metadata.get("tokenizer.ggml.bos_token_id"),
                   eos_ids=(eos - {None}) | stop_ids(added),
                   chat_format=chat_format_of(added, template or ""), chat_template=template, special_tokens=special)


# ------------------------------------------------------------------------------------------- tokenizer.json
def read_json(path) -> dict:
    """A JSON file's object, or {} when the file is absent."""
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def check_byte_level_bpe(spec: dict, path: Path) -> None:
    """Refuse, in one line, what is not a byte-level BPE: SentencePiece (a Unigram model, or a BPE with the
    Metaspace '▁' word marks and byte fallback) and the other model types."""
    model = spec.get("model") or {}
    kind = model.get("type", "BPE")
    pieces = json.dumps([spec.get("pre_tokenizer"), spec.get("normalizer"), spec.get("decoder")], ensure_ascii=False)
    word_marks = "Metaspace" in pieces or "▁" in pieces
    if kind == "Unigram" or (kind == "BPE" and (model.get("byte_fallback") or word_marks)):
        raise ValueError(f"{path}: SentencePiece tokenizers are not supported ({kind} model with SentencePiece "
                         "word marks); only byte-level BPE tokenizers (Llama 3, Qwen2/3, SmolLM2, ...) are")
    if kind != "BPE" or "merges" not in model:
        raise ValueError(f"{path}: only byte-level BPE tokenizers are supported, got model type {kind!r}")


def special_tokens_of(conf: dict, special_map: dict) -> dict[str, str]:
    """transformers' special_tokens_map: each named special token's text, from tokenizer_config.json, else from
    special_tokens_map.json; names set to null are left out (a template sees them undefined)."""
    out = {}
    for name in SPECIAL_TOKEN_NAMES:
        value = conf.get(name, special_map.get(name))
        text = value.get("content") if isinstance(value, dict) else value
        if isinstance(text, str):
            out[name] = text
    return out


def template_of(conf: dict, jinja_path: Path) -> str | None:
    """The checkpoint's chat template: chat_template.jinja, else tokenizer_config's `chat_template` (a string, or
    a list of named templates of which transformers takes 'default' for a chat without tools)."""
    if jinja_path.exists():
        return jinja_path.read_text(encoding="utf-8")
    template = conf.get("chat_template")
    if isinstance(template, list):
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return template or None


def pre_tokenizer_from_json(node: dict | None) -> PreTokenizer:
    """Map the tokenizer.json pre_tokenizer chains these models use onto one PreTokenizer.

    Supported: ByteLevel (with its GPT-2 regex or without), Split(Regex, Isolated), Digits, and a Sequence of
    at most one Digits followed by one regex source."""
    steps = node.get("pretokenizers", []) if node and node.get("type") == "Sequence" else [node] if node else []
    pattern, split_digits, individually = None, False, True
    for step in steps:
        kind = step.get("type")
        if kind == "Digits":
            split_digits, individually = True, bool(step.get("individual_digits"))
        elif kind == "Split" and "Regex" in step.get("pattern", {}) and step.get("behavior") == "Isolated" \
                and not step.get("invert"):
            pattern = step["pattern"]["Regex"]
        elif kind == "ByteLevel":
            if step.get("add_prefix_space"):
                raise ValueError("ByteLevel pre-tokenizer with add_prefix_space=true is not supported")
            if step.get("use_regex", True):
                if pattern is not None:
                    raise ValueError("a Split regex followed by ByteLevel(use_regex=true) is not supported")
                pattern = GPT2_PATTERN
        else:
            raise ValueError(f"pre-tokenizer step {kind!r} ({json.dumps(step)[:80]}) is not supported")
    return PreTokenizer(pattern, split_digits, individually)


def normalizer_from_json(node: dict | None) -> str | None:
    if not node:
        return None
    if node.get("type") in ("NFC", "NFD", "NFKC", "NFKD"):
        return node["type"]
    if node.get("type") == "Sequence" and not node.get("normalizers"):
        return None
    raise ValueError(f"normalizer {node.get('type')!r} is not supported (only NFC/NFD/NFKC/NFKD)")


def stop_ids(added: dict[str, int]) -> set[int]:
    """Ids of the end-of-turn / end-of-text tokens present among the added tokens."""
    return {added[t] for t in STOP_TOKENS if t in added}


def chat_format_of(added: dict[str, int], template: str) -> str:
    """Which hand-written layout stands in for a missing template: Llama 3's if the vocabulary has its header
    tokens, else ChatML."""
    return "llama3" if "<|start_header_id|>" in added or "<|start_header_id|>" in template else "chatml"


# ------------------------------------------------------------------------------------------- chat templates
def fallback_layout(chat_format: str, messages: list[dict], add_generation_prompt: bool) -> str:
    """One of the two layouts written by hand. Llama 3's strips contents and opens with <|begin_of_text|>, as
    Meta's template does, but writes no date preamble."""
    turn, head, _ = FALLBACK_LAYOUTS[chat_format]
    if chat_format == "llama3":
        text = "<|begin_of_text|>" + "".join(turn.format(role=m["role"], content=m["content"].strip())
                                             for m in messages)
    else:
        text = "".join(turn.format(role=m["role"], content=m["content"]) for m in messages)
    return text + (head if add_generation_prompt else "")


def render_template(template: str, messages: list[dict], add_generation_prompt: bool, variables: dict) -> str:
    """What apply_chat_template(messages, add_generation_prompt=..., tokenize=False, **variables) returns."""
    try:
        return compile_template(template).render(
            messages=[dict(m) for m in messages], tools=None, documents=None,
            add_generation_prompt=add_generation_prompt, **variables)
    except jinja2.TemplateError as e:
        raise ValueError(f"the model's chat template refused the conversation: {e}") from None


@lru_cache(maxsize=16)
def compile_template(template: str) -> jinja2.Template:
    try:
        return template_environment().from_string(template)
    except jinja2.TemplateError as e:
        raise ValueError(f"the model's chat template does not compile: {e}") from None


@lru_cache(maxsize=None)
def template_environment() -> ImmutableSandboxedEnvironment:
    """transformers' chat-template environment: a sandbox (templates come with downloaded checkpoints), blocks
    that eat their newline and leading indentation, loop controls, and the same helpers."""
    version = tuple(int(x) for x in re.findall(r"\d+", jinja2.__version__)[:3])
    if version < (3, 1, 6):  # older releases have known sandbox escapes
        raise ValueError(f"rendering a chat template safely needs jinja2 >= 3.1.6, found {jinja2.__version__}; "
                         "run `pip install -U jinja2`")
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = template_tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now, dict=TemplateDict(),
                       namespace=TemplateNamespace)
    return env


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def strftime_now(format):
    """Today's date as the template asks for it (Llama 3.2's "Today Date: 26 Jul 2024")."""
    return datetime.now().strftime(format)


def template_tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    """JSON without Jinja's HTML escaping, with json.dumps' options, as transformers defines it."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class TemplateDict:
    """`dict(...)` and `dict.fromkeys(...)` for templates, without the type object itself."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class TemplateNamespace(jinja2.utils.Namespace):
    """Jinja's namespace() refusing underscore names, which could reach Python internals."""

    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]  # Jinja's own signature trick, so namespace(self=...) still works
        attrs = dict(*args, **kwargs)
        for name in attrs:
            TemplateNamespace.check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        TemplateNamespace.check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a chat template cannot set {name!r} on a namespace")


class GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks the assistant's text for transformers' training masks;
    it renders its body unchanged."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("render_body"), [], [], body).set_lineno(lineno)

    def render_body(self, caller):
        return caller()
