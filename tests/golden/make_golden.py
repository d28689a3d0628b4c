"""Makes tests/golden/smollm2.json from reference libraries. Run once, by hand, with the scratch reference env:

    cd /work/main && /tmp/refenv/bin/python tests/golden/make_golden.py

Never imported by the project or the default tests (it needs transformers, tokenizers and gguf).
Token ids come from the `tokenizers` library on a tokenizer built from the GGUF's vocab and merges with the
pre-tokenizer chain of SmolLM2's published tokenizer.json: Sequence[Digits(individual_digits=True),
ByteLevel(add_prefix_space=False, use_regex=True)], the 17 control tokens added as special tokens.
Chat prompts come from transformers' apply_chat_template on the GGUF's own Jinja chat template.
Logits come from transformers' LlamaForCausalLM loaded from the same GGUF (gguf_file=, dequantised to float32).
"""
import json
import sys
from pathlib import Path

import gguf
import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import assets  # noqa: E402

SENTENCES = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "In 2024, 3.14159 and 1,000,000 were numbers; so was 42nd and x2y3.",
    "Café naïve résumé façade Ångström Straße Œuvre",
    "Emoji: 😀👍🏽🇫🇷 and ❤️ plus ∑∫√ and ²½",
    "def f(x):\n    return x ** 2  # square\n\tif x != 0: print(f'{x:>8}')",
    "   leading spaces,  two  spaces,\n\n\nnewlines\r\n and trailing   ",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "I'm sure they'll say it's fine, don't you think? WE'VE SEEN IT'S",
    "你好，世界！日本語のテキスト한국어 Россия مرحبا",
    '{"response": ["apple", "banana"]} CC(=O)Oc1ccccc1C(=O)O <|endoftext|>end',
    "",
    " ",
    "\u00a0nbsp\u2003em-space and zero\u200bwidth",
]
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Name a color."}],
]
# Pre-tokenizer regexes exactly as published in Llama 3's and Qwen2's tokenizer.json (Split, behavior Isolated,
# followed by ByteLevel(use_regex=False)); checked on SmolLM2's vocab, where only the splitting differs.
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
REGEX_SENTENCES = SENTENCES + ["Hello\n\n\nworld  \n  x\r\n\ty", "12345678 x1234 ½²³", "'S 'LL 'Ve ok's",
                               "?!\n\n...  --->\n"]
LOGIT_PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def reference_tokenizer(reader: gguf.GGUFReader, regex: str | None = None, ignore_merges=False) -> Tokenizer:
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ", 1)) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges, ignore_merges=ignore_merges))
    if regex is None:  # SmolLM2's own chain
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), behavior="isolated"),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == 3])
    return tok


def main():
    path = assets.asset_path(assets.SMOLLM2_GGUF)
    reader = gguf.GGUFReader(str(path))
    ref = reference_tokenizer(reader)
    ids = [ref.encode(s, add_special_tokens=False).ids for s in SENTENCES]
    llama3 = reference_tokenizer(reader, LLAMA3_REGEX, ignore_merges=True)
    qwen2 = reference_tokenizer(reader, QWEN2_REGEX)
    hf_tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    hf_ids = [hf_tok.encode(s, add_special_tokens=False) for s in SENTENCES]
    print("transformers' GGUF tokenizer agrees on", sum(a == b for a, b in zip(ids, hf_ids)), "of", len(ids))
    chats = [hf_tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in CONVERSATIONS]

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    prompt_ids = ref.encode(LOGIT_PROMPT, add_special_tokens=False).ids
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids])).logits[0].float()  # (T, V)
    out = {
        "sentences": SENTENCES, "ids": ids,
        "regex_sentences": REGEX_SENTENCES,
        "llama3_regex_ids": [llama3.encode(s, add_special_tokens=False).ids for s in REGEX_SENTENCES],
        "qwen2_regex_ids": [qwen2.encode(s, add_special_tokens=False).ids for s in REGEX_SENTENCES],
        "conversations": CONVERSATIONS, "chat_prompts": chats,
        "logit_prompt": LOGIT_PROMPT, "logit_prompt_ids": prompt_ids,
        "last_logits_first8": logits[-1, :8].tolist(),
        "last_logits_top5": torch.topk(logits[-1], 5).indices.tolist(),
        "last_logits_top5_values": torch.topk(logits[-1], 5).values.tolist(),
        "argmax": logits.argmax(-1).tolist(),
        "logit_mean_abs": logits.abs().mean().item(),
    }
    dest = Path(__file__).with_name("smollm2.json")
    dest.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print("wrote", dest)


if __name__ == "__main__":
    main()
