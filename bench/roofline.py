"""How close each phase of a MiGrATe iteration runs to what this machine allows: a roofline on the loop's own shapes.

1. The machine, measured in this run: matrix-product throughput in float32 and bfloat16 at every shape the phases
   below multiply (each product alone, repeated, its operands hot in cache), and memory bandwidth (a reduction over
   a tensor far larger than the caches: bytes read per second; a copy: bytes read and written per second).
2. The phases of the default word-search iteration on the real SmolLM2-135M-Instruct (checkpoint.load_model), in
   each dtype: a decode step (sampler._decode_step) at 1 and 16 rows with the cache at prompt + 32 tokens, the
   same step with int4 decode weights at 1 row (quant.py; CPU only), the prefill of the on-policy prompt
   (sampler._prefill), and one update step with LoRA r=64 on q_proj and v_proj: its forward
   (grpo.completion_logprobs, the prompt shared by --answers answers of --answer-tokens tokens), its backward
   (grpo_loss), the fused log-probs alone (forward and backward of grpo.token_logprobs on those tokens) and the
   optimiser (optim.clip_grad_norm and optim.AdamW, as loop.grpo_update steps them).
For each phase the FLOPs and bytes are counted from the shapes (`phase_products`, `phase_bytes`), and
    limit    = max(sum over its matrix products of the time each takes alone here, bytes / bandwidth)
    fraction = limit / measured time,
so 100 % is a phase that does nothing but its matrix products at the speed they run alone, or reads its bytes at
the measured bandwidth. The update step's fraction is the one to watch: a bfloat16 update on a CPU with native
bfloat16 should reach 70 % of its products.

Counting: a linear layer of x (m, k) is 2 m k n FLOPs forward; its frozen weight gives one input gradient
(m x n x k) in backward (none for layer 0, whose input needs no gradient); a LoRA adapter adds its two small
products forward and four backward. Attention counts full score matrices (no causal halving), forward q k^T and
p v, backward four products of the same sizes. The log-probs count logits (N x D x V) and the gradient with
respect to the hidden states (N x V x D, computed in the forward by grpo._chunk_forward). Bytes are the weights
read once per pass (a frozen weight in the model dtype, an int4 one at 0.625 bytes per weight with its bfloat16
scale and zero), the KV cache read by a decode step, and 10 float32 reads and writes per adapter weight for the
optimiser (clipping, then AdamW: p, g, m, v read; p, m, v written); activations are not counted.

    python bench/roofline.py                     # CPU, 1 thread, float32 and bfloat16 (a few minutes)
    python bench/roofline.py --profile           # also each phase's CPU time by kind of operation
    python bench/roofline.py --device cuda       # prepared for a GPU (bench/gpu.sh, section roofline)

With one thread the clock is this process's CPU time (other jobs on a shared core do not inflate it), else wall
time; each timing is the best of --repeats after a warm-up, fewer when a phase passes --phase-seconds. The header
names the CPU, whether it has native bfloat16 (avx512_bf16, amx_bf16 in /proc/cpuinfo) and the load before and
after. Left out: sampling from the logits (sampler.sample_logits), scoring, the decode steps at other row counts
and cache lengths, and the fused log-probs with a trained output matrix.
"""
import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sampler  # noqa: E402
from grpo import completion_logprobs, group_advantages, grpo_loss, token_logprobs  # noqa: E402
from model import KVCache, add_lora  # noqa: E402
from optim import AdamW, clip_grad_norm  # noqa: E402
from quant import FAST_ROWS, GROUP, sampling_weights  # noqa: E402

LORA_TARGETS = ("q_proj", "v_proj")


# ----------------------------------------------------------------------------------------------- the machine

def cpu_description() -> str:
    """Model name and the flags that decide bfloat16 speed, from /proc/cpuinfo (else platform's name)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    native = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    simd = "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else "no avx2"
    bf16 = f"native bfloat16 ({', '.join(native)})" if native else "no native bfloat16 (no avx512_bf16, no amx_bf16)"
    return f"{name}, {simd}, {bf16}, {os.cpu_count()} cores"


def device_description(device: str) -> str:
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(device)
        return f"{p.name}, {p.total_memory / 2**30:.0f} GiB"
    return cpu_description()


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


class Clock:
    """CPU time of this process with one CPU thread, else wall time; a GPU is synchronised before each reading."""

    def __init__(self, device: str):
        self.device = device
        self.cpu_time = device == "cpu" and torch.get_num_threads() == 1

    def __call__(self) -> float:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)
        return time.process_time() if self.cpu_time else time.perf_counter()

    @property
    def name(self) -> str:
        return "CPU seconds of this process" if self.cpu_time else "wall seconds"


def best_time(fn, clock: Clock, repeats: int, budget: float, setup=None) -> float:
    """Fastest of up to `repeats` calls after a warm-up call, stopping early once `budget` seconds are spent
    (a single slow call is then timed once). setup(), untimed, runs before each call; fn(state) gets its result."""
    times, spent = [], 0.0
    for i in range(repeats + 1):
        state = setup() if setup else None
        t0 = clock()
        fn(state)
        dt = clock() - t0
        spent += dt
        if i > 0 or dt > budget:  # the warm-up counts only when it alone is over the budget
            times.append(dt)
        if spent > budget and times:
            break
    return min(times)


def bandwidth(device: str, clock: Clock, repeats: int) -> dict:
    """Bytes per second of a reduction (read) and of a copy (read + write) over 256 MB of float32."""
    x = torch.ones(64 * 2**20, device=device)
    y = torch.empty_like(x)
    nbytes = x.numel() * 4
    read = best_time(lambda _: x.sum(), clock, repeats, 2.0)
    copy = best_time(lambda _: y.copy_(x), clock, repeats, 2.0)
    return dict(read=nbytes / read, copy=2 * nbytes / copy)


# ----------------------------------------------------------------------------------------------- the shapes

@dataclass(frozen=True)
class Product:
    """`count` matrix products of (batch x) m x k by k x n. layout, as the loop stores the operands: "nt" x @ W^T
    (a linear layer, W (n, k)), "nn" g @ W (its input gradient, W (k, n)), "tn" g^T @ x (a weight gradient)."""
    m: int
    k: int
    n: int
    count: int = 1
    batch: int = 1
    layout: str = "nt"

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n * self.batch * self.count

    def shape(self) -> tuple:
        return self.batch, self.m, self.k, self.n, self.layout


def block_linears(cfg) -> dict[str, tuple[int, int]]:
    """{name: (in, out)} of one block's linear layers."""
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    return dict(q_proj=(cfg.dim, q), k_proj=(cfg.dim, kv), v_proj=(cfg.dim, kv), o_proj=(q, cfg.dim),
                gate_proj=(cfg.dim, cfg.ffn_dim), up_proj=(cfg.dim, cfg.ffn_dim), down_proj=(cfg.ffn_dim, cfg.dim))


def block_pass(cfg, rows: int, batch: int, queries: int, keys: int, lora_r: int = 0, backward: bool = False):
    """Products of one pass through every block: `rows` tokens (batch x queries) attending to `keys` keys each.
    backward: the products of its backward instead (frozen base weights, LoRA adapters trained)."""
    out, L, heads, hd = [], cfg.n_layers, batch * cfg.n_heads, cfg.head_dim
    for name, (k, n) in block_linears(cfg).items():
        lora = lora_r and name in LORA_TARGETS
        if not backward:
            out.append(Product(rows, k, n, L))
            if lora:
                out += [Product(rows, k, lora_r, L), Product(rows, lora_r, n, L)]
            continue
        # layer 0's q/k/v input (the embedding, frozen) needs no gradient
        with_input = L - 1 if name in ("q_proj", "k_proj", "v_proj") else L
        out.append(Product(rows, n, k, with_input, layout="nn"))
        if lora:
            out += [Product(n, rows, lora_r, L, layout="tn"), Product(rows, n, lora_r, L, layout="nn"),
                    Product(lora_r, rows, k, L, layout="tn"), Product(rows, lora_r, k, with_input, layout="nn")]
    scores, values = Product(queries, hd, keys, L, heads), Product(queries, keys, hd, L, heads, "nn")
    if not backward:
        return out + [scores, values]
    return out + [Product(keys, queries, hd, L, heads, "tn"), Product(queries, hd, keys, L, heads),
                  Product(queries, keys, hd, L, heads, "nn"), Product(keys, queries, hd, L, heads, "tn")]


@dataclass
class Shapes:
    """The iteration measured: the on-policy prompt, the group's answers, the decode rows and context."""
    prompt: int
    answers: int
    answer_tokens: int
    context: int  # cache length of a decode step
    lora_r: int


def phase_products(cfg, s: Shapes) -> dict[str, list[Product]]:
    """Every phase's matrix products, from the shapes (see the module docstring for what is counted)."""
    V, D, r = cfg.vocab_size, cfg.dim, s.lora_r
    N = s.answers * s.answer_tokens  # answer tokens scored
    rest = s.answer_tokens - 1  # answer tokens run through the blocks after the shared prompt
    head = [Product(N, D, V), Product(N, V, D, layout="nn")]  # logits, then d log p / d hidden

    def decode(rows):
        return block_pass(cfg, rows, rows, 1, s.context, r) + [Product(rows, D, V)]

    update_fwd = (block_pass(cfg, s.prompt, 1, s.prompt, s.prompt, r)
                  + block_pass(cfg, s.answers * rest, s.answers, rest, s.prompt + rest, r) + head)
    update_bwd = (block_pass(cfg, s.prompt, 1, s.prompt, s.prompt, r, backward=True)
                  + block_pass(cfg, s.answers * rest, s.answers, rest, s.prompt + rest, r, backward=True))
    return {"decode, 1 row": decode(1), "decode, 16 rows": decode(16), "decode, 1 row, int4": decode(1),
            "prefill": block_pass(cfg, s.prompt, 1, s.prompt, s.prompt, r) + [Product(1, D, V)],
            "update forward": update_fwd, "update backward": update_bwd, "log-probs": head, "optimiser": []}


def adapter_size(cfg, r: int) -> int:
    """Weights of the LoRA adapters (A and B of every target in every layer)."""
    lin = block_linears(cfg)
    return cfg.n_layers * sum(r * (lin[t][0] + lin[t][1]) for t in LORA_TARGETS)


def phase_bytes(cfg, s: Shapes, itemsize: int) -> dict[str, float]:
    """Bytes each phase must move at least: weights once per pass, the KV cache a decode step reads."""
    blocks = cfg.n_layers * sum(k * n for k, n in block_linears(cfg).values())
    int4 = cfg.n_layers * sum(k * n * (0.5 + 4 / GROUP) if n % 16 == 0 and k % GROUP == 0 else k * n * itemsize
                              for k, n in block_linears(cfg).values())
    head = cfg.vocab_size * cfg.dim * itemsize
    lora = adapter_size(cfg, s.lora_r) * 4

    def kv(rows):
        return 2 * cfg.n_layers * rows * cfg.n_kv_heads * s.context * cfg.head_dim * itemsize
    weights = blocks * itemsize + lora + head  # what a decode step or a prefill reads
    return {"decode, 1 row": weights + kv(1), "decode, 16 rows": weights + kv(16),
            "decode, 1 row, int4": int4 + lora + head + kv(1), "prefill": weights,
            "update forward": 2 * (blocks * itemsize + lora) + 2 * head,
            "update backward": 2 * (blocks * itemsize + lora),
            "log-probs": 2 * head, "optimiser": 10 * lora}


def product_seconds(p: Product, dtype, device, clock: Clock, repeats: int, cache: dict) -> float:
    """Seconds one product of p's shape takes here, alone (operands hot), in `dtype`; cached by shape."""
    key = (p.shape(), dtype)
    if key not in cache:
        g = torch.Generator(device=device).manual_seed(0)

        def rand(*shape):
            return torch.randn(p.batch, *shape, device=device, dtype=dtype, generator=g)
        a = rand(p.k, p.m).transpose(-1, -2) if p.layout == "tn" else rand(p.m, p.k)
        b = rand(p.n, p.k).transpose(-1, -2) if p.layout == "nt" else rand(p.k, p.n)
        if p.batch == 1:
            a, b = a[0], b[0]
        inner = max(1, int(2e7 / (2 * p.m * p.k * p.n * p.batch)))  # about 20 MFLOP per timed call

        def run(_):
            for _ in range(inner):
                torch.matmul(a, b)
        cache[key] = best_time(run, clock, repeats, 1.0) / inner
    return cache[key]


# ----------------------------------------------------------------------------------------------- the phases

def timed_phases(model, tok_prompt: list[int], s: Shapes, device: str, clock: Clock, args) -> tuple[dict, dict]:
    """({phase: seconds}, {phase: profile} when args.profile) for one model; the LoRA adapter is added here."""
    cfg = model.cfg
    torch.manual_seed(0)
    params = add_lora(model, targets=LORA_TARGETS, r=s.lora_r, alpha=16)
    opt = AdamW(params, slot=0)
    prompt = torch.tensor(tok_prompt, device=device)
    g = torch.Generator(device=device).manual_seed(0)
    answers = torch.randint(0, cfg.vocab_size, (s.answers, s.answer_tokens), device=device, generator=g)
    adv = group_advantages(torch.rand(s.answers, generator=torch.Generator().manual_seed(1)) + 0.01).to(device)
    mask = torch.ones(answers.shape, device=device)
    out, profiles = {}, {}

    def measure(name, fn, setup=None):
        out[name] = best_time(fn, clock, args.repeats, args.phase_seconds, setup)
        if args.profile:
            profiles[name] = profile_of(fn, setup)
        print(f"#   {name}: {out[name] * 1e3:.1f} ms (load {load()})", flush=True)

    def decode_cache(rows):
        cache = KVCache.empty(cfg, rows, s.context, device, model.lm_head.weight.dtype)
        cache.slots, cache.length = torch.tensor([s.context - 1], device=device), s.context
        tok = torch.zeros(rows, 1, dtype=torch.long, device=device)
        pos = torch.full((rows, 1), s.context - 1, device=device)
        return tok, pos, cache

    model.eval()
    with torch.inference_mode():
        for rows in (1, 16):
            state = decode_cache(rows)
            measure(f"decode, {rows} row" + "s" * (rows > 1), lambda _: sampler._decode_step(model, *state))
        if device == "cpu":
            state = decode_cache(1)
            with sampling_weights(model, "int4"):
                measure("decode, 1 row, int4", lambda _: sampler._decode_step(model, *state))
        measure("prefill", lambda _: sampler._prefill(model, [tok_prompt], device))

    def forward(_=None):
        for p in params:  # as the loop's zero_grad: backward writes the gradients instead of adding to them
            p.grad = None
        logp = completion_logprobs(model, [prompt], answers, [s.answers], shared=True)
        return grpo_loss(logp, logp.detach(), adv, mask)[0]

    model.train()
    measure("update forward", forward)
    measure("update backward", lambda loss: loss.backward(), setup=forward)
    hidden = torch.randn(s.answers, s.answer_tokens, cfg.dim, device=device, dtype=model.lm_head.weight.dtype)

    def logprobs(_):
        h = hidden.detach().requires_grad_()
        token_logprobs(h, model.lm_head.weight, answers).sum().backward()
    measure("log-probs", logprobs)

    def optimiser(_):
        clip_grad_norm(params, 0, 1.0)
        opt.step(5e-5)
    measure("optimiser", optimiser)
    model.eval()
    return out, profiles


# ----------------------------------------------------------------------------------------------- the profile

KINDS = (("matrix products", ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::_weight_int4pack",
                              "mkldnn::")),
         ("attention", ("aten::_scaled_dot_product", "aten::_softmax", "aten::_log_softmax")),
         ("dtype conversions and copies", ("aten::copy_", "aten::_to_copy", "aten::to", "aten::index_copy_",
                                           "aten::cat", "aten::clone", "aten::contiguous")))


def kind_of(op: str) -> str:
    return next((kind for kind, names in KINDS if op.startswith(names)), "other")


def profile_of(fn, setup=None) -> tuple[dict, list]:
    """One call of fn under torch.profiler: self CPU seconds by kind of operation, and the top other ops."""
    from torch.profiler import ProfilerActivity, profile
    state = setup() if setup else None
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(state)
    by_kind, others = {}, []
    for e in prof.key_averages():
        secs = e.self_cpu_time_total / 1e6
        kind = kind_of(e.key)
        by_kind[kind] = by_kind.get(kind, 0.0) + secs
        if kind == "other":
            others.append((secs, e.key))
    return by_kind, sorted(others, reverse=True)[:4]


# ----------------------------------------------------------------------------------------------- the report

PHASES = ("decode, 1 row", "decode, 16 rows", "decode, 1 row, int4", "prefill", "update forward", "update backward",
          "log-probs", "optimiser")
UPDATE = ("update forward", "update backward", "optimiser")  # one update step; log-probs are part of it


def roofline_rows(cfg, s: Shapes, dtype, times: dict, bw: float, device, clock, repeats, cache) -> dict:
    """{phase: dict(seconds, flops, bytes, matmul, band, limit)}: the counted work and what this machine allows."""
    products, nbytes = phase_products(cfg, s), phase_bytes(cfg, s, torch.finfo(dtype).bits // 8)
    rows = {}
    for name in [p for p in PHASES if p in times]:
        int4 = name.endswith("int4")  # the int4 kernel is no matrix product of this dtype: bandwidth only
        matmul = 0.0 if int4 else sum(p.count * product_seconds(p, dtype, device, clock, repeats, cache)
                                      for p in products[name])
        band = nbytes[name] / bw
        rows[name] = dict(seconds=times[name], flops=sum(p.flops for p in products[name]), bytes=nbytes[name],
                          matmul=matmul, band=band, limit=max(matmul, band))
    step = [rows[p] for p in UPDATE]
    rows["update step"] = {k: sum(r[k] for r in step) for k in ("seconds", "flops", "bytes", "matmul", "band")}
    rows["update step"]["limit"] = sum(r["limit"] for r in step)
    return rows


def print_table(dtype_name: str, rows: dict) -> None:
    print(f"\n## {dtype_name}")
    print(f"{'phase':<22} {'ms':>9} {'GFLOP':>7} {'MB':>7} {'GFLOP/s':>8} {'GB/s':>6} {'matmul ms':>9} "
          f"{'bytes ms':>8} {'fraction':>8}  bound by")
    for name, r in rows.items():
        by = "matrix products" if r["matmul"] >= r["band"] else "bandwidth"
        print(f"{name:<22} {r['seconds'] * 1e3:9.1f} {r['flops'] / 1e9:7.2f} {r['bytes'] / 1e6:7.0f} "
              f"{r['flops'] / r['seconds'] / 1e9:8.1f} {r['bytes'] / r['seconds'] / 1e9:6.1f} {r['matmul'] * 1e3:9.1f} "
              f"{r['band'] * 1e3:8.1f} {r['limit'] / r['seconds']:8.0%}  {by}")
    u = rows["update step"]
    print(f"update step: {u['flops'] / u['seconds'] / 1e9:.1f} GFLOP/s against {u['flops'] / u['matmul'] / 1e9:.1f} "
          f"GFLOP/s of its matrix products alone: {u['matmul'] / u['seconds']:.0%}")


def print_profile(dtype_name: str, profiles: dict) -> None:
    print(f"\n## {dtype_name}: self CPU time of one call by kind of operation (torch.profiler)")
    kinds = [k for k, _ in KINDS] + ["other"]
    print(f"{'phase':<22} " + " ".join(f"{k[:18]:>18}" for k in kinds) + "  largest other")
    for name, (by_kind, others) in profiles.items():
        total = sum(by_kind.values()) or 1.0
        top = ", ".join(f"{op.removeprefix('aten::')} {secs * 1e3:.1f} ms" for secs, op in others[:3])
        print(f"{name:<22} " + " ".join(f"{by_kind.get(k, 0.0) / total:18.0%}" for k in kinds) + f"  {top}")


def print_machine(s: Shapes, cfg, dtypes, bw: dict, device, clock, repeats, cache) -> None:
    print(f"memory bandwidth: {bw['read'] / 1e9:.1f} GB/s read (sum over 256 MB), {bw['copy'] / 1e9:.1f} GB/s copy "
          "(read + write)")
    shapes = [("update, prompt pass", Product(s.prompt, cfg.dim, cfg.ffn_dim)),
              ("update, prompt pass", Product(s.prompt, cfg.ffn_dim, cfg.dim)),
              ("update, whole group", Product(s.prompt + s.answers * s.answer_tokens, cfg.dim, cfg.ffn_dim)),
              ("update, whole group", Product(s.prompt + s.answers * s.answer_tokens, cfg.ffn_dim, cfg.dim)),
              ("decode, 1 row", Product(1, cfg.dim, cfg.ffn_dim)),
              ("decode, 16 rows", Product(16, cfg.dim, cfg.ffn_dim)),
              ("log-probs", Product(s.answers * s.answer_tokens, cfg.dim, cfg.vocab_size)),
              ("log-probs, d/d hidden", Product(s.answers * s.answer_tokens, cfg.vocab_size, cfg.dim, layout="nn"))]
    names = [str(d).removeprefix("torch.") for d in dtypes]
    print(f"{'matrix product':<24} {'m x k x n':>18} " + " ".join(f"{n + ' GFLOP/s':>17}" for n in names))
    for what, p in shapes:
        rates = [p.flops / product_seconds(p, d, device, clock, repeats, cache) / 1e9 for d in dtypes]
        print(f"{what:<24} {f'{p.m} x {p.k} x {p.n}':>18} " + " ".join(f"{r:17.1f}" for r in rates), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads [1]")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    ap.add_argument("--model", help="a .gguf file or HF folder [the embedded SmolLM2-135M-Instruct]")
    ap.add_argument("--answers", type=int, default=5, help="answers in the update's group [5: word search's 10 "
                    "candidates packed two by two]")
    ap.add_argument("--answer-tokens", type=int, default=12, help="tokens of each answer [12]")
    ap.add_argument("--lora-r", type=int, default=64)
    ap.add_argument("--context", type=int, default=32, help="decode steps run with the cache at prompt + this [32]")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls after a warm-up; the fastest counts [3]")
    ap.add_argument("--phase-seconds", type=float, default=5.0, help="stop repeating a phase past this [5]")
    ap.add_argument("--profile", action="store_true", help="also profile one call of each phase by kind of op")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from checkpoint import load_model
    from tasks.wordsearch import WordSearch
    device, clock, cache = args.device, Clock(args.device), {}
    print(f"# bench/roofline.py on {device}: {device_description(device)}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); load {load()} at the start; {clock.name}, best of {args.repeats}")
    bw = bandwidth(device, clock, args.repeats)
    tables, profiles, first = {}, {}, True
    for name in args.dtypes:
        dtype = getattr(torch, name)
        model, tok = load_model(args.model, device=device, dtype=dtype)
        p = WordSearch().prompt()
        prompt = tok.encode(tok.chat(p.messages, add_generation_prompt=True, assistant_prefix=p.prefix))
        s = Shapes(len(prompt), args.answers, args.answer_tokens, len(prompt) + args.context, args.lora_r)
        if first:
            print(f"# shapes: prompt {s.prompt} tokens, {s.answers} answers of {s.answer_tokens} tokens, LoRA "
                  f"r={s.lora_r} on {', '.join(LORA_TARGETS)}, decode cache {s.context} slots; int4 serves at most "
                  f"{FAST_ROWS} rows")
            print_machine(s, model.cfg, [getattr(torch, d) for d in args.dtypes], bw, device, clock, args.repeats,
                          cache)
            first = False
        print(f"# {name}: timing the phases", flush=True)
        times, profiles[name] = timed_phases(model, prompt, s, device, clock, args)
        tables[name] = roofline_rows(model.cfg, s, dtype, times, max(bw.values()), device, clock, args.repeats, cache)
        del model
    for name, rows in tables.items():
        print_table(name, rows)
        if args.profile:
            print_profile(name, profiles[name])
    if {"float32", "bfloat16"} <= set(tables):
        f, b = tables["float32"], tables["bfloat16"]
        print("\nbfloat16 against float32 (float32 time / bfloat16 time): " + ", ".join(
            f"{k} {f[k]['seconds'] / b[k]['seconds']:.2f}x" for k in f if k in b))
    print(f"# load {load()} at the end")


if __name__ == "__main__":
    main()
