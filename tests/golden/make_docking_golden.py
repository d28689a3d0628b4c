"""Makes tests/golden/docking.json with dockstring's own API, outside the project. Run once, by hand:

    python3 -m venv /tmp/dockscratch && /tmp/dockscratch/bin/pip install dockstring==0.3.4 rdkit==2026.9.1
    apt-get install -y openbabel    # Open Babel 3.1.1 (Debian bookworm)
    cd /work/main && /tmp/dockscratch/bin/python tests/golden/make_docking_golden.py

Never imported by the project or the tests. It calls Target.dock at dockstring's default seed, as the paper's code
did, once more with the same seed to see whether Vina repeats itself, and once with 2 Vina threads to see whether
the thread count changes the score.
"""
import json
import subprocess
import time
from importlib.metadata import version
from pathlib import Path

from dockstring import load_target

TARGET = "DRD2"  # one of the paper's 58; small molecules dock against it in 10-25 s on one core
MOLECULES = {"aspirin": "CC(=O)Oc1ccccc1C(=O)O", "caffeine": "Cn1cnc2c1c(=O)n(C)c(=O)n2C"}


def dock(smiles: str, num_cpus: int) -> tuple[float, float]:
    start = time.perf_counter()
    vina, _aux = load_target(TARGET).dock(smiles, num_cpus=num_cpus)
    return vina, time.perf_counter() - start


def main():
    out = {"target": TARGET, "seed": "dockstring default (974528263)", "dockstring": version("dockstring"),
           "rdkit": version("rdkit"), "obabel": subprocess.run(["obabel", "-V"], capture_output=True,
                                                               text=True).stdout.strip(), "molecules": {}}
    for name, smiles in MOLECULES.items():
        first, seconds = dock(smiles, 1)
        again, _ = dock(smiles, 1)
        two_threads, _ = dock(smiles, 2)
        out["molecules"][name] = {"smiles": smiles, "vina": first, "seconds_one_cpu": round(seconds, 1),
                                  "same_seed_again": again, "two_cpus": two_threads}
        print(name, out["molecules"][name])
    path = Path(__file__).with_name("docking.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
