"""Peak memory and time of the fused per-token log-probs (grpo.token_logprobs) against the naive full-logits
path (grpo.naive_token_logprobs), forward + backward, printed as fused / naive ratios in one run.

Each (vocab, gradient case, path) runs in a fresh subprocess so that peaks do not mix. Memory on CPU is the peak
RSS (ru_maxrss) minus the RSS once the inputs exist (tracemalloc does not see torch's allocations); on CUDA it is
torch.cuda.max_memory_allocated minus the memory allocated before the call. Two gradient cases: `hidden` (the
LoRA case: the output matrix is frozen, only d/d hidden flows back) and `hidden+weight` (a trainable output
matrix, which makes the fused path recompute the logits once in backward).

    python bench/logprob.py                       # CPU float32; 49152: 16 x 1024 tokens; 128256: 4 x 1024
    python bench/logprob.py --full                # 16 x 1024 for every vocabulary (naive 128k needs ~25 GB)
    python bench/logprob.py --device cuda --dtype bfloat16 --full --compiled

Measured on the 2-core shared CPU (float32, chunk 512, other jobs running, so times are noisy): vocab 49152,
16 x 1024: naive 9.66 GB peak, fused 0.25 GB (0.026) with grad wrt hidden, 0.41 GB (0.042) with hidden+weight,
both at least as fast as naive (1.22x, 1.28x). Vocab 128256, 4 x 1024: 0.085 and 0.139 of naive memory; 1.51x
with grad wrt hidden, 0.71x with hidden+weight (the recompute costs a 4th vocabulary matmul against naive's 3).

Left out: the rest of the model (only the output projection and the log-softmax are timed).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(path: str, vocab: int, batch: int, seq: int, dim: int, grad: str, device: str, dtype_name: str,
           chunk: int, repeat: int) -> dict:
    """Forward + backward of one path on fresh inputs, `repeat` times; returns the peak extra memory (bytes)
    and the fastest call's seconds (the minimum is the figure least disturbed by other work on the machine)."""
    import torch
    sys.path.insert(0, str(ROOT))
    from grpo import naive_token_logprobs, token_logprobs

    dtype = getattr(torch, dtype_name)
    compiled = path == "fused-compiled"

    def fn(h, w, y):
        if path == "naive":
            return naive_token_logprobs(h, w, y)
        return token_logprobs(h, w, y, chunk_tokens=chunk, compiled=compiled)

    def make(b):
        g = torch.Generator(device=device).manual_seed(0)
        h = torch.randn(b, seq, dim, device=device, dtype=dtype, generator=g).requires_grad_()
        w = (torch.randn(vocab, dim, device=device, dtype=dtype, generator=g) * 0.05)
        w.requires_grad_(grad == "hidden+weight")
        y = torch.randint(0, vocab, (b, seq), device=device, generator=g)
        up = torch.randn(b, seq, device=device, generator=g)  # upstream gradient of each token's log-prob
        return h, w, y, up

    def step(h, w, y, up):
        (fn(h, w, y) * up).sum().backward()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    step(*make(1))  # warm-up: threads, kernels, and torch.compile on the (chunk, dim) shape
    sync()
    inputs = make(batch)
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_bytes()
    seconds = []
    for _ in range(repeat):
        inputs[0].grad = inputs[1].grad = None
        t0 = time.perf_counter()
        step(*inputs)
        sync()
        seconds.append(time.perf_counter() - t0)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return dict(peak=peak, seconds=min(seconds))


def run_one(args, path, vocab, batch, grad) -> dict:
    cmd = [sys.executable, __file__, "--worker", path, "--vocab", str(vocab), "--batch", str(batch),
           "--seq", str(args.seq), "--dim", str(args.dim), "--grad", grad, "--device", args.device,
           "--dtype", args.dtype, "--chunk", str(args.chunk), "--repeat", str(args.repeat)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["killed (out of memory?)"])[-1]
        return dict(error=f"rc {res.returncode}: {tail}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vocab", type=int, nargs="+", default=[49152, 128256])
    ap.add_argument("--batch", type=int, default=None, help="rows; default 16, and 4 for vocabularies > 64k "
                    "on CPU unless --full")
    ap.add_argument("--full", action="store_true", help="batch 16 for every vocabulary")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=576)
    ap.add_argument("--grad", nargs="+", default=["hidden", "hidden+weight"], choices=["hidden", "hidden+weight"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--chunk", type=int, default=512, help="chunk_tokens of the fused path")
    ap.add_argument("--repeat", type=int, default=2, help="timed calls per path; the fastest is reported")
    ap.add_argument("--compiled", action="store_true", help="also time the torch.compile'd fused path")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        print(json.dumps(worker(args.worker, args.vocab[0], args.batch, args.seq, args.dim, args.grad[0],
                                args.device, args.dtype, args.chunk, args.repeat)))
        return

    paths = ["naive", "fused"] + (["fused-compiled"] if args.compiled else [])
    print(f"device {args.device}, dtype {args.dtype}, dim {args.dim}, seq {args.seq}, chunk {args.chunk}, "
          f"forward + backward, fastest of {args.repeat} calls after a warm-up")
    print(f"{'vocab':>7} {'rows':>5} {'grad':>13} {'path':>15} {'peak GB':>8} {'s':>7} {'mem ratio':>9} "
          f"{'speedup':>8}")
    for vocab in args.vocab:
        batch = args.batch or (4 if vocab > 65536 and args.device == "cpu" and not args.full else 16)
        for grad in args.grad:
            naive = None
            for path in paths:
                r = run_one(args, path, vocab, batch, grad)
                if "error" in r:
                    print(f"{vocab:>7} {batch:>5} {grad:>13} {path:>15}  {r['error']}")
                    continue
                naive = r if path == "naive" else naive
                ratio = f"{r['peak'] / naive['peak']:9.3f}" if naive else f"{'-':>9}"
                speed = f"{naive['seconds'] / r['seconds']:8.2f}" if naive else f"{'-':>8}"
                print(f"{vocab:>7} {batch:>5} {grad:>13} {path:>15} {r['peak'] / 1e9:8.2f} "
                      f"{r['seconds']:7.2f} {ratio} {speed}", flush=True)


if __name__ == "__main__":
    main()
