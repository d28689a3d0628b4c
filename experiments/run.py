"""Running an experiment: strategies x seeds as sweeps of migrate.py over the targets (each sweep under torchrun
when --nproc > 1) into the experiment's run folders (runs/, one sweep folder per strategy and seed), resuming a
half-finished experiment instead of starting over. Before starting it prints a measured estimate of the wall
time: seconds and evaluations per iteration read from the histories of runs of the same code already there, or,
when there are none, from a 2-iteration calibration sweep of every target and seed in lockstep.

Left out: start-up time (model load, warm start) in the estimate, a few seconds per sweep.
"""
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from experiments.measures import timings
from experiments.records import SWEEP_CONFIGS, read_history
from experiments.versions import code_label
from loop import STRATEGIES
from rundir import code_version, read_config, slug

ROOT = Path(__file__).resolve().parents[1]


def launch_migrate(migrate_py: Path, nproc: int) -> list[str]:
    """The command line that starts migrate.py quietly, under torchrun when more than one process is asked for."""
    if nproc <= 1:
        return [sys.executable, str(migrate_py), "--quiet"]
    # --standalone: a free port of its own, so two sweeps on one machine do not meet on torchrun's default
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            str(migrate_py), "--quiet"]


def migrate_command(args, out: Path, settings: list[str]) -> list[str]:
    """migrate.py starting new runs in `out` (which may hold {seed}) with these settings."""
    return launch_migrate(ROOT / "migrate.py", args.nproc) + ["--task", args.task, "--out", str(out)] + settings


def run(args, cmd: list[str], label: str) -> None:
    print(f"[{label}] {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))


def run_sweeps(args, runs: Path) -> None:
    """Every sweep of the experiment, strategy by strategy; a strategy's seeds run in one migrate.py, all its
    searches (targets x seeds) in lockstep, a run folder per seed (runs/STRATEGY-seedN)."""
    for strategy in args.strategies:
        left = [k for k in args.seeds if not sweep_finished(runs / f"{strategy}-seed{k}")]
        for k in [k for k in args.seeds if k not in left]:  # relaunching them would only rewrite their summaries
            print(f"[{strategy} seed {k}] finished: {runs / f'{strategy}-seed{k}'}", flush=True)
        started = [k for k in left if (runs / f"{strategy}-seed{k}" / "config.json").exists()]
        fresh = [k for k in left if k not in started]
        label = f"{strategy} seeds {','.join(map(str, left))}"
        if started:
            resume = ",".join(str(runs / f"{strategy}-seed{k}") for k in started)
            run(args, launch_migrate(ROOT / "migrate.py", args.nproc) + ["--resume", resume], label)
        if fresh:
            settings = sweep_settings(args, args.targets, strategy, fresh) + iteration_flag(args) + args.extra
            run(args, migrate_command(args, runs / f"{strategy}-seed{{seed}}", settings), label)


def sweep_settings(args, targets: str, strategy: str, seeds: list[int]) -> list[str]:
    """migrate.py's flags for one sweep of these targets and seeds at the experiment's budget."""
    return ["--targets", targets, "--strategy", strategy, "--seeds", ",".join(map(str, seeds)),
            "--budget", str(args.budget)]


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


# ----------------------------------------------------------------------------------------------------------
# The wall-time estimate.

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


def history_timings(runs: Path, code: str) -> dict[str, list[dict]]:
    """strategy -> timings of every run in these run folders made by this code (finished or not)."""
    found = {}
    for config in runs.glob(SWEEP_CONFIGS):
        c = read_config(config.parent)
        if code_label(c) == code:
            for h in config.parent.glob("*/history.jsonl"):
                found.setdefault(c["settings"]["strategy"], []).append(timings(read_history(h.parent)))
    return found


def calibrate(args, targets: list[str], strategy: str) -> dict[str, list[dict]]:
    """Time 2 iterations of `strategy` in a scratch folder at the shape the sweeps run: every target and seed in
    one lockstep sweep, split over the processes, so the timings carry what lockstep saves (and what the
    processes sharing the cores costs)."""
    with tempfile.TemporaryDirectory() as scratch:
        # the last --iterations counts, so the calibration's 2 override any the experiment's flags give
        settings = sweep_settings(args, ",".join(targets), strategy, args.seeds) + args.extra + ["--iterations", "2"]
        run(args, migrate_command(args, Path(scratch) / "calibration-seed{seed}", settings), "calibration")
        return {strategy: [timings(read_history(h.parent)) for h in Path(scratch).glob("*/*/history.jsonl")]}


def measured_timings(args, runs: Path, targets: list[str], trains: dict[str, bool],
                     runs_left: dict[str, int]) -> tuple[dict[str, list[dict]], str]:
    """Timings of the runs of this code in the run folders, or of a calibration sweep when those cannot time what
    is left (nothing timed, or training runs to do and no training iteration timed). Also says where they come
    from."""
    found = {s: ts for s, ts in history_timings(runs, code_version(task=args.task)["code_hash"]).items()
             if any(t["iterations"] for t in ts)}
    if found and (any(trains.get(s) for s in found) or not any(trains[s] for s in runs_left)):
        return found, f"{sum(map(len, found.values()))} runs of this code in {runs}"
    training = [s for s in args.strategies if trains[s]]
    strategy = "migrate" if "migrate" in training else (training or args.strategies)[0]
    # other work on the machine slows the calibration, and so the estimate: say how busy it was
    n = len(targets) * len(args.seeds)
    source = (f"a {strategy} calibration sweep of {n} search{'es' * (n > 1)} at load {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} cores")
    return calibrate(args, targets, strategy), source


def print_estimate(args, runs: Path, targets: list[str]) -> None:
    """One line before the runs start: their wall time, from measured seconds and evaluations per iteration."""
    trains = {s: STRATEGIES[s].trains for s in args.strategies}
    runs_left = {s: sum(not (runs / f"{s}-seed{seed}" / slug(t) / "best.json").exists()
                        for seed in args.seeds for t in targets) for s in args.strategies}
    runs_left = {s: n for s, n in runs_left.items() if n}
    if not runs_left:
        return
    found, source = measured_timings(args, runs, targets, trains, runs_left)
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
