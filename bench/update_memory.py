"""Peak memory of one GRPO update at ARC's shape, whole group against micro-batches and activation checkpointing.

The paper's largest setting: ARC with an 8B model trains G = 16 completions of up to 1,024 tokens after a
~2,000-token prompt. The group's completions attend to the shared prompt through an explicit mask, so SDPA takes
its math path and keeps (G, heads, T, P + T) attention scores for every layer until backward. Each configuration
runs one real loop.grpo_update (LoRA r=128 on q/v, mu=1) on a random Llama-3.2-1B-shaped model in a fresh
subprocess, and prints its peak memory above the memory held before the update (weights, inputs): peak RSS on CPU
(ru_maxrss), torch.cuda.max_memory_allocated on CUDA; then the ratio against the whole-group update.

    python bench/update_memory.py --device cuda --dtype bfloat16                 # the full shape (GPU)
    python bench/update_memory.py --layers 2 --vocab 8192 --threads 1            # CPU: 2 layers, small vocab

On CPU the full 16-layer model takes hours per configuration on 2 cores; with --layers the attention and MLP
memory per layer is the same as the full model's (it scales with the layer count), and --vocab only changes
the output head, whose memory the fused log-probs already bound (bench/logprob.py). Left out: the optimizer
step's own memory (AdamW state of the adapter, the same in every configuration).
"""
import argparse
import json
import resource
import subprocess
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = {"whole group": {}, "micro-batch 4": dict(micro_batch=4), "checkpointing": dict(grad_checkpoint=True),
           "micro-batch 4 + checkpointing": dict(micro_batch=4, grad_checkpoint=True)}


def rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def worker(args, name) -> dict:
    import torch
    import loop
    from bench.sampler import LLAMA_1B
    from model import ModelConfig, Transformer, add_lora
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = ModelConfig.from_hf(dict(LLAMA_1B, num_hidden_layers=args.layers, vocab_size=args.vocab))
    torch.manual_seed(0)
    with torch.device(args.device):
        model = Transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model = model.to(getattr(torch, args.dtype))
    s = loop.Settings(task="arc", target="x", strategy="grpo", alpha=args.group, mu=1, lr=1e-5, lora_r=128,
                         lora_alpha=32, device=args.device, dtype=args.dtype, **CONFIGS[name])
    params = add_lora(model, r=s.lora_r, alpha=s.lora_alpha)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, args.vocab, (args.prompt,), generator=g).tolist()
    members = [loop.Member("on-policy", "on-policy", reward=float(r), tokens=torch.randint(
        0, args.vocab, (args.completion,), generator=g).tolist()) for r in torch.rand(args.group, generator=g)]
    policy = types.SimpleNamespace(model=model, s=s, params=params, prompt_ids=lambda p: prompt, end_of_turn=0,
                                   optimizer=torch.optim.AdamW(params, lr=s.lr, weight_decay=0.0))
    task = types.SimpleNamespace(prompt=lambda: None)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
    else:
        start = rss()
    t0 = time.perf_counter()
    loop.grpo_update(policy, task, members, iteration=1)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() - start if cuda else rss() - start
    return dict(peak=peak, seconds=seconds)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--layers", type=int, default=16, help="decoder layers of the Llama-3.2-1B shape [16]")
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--group", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=2000)
    ap.add_argument("--completion", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args, args.worker)))
        return
    print(f"# one GRPO update, G={args.group}, prompt {args.prompt} + {args.completion} tokens, Llama-3.2-1B shape with "
          f"{args.layers} layers, vocab {args.vocab}, {args.dtype} on {args.device}, LoRA r=128 on q/v")
    print(f"{'configuration':>30} {'peak GB':>8} {'s':>7} {'of whole':>8}")
    whole = None
    for name in args.configs:
        cmd = [sys.executable, __file__, "--worker", name, "--device", args.device, "--dtype", args.dtype,
               "--layers", str(args.layers), "--vocab", str(args.vocab), "--group", str(args.group),
               "--prompt", str(args.prompt), "--completion", str(args.completion), "--threads", str(args.threads)]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if res.returncode != 0:
            tail = (res.stderr.strip().splitlines() or ["killed (out of memory?)"])[-1]
            print(f"{name:>30}  failed: rc {res.returncode}: {tail[:100]}", flush=True)
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        whole = r if name == "whole group" else whole
        ratio = f"{r['peak'] / whole['peak']:8.3f}" if whole else f"{'-':>8}"
        print(f"{name:>30} {r['peak'] / 1e9:8.2f} {r['seconds']:7.1f} {ratio}", flush=True)


if __name__ == "__main__":
    main()
