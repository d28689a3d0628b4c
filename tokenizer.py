"""Byte-level BPE tokenizer (GPT-2 family: SmolLM2, Llama 3, Qwen2/3) and the two chat formats they use.

Text -> ids in four steps, as Hugging Face `tokenizers` does for these models:
1. added/special tokens ("<|im_start|>") are cut out of the text first and kept whole (longest match first);
2. the rest is optionally Unicode-normalised (NFC for Qwen) and pre-tokenised into pieces: SmolLM2 isolates every
   digit, then applies the GPT-2 regex; Llama 3 and Qwen use their own regexes;
3. each piece's UTF-8 bytes are mapped to printable characters (GPT-2's byte-to-unicode table);
4. merges are applied by rank (lowest first, leftmost on ties) with a per-piece cache.
Python's `re` lacks \\p{L} and \\p{N}, so those (and \\s, taken as Unicode White_Space) are rewritten into explicit
character classes built from `unicodedata`.

Loaded from tokenizer.json (+ tokenizer_config.json) or from GGUF metadata. Deliberately left out: SentencePiece /
WordPiece models, byte fallback, added-token flags (lstrip, rstrip, single_word), encode-time BOS insertion (the chat
format writes it), offsets, and template rendering with Jinja: the two chat layouts are written out by hand.
"""
import json
import re
import sys
import unicodedata
from functools import lru_cache
from pathlib import Path

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
# Unicode White_Space (what \s means in the reference regex engine).
WHITE_SPACE = "\\t\\n\\x0b\\x0c\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
STOP_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "<|eom_id|>")


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
    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], added: dict[str, int],
                 pre: PreTokenizer, *, normalizer=None, ignore_merges=False, bos_id=None, eos_ids=(),
                 chat_format="chatml", default_system=None):
        self.vocab = vocab
        self.ranks = {pair: r for r, pair in enumerate(merges)}
        self.added = added  # content -> id, matched whole before pre-tokenisation
        self.pre, self.normalizer, self.ignore_merges = pre, normalizer, ignore_merges
        self.bos_id, self.eos_ids = bos_id, set(eos_ids)
        self.chat_format, self.default_system = chat_format, default_system
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
    def chat(self, messages: list[dict], add_generation_prompt=True, assistant_prefix="") -> str:
        """The prompt text for a conversation; `assistant_prefix` starts the assistant's answer (e.g. '{"')."""
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise ValueError(f"each chat message needs string 'role' and 'content', got {m!r}")
        if assistant_prefix and not add_generation_prompt:
            raise ValueError("assistant_prefix needs add_generation_prompt=True")
        if self.chat_format == "llama3":
            # As Meta's template: contents are stripped, the header is followed by a blank line.
            turn = "<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>"
            text = "<|begin_of_text|>" + "".join(turn.format(m["role"], m["content"].strip()) for m in messages)
            head = "<|start_header_id|>assistant<|end_header_id|>\n\n"
        else:
            if self.default_system is not None and (not messages or messages[0]["role"] != "system"):
                messages = [{"role": "system", "content": self.default_system}, *messages]
            text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
            head = "<|im_start|>assistant\n"
        return text + (head + assistant_prefix if add_generation_prompt else "")

    # ---------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_files(cls, tokenizer_json_path, tokenizer_config_path=None) -> "Tokenizer":
        """From a Hugging Face tokenizer.json (BPE model) and, optionally, its tokenizer_config.json."""
        spec = json.loads(Path(tokenizer_json_path).read_text(encoding="utf-8"))
        conf = {}
        if tokenizer_config_path is not None and Path(tokenizer_config_path).exists():
            conf = json.loads(Path(tokenizer_config_path).read_text(encoding="utf-8"))
        model = spec.get("model") or {}
        if model.get("type", "BPE") != "BPE" or "merges" not in model:
            raise ValueError(f"{tokenizer_json_path}: only byte-level BPE tokenizers are supported, "
                             f"got model type {model.get('type')!r}")
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        added = {t["content"]: t["id"] for t in spec.get("added_tokens") or []}
        pre = pre_tokenizer_from_json(spec.get("pre_tokenizer"))
        norm = normalizer_from_json(spec.get("normalizer"))

        def token_id(value):
            text = value.get("content") if isinstance(value, dict) else value
            return added.get(text, model["vocab"].get(text)) if text else None

        eos = {token_id(conf.get("eos_token"))} - {None}
        template = conf.get("chat_template") or ""
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            template = next((t["template"] for t in template if t.get("name") == "default"), "")
        return cls(model["vocab"], merges, added, pre, normalizer=norm,
                   ignore_merges=bool(model.get("ignore_merges")), bos_id=token_id(conf.get("bos_token")),
                   eos_ids=eos | stop_ids(added), chat_format=chat_format_of(added, template),
                   default_system=default_system_of(template))

    @classmethod
    def from_gguf(cls, metadata: dict) -> "Tokenizer":
        """From GGUF metadata: tokenizer.ggml.{model, tokens, merges, token_type, pre, bos/eos_token_id}."""
        kind = metadata.get("tokenizer.ggml.model")
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
        eos = metadata.get("tokenizer.ggml.eos_token_id")
        template = metadata.get("tokenizer.chat_template", "")
        return cls(vocab, merges, added, PreTokenizer(pattern, split_digits), ignore_merges=ignore_merges,
                   bos_id=metadata.get("tokenizer.ggml.bos_token_id"),
                   eos_ids=({eos} if eos is not None else set()) | stop_ids(added),
                   chat_format=chat_format_of(added, template), default_system=default_system_of(template))


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
    return "llama3" if "<|start_header_id|>" in added or "<|start_header_id|>" in template else "chatml"


def default_system_of(template: str) -> str | None:
    """The system message a ChatML template inserts when the conversation has none (SmolLM2, Qwen2.5)."""
    if "!= 'system'" not in template and '!= "system"' not in template:
        return None
    m = re.search(r"<\|im_start\|>system(?:\n|\\n)([^'\"{}<]*)<\|im_end\|>", template)
    return m.group(1).replace("\\n", "\n") if m else None
