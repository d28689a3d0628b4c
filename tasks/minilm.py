"""A small BERT sentence encoder that runs the real all-MiniLM-L6-v2 weights: the word-search oracle.

Three parts, each a few dozen lines:
1. `WordPiece`: BERT's basic tokenisation (clean control characters, space out CJK ideographs, lower-case, strip
   accents, split on whitespace and punctuation) then greedy longest-match-first WordPiece over vocab.txt; a word
   with any piece missing from the vocabulary becomes [UNK] as a whole, as in BERT.
2. `Bert`: a post-LayerNorm encoder (embeddings = word + position + token-type 0, LayerNorm; each layer:
   x = LN(x + attn(x)), x = LN(x + W2 gelu(W1 x))), GELU with the exact erf, parameter names as in Hugging Face's
   BertModel so model.safetensors loads with load_state_dict.
3. `MiniLM`: sentence-transformers' pipeline on top: [CLS] ... [SEP], truncation to 256 tokens, mean pooling over
   real (non-padding) tokens, L2 normalisation.

Deliberately left out: sentence pairs (token type 1), the pooler head (sentence-transformers does not use it),
dropout and training, other BERT variants (cased vocabularies, relative positions), and tokenizer.json (vocab.txt
and the facts above are all this model needs).
"""
import json
import math
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model ([CLS] and [SEP] included)


# -- tokenizer ------------------------------------------------------------------------------------------------

def is_punctuation(ch: str) -> bool:
    """BERT's notion: every non-alphanumeric printable ASCII character, plus Unicode punctuation (P*)."""
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def is_cjk(cp: int) -> bool:
    """CJK Unified Ideographs blocks (not Hangul or kana): BERT makes each ideograph its own word."""
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF
            or 0x2F800 <= cp <= 0x2FA1F)


def is_control(ch: str) -> bool:
    """Other-category characters (Cc, Cf, Cs, Co, Cn), which BERT deletes; tab and newlines count as spaces."""
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def basic_words(text: str) -> list[str]:
    """Normalise and split one text into words and single punctuation marks (BERT's BasicTokenizer, uncased)."""
    chars = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or is_control(ch):
            continue
        if ch.isspace():  # only spaces, line separators, tab and newlines are left after removing controls
            chars.append(" ")
        elif is_cjk(cp):
            chars.append(f" {ch} ")
        else:
            chars.append(ch)
    # drop combining marks after canonical decomposition (é -> e), then lower-case: the order of the fast
    # tokenizer that sentence-transformers runs
    text = unicodedata.normalize("NFD", "".join(chars))
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn").lower()
    words = []
    for chunk in text.split():
        word = ""
        for ch in chunk:
            if is_punctuation(ch):
                if word:
                    words.append(word)
                words.append(ch)
                word = ""
            else:
                word += ch
        if word:
            words.append(word)
    return words


class WordPiece:
    """Uncased BERT tokenizer over a vocab.txt (one token a line, the id is the line number)."""

    def __init__(self, vocab: dict[str, int], max_word_chars: int = 100):
        self.vocab = vocab
        self.max_word_chars = max_word_chars
        self.cls_id, self.sep_id = vocab["[CLS]"], vocab["[SEP]"]
        self.pad_id, self.unk_id = vocab["[PAD]"], vocab["[UNK]"]

    @classmethod
    def from_file(cls, path) -> "WordPiece":
        lines = Path(path).read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return cls({tok: i for i, tok in enumerate(lines)})

    def word_ids(self, word: str) -> list[int]:
        """Greedy longest-match-first split of one word; [UNK] for the whole word if any part is unknown."""
        if len(word) > self.max_word_chars:
            return [self.unk_id]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            if end == start:
                return [self.unk_id]
            start = end
        return ids

    def encode(self, text: str, max_tokens: int = MAX_TOKENS) -> list[int]:
        """[CLS] pieces [SEP], with the pieces cut so the whole fits in max_tokens."""
        ids = [i for word in basic_words(text) for i in self.word_ids(word)]
        return [self.cls_id] + ids[:max_tokens - 2] + [self.sep_id]


# -- encoder --------------------------------------------------------------------------------------------------

@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_hf(cls, cfg: dict) -> "BertConfig":
        if cfg.get("hidden_act", "gelu") != "gelu" or cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only BERT models with exact GELU and absolute positions are supported")
        return cls(**{k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg})


class Embeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, ids):  # ids (B, T)
        pos = torch.arange(ids.shape[1], device=ids.device)
        # single sentences only: every token has type 0
        x = self.word_embeddings(ids) + self.position_embeddings(pos) + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)  # (B, T, D)


class SelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        d = cfg.hidden_size
        self.n_head = cfg.num_attention_heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x, mask):  # x (B, T, D), mask (B, 1, 1, T) additive
        B, T, D = x.shape
        split = lambda t: t.view(B, T, self.n_head, D // self.n_head).transpose(1, 2)  # (B, H, T, hd)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(D // self.n_head) + mask  # (B, H, T, T)
        y = att.softmax(dim=-1) @ v  # (B, H, T, hd)
        return y.transpose(1, 2).reshape(B, T, D)


class DenseNorm(nn.Module):
    """x = LayerNorm(residual + dense(h)): the post-LN sublayer output of BERT."""

    def __init__(self, d_in: int, d_out: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)

    def forward(self, h, residual):
        return self.LayerNorm(residual + self.dense(h))


class Attention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.self = SelfAttention(cfg)
        self.output = DenseNorm(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x, mask):
        return self.output(self.self(x, mask), x)


class Intermediate(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x):
        return F.gelu(self.dense(x))  # exact erf form, as BERT's "gelu"


class Layer(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.intermediate = Intermediate(cfg)
        self.output = DenseNorm(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x, mask):
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x, mask):
        for layer in self.layer:
            x = layer(x, mask)
        return x


class Bert(nn.Module):
    """BERT encoder without the pooler; returns the last hidden states (B, T, D)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)

    def forward(self, ids, attention_mask):  # ids, attention_mask (B, T); mask 1 = real token, 0 = padding
        additive = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min  # (B, 1, 1, T)
        return self.encoder(self.embeddings(ids), additive)


def load_bert(folder) -> Bert:
    """A Bert with the weights of a Hugging Face folder (config.json + model.safetensors)."""
    from checkpoint import read_safetensors
    folder = Path(folder)
    model = Bert(BertConfig.from_hf(json.loads((folder / "config.json").read_text())))
    tensors = read_safetensors(folder / "model.safetensors")
    # some exports prefix names with "bert."; position_ids is a buffer and the pooler is unused
    tensors = {k.removeprefix("bert."): v for k, v in tensors.items()
               if not k.endswith("position_ids") and "pooler." not in k}
    model.load_state_dict(tensors, strict=True)
    return model.eval()


# -- sentence embeddings --------------------------------------------------------------------------------------

class MiniLM:
    """all-MiniLM-L6-v2 sentence embeddings: mean-pooled, L2-normalised, 384 floats per sentence."""

    def __init__(self, folder=None, batch_size: int = 64):
        if folder is None:
            import assets
            folder = assets.asset_path(assets.MINILM_DIR)
        self.tokenizer = WordPiece.from_file(Path(folder) / "vocab.txt")
        self.model = load_bert(folder)
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        return self.model.cfg.hidden_size

    @torch.inference_mode()
    def embed(self, sentences: list[str]) -> torch.Tensor:
        """(N, 384) unit vectors, float32; batches are padded to their longest sentence."""
        out = [torch.zeros(0, self.dim)]
        for start in range(0, len(sentences), self.batch_size):
            batch = [self.tokenizer.encode(s) for s in sentences[start:start + self.batch_size]]
            T = max(map(len, batch))
            ids = torch.tensor([b + [self.tokenizer.pad_id] * (T - len(b)) for b in batch])  # (B, T)
            mask = torch.tensor([[1] * len(b) + [0] * (T - len(b)) for b in batch])  # (B, T)
            hidden = self.model(ids, mask)  # (B, T, D)
            m = mask[..., None].float()  # (B, T, 1)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, D)
            out.append(F.normalize(pooled, p=2, dim=1, eps=1e-12))
        return torch.cat(out)
