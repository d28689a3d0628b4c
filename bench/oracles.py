"""Oracle throughput: candidates scored per second by each task's `score`, next to the policy model's cost, in one run.

Rows (each timed as a whole `task.score(batch)` call on a cold score cache, best of --repeats, after one warm-up
call that pays one-off costs such as loading MiniLM or RDKit's SA fragment table):
  - wordsearch: 64 vocabulary words against the target "computer" (MiniLM embedding + cosine);
  - molecule: every RDKit objective (qed, rediscover:celecoxib, mpo, logp-window) on 64 distinct drug-like
    molecules;
  - docking (only with --docking: minutes, and it needs dockstring and Open Babel): the task's seven named drugs
    docked against DRD2 by one worker with one Vina thread at the loop's 90 s timeout, timed once after one small
    docking that starts the worker pool; a line under the table gives molecules per second per core;
  - arc: 32 small programs (identity, flips, transpose, recolour) on one ARC task, each run in the sandbox on
    every train and test input, once by the old path (a fresh process per program) and once by the isolated
    warm workers (tasks/sandbox.py), with the ratio of their rates.
Reference: one SmolLM2-135M-Instruct forward of 64 tokens on a batch of 16 (checkpoint.load_model), divided by 16:
the model time behind one completion is at least this (sampling a completion takes one forward step per new
token, so this understates it). A ratio line per task says how many such per-completion forwards one candidate's
scoring costs; well below 1 means the oracle is not the bottleneck.

    python bench/oracles.py                  # CPU
    python bench/oracles.py --repeats 5 --threads 4

Left out: memory use, GPU timings of the oracles (they run on the CPU in the loop).
"""
import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BATCH_WORDS, BATCH_MOLECULES, BATCH_PROGRAMS = 64, 64, 32
REF_BATCH, REF_TOKENS = 16, 64


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up: lazy loads and first-call costs are not oracle throughput
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def molecules(n: int) -> list[str]:
    """n distinct valid molecules: the task's named drugs and prompt examples with 0..k extra methyl groups
    prepended to their SMILES (a cheap, deterministic way to get many different real molecules)."""
    from tasks.molecule import DRUGS, EXAMPLES, canonical_smiles
    bases = list(DRUGS.values()) + EXAMPLES
    out: list[str] = []
    for k in range(n):
        for base in bases:
            smiles = canonical_smiles("C" * k + base)
            if smiles is not None and smiles not in out:
                out.append(smiles)
            if len(out) == n:
                return out
    return out


def programs(n: int) -> list[str]:
    """n distinct small transform programs (four behaviours, each numbered so no two sources are equal)."""
    bodies = ["return grid",
              "return [row[::-1] for row in grid]",
              "return [list(r) for r in zip(*grid)]",
              "return [[0 if c == 0 else 1 for c in row] for row in grid]"]
    return [f"def transform(grid):\n    # variant {i}\n    {bodies[i % len(bodies)]}" for i in range(n)]


def bench_wordsearch(repeats: int) -> list[tuple[str, str, int, float]]:
    from tasks.wordsearch import WordSearch
    task = WordSearch("computer")
    words = random.Random(0).sample([w for w in task.vocabulary if w != task.target], BATCH_WORDS)

    def run():
        task.cache.clear()
        task.score(words)
    return [("wordsearch", "computer (MiniLM)", BATCH_WORDS, best_time(run, repeats))]


def bench_molecule(repeats: int) -> list[tuple[str, str, int, float]]:
    from tasks.molecule import MoleculeTask
    mols = molecules(BATCH_MOLECULES)
    rows = []
    for target in MoleculeTask.target_sets["rdkit"]:
        task = MoleculeTask(target)

        def run():
            task.cache.clear()
            task.score(mols)
        rows.append(("molecule", target, len(mols), best_time(run, repeats)))
    return rows


def bench_docking(repeats: int) -> list[tuple[str, str, int, float]]:
    """Real docking is too slow to repeat: one timed batch, so `repeats` is not used."""
    from tasks.molecule import DRUGS, MoleculeTask, canonical_smiles
    task = MoleculeTask("dock:DRD2", workers=1, cpus_per_job=1)
    drugs = [canonical_smiles(s) for s in DRUGS.values()]
    try:
        task.oracle.vina(["CCO"])  # starts the worker and pays its imports
        start = time.perf_counter()
        vina = task.oracle.vina(drugs)
        seconds = time.perf_counter() - start
    finally:
        task.close()
    docked = sum(v is not None for v in vina)  # None: failed or past the 90 s timeout
    return [("docking", f"dock:DRD2, 1 core ({docked}/{len(drugs)} docked)", len(drugs), seconds)]


def bench_arc(repeats: int) -> list[tuple[str, str, int, float]]:
    """The old path (one fresh process per program) and the isolated warm workers, on the same programs."""
    from tasks.arc import PAPER54, ArcTask
    progs = programs(BATCH_PROGRAMS)
    rows = []
    for mode, label in (("process", "process per program"), ("strict", "isolated workers")):
        task = ArcTask(PAPER54[0], sandbox=mode)
        seconds = best_time(lambda: task.score(progs), repeats)
        rows.append(("arc", f"{PAPER54[0]} ({len(task.train)} pairs, {label})", BATCH_PROGRAMS, seconds))
    print(f"arc: isolated workers / process per program = {rows[0][3] / rows[1][3]:.1f}x the rate")
    return rows


def bench_model(repeats: int) -> float | None:
    """Seconds of one forward of (REF_BATCH, REF_TOKENS) tokens, per row; None if the model cannot be loaded."""
    try:
        import checkpoint
        model, _tok = checkpoint.load_model()
    except Exception as e:  # the reference is optional: report why and go on with the oracles
        print(f"note: model reference skipped ({type(e).__name__}: {e})")
        return None
    tokens = torch.randint(0, model.cfg.vocab_size, (REF_BATCH, REF_TOKENS),
                           generator=torch.Generator().manual_seed(0))  # (B, T)

    @torch.no_grad()
    def run():
        model(tokens)
    return best_time(run, repeats) / REF_BATCH


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per row; the best is kept")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (MiniLM and the reference model)")
    ap.add_argument("--docking", action="store_true", help="also time real docking (minutes; needs dockstring)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["wordsearch", "molecule", "arc", "model"])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows = []
    for name, bench in [("wordsearch", bench_wordsearch), ("molecule", bench_molecule), ("arc", bench_arc),
                        ("docking", bench_docking)]:
        if name in args.skip or (name == "docking" and not args.docking):
            continue
        try:
            rows += bench(args.repeats)
        except Exception as e:  # one task's missing asset should not hide the others' numbers
            print(f"note: {name} skipped ({type(e).__name__}: {e})")
    per_completion = None if "model" in args.skip else bench_model(args.repeats)

    print(f"\n{'task':<11} {'objective':<42} {'batch':>5} {'seconds':>8} {'cand/s':>9} {'ms/cand':>8}")
    for task, objective, n, seconds in rows:
        print(f"{task:<11} {objective:<42} {n:>5} {seconds:>8.4f} {n / seconds:>9.1f} {1000 * seconds / n:>8.3f}")
    for _, objective, n, seconds in (r for r in rows if r[0] == "docking"):  # too slow for the cand/s column
        print(f"docking: {n / seconds:.4f} molecules per second per core, {seconds / n:.1f} s each ({objective})")
    if per_completion is None:
        return
    print(f"{'reference':<11} {'SmolLM2-135M forward, 64 tokens, batch 16':<42} {REF_BATCH:>5} "
          f"{per_completion * REF_BATCH:>8.4f} {1 / per_completion:>9.1f} {1000 * per_completion:>8.3f}")
    print()
    for task in dict.fromkeys(r[0] for r in rows):
        worst = max(seconds / n for t, _, n, seconds in rows if t == task)
        print(f"ratio {task}: slowest oracle per candidate / model forward per completion = "
              f"{worst / per_completion:.3f}")


if __name__ == "__main__":
    main()
