"""Real docking: dockstring's AutoDock Vina and Open Babel through the molecule task's worker pool (heavy, ~1 min).

Skipped with a reason when dockstring or Open Babel 3.1 is missing (set up: molecule.DOCKING_SETUP). Every docking
here runs one Vina thread in one worker. Expected Vina scores are in tests/golden/docking.json, made with
dockstring's own API in a scratch environment by tests/golden/make_docking_golden.py (its docstring says how). At
dockstring's default seed Vina repeated itself exactly there, run again and with 2 threads, so the scores are
compared exactly.
"""
import json
import os
import time
from pathlib import Path

import pytest
from rdkit import Chem
from rdkit.Chem import QED

from tasks import molecule
from tasks.molecule import DockingOracle, MoleculeTask

pytestmark = pytest.mark.heavy

GOLDEN = json.loads((Path(__file__).parent / "golden" / "docking.json").read_text())
TARGET = GOLDEN["target"]
ASPIRIN = GOLDEN["molecules"]["aspirin"]["smiles"]  # docks in ~20 s on one core
CAFFEINE = GOLDEN["molecules"]["caffeine"]["smiles"]  # ~11 s
BORONIC = "OB(O)c1ccccc1"  # phenylboronic acid: valid for RDKit, Open Babel writes no PDBQT for boron


@pytest.fixture(scope="module", autouse=True)
def docking_available():
    try:
        molecule.check_docking(TARGET)
    except molecule.DockingUnavailable as e:
        pytest.skip(str(e))


def vina_processes() -> list[str]:
    """Running Vina processes of dockstring's binary (any on this machine): a timed-out docking must leave none."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"dockstring" in cmdline and b"vina" in cmdline:
            found.append(pid)
    return found


def test_vina_scores_match_dockstring_and_the_task_applies_the_paper_formula():
    for name, mol in GOLDEN["molecules"].items():  # the scratch run's own check that the seed pins the score
        assert mol["vina"] == mol["same_seed_again"] == mol["two_cpus"], name
    task = MoleculeTask(f"dock:{TARGET}", workers=1, cpus_per_job=1)
    try:
        # canonical, as the task's candidates are; dockstring canonicalises again, so the spelling cannot matter
        aspirin, caffeine = (Chem.MolToSmiles(Chem.MolFromSmiles(s)) for s in (ASPIRIN, CAFFEINE))
        scores = task.score([aspirin, caffeine])
    finally:
        task.close()
    for smiles, score, name in [(aspirin, scores[0], "aspirin"), (caffeine, scores[1], "caffeine")]:
        # the score is linear in Vina (0.1 kcal/mol moves it by 0.01), so equal scores mean equal Vina scores
        vina, qed = GOLDEN["molecules"][name]["vina"], QED.qed(Chem.MolFromSmiles(smiles))
        assert score == pytest.approx(1 - ((vina + (1 - qed)) + 12) / 10, abs=1e-12), name  # aspirin: 0.375


def test_timeout_invalid_and_open_babel_rejects_score_zero_and_the_pool_goes_on():
    oracle = DockingOracle(TARGET, workers=1, cpus_per_job=1, timeout_s=2)
    try:
        start = time.monotonic()
        # aspirin needs ~20 s: the 2 s alarm stops it; "C1CC" is no molecule; Open Babel refuses boron
        assert oracle.vina([ASPIRIN, "C1CC", BORONIC]) == [None, None, None]
        assert time.monotonic() - start < 30  # not 20 s of Vina plus the rest
        assert vina_processes() == []  # the timed-out Vina child was killed, not left running
        pool = oracle.pool
        oracle.timeout_s = 90
        assert oracle.vina([CAFFEINE]) == [GOLDEN["molecules"]["caffeine"]["vina"]]
        assert oracle.pool is pool  # the same single worker docked again: nothing stalled
    finally:
        oracle.close()
    task = MoleculeTask(f"dock:{TARGET}", workers=1, cpus_per_job=1, timeout_s=2)
    try:
        # neither the invalid SMILES nor boron (no candidate: docs/molecules.md) reaches Vina; aspirin times out
        assert task.score(["not smiles", BORONIC, ASPIRIN]) == [0.0, 0.0, 0.0]
    finally:
        task.close()
