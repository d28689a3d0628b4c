"""Time per MiGrATe iteration of our engine against the same loop written with Hugging Face transformers + peft,
on the same weights, prompt and group size, printed as HF time / our time (the goal: ours at least 2x faster).

One iteration, as migrate.py runs it minus the task:
1. sample: G completions of one prompt (the prompt repeated G times), temperature 1, no top-k/top-p, exactly
   --new-tokens tokens each (EOS switched off in both, so every row runs to the end);
2. update: --mu AdamW steps (lr 5e-5) of the clipped GRPO loss (grpo.grpo_loss, eps 0.2/0.28) on a LoRA adapter
   (q_proj and v_proj, r=--lora-r, alpha=--lora-alpha) over those completions, with fixed random rewards;
   old log-probs are the detached log-probs of step 0, as in loop.grpo_update.
Ours: sampler.generate (decode weights --sample-weights, default auto: int4 on CPU float32, see quant.py), then
grpo.completion_logprobs (prompt run once for the group, fused chunked log-probs).
HF: LlamaForCausalLM with our state dict (bench/sampler.py hf_copy) wrapped by peft's get_peft_model, sampling
with generate, and the update the way TRL does it: full rows (prompt + completion) through the model with
logits_to_keep = L + 1, log_softmax, gather, then the same grpo_loss. Both adapters start from the same A and
B = 0; before timing, the per-token log-probs of one sampled group are checked to agree between the two.

Each phase is timed with the clock read after a device synchronise (with --threads 1 the clock is this process's
CPU time, which other jobs on a shared core do not inflate; else wall time); one warm-up iteration, then --repeats
iterations alternating ours and HF; the table shows the BEST (minimum) of each column over the repeats, total
included (min of sample + update per iteration). On CUDA it also prints each engine's peak memory during an
iteration above the memory allocated at its start (KV cache, activations, logits; not weights or AdamW state).
Needs an interpreter with transformers and peft (the reference venv); they are never a run-time dependency:

    OMP_NUM_THREADS=1 /tmp/refenv/bin/python bench/iteration.py --config tiny --threads 1
    python bench/iteration.py --end-to-end /tmp/old-tree --repeats 2   # default migrate.py run, old vs this code
    OMP_NUM_THREADS=1 /tmp/refenv/bin/python bench/iteration.py --config smollm2 --threads 1 --group 4 \\
        --new-tokens 16 --repeats 1
    /tmp/refenv/bin/python bench/iteration.py --device cuda --config llama-1b --dtype bfloat16

Configs: tiny (2-layer random Llama, vocab 1000: a quick CPU check), smollm2 (the bundled SmolLM2-135M-Instruct,
the word-search prompt), llama-1b (random Llama-3.2-1B-shaped weights, no download, a random --prompt-len prompt).
Left out: scoring by a task (the same black box for both), group planning and history, KL to the base model
(off by default), vllm or other serving engines, sequence packing and gradient checkpointing on the HF side.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.sampler import LLAMA_1B, hf_copy  # noqa: E402
from grpo import completion_logprobs, group_advantages, grpo_loss, share_prompt_pays  # noqa: E402
from model import ModelConfig, Transformer, add_lora  # noqa: E402
from sampler import generate  # noqa: E402

TINY = dict(model_type="llama", vocab_size=1000, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=10000.0, rms_norm_eps=1e-5,
            max_position_embeddings=2048, tie_word_embeddings=True)


def load_ours(args) -> tuple[Transformer, list[int]]:
    """(model without LoRA, prompt token ids)."""
    dtype = getattr(torch, args.dtype)
    if args.config == "smollm2":
        from checkpoint import load_model
        from tasks.wordsearch import WordSearch
        model, tok = load_model(args.model, device=args.device, dtype=dtype)
        p = WordSearch().prompt()  # the on-policy prompt of the default task (no oracle is loaded)
        return model.eval(), tok.encode(tok.chat(p.messages, add_generation_prompt=True, assistant_prefix=p.prefix))
    cfg = ModelConfig.from_hf(TINY if args.config == "tiny" else LLAMA_1B)
    torch.manual_seed(0)
    with torch.device(args.device):
        model = Transformer(cfg)
    for p in model.parameters():
        p.data.normal_(0, 0.02)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, min(cfg.vocab_size, 128000), (args.prompt_len,), generator=g).tolist()
    return model.to(dtype).eval(), prompt


def peft_copy(model: Transformer, args):
    """peft LoRA (q_proj, v_proj) on transformers' Llama with our base weights; call before add_lora."""
    from peft import LoraConfig, get_peft_model
    hf = hf_copy(model)  # with EOS switched off in its generation_config
    cfg = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, target_modules=["q_proj", "v_proj"],
                     lora_dropout=0.0, task_type="CAUSAL_LM")
    return get_peft_model(hf, cfg)


def copy_adapter(model: Transformer, peft_model) -> None:
    """Our lora_A / lora_B into peft's lora_A.default.weight / lora_B.default.weight (same (r, in), (out, r))."""
    theirs = dict(peft_model.named_parameters())
    n = 0
    with torch.no_grad():
        for k, v in model.named_parameters():
            if ".lora_" in k:
                theirs["base_model.model." + k + ".default.weight"].copy_(v[0])  # adapter 0 of the bank
                n += 1
    assert n == sum(".lora_" in k for k in theirs), "LoRA modules differ between ours and peft"


# ----------------------------------------------------------------------------------------------- the two loops

def sample_ours(model, prompt, args, gen):
    model.eval()
    out = generate(model, [prompt] * args.group, args.new_tokens, temperature=1.0, eos_ids=(), generator=gen,
                   compile=args.compile_sampler, weights=args.sample_weights)
    return torch.tensor(out.tokens, device=args.device)  # (G, N): every row has exactly N tokens


def sample_hf(peft_model, prompt, args):
    from transformers import GenerationConfig
    peft_model.eval()
    ids = torch.tensor([prompt] * args.group, device=args.device)  # (G, P), no padding needed
    gc = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=args.new_tokens,
                          min_new_tokens=args.new_tokens, eos_token_id=None, pad_token_id=0)
    with torch.inference_mode():
        out = peft_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gc)
    assert out.shape == (args.group, len(prompt) + args.new_tokens), out.shape
    return out[:, len(prompt):].clone()  # (G, N); clone leaves inference mode's tensor behind


def logprobs_hf(peft_model, prompt_t, completions):
    """prompt (P,), completions (G, L) -> (G, L) float32, the TRL way: full rows, logits of the last L+1."""
    G, L = completions.shape
    ids = torch.cat([prompt_t.expand(G, -1), completions], 1)  # (G, P + L)
    logits = peft_model(input_ids=ids, logits_to_keep=L + 1).logits[:, :-1]  # (G, L, V): predicts completion
    return logits.float().log_softmax(-1).gather(-1, completions[..., None]).squeeze(-1)


def update(model, logprobs, opt, completions, adv, args):
    """mu AdamW steps of the clipped GRPO loss, as loop.grpo_update (every member has reward > 0)."""
    model.train()
    mask = torch.ones(completions.shape, device=completions.device)  # (G, L): no padding, lengths are equal
    for step in range(args.mu):
        logp = logprobs(completions)
        if step == 0:
            old = logp.detach()
        loss, _ = grpo_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.28)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_iteration(sample, train, device) -> dict:
    """Seconds of sample() and train(completions), and on CUDA the peak bytes above the start of the iteration."""
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = clock()
    completions = sample()
    sync(device)
    t1 = clock()
    train(completions)
    sync(device)
    t2 = clock()
    r = dict(sample=t1 - t0, update=t2 - t1, total=t2 - t0)
    if device.startswith("cuda"):
        r["peak"] = torch.cuda.max_memory_allocated() - base
    return r


def end_to_end(old_tree: str, repeats: int) -> None:
    """`python migrate.py --task wordsearch --threads 1` (the default run) in old_tree and in this checkout,
    alternating; prints CPU seconds (user + system of the run's process) and wall seconds of each, best of
    repeats. The two runs sample different tokens once their samplers differ, so their searches (iterations
    before an early stop, completion lengths) differ too: the iterations are printed beside the times."""
    import os
    import resource
    import subprocess
    import tempfile
    trees = {"old": Path(old_tree).resolve(), "new": Path(__file__).resolve().parents[1]}
    best = {k: (float("inf"), float("inf"), 0) for k in trees}
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for _ in range(repeats):
        for name, tree in trees.items():
            with tempfile.TemporaryDirectory() as out:
                before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
                subprocess.run([sys.executable, "migrate.py", "--task", "wordsearch", "--threads", "1", "--quiet",
                                "--out", out], cwd=tree, env=env, check=True, capture_output=True)
                wall, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
                log = next(Path(out).rglob("history.jsonl")).read_text().splitlines()
                iters = len(log) - 1  # the first line is the warm start
                best[name] = min(best[name], (cpu, wall, iters))
                print(f"# {name}: {cpu:.1f} s CPU, {wall:.1f} s wall, {iters} iterations "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)
    (oc, ow, oi), (nc, nw, ni) = best["old"], best["new"]
    print(f"end to end, default word search, 1 thread, best of {repeats}: old {oc:.1f} s CPU ({oi} it), "
          f"new {nc:.1f} s CPU ({ni} it): {oc / nc:.2f}x CPU, {ow / nw:.2f}x wall (old: {trees['old']})")


def clock():
    """CPU time of this process with one thread (immune to other jobs' turns on a shared core), else wall time."""
    return time.process_time() if torch.get_num_threads() == 1 else time.perf_counter()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="smollm2", choices=["tiny", "smollm2", "llama-1b"])
    ap.add_argument("--model", help="smollm2 config: a .gguf file or HF folder [the embedded SmolLM2-135M]")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--group", type=int, default=10, help="G, completions per iteration")
    ap.add_argument("--prompt-len", type=int, default=100, help="random prompt length (tiny, llama-1b)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--mu", type=int, default=2, help="optimiser steps per iteration")
    ap.add_argument("--lora-r", type=int, default=64)
    ap.add_argument("--lora-alpha", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3, help="timed iterations per engine after one warm-up")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    ap.add_argument("--compile-logprobs", action="store_true", help="our update with compiled=True")
    ap.add_argument("--compile-sampler", action="store_true", help="our sampler with compile=True")
    ap.add_argument("--sample-weights", default="auto", help="our sampler's decode weights (quant.py) [auto]")
    ap.add_argument("--end-to-end", metavar="OLD_TREE", help="instead: time the default migrate.py run of a checkout "
                    "of older code (git worktree add /tmp/old-tree COMMIT) against this one")
    args = ap.parse_args()
    if args.end_to_end:
        return end_to_end(args.end_to_end, args.repeats)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device

    model, prompt = load_ours(args)
    peft_model = peft_copy(model, args)  # before add_lora: the state dict is the base weights only
    torch.manual_seed(0)
    params = add_lora(model, r=args.lora_r, alpha=args.lora_alpha)
    copy_adapter(model, peft_model)
    hf_params = [p for p in peft_model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in params) == sum(p.numel() for p in hf_params)
    opt = torch.optim.AdamW(params, lr=5e-5)
    hf_opt = torch.optim.AdamW(hf_params, lr=5e-5)
    prompt_t = torch.tensor(prompt, device=dev)
    g = torch.Generator().manual_seed(1)
    adv = group_advantages(torch.rand(args.group, generator=g) + 0.01).to(dev)  # rewards > 0: all in the loss

    def ours_logprobs(c):
        return completion_logprobs(model, [prompt_t], c, [len(c)], share_prompt_pays(prompt_t, len(c)),
                                   compiled=args.compile_logprobs)

    gen = torch.Generator(device=dev).manual_seed(0)
    ours = dict(sample=lambda: sample_ours(model, prompt, args, gen),
                train=lambda c: update(model, ours_logprobs, opt, c, adv, args))
    hf = dict(sample=lambda: sample_hf(peft_model, prompt, args),
              train=lambda c: update(peft_model, lambda x: logprobs_hf(peft_model, prompt_t, x), hf_opt, c, adv,
                                     args))

    # Same weights and adapter, so the same log-probs before any update; this catches a wrong copy.
    with torch.no_grad():
        c = ours["sample"]()
        diff = (ours_logprobs(c) - logprobs_hf(peft_model, prompt_t, c)).abs()
    tol = 1e-3 if args.dtype == "float32" else 1e-1  # bf16/fp16: a mean over tokens, roundings differ per op
    err = float(diff.max() if args.dtype == "float32" else diff.mean())
    assert err < tol, f"ours and HF log-probs differ by {err:.2e} (tolerance {tol:.0e}): wrong weight copy?"

    torch.manual_seed(0)
    for e in (ours, hf):  # warm-up: kernels, allocator, AdamW state, torch.compile
        timed_iteration(e["sample"], e["train"], dev)
    runs = {"ours": [], "hf": []}
    for _ in range(args.repeats):  # alternate, so that a slow spell of the machine hits both
        runs["ours"].append(timed_iteration(ours["sample"], ours["train"], dev))
        runs["hf"].append(timed_iteration(hf["sample"], hf["train"], dev))

    n_params = sum(p.numel() for n, p in model.named_parameters() if ".lora_" not in n)
    print(f"# {args.config} ({n_params / 1e6:.1f}M params, {args.dtype}) on {dev}, {torch.get_num_threads()} threads;"
          f" G={args.group}, prompt {len(prompt)} + {args.new_tokens} new tokens, mu={args.mu}, LoRA r={args.lora_r}"
          f" alpha={args.lora_alpha}" + (", compiled log-probs" if args.compile_logprobs else "")
          + (", compiled sampler" if args.compile_sampler else "") + f", sampler weights {args.sample_weights}")
    print(f"# log-probs before training agree: {'max' if args.dtype == 'float32' else 'mean'} |ours - hf| = "
          f"{err:.1e}; best of {args.repeats} after 1 warm-up, "
          f"{'CPU seconds of this process' if torch.get_num_threads() == 1 else 'wall seconds'}")
    print(f"{'phase':>8} {'ours':>9} {'hf':>9} {'hf/ours':>8}")
    for k in ("sample", "update", "total"):
        a, b = min(r[k] for r in runs["ours"]), min(r[k] for r in runs["hf"])
        print(f"{k:>8} {a:9.3f} {b:9.3f} {b / a:8.2f}")
    if dev.startswith("cuda"):
        a, b = max(r["peak"] for r in runs["ours"]) / 2**30, max(r["peak"] for r in runs["hf"]) / 2**30
        print(f"{'peak GiB':>8} {a:9.2f} {b:9.2f} {b / a:8.2f}   (above the memory allocated at iteration start)")


if __name__ == "__main__":
    main()
