"""One sweep run two ways in one process: its searches one at a time, then all in lockstep (loop.search with one
adapter per search), and the ratio of their times per phase (sampling, scoring, update) and end to end.

Both ways run the same searches on the same model (the embedded SmolLM2-135M-Instruct by default, or --model), the
same settings and seeds, for --iterations iterations each (patience and early stopping off, so both do the same
number of iterations). A phase's time is read from the runs' records: time_sample and time_update are the wall
time of the phase for the whole lockstep (logged once per search, so counted once per lockstep iteration here),
time_score each search's own; the end-to-end time is the wall clock around loop.search. The ratio printed is one
at a time over lockstep: how many times cheaper a search's iteration is in lockstep. The machine and its load at
start and end are printed beside, since other jobs sharing the cores change every figure.

    python bench/lockstep.py                                   # word search, the paper's ten targets, 3 iterations
    python bench/lockstep.py --strategies migrate --iterations 5 --threads 2
    python bench/lockstep.py --device cuda --model meta-llama/Llama-3.2-1B-Instruct --targets paper

--seeds runs every target under each seed (targets x seeds searches, as a protocol's sweep of one strategy);
--lockstep-only skips the one-at-a-time run (for a whole protocol on a GPU, where that run would take hours);
--random-1b swaps the model for random weights of Llama-3.2-1B's shape (the embedded tokenizer, its vocabulary)
to time a larger model with no download.

Left out: the harness's processes (--nproc), resume, and searches that end at different times (every search runs
exactly --iterations here, so the lockstep batch stays full).
"""
import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loop  # noqa: E402
from checkpoint import load_model  # noqa: E402
from tasks import expand_targets, task_class  # noqa: E402

PHASES = ("time_sample", "time_score", "time_update")


def phase_times(searches: list, lockstep: bool) -> dict[str, float]:
    """Seconds per phase over the searches' iterations: shared phases once per lockstep iteration."""
    totals = dict.fromkeys(PHASES, 0.0)
    for i, x in enumerate(searches):
        for line in (x.run_dir / "history.jsonl").read_text().splitlines()[1:]:
            r = json.loads(line)
            for phase in PHASES:
                shared = lockstep and phase != "time_score"
                if not shared or i == 0:  # every search logs the shared time: count it once
                    totals[phase] += r[phase]
    return totals


def run(args, strategy: str, targets: list[str], lockstep: bool) -> tuple[dict, float]:
    """(phase seconds, wall seconds) of the sweep, one search at a time or in lockstep."""
    task_cls = task_class(args.task)
    given = dict(device=args.device, iterations=args.iterations, patience=args.iterations, early_stop=False,
                 **({"dtype": args.dtype} if args.dtype else {}))
    s = loop.resolve_settings(task_cls, strategy, given)
    model, tok = load_model(args.model, device=s.device, dtype=getattr(torch, s.dtype))
    if args.random_1b:
        model = random_llama_1b(model.cfg.vocab_size, s.device, getattr(torch, s.dtype))
    folder = Path(tempfile.mkdtemp(prefix="lockstep-bench-"))
    searches = [loop.Search(dataclasses.replace(s, target=t, seed=seed), task_cls(t), folder / f"{t}-{seed}")
                for seed in args.seeds for t in targets]
    t0 = time.perf_counter()
    if lockstep:
        loop.search(loop.Policy(model.eval(), tok, s, adapters=len(searches)), searches, quiet=True)
    else:
        policy = loop.Policy(model.eval(), tok, s)
        for x in searches:
            loop.search(policy, [x], quiet=True)
    return phase_times(searches, lockstep), time.perf_counter() - t0


def random_llama_1b(vocab: int, device, dtype):
    """A model of Llama-3.2-1B's shape with random weights and the given vocabulary (speed only)."""
    from bench.sampler import LLAMA_1B
    from model import ModelConfig, Transformer
    torch.manual_seed(0)
    with torch.device(device):
        model = Transformer(ModelConfig.from_hf(dict(LLAMA_1B, vocab_size=vocab)))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model.to(dtype)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="wordsearch")
    p.add_argument("--targets", default="paper", help="a named set or comma-separated targets [paper]")
    p.add_argument("--strategies", default="migrate,random", help="one training, one sampling-only [migrate,random]")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--seeds", default="0", help="comma-separated; every target runs under each [0]")
    p.add_argument("--lockstep-only", action="store_true", help="skip the one-at-a-time run")
    p.add_argument("--random-1b", action="store_true", help="random weights of Llama-3.2-1B's shape")
    p.add_argument("--model", help="[the embedded SmolLM2-135M-Instruct]")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", help="[float32 on cpu, bfloat16 on cuda]")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    args.seeds = [int(x) for x in args.seeds.split(",")]
    torch.set_num_threads(args.threads)
    targets = expand_targets(task_class(args.task), args.targets)
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), "?") if Path("/proc/cpuinfo").exists() else "?"
    searches = len(targets) * len(args.seeds)
    print(f"{args.task}, {searches} searches ({len(targets)} targets x seeds {args.seeds}), {args.iterations} "
          f"iterations each, {args.device}, {args.threads} thread(s), {cpu}, load {os.getloadavg()[0]:.1f}")
    print("| strategy | phase | one at a time, s | lockstep, s | ratio (per search, lockstep cheaper by) |")
    print("|---|---|---|---|---|")
    total = 0.0
    for strategy in args.strategies.split(","):
        together, together_wall = run(args, strategy, targets, lockstep=True)
        total += together_wall
        alone, alone_wall = (dict.fromkeys(PHASES, float("nan")), float("nan")) if args.lockstep_only else \
            run(args, strategy, targets, lockstep=False)
        for phase in PHASES:
            ratio = alone[phase] / together[phase] if together[phase] > 0 else float("nan")
            print(f"| {strategy} | {phase[5:]} | {alone[phase]:.1f} | {together[phase]:.1f} | {ratio:.2f}x |")
        print(f"| {strategy} | end to end | {alone_wall:.1f} | {together_wall:.1f} | "
              f"{alone_wall / together_wall:.2f}x |")
    print(f"every strategy's searches in lockstep, one strategy after another: {total / 60:.1f} min; "
          f"load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
