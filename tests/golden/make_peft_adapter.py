"""Makes tests/golden/peft_adapter.json from peft. Run once, by hand, in a scratch environment that has the
reference libraries (never the project's venv):

    python3 -m venv /tmp/adapter-venv && /tmp/adapter-venv/bin/pip install torch==2.13.0 transformers==5.24.0 \
        peft==0.21.2 safetensors
    cd /work/main && /tmp/adapter-venv/bin/python tests/golden/make_peft_adapter.py

For each case below, a tiny random LlamaForCausalLM of tests/tiny_model.py's sizes is saved to ./tiny-base and
loaded back from there (so peft records base_model_name_or_path "tiny-base"), wrapped by peft's get_peft_model
with a LoraConfig of that rank, alpha and target modules, and saved with save_pretrained. Kept: the
adapter_config.json peft wrote (target_modules sorted: peft writes a set, in no fixed order) and the name, dtype
and shape of every tensor in adapter_model.safetensors. tests/test_adapter.py checks adapter.write_peft_folder
against them. Never imported by the project or the tests.
"""
import json
import os
import sys
import tempfile
from pathlib import Path

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.tiny_model import tiny_config  # noqa: E402

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CASES = {  # name -> (r, lora_alpha, lora_dropout, target_modules)
    "q_v": (4, 8, 0.0, ["q_proj", "v_proj"]),
    "all_linear": (2, 16, 0.05, ALL_LINEAR),
}


def tiny_llama() -> LlamaForCausalLM:
    c = tiny_config()
    cfg = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.dim, num_hidden_layers=c.n_layers,
                      num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, head_dim=c.head_dim,
                      intermediate_size=c.ffn_dim, max_position_embeddings=c.max_seq_len, tie_word_embeddings=True)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def peft_case(r, alpha, dropout, targets) -> dict:
    base = AutoModelForCausalLM.from_pretrained("tiny-base")
    model = get_peft_model(base, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                                            task_type="CAUSAL_LM"))
    model.save_pretrained("adapter")
    config = json.loads(Path("adapter/adapter_config.json").read_text())
    config["target_modules"] = sorted(config["target_modules"])
    with safe_open("adapter/adapter_model.safetensors", "pt") as f:
        tensors = {k: [str(f.get_tensor(k).dtype).removeprefix("torch."), list(f.get_tensor(k).shape)]
                   for k in sorted(f.keys())}
    return dict(settings=dict(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets),
                adapter_config=config, tensors=tensors)


def main():
    out = Path(__file__).resolve().parent / "peft_adapter.json"
    golden = dict(made_by=f"peft {peft.__version__}, transformers {transformers.__version__}, "
                          f"torch {torch.__version__}", base_model_name_or_path="tiny-base", cases={})
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        tiny_llama().save_pretrained("tiny-base")
        for name, case in CASES.items():
            golden["cases"][name] = peft_case(*case)
    out.write_text(json.dumps(golden, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
