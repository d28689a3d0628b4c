"""Sampling throughput (new tokens/s) of sampler.generate against Hugging Face `generate`, same weights, one run.

Default: the bundled SmolLM2-135M-Instruct (loaded with checkpoint.load_model; the same float32 state dict is
copied into transformers' LlamaForCausalLM), the same chat prompts (4 distinct ones, ragged, repeated to fill the
batch, as the MiGrATe loop asks), temperature 1, no top-k/top-p, 64 new tokens with EOS switched off in both so
every row runs to the end. Each timed call is a whole generate (prefill + decode); ours and HF alternate, the
best of --repeats is kept. With --threads 1 the clock is this process's CPU time (on a shared machine, wall time
also counts the other jobs' turns on the core; with one thread the two agree on a quiet machine), else wall time.
Ours runs once per --weights kind (sampler.generate's weights: model, packed, int4; see quant.py).

Accuracy of each kind against the float32 model (not timed): on the word-search prompt, --acc-rows completions
are sampled with that kind (EOS and stop strings on, as in the loop), then replayed teacher-forced through the
same decode path; printed are the mean KL(sampler || float32 model) of the next-token distributions, and the
mean and mean |r - 1| of r = p_float32(token) / p_sampler(token), the GRPO ratio the first update step would see
if old_logp were the sampler's log-probs (loop.grpo_update takes old_logp from the float32 training forward,
so r is the importance weight the update leaves out). Then bench/prompt_parse.py's on-policy parse rate
(`usable`) with --parse-n completions sampled in groups of 10, as the loop does.
Must run under an interpreter that has transformers (the reference venv):

    /tmp/refenv/bin/python bench/sampler.py --threads 1         # CPU, batch 1 and 16
    /tmp/refenv/bin/python bench/sampler.py --threads 1 --dtype bfloat16
    /tmp/refenv/bin/python bench/sampler.py --device cuda --config llama-1b --dtype bfloat16 --batch 1 16 64

`--config llama-1b` builds a random Llama-3.2-1B-shaped model (no download); on CUDA it also times our compiled
decode step and prints batch-1 time per token against weight bytes / peak memory bandwidth (--bandwidth GB/s).
On a shared 2-core machine use --threads 1: with another busy process, two OpenMP threads on one free core
slowed both samplers ~10x in our runs. Left out: memory use, prompt-length sweeps, quantised weights.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import KVCache, ModelConfig, Transformer  # noqa: E402
from quant import FAST_ROWS, sampling_weights  # noqa: E402
from sampler import generate  # noqa: E402

QUESTIONS = ["Name a kitchen tool made of cast iron.",
             "Write one English noun that is related to the word 'metal'. Answer with the word only.",
             "Give a SMILES string of a small drug-like molecule.",
             "List three colours."]
LLAMA_1B = dict(model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=131072, tie_word_embeddings=True,
                rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})


def load_ours(args):
    """(model, prompts as token-id lists, tokenizer or None)."""
    if args.config == "llama-1b":
        torch.manual_seed(0)
        with torch.device(args.device):
            model = Transformer(ModelConfig.from_hf(LLAMA_1B))
        for p in model.parameters():
            p.data.normal_(0, 0.02)
        model = model.to(getattr(torch, args.dtype)).eval()
        g = torch.Generator().manual_seed(0)
        prompts = [torch.randint(0, 128000, (n,), generator=g).tolist() for n in (40, 52, 33, 47)]
        return model, prompts, None
    from checkpoint import load_model
    model, tok = load_model(args.model, device=args.device, dtype=getattr(torch, args.dtype))
    prompts = [tok.encode(tok.chat([{"role": "user", "content": q}])) for q in QUESTIONS]
    return model, prompts, tok


def hf_copy(model: Transformer):
    """transformers' LlamaForCausalLM holding the same tensors."""
    from transformers import LlamaConfig, LlamaForCausalLM
    c = model.cfg
    hc = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.ffn_dim,
                     num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads,
                     head_dim=c.head_dim, rope_theta=c.rope_theta, rms_norm_eps=c.rms_eps,
                     max_position_embeddings=c.max_seq_len, tie_word_embeddings=c.tie_embeddings,
                     rope_scaling=dict(c.rope_scaling, rope_theta=c.rope_theta) if c.rope_scaling else None)
    w = model.lm_head.weight
    with torch.device(w.device):
        hf = LlamaForCausalLM(hc).to(w.dtype).eval()
    hf.load_state_dict(model.state_dict(), strict=False)
    # No EOS at all: generate() fills a GenerationConfig's unset fields from this one, and an inherited EOS id
    # would add two min-length logits processors to HF's decode loop.
    hf.generation_config.eos_token_id = None
    return hf


def clock():
    """CPU time of this process with one thread (immune to other jobs' turns on a shared core), else wall time."""
    return time.process_time() if torch.get_num_threads() == 1 else time.perf_counter()


def time_ours(model, prompts, n_new, device, compile=False, weights="model"):
    g = torch.Generator(device=device).manual_seed(0)
    sync(device)
    t0 = clock()
    out = generate(model, prompts, n_new, temperature=1.0, generator=g, compile=compile, weights=weights)
    sync(device)
    dt = clock() - t0
    assert all(len(t) == n_new for t in out.tokens)
    return dt


def time_hf(hf, prompts, n_new, device):
    from transformers import GenerationConfig
    P = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts], device=device)  # left padding
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts], device=device)
    gc = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=n_new,
                          min_new_tokens=n_new, eos_token_id=None, pad_token_id=0)
    sync(device)
    t0 = clock()
    with torch.inference_mode():
        out = hf.generate(input_ids=ids, attention_mask=mask, generation_config=gc)
    sync(device)
    dt = clock() - t0
    assert out.shape[1] == P + n_new
    return dt


def loop_prompt(tok) -> list[int]:
    """The default word-search on-policy prompt, as migrate.py encodes it."""
    from tasks.wordsearch import WordSearch
    p = WordSearch().prompt()
    return tok.encode(tok.chat(p.messages, add_generation_prompt=True, assistant_prefix=p.prefix))


def replay_logprobs(model, prompt: list[int], tokens, weights: str):
    """Log-softmax (n, T, V) of the sampler's decode path teacher-forced on tokens (n, T): the prompt prefilled,
    then one token per step with `weights`, as sampler.generate computes them (no padding: one prompt)."""
    n, T = tokens.shape
    P = len(prompt)
    cache = KVCache.empty(model.cfg, n, P + T, dtype=model.lm_head.weight.dtype)
    cache.slots, cache.length = torch.arange(P), P
    x, steps = torch.tensor([prompt] * n), []
    with torch.inference_mode(), sampling_weights(model, weights):
        for t in range(T):
            hidden = model(x, cache=cache, return_hidden=True)[:, -1]  # (n, D)
            steps.append(model.lm_head(hidden).float().log_softmax(-1))
            cache.slots, cache.length = torch.tensor([P + t]), P + t + 1
            x = tokens[:, t:t + 1]
    return torch.stack(steps, 1)


def accuracy(model, tok, weights: str, rows: int, n_new: int) -> dict:
    """KL(sampler || float32 model) per token and the GRPO ratio p_float32 / p_sampler on sampled tokens.

    Sampled and replayed in groups of at most quant.FAST_ROWS rows, as the loop's groups of 10 are: above that
    the sampler runs the model's own weights, and a check over more rows would measure those instead."""
    sums = [accuracy_sums(model, tok, weights, min(FAST_ROWS, rows - i), n_new, seed=i)
            for i in range(0, rows, FAST_ROWS)]
    kl, r, dev, n = (sum(x[k] for x in sums) for k in range(4))
    return {"kl": kl / n, "ratio": r / n, "dev": dev / n, "tokens": int(n), "replay_err": max(x[4] for x in sums)}


def accuracy_sums(model, tok, weights: str, rows: int, n_new: int, seed: int) -> tuple:
    """One group's sums over its sampled tokens: KL, r, |r - 1|, tokens; and the replay's largest error."""
    from tasks.wordsearch import WordSearch
    prompt = loop_prompt(tok)
    out = generate(model, [prompt] * rows, n_new, eos_ids=tok.eos_ids, decode=tok.decode, stop=WordSearch.stop,
                   generator=torch.Generator().manual_seed(seed), weights=weights)
    T = max(len(t) for t in out.tokens)
    tokens = torch.tensor([t + [0] * (T - len(t)) for t in out.tokens])  # (n, T)
    mask = torch.tensor([[1.0] * len(t) + [0.0] * (T - len(t)) for t in out.tokens])
    q = replay_logprobs(model, prompt, tokens, weights)  # (n, T, V)
    with torch.inference_mode():  # the float32 training forward over whole rows
        p = model(torch.cat([torch.tensor([prompt] * rows), tokens], 1))[:, len(prompt) - 1:-1].log_softmax(-1)
    kl = (q.exp() * (q - p)).sum(-1)  # (n, T)
    tok_q, tok_p = (a.gather(-1, tokens[..., None])[..., 0] for a in (q, p))
    r = (tok_p - tok_q).exp()
    sampled = torch.tensor([lp + [0.0] * (T - len(lp)) for lp in out.logprobs])
    total = lambda a: float((a * mask).sum())  # noqa: E731
    return total(kl), total(r), total((r - 1).abs()), float(mask.sum()), float(((tok_q - sampled).abs() * mask).max())


def parse_rate(model, tok, weights: str, n: int) -> float:
    """bench/prompt_parse.py's `usable` for the on-policy prompt, sampled in groups of 10 as the loop does."""
    from bench import prompt_parse as pp
    task = pp.WordSearch(pp.WordSearch.default_target)
    vocab = set(pp.vocabulary_words(task.vocabulary_path(), min_len=2))
    pp.SAMPLING.update(weights=weights, batch=10)
    r = pp.measure(model, tok, task, task.prompt(), vocab, n, 64, torch.Generator().manual_seed(0))
    return r["usable"]


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--config", default="smollm2", choices=["smollm2", "llama-1b"])
    ap.add_argument("--model", help="smollm2 config: a .gguf file or HF folder [the embedded SmolLM2-135M]")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    ap.add_argument("--no-hf", action="store_true", help="time only our sampler")
    ap.add_argument("--bandwidth", type=float, default=3350.0, help="GB/s for the batch-1 roofline (H100 SXM)")
    ap.add_argument("--weights", nargs="+", default=["model", "packed", "int4"],
                    help="sampler weights to time (CPU float32 only for packed and int4)")
    ap.add_argument("--acc-rows", type=int, default=16, help="completions for the KL check (0: skip)")
    ap.add_argument("--parse-n", type=int, default=40, help="completions for the parse rate (0: skip)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, base, tok = load_ours(args)
    hf = None if args.no_hf else hf_copy(model)
    cuda = args.device.startswith("cuda")
    weights = args.weights if not cuda and args.dtype == "float32" else ["model"]
    paths = {"ours" if w == "model" else w: (lambda p, w=w: time_ours(model, p, args.new_tokens, args.device,
                                                                      weights=w)) for w in weights}
    if cuda:
        paths["ours-compiled"] = lambda p: time_ours(model, p, args.new_tokens, args.device, compile=True)
    if hf is not None:
        paths["hf"] = lambda p: time_hf(hf, p, args.new_tokens, args.device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"# {args.config} ({n_params / 1e6:.0f}M params, {args.dtype}) on {args.device}, "
          f"{torch.get_num_threads()} threads, {args.new_tokens} new tokens, best of {args.repeats}, "
          f"{'process CPU time' if torch.get_num_threads() == 1 else 'wall time'}")
    print(f"{'batch':>5} " + " ".join(f"{k + ' tok/s':>15}" for k in paths) + "   "
          + " ".join(f"{k + '/hf':>10}" for k in paths if k != "hf"))
    for b in args.batch:
        prompts = [base[i % len(base)] for i in range(b)]
        for fn in paths.values():  # warm-up (and compilation)
            fn(prompts[:b])
        best = {k: float("inf") for k in paths}
        for _ in range(args.repeats):
            for k, fn in paths.items():
                best[k] = min(best[k], fn(prompts))
        rate = {k: b * args.new_tokens / v for k, v in best.items()}
        ratio = " ".join(f"{rate[k] / rate['hf']:10.2f}" for k in rate if k != "hf") if "hf" in rate else ""
        print(f"{b:5d} " + " ".join(f"{r:15.1f}" for r in rate.values()) + "   " + ratio, flush=True)
        if cuda and b == 1:
            weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
            floor_ms = weight_bytes / (args.bandwidth * 1e9) * 1e3
            for k in rate:
                print(f"#   batch 1 {k}: {1e3 / rate[k]:.2f} ms/token; weights {weight_bytes / 1e9:.2f} GB / "
                      f"{args.bandwidth:.0f} GB/s = {floor_ms:.2f} ms floor ({floor_ms * rate[k] / 1e3:.0%})")

    if args.config != "smollm2" or cuda:
        return
    print(f"# accuracy against the float32 model: {args.acc_rows} word-search completions (KL per token, "
          f"r = p_float32 / p_sampler per sampled token); parse rate of {args.parse_n} on-policy completions")
    print(f"{'weights':>8} {'KL':>9} {'mean r':>8} {'|r-1|':>8} {'tokens':>7} {'usable':>7}")
    for w in weights:
        a = accuracy(model, tok, w, args.acc_rows, args.new_tokens) if args.acc_rows else {}
        usable = parse_rate(model, tok, w, args.parse_n) if args.parse_n else float("nan")
        if a:
            print(f"{w:>8} {a['kl']:9.5f} {a['ratio']:8.4f} {a['dev']:8.4f} {a['tokens']:7d} {usable:7.2f}"
                  f"   (replay matches the sampled log-probs to {a['replay_err']:.1e})", flush=True)
        else:
            print(f"{w:>8} {'':>9} {'':>8} {'':>8} {'':>7} {usable:7.2f}", flush=True)


if __name__ == "__main__":
    main()
