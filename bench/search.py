"""MiGrATe against every baseline at the same budget of black-box evaluations.

Runs strategies x seeds as sweeps of migrate.py over the targets (each sweep under torchrun when --nproc > 1),
resumes a half-finished experiment instead of starting over, and before starting prints a measured estimate of
its wall time: seconds and evaluations per iteration read from the histories of runs of the same code in --out,
or, when there are none, from a 2-iteration calibration run. Then it writes into --out:
  table.md / table.csv  per strategy: mean and std over targets and seeds of the best score found, the std over
                        seeds of the per-seed mean, the fraction solved with its 95 % Wilson interval, and the
                        evaluations needed to first reach --threshold (mean over runs that did, with how many did);
                        then (paired.csv) each strategy against random, ns and grpo on the same target and seed:
                        the mean difference of best score with a 95 % percentile-bootstrap interval over pairs, the
                        exact two-sided sign test (ties dropped) with its Holm adjustment over the table's
                        comparisons, wins/ties/losses and a verdict; once at the end of the runs and once at
                        equal evaluations (each pair cut at the evaluations its
                        shorter run used: under an iteration cap a policy that repeats itself uses fewer);
  targets.md            the best score per target and strategy, averaged over seeds;
  dynamics.md           per strategy, how it searched: iterations, GRPO updates taken and skipped, how far an
                        update moved the policy (token ratio, clipped fraction), the share of sampled answers that
                        held a candidate and of sampled candidates that were new (over the run and its last
                        quarter), runs that stalled;
  curves.svg            best-so-far against evaluations, one line per strategy (mean over runs) with a band
                        (min..max over seeds of the per-seed mean over targets).
With --compare DIR,DIR,... it instead pairs sweeps made under different settings (one folder each, the first the
reference) per strategy on the same target and seed, and writes settings.md into --out. With --untrained-from DIR the
report takes random, ns and opro from another experiment of the same code (they never train, so a sweep of other
training settings runs only the strategies that do).
The report never mixes code versions: it reads the sweeps of one code_hash (config.json's `code`; default the
newest that has runs, or --code-hash) and says how many runs of other code it left out.

Left out on purpose: the Wilcoxon test (the sign test needs no symmetry of the differences), and start-up time
(model load, warm start) in the estimate, a few seconds per sweep.

    python bench/search.py --protocol paper --nproc 2 --threads 1 --out results/wordsearch-paper
    python bench/search.py --task wordsearch --targets paper --seeds 0,1,2 --budget 200 --out results/ws
"""
import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
from argparse import Namespace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from loop import STRATEGIES  # noqa: E402
from rundir import code_version, read_config, slug  # noqa: E402
from tasks import expand_targets, load_task_class  # noqa: E402

COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
PROTOCOLS = {  # named experiments: defaults that explicit flags still override
    # The paper's word search: 100 iterations of 10 words (DESIGN.md), so at most 1,000 evaluations; repeats are
    # free here, so a run evaluates fewer distinct words (about 4 new ones an iteration). The comparisons it is
    # run for come first, so that a half-finished experiment already pairs them.
    "paper": dict(task="wordsearch", targets="paper", seeds="0,1,2", budget=1000, iterations=100,
                  strategies="random,ns,grpo,migrate,opro,grpo-greedy,migrate-opro,migrate-evo"),
    # Settings for a small model are chosen here, on five other words, one --out per candidate setting, e.g.
    # `--protocol tune --lr 5e-4 --out results/tune/lr5e-4`; never on the ten reported targets. Then
    # `--compare results/tune/lr5e-5,results/tune/lr5e-4 --out results/tune` pairs them (settings.md), and the
    # setting with the highest mean best score over all its runs is the one frozen for the ten.
    "tune": dict(task="wordsearch", targets="lantern,sawdust,greenhouse,trombone,pancake", seeds="0,1",
                 budget=1000, iterations=100, strategies="grpo,migrate"),
    # What tune chose (results/tune/settings.md): the paper's protocol at lr 5e-4, 10x the paper's rate, for the
    # five strategies that train; random, ns and opro never train, so their runs are paper's (--untrained-from).
    "tuned": dict(task="wordsearch", targets="paper", seeds="0,1,2", budget=1000, iterations=100,
                  strategies="grpo,migrate,grpo-greedy,migrate-opro,migrate-evo", migrate_flags="--lr 5e-4"),
    # The paper's molecule runs on the RDKit objectives (docking: --targets dock:DRD2,...): 40 iterations of 5.
    "molecules": dict(task="molecule", targets="rediscover:celecoxib,qed,mpo,logp-window", seeds="0,1,2",
                      budget=1000, iterations=40,
                      strategies="random,ns,grpo,migrate,opro,grpo-greedy,migrate-opro,migrate-evo"),
    # The paper's docking score on two of its proteins, small enough for a 2-core machine: its 18 runs took about
    # an hour on this project's (README); needs Open Babel and dockstring.
    "docking": dict(task="molecule", targets="dock:DRD2,dock:ESR2", seeds="0,1,2", budget=1000, iterations=15,
                    strategies="random,grpo,migrate"),
}
PAIRED_REFERENCES = ("random", "ns", "grpo")  # sampling alone, the neighbourhood without training, on-policy GRPO
TIE = 1e-6  # scores this close are one score: the same word embedded in another batch differs in the last bits
RESAMPLES = 10_000
SWEEP_CONFIGS = "*-seed*/config.json"  # an experiment folder holds one sweep folder per strategy and seed
OLDER, MIXED = "older code", "mixed code"


# ----------------------------------------------------------------------------------------------------------
# Running: sweeps of migrate.py, and the estimate of their wall time.

def launch_migrate(migrate_py: Path, nproc: int) -> list[str]:
    """The command line that starts migrate.py quietly, under torchrun when more than one process is asked for."""
    if nproc <= 1:
        return [sys.executable, str(migrate_py), "--quiet"]
    # --standalone: a free port of its own, so two sweeps on one machine do not meet on torchrun's default
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            str(migrate_py), "--quiet"]


def migrate_command(args, out: Path, settings: list[str]) -> list[str]:
    cmd = launch_migrate(ROOT / "migrate.py", args.nproc)
    if (out / "config.json").exists():
        return cmd + ["--resume", str(out)]
    return cmd + ["--task", args.task, "--out", str(out)] + settings


def run(args, cmd: list[str], label: str) -> None:
    print(f"[{label}] {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))


def run_sweep(args, strategy: str, seed: int, out: Path) -> None:
    if sweep_finished(out):  # relaunching it would only load the model to rewrite its summary
        print(f"[{strategy} seed {seed}] finished: {out}", flush=True)
        return
    settings = ["--targets", args.targets, "--strategy", strategy, "--seed", str(seed),
                "--budget", str(args.budget)] + iteration_flag(args) + args.extra
    run(args, migrate_command(args, out, settings), f"{strategy} seed {seed}")


def sweep_finished(out: Path) -> bool:
    """Every target of the sweep folder has reached its end (best.json) and the summary is written."""
    if not (out / "config.json").exists() or not (out / "summary.csv").exists():
        return False
    return all((out / slug(t) / "best.json").exists() for t in read_config(out)["targets"])


def iteration_flag(args) -> list[str]:
    """migrate.py's --iterations when the experiment caps them (else the budget alone ends a run), with --patience
    as long as the cap: the released code stops a run early only when it is solved, never for finding nothing new,
    so an iteration-capped protocol runs every iteration (a --patience given beside it still wins)."""
    if not args.iterations:
        return []
    return ["--iterations", str(args.iterations), "--patience", str(args.iterations)]


def timings(history: Path) -> dict:
    """One run's timed iterations (the warm start, iteration 0, has no times): how many, the evaluations they
    added, their seconds in all and without the update, and the warm start's evaluations."""
    t = dict(iterations=0, evaluations=0, seconds=0.0, sampling_seconds=0.0, warm=0)
    before = 0
    for line in history.read_text().splitlines():
        r = json.loads(line)
        if "time_sample" in r:
            t["iterations"] += 1
            t["evaluations"] += r["evaluations"] - before
            t["sampling_seconds"] += r["time_sample"] + r["time_score"]
            t["seconds"] += r["time_sample"] + r["time_score"] + r["time_update"]
        elif r["iteration"] == 0:
            t["warm"] = r["evaluations"]
        before = r["evaluations"]
    return t


def rate(runs: list[dict], seconds: str = "seconds") -> tuple[float, float] | None:
    """(seconds, evaluations) per iteration, pooled over runs; None without a timed iteration."""
    n = sum(t["iterations"] for t in runs)
    return (sum(t[seconds] for t in runs) / n, sum(t["evaluations"] for t in runs) / n) if n else None


def estimate_seconds(runs_left: dict[str, int], trains: dict[str, bool], rates: dict[bool, tuple[float, float]],
                     budget: int, warm: int, nproc: int, iterations: int | None = None) -> float:
    """Wall time of the runs left: each spends (budget - warm start) evaluations in iterations of its kind's
    measured size and time, or stops at the iteration cap first; a sweep's targets are split over nproc
    processes running side by side."""
    total = 0.0
    for strategy, n in runs_left.items():
        seconds, evaluations = rates[trains[strategy]]
        # iterations that scored nothing new never reach the budget: then only the iteration cap ends a run
        run_iterations = math.ceil(max(budget - warm, 0) / evaluations) if evaluations else math.inf
        total += n * min(run_iterations, iterations or math.inf) * seconds
    return total / nproc


def history_timings(out: Path, code: str) -> dict[str, list[dict]]:
    """strategy -> timings of every run in --out made by this code (finished or not)."""
    found = {}
    for config in out.glob(SWEEP_CONFIGS):
        c = read_config(config.parent)
        if code_label(c) == code:
            for h in config.parent.glob("*/history.jsonl"):
                found.setdefault(c["settings"]["strategy"], []).append(timings(h))
    return found


def calibrate(args, targets: list[str], strategy: str) -> dict[str, list[dict]]:
    """Time 2 iterations of `strategy` in a scratch folder, one target per process (so the processes share the
    cores as the real sweeps will)."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "calibration"
        settings = ["--targets", ",".join(targets[:args.nproc]), "--strategy", strategy, "--seed", "0",
                    "--budget", str(args.budget)] + args.extra + ["--iterations", "2"]  # the last flag counts
        run(args, migrate_command(args, out, settings), "calibration")
        return {strategy: [timings(h) for h in out.glob("*/history.jsonl")]}


def measured_timings(args, out: Path, targets: list[str], trains: dict[str, bool],
                     runs_left: dict[str, int]) -> tuple[dict[str, list[dict]], str]:
    """Timings of the runs of this code in --out, or of a calibration run when those cannot time what is left
    (nothing timed, or training runs to do and no training iteration timed). Also says where they come from."""
    found = {s: ts for s, ts in history_timings(out, code_version(task=args.task)["code_hash"]).items()
             if any(t["iterations"] for t in ts)}
    if found and (any(trains.get(s) for s in found) or not any(trains[s] for s in runs_left)):
        return found, f"{sum(map(len, found.values()))} runs of this code in {out}"
    training = [s for s in args.strategies if trains[s]]
    strategy = "migrate" if "migrate" in training else (training or args.strategies)[0]
    # other work on the machine slows the calibration, and so the estimate: say how busy it was
    source = f"a {strategy} calibration run at load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    return calibrate(args, targets, strategy), source


def print_estimate(args, out: Path, targets: list[str]) -> None:
    """One line before the runs start: their wall time, from measured seconds and evaluations per iteration."""
    trains = {s: STRATEGIES[s].trains for s in args.strategies}
    runs_left = {s: sum(not (out / f"{s}-seed{seed}" / slug(t) / "best.json").exists()
                        for seed in args.seeds for t in targets) for s in args.strategies}
    runs_left = {s: n for s, n in runs_left.items() if n}
    if not runs_left:
        return
    found, source = measured_timings(args, out, targets, trains, runs_left)
    train = rate([t for s, ts in found.items() if trains.get(s) for t in ts])
    sample = rate([t for s, ts in found.items() if not trains.get(s) for t in ts])
    sample = sample or rate([t for ts in found.values() for t in ts], "sampling_seconds")  # training less update
    warm = max(t["warm"] for ts in found.values() for t in ts)
    iterations = sum(t["iterations"] for ts in found.values() for t in ts)
    seconds = estimate_seconds(runs_left, trains, {True: train or sample, False: sample}, args.budget, warm,
                               args.nproc, getattr(args, "iterations", None))
    print(f"estimate: {duration(seconds)} for {sum(runs_left.values())} runs with {args.nproc} "
          f"process{'es' * (args.nproc > 1)} (measured: {per_iteration(train, 'training')}"
          f"{per_iteration(sample, 'sampling-only')}over {iterations} iterations of {source}; runs that stop "
          f"early take less)", flush=True)


def per_iteration(r: tuple[float, float] | None, kind: str) -> str:
    return f"{r[0]:.1f} s per {kind} iteration of {r[1]:.1f} evaluations, " if r else ""


def duration(seconds: float) -> str:
    if math.isinf(seconds):
        return "unknown (the timed iterations scored nothing new and no iteration cap is set)"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


# ----------------------------------------------------------------------------------------------------------
# Which runs to report: one code version.

def code_label(config: dict) -> str:
    """A sweep's code: its code_hash; OLDER before config.json recorded one; MIXED once a resume by other code
    added iterations to it."""
    if "code" not in config:
        return OLDER
    return MIXED if config.get("resumed_with") else config["code"]["code_hash"]


def sweeps_by_code(out: Path) -> dict[str, list[Path]]:
    groups = {}
    for config in sorted(out.glob(SWEEP_CONFIGS)):
        groups.setdefault(code_label(read_config(config.parent)), []).append(config.parent)
    return groups


def finished(sweeps: list[Path]) -> int:
    """How many runs in these sweep folders reached their end (best.json)."""
    return sum(len(list(d.glob("*/best.json"))) for d in sweeps)


def choose_code(groups: dict[str, list[Path]], wanted: str | None = None) -> str:
    """The code whose runs are reported: `wanted` (a code_hash or its prefix, or 'older'/'mixed'), else the
    newest code with finished runs (its latest sweep's config.json written last), else the older code."""
    if wanted:
        match = [c for c in groups if c.startswith(wanted) or c == f"{wanted} code"]
        if len(match) != 1:
            sys.exit(f"--code-hash {wanted} matches {len(match)} of the codes here: {', '.join(groups)}")
        return match[0]
    hashed = [c for c, ds in groups.items() if c not in (OLDER, MIXED) and finished(ds)]
    if hashed:
        return max(hashed, key=lambda c: max((d / "config.json").stat().st_mtime for d in groups[c]))
    return OLDER if OLDER in groups else MIXED


def code_note(groups: dict[str, list[Path]], code: str) -> str:
    """One line: the commit(s) of the reported code, and how many finished runs of other code were left out."""
    if code in (OLDER, MIXED):
        made = f"Code: {code} (no single recorded version)"
    else:
        commits = sorted({(c["commit"] or "no git")[:7] + " (dirty)" * bool(c["dirty"])
                          for c in (read_config(d)["code"] for d in groups[code])})
        made = f"Code: {', '.join(commits)}, code hash {code}"
    left = {c: finished(ds) for c, ds in groups.items() if c != code}
    left = {c: n for c, n in left.items() if n}
    if not left:
        return made + "."
    return (f"{made}. Left out: {sum(left.values())} runs of other code ("
            + ", ".join(f"{n} {c if c in (OLDER, MIXED) else 'of code ' + c}" for c, n in left.items()) + ").")


# ----------------------------------------------------------------------------------------------------------
# Reading runs.

def read_history(run_dir: Path) -> list[dict]:
    """A run's iteration log, one record per line, the warm start's first."""
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def curve(records: list[dict], budget: int) -> list[float]:
    """Best-so-far score after 0..budget evaluations, read from the iteration log: one step per new candidate, in
    the order the log lists them (an iteration scores its batch at once; that order stands in for one within it),
    so that two runs cut at the same evaluation count are cut fairly. A record that lists no candidates counts its
    finds from the evaluation total it reached."""
    points, best = [0.0], 0.0
    for r in records:
        new = [c["score"] for m in r.get("members", []) for c in m["candidates"] if c["status"] == "new"]
        if len(points) - 1 + len(new) != r["evaluations"]:  # no candidates logged: one step for the iteration
            points += [best] * (r["evaluations"] - len(points))
            new = [r["best_score"]]
        for score in new:
            best = max(best, score)
            points.append(best)
        if len(points) > budget + 1:  # found past the budget (a run with a larger one): not counted
            break
    points = points[:budget + 1]
    return points + [points[-1]] * (budget + 1 - len(points))


def sampled_answers(records: list[dict]) -> list[dict]:
    """The members of these iterations whose answers were sampled (a greedy re-insert is none)."""
    return [m for r in records for m in r.get("members", []) if m["origin"] != "greedy"]


def run_dynamics(records: list[dict], iterations: int, budget: int) -> dict:
    """What a run's log says about how it searched: iterations run; GRPO updates taken and skipped (a group with
    no signal); how far each update moved the policy, as |token ratio - 1| and the clipped fraction of its last
    step (the ratio is 1 before the first step, so this is the step's own move); the sampled answers (greedy
    re-inserts left out) and how many held a candidate the task could score (the rest did not parse: a policy
    rewarded 0 for those learns to parse), and their candidates and how many were new (a policy that collapses
    onto a few answers finds ever fewer new ones), each over the run and over its last quarter of iterations; and
    whether it stalled (stopped by --patience: neither solved, nor at its iteration cap, nor out of budget)."""
    records = [r for r in records if r.get("iteration") != 0]  # the warm start is no iteration
    updates = [r for r in records if r.get("ratio_mean") is not None]
    answers, answers_late = sampled_answers(records), sampled_answers(records[len(records) * 3 // 4:])
    sampled = [c for m in answers for c in m["candidates"]]
    late = [c for m in answers_late for c in m["candidates"]]
    last = records[-1] if records else {}
    stalled = (last.get("iteration", 0) < iterations and last.get("evaluations", 0) < budget
               and last.get("best_score", 0.0) < 1)
    return dict(iterations=len(records), updates=len(updates), skipped=sum("skipped" in r for r in records),
                ratio_moves=[abs(r["ratio_mean"] - 1) for r in updates],
                clip=[r["clip_fraction"] for r in updates],
                answers=len(answers), valid=sum(bool(m["candidates"]) for m in answers),
                answers_late=len(answers_late), valid_late=sum(bool(m["candidates"]) for m in answers_late),
                new=sum(c["status"] == "new" for c in sampled), sampled=len(sampled),
                new_late=sum(c["status"] == "new" for c in late), sampled_late=len(late), stalled=stalled)


def measured_kl(run_dir: Path) -> float | None:
    """bench/drift.py's KL of the trained policy to the base model per token, when it has measured the run."""
    drift = run_dir / "drift.json"
    return json.loads(drift.read_text())["kl_per_token"] if drift.exists() else None


def collect(args, out: Path, targets: list[str], sweeps: list[Path] | None = None) -> dict:
    """strategy -> list of runs {seed, target, best, solved, first_hit, curve, dynamics}, from the given sweep
    folders only (None: all)."""
    results = {}
    for strategy in args.strategies:
        for seed in args.seeds:
            sweep = out / f"{strategy}-seed{seed}"
            if sweeps is not None and sweep not in sweeps:
                continue
            config = sweep / "config.json"
            settings = read_config(sweep)["settings"] if config.exists() else {}
            for t in targets:
                d = sweep / slug(t)
                if not (d / "best.json").exists():
                    continue
                b = json.loads((d / "best.json").read_text())
                history = read_history(d)
                c = curve(history, args.budget)
                used = min(b["evaluations"], args.budget)  # a report may cut runs made with a larger budget
                hit = next((e for e, v in enumerate(c) if v >= args.threshold), None)
                dynamics = run_dynamics(history, settings.get("iterations", math.inf),
                                        settings.get("budget", math.inf)) | dict(kl=measured_kl(d))
                results.setdefault(strategy, []).append(dict(seed=seed, target=t, best=b["best_score"],
                                                             solved=b["solved"], first_hit=hit, curve=c,
                                                             evaluations=used, dynamics=dynamics))
    return results


def add_untrained_runs(args, folder: Path, code: str, targets: list[str], results: dict) -> tuple[dict, str]:
    """The strategies that never train (random, ns, opro) ignore every training setting: a sweep under another
    learning rate pairs with their runs in another experiment's folder, of the same code, instead of rerunning
    them. Returns the results in STRATEGIES order and a line for the report."""
    groups = sweeps_by_code(folder)
    if code not in groups:
        sys.exit(f"--untrained-from {folder} has no runs of code {code}")
    untrained = [s for s, strategy in STRATEGIES.items() if not strategy.trains and s not in results]
    borrowed = collect(Namespace(**{**vars(args), "strategies": untrained}), folder, targets, groups[code])
    merged = {s: (results | borrowed)[s] for s in STRATEGIES if s in results or s in borrowed}
    return merged, f"{', '.join(borrowed) or 'No strategy'}: the runs in {folder} (untrained, the same code)."


# ----------------------------------------------------------------------------------------------------------
# Statistics.

def mean_std(xs):
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / max(len(xs) - 1, 1))


def paired_differences(runs: list[dict], reference: list[dict], equal_evaluations=False) -> list[float]:
    """Best score minus the reference's on the same (seed, target), hence from the same warm start; runs without
    a partner are left out. Ordered by (seed, target), so that the bootstrap is reproducible. With
    equal_evaluations, each run's best within the evaluations the shorter run of the pair used: an iteration cap
    lets a policy that repeats itself (repeats are free) end with fewer evaluations than its partner."""
    ref = {(r["seed"], r["target"]): r for r in reference}

    def diff(r, q):
        if not equal_evaluations:
            return r["best"] - q["best"]
        e = min(r["evaluations"], q["evaluations"])
        return r["curve"][e] - q["curve"][e]
    return [diff(r, ref[r["seed"], r["target"]])
            for r in sorted(runs, key=lambda r: (r["seed"], r["target"])) if (r["seed"], r["target"]) in ref]


def wins_ties_losses(diffs: list[float]) -> tuple[int, int, int]:
    wins, losses = sum(d > TIE for d in diffs), sum(d < -TIE for d in diffs)
    return wins, len(diffs) - wins - losses, losses


def bootstrap_interval(diffs: list[float], resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the mean difference: resample the pairs with replacement."""
    d = np.asarray(diffs, dtype=np.float64)
    means = d[np.random.default_rng(seed).integers(0, len(d), (resamples, len(d)))].mean(axis=1)  # (resamples,)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test, ties already dropped: twice the binomial(n, 1/2) tail of the rarer sign."""
    n = wins + losses
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2 ** n)


def holm(ps: list[float]) -> list[float]:
    """Holm's step-down adjustment of m p-values, in their order: the i-th smallest is multiplied by m - i + 1,
    then made non-decreasing. An adjusted p below 0.05 holds for the whole family of m tests at once."""
    adjusted, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(sorted(range(len(ps)), key=lambda i: ps[i])):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a fraction k/n (stays inside [0, 1] and is not empty at k = 0 or n)."""
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(centre - half, 0.0), min(centre + half, 1.0)


def verdict(interval: tuple[float, float], p: float) -> str:
    """A difference counts only when the bootstrap interval excludes 0 and the sign test agrees (p < 0.05):
    with a handful of pairs the bootstrap interval is too narrow to trust alone."""
    lo, hi = interval
    if p >= 0.05 or lo <= 0 <= hi:
        return "not distinguishable"
    return "better" if lo > 0 else "worse"


def comparisons(results: dict, equal_evaluations=False) -> list[dict]:
    """Every strategy against each reference present, each pair of strategies once (ns against random, not also
    random against ns); the rows are one family for Holm's adjustment of the sign test."""
    refs = [r for r in PAIRED_REFERENCES if r in results]
    rows = []
    for ref in refs:
        for strategy, runs in results.items():
            if strategy == ref or strategy in refs[:refs.index(ref)]:
                continue
            diffs = paired_differences(runs, results[ref], equal_evaluations)
            if diffs:
                rows.append(dict(strategy=strategy, reference=ref, at="equal evaluations" if equal_evaluations
                                 else "end", **pair_statistics(diffs)))
    for row, p in zip(rows, holm([r["sign_p"] for r in rows])):
        row["holm_p"] = p
    return rows


def pair_statistics(diffs: list[float]) -> dict:
    """The paired comparison of one list of differences: mean, bootstrap interval, sign test, W/T/L, verdict."""
    w, t, l = wins_ties_losses(diffs)
    ci, p = bootstrap_interval(diffs), sign_test(w, l)
    return dict(pairs=len(diffs), mean_diff=sum(diffs) / len(diffs), ci_low=ci[0], ci_high=ci[1], sign_p=p,
                wins=w, ties=t, losses=l, verdict=verdict(ci, p))


def pair_cells(c: dict) -> str:
    """A pair_statistics row as the table cells from the mean difference on (with its Holm p when it has one)."""
    holm_cell = f"{c['holm_p']:.3f} | " if "holm_p" in c else ""
    return (f"{c['mean_diff']:+.3f} | [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] | {c['sign_p']:.3f} | {holm_cell}"
            f"{c['wins']}/{c['ties']}/{c['losses']} | {c['verdict']} |")


# ----------------------------------------------------------------------------------------------------------
# Reports.

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


def write_table(results: dict, out: Path, threshold: float, note: str = "") -> str:
    """table.md: the note on code, the per-strategy table, then the paired comparisons (table.csv, paired.csv)."""
    rows, pairs = summary_rows(results), comparisons(results)
    equal = comparisons(results, equal_evaluations=True)
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


def read_experiment(args, folder: Path) -> tuple[dict, str, list[str], dict]:
    """An experiment folder's sweeps by code, the code reported (--code-hash, else the newest with finished
    runs), its targets and its runs."""
    groups = sweeps_by_code(folder)
    if not groups:
        sys.exit(f"nothing to report in {folder}")
    code = choose_code(groups, args.code_hash)
    targets = read_config(groups[code][0])["targets"]
    return groups, code, targets, collect(args, folder, targets, groups[code])


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
    """dynamics.md: per strategy, how its runs searched (run_dynamics), pooled over runs."""
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
               "the runs and over their last quarter of iterations. KL: bench/drift.py's KL(trained || base) per "
               "token on the trained policy's own answers, over the runs it measured. Stalled: stopped by "
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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--protocol", choices=PROTOCOLS, help="a named experiment (paper: the paper's word search, "
                   "10 targets, 8 strategies, seeds 0,1,2, 100 iterations, budget 1000; tune: five other words for "
                   "choosing settings; tuned: paper's five training strategies at the setting tune chose; "
                   "molecules: the RDKit objectives, 40 iterations; docking: 2 proteins, 3 strategies, 15 "
                   "iterations); flags beside it override it")
    p.add_argument("--task", default="wordsearch")
    p.add_argument("--targets", default="paper", help="named set or comma-separated targets")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--budget", type=int, default=200, help="black-box evaluations per target and seed")
    p.add_argument("--iterations", type=int, help="iterations per target and seed [the budget alone ends a run]")
    p.add_argument("--threshold", type=float, default=0.8, help="score whose first reach is timed")
    p.add_argument("--nproc", type=int, default=1, help="torchrun processes per sweep")
    p.add_argument("--threads", type=int, default=2, help="torch threads per process")
    p.add_argument("--out", default="results/search")
    p.add_argument("--report-only", action="store_true", help="only aggregate what is already there")
    p.add_argument("--untrained-from", help="report random, ns and opro from this experiment folder (same code, "
                   "targets and seeds): they do not train, so a sweep of other training settings need not rerun them")
    p.add_argument("--compare", help="comma-separated --out folders of one sweep each under another setting (the "
                   "first is the reference): write settings.md into --out and stop")
    p.add_argument("--estimate-only", action="store_true", help="print the wall-time estimate and stop")
    p.add_argument("--code-hash", help="report the runs of this code (a code_hash prefix, or 'older' for runs "
                   "from before config.json recorded code) [the newest code with runs]")
    p.set_defaults(migrate_flags="")  # a protocol's own migrate.py flags, before any given beside it
    protocol = p.parse_known_args(argv)[0].protocol
    if protocol:
        p.set_defaults(**PROTOCOLS[protocol])
    args, extra = p.parse_known_args(argv)
    args.extra = args.migrate_flags.split() + extra  # migrate.py keeps the last of a repeated flag
    args.strategies = args.strategies.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    return args


def main():
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.compare:
        print(compare_settings(args, [Path(f) for f in args.compare.split(",")], out))
        return
    if not args.report_only:
        print_estimate(args, out, expand_targets(load_task_class(args.task), args.targets))
        if args.estimate_only:
            return
        for seed in args.seeds:
            for strategy in args.strategies:
                run_sweep(args, strategy, seed, out / f"{strategy}-seed{seed}")
    groups, code, targets, results = read_experiment(args, out)
    note = code_note(groups, code)
    if args.untrained_from:
        results, line = add_untrained_runs(args, Path(args.untrained_from), code, targets, results)
        note += " " + line
    print(write_table(results, out, args.threshold, note))
    write_target_table(results, out, targets)
    print(write_dynamics_table(results, out))
    write_curves(results, out, args.budget, f"{args.task}: best so far vs evaluations ({len(targets)} targets, "
                                            f"seeds {','.join(map(str, args.seeds))})")
    print(f"wrote {out}/table.md, table.csv, paired.csv, targets.md, dynamics.md, curves.svg")


if __name__ == "__main__":
    main()
