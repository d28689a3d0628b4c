"""Where a molecule experiment's finds came from: per strategy, the share of sampled answers that held a valid
molecule, the share of new molecules that are aromatic, and per run the member origin (on-policy, neighbourhood,
...) whose answer first proposed the run's best molecule. Read from the experiment's records (its committed
runs.jsonl.gz, with any run folders laid over it).

    python -m experiments.molecule_origins results/docking
"""
import argparse
import math
from collections import defaultdict
from pathlib import Path

from rdkit import Chem, RDLogger

from experiments.measures import run_dynamics, sampled_answers
from experiments.records import Run, current_sweeps
from rundir import slug

RDLogger.DisableLog("rdApp.*")


def is_aromatic(smiles: str) -> bool:
    mol = Chem.MolFromSmiles(smiles)  # candidates were scored, so they parse
    return mol is not None and any(atom.GetIsAromatic() for atom in mol.GetAtoms())


def run_origins(run: Run) -> dict:
    best, records = run.best["best"], run.history
    counts = run_dynamics(records, iterations=math.inf, budget=math.inf)  # sampled answers, and valid ones
    new = [c["candidate"] for m in sampled_answers(records) for c in m["candidates"] if c["status"] == "new"]
    best_from = next(((r["iteration"], m["origin"]) for r in records for m in r.get("members", [])
                      for c in m["candidates"] if c["candidate"] == best), None)
    return dict(answers=counts["answers"], valid=counts["valid"], new=len(new), aromatic=sum(map(is_aromatic, new)),
                best=best, best_from=best_from)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m experiments.molecule_origins", description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", type=Path, help="an experiment folder of the molecule task (--out of "
                                                 "python -m experiments)")
    args = p.parse_args(argv)
    totals = defaultdict(lambda: defaultdict(int))
    for sweep in current_sweeps(args.experiment):
        strategy = sweep.config["settings"]["strategy"]
        for t in sweep.config["targets"]:
            run = sweep.runs.get(slug(t))
            if run is None or run.best is None:
                continue
            o = run_origins(run)
            for k in ("answers", "valid", "new", "aromatic"):
                totals[strategy][k] += o[k]
            print(f"{sweep.name} {t}: best {o['best']} first proposed at iteration {o['best_from'][0]} "
                  f"by a {o['best_from'][1]} member")
    print("\n| strategy | answers holding a valid molecule | new aromatic molecules |\n|---|---|---|")
    for strategy, n in totals.items():
        print(f"| {strategy} | {n['valid']} / {n['answers']} | {n['aromatic']} / {n['new']} |")


if __name__ == "__main__":
    main()
