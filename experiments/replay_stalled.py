"""Runs again, to their iteration cap, the runs of an experiment that --patience stopped early, and puts each
replay in place of the run it replays once the replay has reproduced that run up to where it stopped.

Until the harness passed --patience equal to the iteration cap, its protocols ran with the CLI's patience of 10:
a run that scored nothing new for 10 iterations stopped, where the released code runs on to the cap. A run is
deterministic given its code and settings, so a run that patience did not stop is the same under any patience;
only the stopped ones must run again. Each replay uses the experiment's own code (--code: a checkout of the
commit that made it, e.g. a git worktree; another code hash is refused) and settings, with --patience equal to
the cap; its log must equal the stopped run's record for record (timings aside), or nothing is replaced. Then the
replay takes the run's place, the sweep's summary is rewritten, config.json records the new patience and which
targets were replayed, and the experiment's records are packed again. Resumable: a replay half done continues
from its state.pt. The run folders come from the records when the experiment has none (a fresh clone).
Afterwards run experiments.drift (a replayed run has a new adapter) and the report.

    git worktree add --detach /tmp/made-it 2fef283
    python -m experiments.replay_stalled results/wordsearch-tuned --code /tmp/made-it --nproc 2 --threads 1
"""
import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from experiments.measures import run_dynamics
from experiments.records import RUNS, pack, read_history, sweep_folders, unpack
from experiments.run import ROOT, launch_migrate
from rundir import atomic_write, code_version, read_config, slug, write_summary

REPLAYS = "replays"  # under the experiment's run folders (git-ignored with them) while they run


def stopped_by_patience(sweep: Path) -> list[str]:
    """The targets of a sweep whose run patience ended: before the cap and the budget, unsolved."""
    config = read_config(sweep)
    s = config["settings"]
    if s["patience"] >= s["iterations"]:  # patience as long as the cap never ends a run early
        return []
    return [t for t in config["targets"] if (sweep / slug(t) / "best.json").exists()
            and run_dynamics(read_history(sweep / slug(t)), s["iterations"], s["budget"])["stalled"]]


def replay_command(code: Path, folder: Path, cap: int, nproc: int) -> list[str]:
    """code's migrate.py continuing the replay folder (its config.json: the sweep's, for the stopped targets) with
    patience as long as the cap."""
    return launch_migrate(code / "migrate.py", nproc) + ["--resume", str(folder), "--patience", str(cap)]


def replay(code: Path, sweep: Path, targets: list[str], nproc: int, threads: int) -> Path:
    folder = sweep.parent / REPLAYS / sweep.name
    if not all((folder / slug(t) / "best.json").exists() for t in targets):
        config = read_config(sweep)
        if not (folder / "config.json").exists():  # a replay already begun keeps its own config.json
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(folder / "config.json", json.dumps(config | dict(targets=targets), indent=1))
        cmd = replay_command(code, folder, config["settings"]["iterations"], min(nproc, len(targets)))
        print(f"[{sweep.name}] replaying {', '.join(targets)}", flush=True)
        subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    return folder


def without_timings(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in records]


def reproduces(stopped: Path, replayed: Path) -> bool:
    """The replay's log begins with the stopped run's log, record for record, timings aside."""
    old, new = without_timings(read_history(stopped)), without_timings(read_history(replayed))
    return new[:len(old)] == old


def put_in_place(sweep: Path, folder: Path, targets: list[str]) -> None:
    """The replays take their runs' places; config.json says so (the sweep's settings now have patience as long
    as the cap, which is what every run of it has behaved as); the summary is rewritten. The stopped runs are
    deleted with the replay folder, last."""
    config = read_config(sweep)
    for t in targets:
        # the stopped run goes aside before the replay moves in: a crash between the two loses neither
        shutil.move(sweep / slug(t), folder / f"{slug(t)}.stopped")
        shutil.move(folder / slug(t), sweep / slug(t))
    config["settings"]["patience"] = config["settings"]["iterations"]
    config["replayed_to_the_cap"] = sorted(set(config.get("replayed_to_the_cap", [])) | set(targets))
    atomic_write(sweep / "config.json", json.dumps(config, indent=1))
    write_summary(sweep, config["targets"])
    shutil.rmtree(folder)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m experiments.replay_stalled", description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", type=Path, help="an experiment folder (--out of python -m experiments)")
    p.add_argument("--nproc", type=int, default=1, help="processes per replay (torchrun when > 1)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    p.add_argument("--only", default="*", help="comma-separated patterns of the sweeps to replay, e.g. 'grpo-seed*' "
                                                "(two commands on disjoint sweeps keep two cores busy)")
    p.add_argument("--code", type=Path, default=ROOT, help="a checkout of the commit that made the experiment, "
                                                            "whose migrate.py replays (default: this one)")
    args = p.parse_args(argv)
    code = args.code.resolve()
    unpack(args.experiment)
    sweeps = [d for d in sweep_folders(args.experiment)
              if any(fnmatch.fnmatch(d.name, pattern) for pattern in args.only.split(","))]
    replayed = 0
    for sweep in sweeps:
        targets = stopped_by_patience(sweep)
        if not targets:
            continue
        config = read_config(sweep)
        made_by, here = config["code"]["code_hash"], code_version(code, config["settings"]["task"])["code_hash"]
        if made_by != here:
            sys.exit(f"{sweep} was made by code {made_by} (commit {config['code']['commit']}); this checkout is "
                     f"{here}: give --code a checkout of that commit")
        folder = replay(code, sweep, targets, args.nproc, args.threads)
        differ = [t for t in targets if not reproduces(sweep / slug(t), folder / slug(t))]
        if differ:
            sys.exit(f"{sweep}: the replay of {', '.join(differ)} does not reproduce the stopped run; nothing "
                     f"replaced (the replays are in {folder})")
        put_in_place(sweep, folder, targets)
        replayed += len(targets)
        print(f"[{sweep.name}] {', '.join(targets)}: reproduced up to the stop, run on to the cap, in place",
              flush=True)
    replays = args.experiment / RUNS / REPLAYS
    if replays.is_dir() and not any(replays.iterdir()):
        replays.rmdir()
    if replayed and pack(args.experiment):
        print(f"packed the runs' records into {args.experiment}/runs.jsonl.gz")
    print(f"{replayed} runs replayed to the cap in {args.experiment}")


if __name__ == "__main__":
    main()
