"""The report of an experiment, recomputed from its runs' records (records.current_sweeps) of one code version:
  table.md / table.csv  per strategy: mean and std over targets and seeds of the best score found, the std over
                        seeds of the per-seed mean, the fraction solved with its 95 % Wilson interval, and the
                        evaluations needed to first reach --threshold (mean over runs that did, with how many did);
                        then (paired.csv) each strategy against random, ns and grpo on the same target and seed
                        (stats.py), once at the end of the runs and once at equal evaluations (each pair cut at the
                        evaluations its shorter run used: under an iteration cap a policy that repeats itself uses
                        fewer);
  targets.md            the best score per target and strategy, averaged over seeds;
  dynamics.md           per strategy, how it searched (measures.run_dynamics, and drift.py's KL);
  curves.svg            best-so-far against evaluations, one line per strategy (mean over runs) with a band
                        (min..max over seeds of the per-seed mean over targets);
  settings.md           (compare_settings) sweeps made under different settings, one folder each, paired per
                        strategy on the same target and seed against the first.

Left out: anything a run's records cannot say (wall time is in the histories but is the machine's, not the
strategy's), and runs of other code than the one reported (versions.py).
"""
import csv
import math
import sys
from argparse import Namespace
from pathlib import Path

from experiments.measures import curve, run_dynamics
from experiments.records import Sweep, current_sweeps
from experiments.stats import (PAIRED_REFERENCES, RESAMPLES, TIE, comparisons, mean_std, pair_statistics,
                               paired_differences, wilson)
from experiments.versions import choose_code, code_note, sweeps_by_code
from loop import STRATEGIES
from rundir import slug

COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


# ----------------------------------------------------------------------------------------------------------
# The runs of a report.

def collect(args, sweeps: list[Sweep], targets: list[str]) -> dict:
    """strategy -> list of finished runs {seed, target, best, solved, first_hit, curve, evaluations, dynamics} of
    these sweeps, in the order of args.strategies, args.seeds and targets."""
    by_name = {s.name: s for s in sweeps}
    results = {}
    for strategy in args.strategies:
        for seed in args.seeds:
            sweep = by_name.get(f"{strategy}-seed{seed}")
            if sweep is None:
                continue
            settings = sweep.config["settings"]
            for t in targets:
                run = sweep.runs.get(slug(t))
                if run is None or run.best is None:
                    continue
                c = curve(run.history, args.budget)
                used = min(run.best["evaluations"], args.budget)  # a report may cut runs made with a larger budget
                hit = next((e for e, v in enumerate(c) if v >= args.threshold), None)
                dynamics = run_dynamics(run.history, settings.get("iterations", math.inf),
                                        settings.get("budget", math.inf))
                dynamics["kl"] = run.drift["kl_per_token"] if run.drift else None
                results.setdefault(strategy, []).append(dict(seed=seed, target=t, best=run.best["best_score"],
                                                             solved=run.best["solved"], first_hit=hit, curve=c,
                                                             evaluations=used, dynamics=dynamics))
    return results


def read_experiment(args, folder: Path) -> tuple[dict, str, list[str], dict]:
    """An experiment folder's sweeps by code, the code reported (--code-hash, else the newest with finished
    runs), its targets and its runs."""
    groups = sweeps_by_code(current_sweeps(folder))
    if not groups:
        sys.exit(f"nothing to report in {folder}")
    code = choose_code(groups, args.code_hash)
    targets = groups[code][0].config["targets"]
    return groups, code, targets, collect(args, groups[code], targets)


def add_untrained_runs(args, folder: Path, code: str, targets: list[str], results: dict) -> tuple[dict, str]:
    """The strategies that never train (random, ns, opro) ignore every training setting: a sweep under another
    learning rate pairs with their runs in another experiment's folder, of the same code, instead of rerunning
    them. Returns the results in STRATEGIES order and a line for the report."""
    groups = sweeps_by_code(current_sweeps(folder))
    if code not in groups:
        sys.exit(f"--untrained-from {folder} has no runs of code {code}")
    untrained = [s for s, strategy in STRATEGIES.items() if not strategy.trains and s not in results]
    borrowed = collect(Namespace(**{**vars(args), "strategies": untrained}), groups[code], targets)
    merged = {s: (results | borrowed)[s] for s in STRATEGIES if s in results or s in borrowed}
    return merged, f"{', '.join(borrowed) or 'No strategy'}: the runs in {folder} (untrained, the same code)."


# ----------------------------------------------------------------------------------------------------------
# Tables.

def summary_rows(results: dict) -> list[dict]:
    rows = []
    for strategy, runs in results.items():
        m, s = mean_std([r["best"] for r in runs])
        seeds = sorted({r["seed"] for r in runs})
        seed_means = [mean_std([r["best"] for r in runs if r["seed"] == sd])[0] for sd in seeds]
        hits = [r["first_hit"] for r in runs if r["first_hit"] is not None]
        solved = sum(bool(r["solved"]) for r in runs)
        lo, hi = wilson(solved, len(runs))
        # Unrounded: table.md rounds once (rounding here first turned a mean of 0.47450 into 0.474 there).
        rows.append(dict(strategy=strategy, runs=len(runs), best_mean=m, best_std=s,
                         seed_std=mean_std(seed_means)[1] if len(seeds) > 1 else None,
                         solved=solved / len(runs), solved_low=lo, solved_high=hi,
                         evals_to_threshold=round(sum(hits) / len(hits), 1) if hits else None,
                         reached_threshold=f"{len(hits)}/{len(runs)}"))
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        w.writeheader()
        w.writerows(rows)


def pair_cells(c: dict) -> str:
    """A pair_statistics row as the table cells from the mean difference on (with its Holm p when it has one)."""
    holm_cell = f"{c['holm_p']:.3f} | " if "holm_p" in c else ""
    return (f"{c['mean_diff']:+.3f} | [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] | {c['sign_p']:.3f} | {holm_cell}"
            f"{c['wins']}/{c['ties']}/{c['losses']} | {c['verdict']} |")


def write_table(results: dict, out: Path, threshold: float, note: str = "", references=PAIRED_REFERENCES) -> str:
    """table.md: the note on code, the per-strategy table, then the paired comparisons against `references`
    (table.csv, paired.csv)."""
    rows, pairs = summary_rows(results), comparisons(results, references=references)
    equal = comparisons(results, equal_evaluations=True, references=references)
    write_csv(out / "table.csv", rows)
    write_csv(out / "paired.csv", pairs + equal)
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    md = ([note, ""] if note else []) + [
        f"| strategy | runs | best score (mean ± std) | std of seed means | solved (95 % CI) | "
        f"evals to reach {threshold} | reached |", "|---" * 7 + "|"]
    md += [f"| {r['strategy']} | {r['runs']} | {r['best_mean']:.3f} ± {r['best_std']:.3f} | {fmt(r['seed_std'])} | "
           f"{r['solved']:.2f} [{r['solved_low']:.2f}, {r['solved_high']:.2f}] | "
           f"{'-' if r['evals_to_threshold'] is None else r['evals_to_threshold']} | {r['reached_threshold']} |"
           for r in rows]
    for rows_at, heading in [(pairs, "at the end of the runs"), (equal, "at equal evaluations")]:
        if rows_at:
            md += ["", f"Paired best score, {heading}:", "",
                   "| strategy | reference | pairs | mean diff | 95 % CI | sign-test p | Holm p | W/T/L | verdict |",
                   "|---" * 9 + "|"]
            md += [f"| {c['strategy']} | {c['reference']} | {c['pairs']} | {pair_cells(c)}" for c in rows_at]
    if pairs:
        md += ["", f"Paired: best score minus the reference's on the same target and seed (the same warm start); at "
                   f"equal evaluations, each run's best within the evaluations the shorter run of the pair used. "
                   f"95 % CI: percentile bootstrap over pairs ({RESAMPLES:,} resamples, seed 0); p: exact "
                   f"two-sided sign test, ties (within {TIE:g}) dropped. A difference counts only when the interval "
                   f"excludes 0 and p < 0.05, each of the {len(pairs)} comparisons of a table tested alone; Holm p "
                   f"adjusts p for all {len(pairs)} of its table (Holm's step-down): below 0.05, the difference "
                   f"survives the multiple comparisons."]
    text = "\n".join(md) + "\n"
    (out / "table.md").write_text(text)
    return text


def compare_settings(args, folders: list[Path], out: Path) -> str:
    """settings.md: each setting (one folder each, e.g. one learning rate) against the first, per strategy and for
    all strategies pooled, paired on (strategy, target, seed). The pooled mean is what chooses a setting."""
    by_setting = {f.name: read_experiment(args, f)[3] for f in folders}
    first = folders[0].name
    md = [f"| setting | strategy | runs | best score (mean) | solved | diff vs {first} | 95 % CI | sign-test p | "
          f"W/T/L | verdict |", "|---" * 10 + "|"]
    for name, results in by_setting.items():
        pooled = []
        for strategy in [*results, "all"]:
            if strategy == "all":
                runs, diffs = [r for rs in results.values() for r in rs], pooled
            else:
                runs = results[strategy]
                diffs = paired_differences(runs, by_setting[first].get(strategy, []))
                pooled += diffs
            if not runs:
                continue
            row = f"| {name} | {strategy} | {len(runs)} | {mean_std([r['best'] for r in runs])[0]:.3f} | " \
                  f"{sum(bool(r['solved']) for r in runs)}/{len(runs)} |"
            md.append(row + (" - | - | - | - | - |" if name == first or not diffs
                             else " " + pair_cells(pair_statistics(diffs))))
    text = "\n".join(md) + "\n"
    (out / "settings.md").write_text(text)
    return text


def write_dynamics_table(results: dict, out: Path) -> str:
    """dynamics.md: per strategy, how its runs searched (measures.run_dynamics), pooled over runs."""
    md = ["| strategy | runs | iterations (mean) | evaluations (mean) | updates / skipped (mean) | "
          "mean |ratio - 1| per update | max |ratio - 1| | clipped fraction (mean) | KL to base per token (runs) | "
          "sampled answers holding a candidate | holding one in the last quarter | sampled candidates new | "
          "new in the last quarter | stalled runs |",
          "|---" * 14 + "|"]
    for strategy, runs in results.items():
        d = [r["dynamics"] for r in runs]
        moves, clips = [m for x in d for m in x["ratio_moves"]], [c for x in d for c in x["clip"]]
        kls = [x["kl"] for x in d if x["kl"] is not None]
        mean = lambda xs, f="{:.4f}": f.format(sum(xs) / len(xs)) if xs else "-"  # noqa: E731

        def share(part: str, whole: str) -> str:  # pooled over the runs
            n = sum(x[whole] for x in d)
            return f"{sum(x[part] for x in d) / n:.3f}" if n else "-"
        md.append(f"| {strategy} | {len(runs)} | {mean([x['iterations'] for x in d], '{:.1f}')} | "
                  f"{mean([r['evaluations'] for r in runs], '{:.0f}')} | "
                  f"{mean([x['updates'] for x in d], '{:.1f}')} / {mean([x['skipped'] for x in d], '{:.1f}')} | "
                  f"{mean(moves)} | {f'{max(moves):.4f}' if moves else '-'} | {mean(clips)} | "
                  f"{mean(kls, '{:.5f}')} ({len(kls)}) | "
                  f"{share('valid', 'answers')} | {share('valid_late', 'answers_late')} | "
                  f"{share('new', 'sampled')} | {share('new_late', 'sampled_late')} | {sum(x['stalled'] for x in d)} |"
                  if any(x["sampled"] for x in d) else f"| {strategy} | {len(runs)} |" + " - |" * 12)
    md += ["", "Per update: the token ratio p_new / p_old averaged over the group's tokens at the last of its mu "
               "steps (1 before any step), and the fraction of tokens clipped there. Holding a candidate: the share "
               "of sampled answers (greedy re-inserts left out) the task could parse into at least one candidate. "
               "New: the share of candidates from those answers that no earlier iteration had scored. Both over "
               "the runs and over their last quarter of iterations. KL: experiments/drift.py's KL(trained || base) "
               "per token on the trained policy's own answers, over the runs it measured. Stalled: stopped by "
               "--patience, neither solved nor at the iteration cap or budget."]
    text = "\n".join(md) + "\n"
    (out / "dynamics.md").write_text(text)
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
    x = lambda e: pad + (w - 2 * pad - 120) * e / budget  # noqa: E731
    y = lambda v: h - pad - (h - 2 * pad) * v  # noqa: E731
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


# ----------------------------------------------------------------------------------------------------------
# The whole report.

def report(args, out: Path) -> None:
    """Every table and the plot of the experiment in `out`, from its records, printed as they are written."""
    groups, code, targets, results = read_experiment(args, out)
    note = code_note(groups, code)
    if args.untrained_from:
        results, line = add_untrained_runs(args, Path(args.untrained_from), code, targets, results)
        note += " " + line
    print(write_table(results, out, args.threshold, note, args.references))
    write_target_table(results, out, targets)
    print(write_dynamics_table(results, out))
    write_curves(results, out, args.budget, f"{args.task}: best so far vs evaluations ({len(targets)} targets, "
                                            f"seeds {','.join(map(str, args.seeds))})")
    print(f"wrote {out}/table.md, table.csv, paired.csv, targets.md, dynamics.md, curves.svg")
