"""Makes tests/golden/chat_templates.json with transformers. Run once, by hand, in a scratch environment:

    python3 -m venv /tmp/tmpl-venv && /tmp/tmpl-venv/bin/pip install transformers tokenizers jinja2 gguf torch
    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/dl && tar xzf /tmp/dl/*.tar.gz -C /tmp/dl
    cd /work/main && /tmp/tmpl-venv/bin/python tests/golden/make_chat_templates.py \
        /tmp/dl/llama_cpp_python-0.3.36/vendor/llama.cpp/models

Never imported by the project or the default tests.

Templates: the published chat templates of each family, as llama.cpp keeps verbatim copies of them in
models/templates/ (shipped in the llama-cpp-python source distribution on PyPI); SmolLM2's is the one inside the
project's own GGUF. No model hub is contacted.

Reference: transformers' apply_chat_template (add_generation_prompt=True, and a fixed date_string for the Llama
preamble), on a PreTrainedTokenizerFast loaded from a folder holding tokenizer_config.json (the template and the
family's special tokens) and a tokenizer.json. The real tokenizer.json files are not on PyPI, so that tokenizer.json
is a small byte-level BPE trained here with the `tokenizers` library, given the family's published pre-tokenizer
chain and normalizer (Llama 3: Split(regex) + ByteLevel with ignore_merges; Qwen2: NFC + Split(regex) + ByteLevel;
SmolLM2: Digits + ByteLevel; Mistral Nemo: the Tekken Split regex transformers uses + ByteLevel) and the family's
added tokens. Phi-3.5 and Gemma really use SentencePiece, which the project refuses: for them the ids are those of
the same byte-level stand-in, and only the text speaks for the real model.
Real vocabularies, same reference: tokenizer.json files holding the tokens and merges of SmolLM2's GGUF and of
llama.cpp's vocab-only GGUFs of Llama 3 (ggml-vocab-llama-bpe.gguf) and Qwen2 (ggml-vocab-qwen2.gguf, in the same
source distribution), with the published chains. Those two files are 6-8 MB and not in the repository, so the
test that reads them is marked heavy and needs MIGRATE_LLAMA_CPP_MODELS pointing at that models/ folder.
"""
import json
import sys
import tempfile
from pathlib import Path

import gguf
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import assets  # noqa: E402

DATE = "15 Mar 2025"  # date_string for the Llama 3.1 / 3.2 preamble ("Today Date: ...")
PREFIX = '{"response": ["'  # a response prefix, appended after the generation prompt as the loop does
SYSTEM = ("You are an expert chemist. Propose molecules as SMILES strings.\n"
          "Answer with JSON only: {\"response\": [\"SMILES\"]}.\n")
CONVERSATIONS = {
    # the loop's shape: a system message and one user message (surrounding spaces test templates that trim)
    "loop": [{"role": "system", "content": SYSTEM},
             {"role": "user",
              "content": "  Improve CC(=O)Oc1ccccc1C(=O)O (score 0.412).\nNaïve ideas: ½ ring, 3 N's. "}],
    "user": [{"role": "user", "content": "What is the capital of France?"}],
    "multi": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "Name a color."}],
    "no_system": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                  {"role": "user", "content": "Name a color."}],
}
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
TEKKEN_REGEX = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
                r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def split_then_bytes(regex: str) -> dict:
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}


SMOLLM2_PRE = {"type": "Sequence", "pretokenizers": [
    {"type": "Digits", "individual_digits": True},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
LLAMA3_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
                 "<|eot_id|>", "<|python_tag|>"]
QWEN_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"]
# name: (template file in llama.cpp's models/templates, special tokens as in the model's tokenizer_config.json,
#        added tokens, pre-tokenizer, normalizer, ignore_merges)
FAMILIES = {
    "llama-3.1": ("meta-llama-Llama-3.1-8B-Instruct.jinja",
                  {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
                  LLAMA3_TOKENS, split_then_bytes(LLAMA3_REGEX), None, True),
    "llama-3.2": ("meta-llama-Llama-3.2-3B-Instruct.jinja",
                  {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
                  LLAMA3_TOKENS, split_then_bytes(LLAMA3_REGEX), None, True),
    "qwen2.5": ("Qwen-Qwen2.5-7B-Instruct.jinja", {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
                QWEN_TOKENS, split_then_bytes(QWEN2_REGEX), {"type": "NFC"}, False),
    "qwen3": ("Qwen-Qwen3-0.6B.jinja", {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
              QWEN_TOKENS + ["<tool_response>", "</tool_response>", "<think>", "</think>"],
              split_then_bytes(QWEN2_REGEX), {"type": "NFC"}, False),
    "smollm2": ("gguf", {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>",
                         "pad_token": "<|im_end|>"},
                ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], SMOLLM2_PRE, None, False),
    "mistral-nemo": ("mistralai-Mistral-Nemo-Instruct-2407.jinja",
                     {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
                     ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                      "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]"],
                     split_then_bytes(TEKKEN_REGEX), None, False),
    "phi-3.5": ("microsoft-Phi-3.5-mini-instruct.jinja",
                {"bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>",
                 "pad_token": "<|endoftext|>"},
                ["<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"],
                SMOLLM2_PRE, None, False),
    "gemma": ("google-gemma-2-2b-it.jinja",
              {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>"},
              ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"], SMOLLM2_PRE, None, False),
    "deepseek-r1-distill-llama": ("deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja",
                                  {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>"},
                                  ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
                                   "<think>", "</think>"], split_then_bytes(LLAMA3_REGEX), None, True),
}


def train_byte_bpe(families_templates: list[str]) -> dict:
    """A small byte-level BPE (400 tokens) trained on the conversations and templates: enough merges that every
    pre-tokenizer's pieces merge differently."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    corpus = [m["content"] for conv in CONVERSATIONS.values() for m in conv] * 20 + families_templates
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    model = json.loads(tok.to_str())["model"]
    return {"vocab": model["vocab"], "merges": [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]}


def tokenizer_json(bpe: dict, added: list[str], pre: dict, normalizer, ignore_merges: bool) -> dict:
    n = len(bpe["vocab"])
    return {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [{"id": n + i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                              "normalized": False, "special": True} for i, t in enumerate(added)],
            "normalizer": normalizer, "pre_tokenizer": pre, "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": ignore_merges, "vocab": bpe["vocab"], "merges": bpe["merges"]}}


def reference_outputs(tok) -> dict:
    out = {}
    for name, conv in CONVERSATIONS.items():
        try:
            text = tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False, date_string=DATE)
        except Exception as e:  # a template refusing a conversation (Gemma has no system role)
            out[name] = {"error": str(e)}
            continue
        ids = tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=True, return_dict=False,
                                      date_string=DATE)
        assert tok(text, add_special_tokens=False)["input_ids"] == ids
        out[name] = {"text": text, "ids": ids,
                     "prefix_ids": tok(text + PREFIX, add_special_tokens=False)["input_ids"],
                     "no_generation_prompt": tok.apply_chat_template(conv, add_generation_prompt=False,
                                                                     tokenize=False, date_string=DATE)}
    return out


def gguf_tokenizer_json(path: Path, pre: dict, normalizer, ignore_merges: bool) -> dict:
    """A tokenizer.json holding a GGUF's vocabulary and merges, its control and user-defined tokens added, with the
    family's published pre-tokenizer chain (as the model's own tokenizer.json has it)."""
    reader = gguf.GGUFReader(str(path))
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    return {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                              "normalized": False, "special": True}
                             for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (3, 4)],
            "normalizer": normalizer, "pre_tokenizer": pre, "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": ignore_merges, "vocab": {t: i for i, t in enumerate(tokens)},
                      "merges": reader.fields["tokenizer.ggml.merges"].contents()}}


def folder_tokenizer(folder: Path, spec: dict, config: dict):
    """transformers' PreTrainedTokenizerFast from a folder holding this tokenizer.json and tokenizer_config.json."""
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **config}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    return AutoTokenizer.from_pretrained(str(folder))


def main(llama_cpp_models: Path):
    gguf_path = assets.asset_path(assets.SMOLLM2_GGUF)
    smol_template = gguf.GGUFReader(str(gguf_path)).fields["tokenizer.chat_template"].contents()
    templates = {name: smol_template if spec[0] == "gguf" else
                 (llama_cpp_models / "templates" / spec[0]).read_text(encoding="utf-8")
                 for name, spec in FAMILIES.items()}
    bpe = train_byte_bpe(list(templates.values()))
    families, real_vocab = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (source, special, added, pre, normalizer, ignore_merges) in FAMILIES.items():
            tok = folder_tokenizer(Path(tmp) / name, tokenizer_json(bpe, added, pre, normalizer, ignore_merges),
                                   {"chat_template": templates[name], **special})
            families[name] = {"template_source": source, "template": templates[name], "special_tokens": special,
                              "added_tokens": added, "pre_tokenizer": pre, "normalizer": normalizer,
                              "ignore_merges": ignore_merges, "reference": reference_outputs(tok)}
            print(name, {k: v.get("error") or len(v["ids"]) for k, v in families[name]["reference"].items()})

        # Real vocabularies. transformers' own GGUF loader is not the reference for ids: it drops SmolLM2's Digits
        # step (it keeps " ½" whole where SmolLM2's tokenizer.json isolates "½"); it is asked only which special
        # tokens a GGUF's template sees.
        hf_smol = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        for file, path, family, pre, normalizer, ignore_merges in [
                ("SmolLM2-135M-Instruct.Q4_1.gguf", gguf_path, "smollm2", SMOLLM2_PRE, None, False),
                ("ggml-vocab-llama-bpe.gguf", llama_cpp_models / "ggml-vocab-llama-bpe.gguf", "llama-3.2",
                 split_then_bytes(LLAMA3_REGEX), None, True),
                ("ggml-vocab-qwen2.gguf", llama_cpp_models / "ggml-vocab-qwen2.gguf", "qwen2.5",
                 split_then_bytes(QWEN2_REGEX), {"type": "NFC"}, False)]:
            special = hf_smol.special_tokens_map if family == "smollm2" else FAMILIES[family][1]
            tok = folder_tokenizer(Path(tmp) / file, gguf_tokenizer_json(path, pre, normalizer, ignore_merges),
                                   {"chat_template": templates[family], **special})
            real_vocab[file] = {"family": family, "special_tokens": special, "reference": reference_outputs(tok)}
            print(file, {k: v.get("error") or len(v["ids"]) for k, v in real_vocab[file]["reference"].items()})
    out = {"date_string": DATE, "prefix": PREFIX, "conversations": CONVERSATIONS, "bpe": bpe, "families": families,
           "real_vocab": real_vocab}
    dest = Path(__file__).with_name("chat_templates.json")
    dest.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print("wrote", dest, dest.stat().st_size, "bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
