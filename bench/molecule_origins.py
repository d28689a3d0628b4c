"""Where a molecule experiment's finds came from: per strategy, the share of sampled answers that held a valid
molecule, the share of new molecules that are aromatic, and per run the member origin (online, neighbourhood,
...) whose answer first proposed the run's best molecule. Read from the committed history.jsonl files.

    python bench/molecule_origins.py results/docking
"""
import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

from rdkit import Chem, RDLogger

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.search import SWEEP_CONFIGS, read_history, run_dynamics, sampled_answers  # noqa: E402
from rundir import read_config, slug  # noqa: E402

RDLogger.DisableLog("rdApp.*")


def is_aromatic(smiles: str) -> bool:
    mol = Chem.MolFromSmiles(smiles)  # candidates were scored, so they parse
    return mol is not None and any(atom.GetIsAromatic() for atom in mol.GetAtoms())


def run_origins(run_dir: Path) -> dict:
    best = json.loads((run_dir / "best.json").read_text())["best"]
    records = read_history(run_dir)
    counts = run_dynamics(records, iterations=math.inf, budget=math.inf)  # sampled answers, and valid ones
    new = [c["candidate"] for m in sampled_answers(records) for c in m["candidates"] if c["status"] == "new"]
    best_from = next(((r["iteration"], m["origin"]) for r in records for m in r.get("members", [])
                      for c in m["candidates"] if c["candidate"] == best), None)
    return dict(answers=counts["answers"], valid=counts["valid"], new=len(new), aromatic=sum(map(is_aromatic, new)),
                best=best, best_from=best_from)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", type=Path, help="a bench/search.py --out folder of the molecule task")
    args = p.parse_args(argv)
    totals = defaultdict(lambda: defaultdict(int))
    for config_path in sorted(args.experiment.glob(SWEEP_CONFIGS)):
        sweep, config = config_path.parent, read_config(config_path.parent)
        strategy = config["settings"]["strategy"]
        for t in config["targets"]:
            if not (sweep / slug(t) / "best.json").exists():
                continue
            o = run_origins(sweep / slug(t))
            for k in ("answers", "valid", "new", "aromatic"):
                totals[strategy][k] += o[k]
            print(f"{sweep.name} {t}: best {o['best']} first proposed at iteration {o['best_from'][0]} "
                  f"by a {o['best_from'][1]} member")
    print("\n| strategy | answers holding a valid molecule | new aromatic molecules |\n|---|---|---|")
    for strategy, n in totals.items():
        print(f"| {strategy} | {n['valid']} / {n['answers']} | {n['aromatic']} / {n['new']} |")


if __name__ == "__main__":
    main()
