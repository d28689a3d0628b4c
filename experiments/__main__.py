"""MiGrATe against every baseline at the same budget of black-box evaluations: the experiments' command line.

Runs strategies x seeds as sweeps of migrate.py into --out/runs/ (run.py: resumed, with a wall-time estimate
first), packs the runs' light data into --out/runs.jsonl.gz (records.py), and writes the report into --out from
those records (report.py: table.md, table.csv, paired.csv, targets.md, dynamics.md, curves.svg). --report-only
skips the runs, so on a fresh clone it recomputes every table from the committed records. With --compare
DIR,DIR,... it instead pairs sweeps made under different settings (one folder each, the first the reference) per
strategy on the same target and seed, and writes settings.md into --out. With --untrained-from DIR the report
takes random, ns and opro from another experiment of the same code (they never train, so a sweep of other
training settings runs only the strategies that do). The report never mixes code versions: it reads the sweeps
of one code_hash (config.json's `code`; default the newest that has runs, or --code-hash) and says how many runs
of other code it left out.

    python -m experiments --protocol paper --nproc 2 --threads 1 --out results/wordsearch-paper
    python -m experiments --protocol paper --report-only --out results/wordsearch-paper
    python -m experiments --task wordsearch --targets paper --seeds 0,1,2 --budget 200 --out results/ws
"""
import argparse
from pathlib import Path

from experiments.records import RUNS, check_layout, pack, sweep_folders, unpack
from experiments.report import compare_settings, report
from experiments.run import print_estimate, run_sweeps
from loop import STRATEGIES
from tasks import expand_targets, load_task_class

PROTOCOLS = {  # named experiments: defaults that explicit flags still override
    # The paper's word search: 100 iterations of 10 words, so at most 1,000 evaluations; repeats are free here,
    # so a run evaluates fewer distinct words (about 4 new ones an iteration). The comparisons it is run for come
    # first, so that a half-finished experiment already pairs them.
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
    # The paper's docking score on two of its proteins, small enough for a 2-core machine (its 18 runs took about
    # an hour on this project's); needs Open Babel and dockstring.
    "docking": dict(task="molecule", targets="dock:DRD2,dock:ESR2", seeds="0,1,2", budget=1000, iterations=15,
                    strategies="random,grpo,migrate"),
    # TTT-Discover beside MiGrATe at equal budget: discover and its two ideas crossed with MiGrATe's group, against
    # migrate, ns and random, on the paper's word search and on the RDKit molecule objectives.
    "discover-words": dict(task="wordsearch", targets="paper", seeds="0,1,2", budget=1000, iterations=100,
                           strategies="random,ns,migrate,discover,migrate-entropic,migrate-puct",
                           references="random,ns,migrate"),
    "discover-molecules": dict(task="molecule", targets="rediscover:celecoxib,qed,mpo,logp-window", seeds="0,1,2",
                               budget=1000, iterations=40,
                               strategies="random,ns,migrate,discover,migrate-entropic,migrate-puct",
                               references="random,ns,migrate"),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m experiments", description=__doc__.splitlines()[0])
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
    p.add_argument("--references", default="random,ns,grpo", help="the strategies every other is paired against")
    p.add_argument("--nproc", type=int, default=1, help="torchrun processes per sweep")
    p.add_argument("--threads", type=int, default=2, help="torch threads per process")
    p.add_argument("--out", default="results/search", help="the experiment folder: run folders go to OUT/runs/ "
                   "(git-ignored), their light data to OUT/runs.jsonl.gz, the tables beside it")
    p.add_argument("--report-only", action="store_true", help="no runs: pack the run folders there are and "
                   "recompute the tables from the records")
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
    args.references = args.references.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    return args


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    check_layout(out)
    if args.compare:
        print(compare_settings(args, [Path(f) for f in args.compare.split(",")], out))
        return
    if not args.report_only:
        unpack(out)  # runs made elsewhere (a fresh clone's records) count as finished here
        print_estimate(args, out / RUNS, expand_targets(load_task_class(args.task), args.targets))
        if args.estimate_only:
            return
        run_sweeps(args, out / RUNS)
    if sweep_folders(out) and pack(out):
        print(f"packed the runs' records into {out}/runs.jsonl.gz")
    report(args, out)


if __name__ == "__main__":
    main()
