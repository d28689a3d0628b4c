"""MiGrATe against every baseline at the same budget of black-box evaluations.

Runs strategies x seeds as sweeps of migrate.py over the targets (each sweep under torchrun when --nproc > 1),
resumes a half-finished experiment instead of starting over, then writes into --out:
  table.md / table.csv  per strategy: mean and std over targets and seeds of the best score found, the std over
                        seeds of the per-seed mean, the fraction solved, and the evaluations needed to first
                        reach --threshold (mean over runs that did, with how many did), and wins/ties/losses
                        against random sampling and against grpo on the same target and seed;
  targets.md            the best score per target and strategy, averaged over seeds;
  curves.svg            best-so-far against evaluations, one line per strategy (mean over runs) with a band
                        (min..max over seeds of the per-seed mean over targets).

    python bench/search.py --task wordsearch --targets paper --seeds 0,1,2 --budget 200 --out bench/results/ws
"""
import argparse
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from migrate import STRATEGIES  # noqa: E402
from rundir import slug  # noqa: E402

COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def run_sweep(args, strategy: str, seed: int, out: Path) -> None:
    cmd = [sys.executable, str(ROOT / "migrate.py"), "--quiet"]
    if args.nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc),
               str(ROOT / "migrate.py"), "--quiet"]
    if (out / "config.json").exists():
        cmd += ["--resume", str(out)]
    else:
        cmd += ["--task", args.task, "--targets", args.targets, "--strategy", strategy, "--seed", str(seed),
                "--budget", str(args.budget), "--out", str(out)] + args.extra
    print(f"[{strategy} seed {seed}] {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))


def curve(run_dir: Path, budget: int) -> list[float]:
    """Best-so-far score at 0..budget evaluations: a step function read from the iteration log (an iteration's
    finds count from the evaluation total it reached)."""
    points, best = [], 0.0
    for line in (run_dir / "history.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["evaluations"] > budget:  # found past the budget (a run with a larger one): not counted
            break
        points += [best] * (r["evaluations"] - len(points))
        best = max(best, r["best_score"])
    return points + [best] * (budget + 1 - len(points))


def collect(args, out: Path, targets: list[str]) -> dict:
    """strategy -> list of runs {seed, target, best, solved, first_hit, curve}."""
    results = {}
    for strategy in args.strategies:
        for seed in args.seeds:
            for t in targets:
                d = out / f"{strategy}-seed{seed}" / slug(t)
                if not (d / "best.json").exists():
                    continue
                b = json.loads((d / "best.json").read_text())
                c = curve(d, args.budget)
                hit = next((e for e, v in enumerate(c) if v >= args.threshold), None)
                results.setdefault(strategy, []).append(dict(seed=seed, target=t, best=b["best_score"],
                                                             solved=b["solved"], first_hit=hit, curve=c))
    return results


def mean_std(xs):
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / max(len(xs) - 1, 1))


PAIRED_REFERENCES = ("random", "grpo")  # sampling alone, and training on on-policy samples only


def against(runs: list[dict], reference: list[dict]) -> str | None:
    """'wins/ties/losses' of runs against the reference strategy's run on the same target and seed (so the same
    warm start): a paired comparison, which the spread over targets hides. None without any pair."""
    ref = {(r["seed"], r["target"]): r["best"] for r in reference}
    pairs = [(r["best"], ref[r["seed"], r["target"]]) for r in runs if (r["seed"], r["target"]) in ref]
    if not pairs:
        return None
    wins, losses = sum(a > b for a, b in pairs), sum(a < b for a, b in pairs)
    return f"{wins}/{len(pairs) - wins - losses}/{losses}"


def write_table(results: dict, out: Path, threshold: float) -> str:
    rows = []
    for strategy, runs in results.items():
        m, s = mean_std([r["best"] for r in runs])
        seeds = sorted({r["seed"] for r in runs})
        seed_means = [mean_std([r["best"] for r in runs if r["seed"] == sd])[0] for sd in seeds]
        hits = [r["first_hit"] for r in runs if r["first_hit"] is not None]
        rows.append(dict(strategy=strategy, runs=len(runs), best_mean=round(m, 4), best_std=round(s, 4),
                         seed_std=round(mean_std(seed_means)[1], 4) if len(seeds) > 1 else None,
                         solved=round(sum(r["solved"] for r in runs) / len(runs), 3),
                         evals_to_threshold=round(sum(hits) / len(hits), 1) if hits else None,
                         reached_threshold=f"{len(hits)}/{len(runs)}",
                         **{f"vs_{ref}": against(runs, results[ref]) if ref in results and strategy != ref else None
                            for ref in PAIRED_REFERENCES}))
    with open(out / "table.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    md = [f"| strategy | runs | best score (mean ± std) | std of seed means | solved | evals to reach {threshold} "
          f"| reached |" + "".join(f" against {ref} (W/T/L) |" for ref in PAIRED_REFERENCES),
          "|---" * (7 + len(PAIRED_REFERENCES)) + "|"]
    md += [f"| {r['strategy']} | {r['runs']} | {r['best_mean']:.3f} ± {r['best_std']:.3f} | {fmt(r['seed_std'])} | "
           f"{r['solved']:.2f} | {'-' if r['evals_to_threshold'] is None else r['evals_to_threshold']} | {r['reached_threshold']} |"
           + "".join(f" {r['vs_' + ref] or '-'} |" for ref in PAIRED_REFERENCES) for r in rows]
    text = "\n".join(md) + "\n"
    (out / "table.md").write_text(text)
    return text


def write_target_table(results: dict, out: Path, targets: list[str]) -> None:
    """targets.md: per target (rows) and strategy (columns), the best score averaged over seeds."""
    strategies = list(results)
    md = ["| target | " + " | ".join(strategies) + " |", "|---|" + "---|" * len(strategies)]
    for t in targets:
        cells = []
        for strategy in strategies:
            bests = [r["best"] for r in results[strategy] if r["target"] == t]
            cells.append(f"{sum(bests) / len(bests):.3f}" if bests else "-")
        md.append(f"| {t} | " + " | ".join(cells) + " |")
    (out / "targets.md").write_text("\n".join(md) + "\n")


def write_curves(results: dict, out: Path, budget: int, title: str, w=720, h=420, pad=56) -> None:
    x = lambda e: pad + (w - 2 * pad - 120) * e / budget
    y = lambda v: h - pad - (h - 2 * pad) * v
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
             f'font-size="12"><rect width="{w}" height="{h}" fill="white"/>',
             f'<text x="{w / 2}" y="22" text-anchor="middle" font-size="14">{title}</text>',
             f'<text x="{w / 2 - 60}" y="{h - 14}" text-anchor="middle">black-box evaluations (0..{budget})</text>']
    for v in (0, .25, .5, .75, 1):
        parts.append(f'<line x1="{pad}" x2="{x(budget)}" y1="{y(v)}" y2="{y(v)}" stroke="#ddd"/>'
                     f'<text x="{pad - 6}" y="{y(v) + 4}" text-anchor="end">{v:.2f}</text>')
    step = max(budget // 100, 1)
    for i, (strategy, runs) in enumerate(results.items()):
        colour = COLOURS[i % len(COLOURS)]
        seeds = sorted({r["seed"] for r in runs})
        per_seed = [[sum(r["curve"][e] for r in runs if r["seed"] == sd) / sum(r["seed"] == sd for r in runs)
                     for e in range(0, budget + 1, step)] for sd in seeds]
        es = list(range(0, budget + 1, step))
        mean = [sum(c[j] for c in per_seed) / len(per_seed) for j in range(len(es))]
        lo = [min(c[j] for c in per_seed) for j in range(len(es))]
        hi = [max(c[j] for c in per_seed) for j in range(len(es))]
        band = " ".join(f"{x(e):.1f},{y(v):.1f}" for e, v in zip(es, hi)) + " " + \
            " ".join(f"{x(e):.1f},{y(v):.1f}" for e, v in reversed(list(zip(es, lo))))
        parts.append(f'<polygon points="{band}" fill="{colour}" opacity="0.15"/>')
        line = " ".join(f"{x(e):.1f},{y(v):.1f}" for e, v in zip(es, mean))
        parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts.append(f'<text x="{w - pad - 110}" y="{pad + 16 * i}" fill="{colour}">{strategy}</text>')
    parts.append("</svg>")
    (out / "curves.svg").write_text("".join(parts))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="wordsearch")
    p.add_argument("--targets", default="paper", help="named set or comma-separated targets")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--budget", type=int, default=200, help="black-box evaluations per target and seed")
    p.add_argument("--threshold", type=float, default=0.8, help="score whose first reach is timed")
    p.add_argument("--nproc", type=int, default=1, help="torchrun processes per sweep")
    p.add_argument("--threads", type=int, default=2, help="torch threads per process")
    p.add_argument("--out", default="bench/results/search")
    p.add_argument("--report-only", action="store_true", help="only aggregate what is already there")
    args, args.extra = p.parse_known_args()
    args.strategies = args.strategies.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for seed in args.seeds:
            for strategy in args.strategies:
                run_sweep(args, strategy, seed, out / f"{strategy}-seed{seed}")
    configs = list(out.glob("*-seed*/config.json"))
    if not configs:
        sys.exit(f"nothing to report in {out}")
    targets = json.loads(configs[0].read_text())["targets"]
    results = collect(args, out, targets)
    print(write_table(results, out, args.threshold))
    write_target_table(results, out, targets)
    write_curves(results, out, args.budget, f"{args.task}: best so far vs evaluations ({len(targets)} targets, "
                                            f"seeds {','.join(map(str, args.seeds))})")
    print(f"wrote {out}/table.md, table.csv, targets.md, curves.svg")


if __name__ == "__main__":
    main()
