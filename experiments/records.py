"""An experiment's runs as data: read from its run folders, packed into one compressed file, unpacked again.

An experiment folder (the harness's --out) keeps its run folders under runs/, one sweep folder per strategy and
seed (`grpo-seed0/`, one run folder per target inside), git-ignored: they hold adapters and resume states. Their
light data is packed into one file beside the tables, runs.jsonl.gz: one line per sweep with its config.json and,
per target, the run's history.jsonl records, best.json and drift.json. That file is what is committed and what a
report reads, so a fresh clone recomputes every table without a single run folder. Packing merges (a run folder
replaces its packed run, packed runs without a folder stay) and writes nothing when nothing changed; the
compressed bytes depend only on the records, so an unchanged experiment never shows in a diff.

Records of older code are put in today's words as they are read: the on-policy member and prompt were "online",
and the past solution an NS prompt is built from (member key, and the `neighbours` setting's value) was "seed".

Left out: adapters and resume states (too large; drift.py measures adapters on the machine that made the runs),
and each run's plot and each sweep's summary, derived files that unpack writes again.
"""
import gzip
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from rundir import atomic_write, read_config, slug, write_summary

RUNS = "runs"  # the experiment's run folders (git-ignored)
RECORDS = "runs.jsonl.gz"  # their light data (committed)
SWEEP_CONFIGS = "*-seed*/config.json"  # one sweep folder per strategy and seed


@dataclass
class Run:
    history: list[dict]  # history.jsonl, one record per iteration, the warm start's first
    best: dict | None = None  # best.json: None while the run has not ended
    drift: dict | None = None  # drift.json, once drift.py has measured the run


@dataclass
class Sweep:
    name: str  # "<strategy>-seed<seed>"
    config: dict  # config.json: settings, targets, code
    written: int  # when config.json was last written (seconds): the report's newest code is the latest started
    runs: dict[str, Run]  # run folder name (rundir.slug of the target) -> run, in the order of config's targets


# ----------------------------------------------------------------------------------------------------------
# Today's words.

def in_todays_words(value):
    return "on-policy" if value == "online" else value


def normalised_member(member: dict) -> dict:
    return {("parent" if k == "seed" else k): in_todays_words(v) if k in ("origin", "prompt") else v
            for k, v in member.items()}


def normalised_record(record: dict) -> dict:
    if "members" not in record:
        return record
    return record | dict(members=[normalised_member(m) for m in record["members"]])


def normalised_best(best: dict) -> dict:
    if "top" not in best:
        return best
    return best | dict(top=[e | dict(origin=in_todays_words(e.get("origin"))) if "origin" in e else e
                            for e in best["top"]])


def normalised_config(config: dict) -> dict:
    settings = config["settings"]
    if settings.get("neighbours") != "seed":
        return config
    return config | dict(settings=settings | dict(neighbours="parent"))


# ----------------------------------------------------------------------------------------------------------
# Run folders.

def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def read_history(run_dir: Path) -> list[dict]:
    """A run's iteration log, one record per line, the warm start's first."""
    return [normalised_record(json.loads(line)) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def read_run(run_dir: Path) -> Run | None:
    """A run folder's light files; None before its first record."""
    if not (run_dir / "history.jsonl").exists():
        return None
    best = read_json(run_dir / "best.json")
    return Run(read_history(run_dir), best and normalised_best(best), read_json(run_dir / "drift.json"))


def read_sweep(folder: Path) -> Sweep:
    config = read_config(folder)
    runs = {slug(t): read_run(folder / slug(t)) for t in config["targets"]}
    return Sweep(folder.name, normalised_config(config), int(os.stat(folder / "config.json").st_mtime),
                 {name: run for name, run in runs.items() if run})


def check_layout(experiment: Path) -> None:
    """Sweep folders directly in the experiment folder (where the harness kept them before it packed records)
    would be passed over: refused in one line that says where they go."""
    if any(experiment.glob(SWEEP_CONFIGS)):
        sys.exit(f"{experiment} holds sweep folders directly; move them into {experiment / RUNS}/ "
                 f"(mkdir -p {experiment / RUNS} && mv {experiment}/*-seed* {experiment / RUNS}/)")


def sweep_folders(experiment: Path) -> list[Path]:
    """The sweep folders under experiment/runs/, by name."""
    check_layout(experiment)
    return sorted(p.parent for p in (experiment / RUNS).glob(SWEEP_CONFIGS))


# ----------------------------------------------------------------------------------------------------------
# The packed file.

def read_records(experiment: Path) -> list[Sweep]:
    """The sweeps packed in experiment/runs.jsonl.gz (none when it has no such file)."""
    path = experiment / RECORDS
    if not path.exists():
        return []
    return [sweep_from_line(json.loads(line)) for line in gzip.decompress(path.read_bytes()).decode().splitlines()]


def sweep_from_line(line: dict) -> Sweep:
    runs = {name: Run(r["history"], r["best"], r["drift"]) for name, r in line["runs"].items()}
    return Sweep(line["sweep"], line["config"], line["written"], runs)


def sweep_line(sweep: Sweep) -> str:
    runs = {name: dict(history=r.history, best=r.best, drift=r.drift) for name, r in sweep.runs.items()}
    return json.dumps(dict(sweep=sweep.name, written=sweep.written, config=sweep.config, runs=runs),
                      separators=(",", ":")) + "\n"


def current_sweeps(experiment: Path) -> list[Sweep]:
    """The experiment's sweeps, by name: the packed ones, with what its run folders hold laid over them."""
    sweeps = {s.name: s for s in read_records(experiment)}
    for folder in sweep_folders(experiment):
        here = read_sweep(folder)
        runs = (sweeps[here.name].runs if here.name in sweeps else {}) | here.runs
        here.runs = {slug(t): runs[slug(t)] for t in here.config["targets"] if slug(t) in runs}
        sweeps[here.name] = here
    return [sweeps[name] for name in sorted(sweeps)]


def pack(experiment: Path) -> bool:
    """Write experiment/runs.jsonl.gz from current_sweeps; returns whether it changed."""
    text = "".join(map(sweep_line, current_sweeps(experiment)))
    path = experiment / RECORDS
    if path.exists() and gzip.decompress(path.read_bytes()).decode() == text:
        return False
    atomic_write(path, gzip.compress(text.encode(), compresslevel=9, mtime=0))  # mtime 0: the same bytes each time
    return True


def unpack(experiment: Path) -> int:
    """Write the packed runs that experiment/runs/ lacks back into run folders (light files, and each sweep's
    summary), so that the harness resumes as if it had made them here; returns how many runs it wrote. A folder
    already there is left as it is: it is newer than the record."""
    written = 0
    for sweep in read_records(experiment):
        folder = experiment / RUNS / sweep.name
        missing = {name: run for name, run in sweep.runs.items() if not (folder / name).exists()}
        if not missing and (folder / "config.json").exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "config.json").exists():
            atomic_write(folder / "config.json", json.dumps(sweep.config, indent=1))
            os.utime(folder / "config.json", (sweep.written, sweep.written))
        for name, run in missing.items():
            write_run(folder / name, run)
        write_summary(folder, sweep.config["targets"])
        written += len(missing)
    return written


def write_run(run_dir: Path, run: Run) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in run.history))
    for name, data in (("best.json", run.best), ("drift.json", run.drift)):
        if data is not None:
            (run_dir / name).write_text(json.dumps(data, indent=1))
