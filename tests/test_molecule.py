"""Tests of the molecule task: what counts as a molecule, SMILES parsing, the RDKit objectives, prompts, and the
docking plumbing.

Literal values were computed once with RDKit 2026.09.1 (the version in this environment), e.g.
    python -c "from rdkit import Chem; from rdkit.Chem import QED; print(QED.qed(Chem.MolFromSmiles('CC(=O)Oc1ccccc1C(=O)O')))"
and are also re-derived from RDKit inside the tests where that is possible.
"""
import builtins
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from rdkit import Chem, DataStructs
from rdkit.Chem import QED, Crippen, Descriptors, rdFingerprintGenerator
from rdkit.Chem.MolStandardize import rdMolStandardize

import tasks
from tasks import molecule
from tasks.molecule import MoleculeTask

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
CELECOXIB = molecule.DRUGS["celecoxib"]


def rdkit_canon(smiles):
    return Chem.MolToSmiles(Chem.MolFromSmiles(smiles))


# -- what counts as a molecule ------------------------------------------------------------------------------

# RDKit parses every one of these and QED scores them (recorded with RDKit 2026.09.1): uranium above aspirin's 0.550.
ORACLE_HOLES = {"[U]": 0.557, "CCC*N": 0.499, "C.C.C.C.C": 0.419, "[CH3]": 0.356, "C[IH]CCCC": 0.372,
                "[Na+].[Cl-]": 0.243}


def test_the_holes_were_real():
    """What the rule below closes: without it QED rewards a metal, a dummy atom, a mixture, a radical, a
    hypervalent iodine and a salt."""
    assert {s: round(QED.qed(Chem.MolFromSmiles(s)), 3) for s in ORACLE_HOLES} == ORACLE_HOLES


@pytest.mark.parametrize("smiles, why", [
    ("[U]", "element U is not allowed"),
    ("CCC*N", "element * is not allowed"),  # a dummy atom
    ("C.C.C.C.C", "more than one fragment"),
    ("[CH3]", "radical"),
    ("C[IH]CCCC", "element I is not allowed"),  # hypervalent iodine: 7 of the 24 published best mpo molecules
    ("[Na+].[Cl-]", "more than one fragment"),  # a salt
    ("Ic1ccccc1", "element I is not allowed"),
    ("CCBC(C)CCO", "element B is not allowed"),  # boron: Open Babel writes no PDBQT for it (test_docking.py)
    ("C[Si](C)(C)C", "element Si is not allowed"),
    ("[2H]OC", "isotope label"),
    ("[13CH3]O", "isotope label"),
    ("OS(=O)(=O)O", "no carbon"),
    ("C[N+](C)(C)C", "net charge"),  # a cation without its counter-ion
    ("[CH2-][S+](C)C", "charge other than +1 or -1 on N or O"),  # an ylide
    ("CC[SH2]CC", "S with valence 4"),  # a sulfurane: S above valence 2 without S=O
    ("CP(C)(C)(C)C", "P with valence 5"),
    ("C" * 50, "more than 49 heavy atoms"),
])
def test_what_is_not_a_molecule_gives_no_candidate_and_scores_zero(smiles, why):
    m = Chem.MolFromSmiles(smiles)
    assert m is not None  # RDKit takes every one of them: the rule, not the parser, refuses them
    assert molecule.rejection(rdMolStandardize.Uncharger().uncharge(m)).startswith(why)
    assert molecule.canonical_smiles(smiles) is None
    task = MoleculeTask("qed")
    assert task.parse(task.prompt().prefix + json.dumps(smiles)[1:-1] + '"]}') == []  # an answer with no candidate
    assert task.score([smiles]) == [0.0]


@pytest.mark.parametrize("smiles", [ASPIRIN, CELECOXIB, *molecule.DRUGS.values(), *molecule.EXAMPLES,
                                    "CS(C)=O", "CS(N)(=O)=O", "COP(=O)(O)O", "FC(F)(F)c1ccccc1Br", "C" * 49, "C"])
def test_drugs_and_ordinary_molecules_are_candidates(smiles):
    """Drugs, the prompt examples, a sulfoxide, a sulfonamide, a phosphate, halogens, both ends of the size range."""
    assert molecule.canonical_smiles(smiles) == rdkit_canon(smiles)


@pytest.mark.parametrize("written, candidate", [
    ("[NH3+]CC(=O)[O-]", "NCC(=O)O"),  # glycine's zwitterion is glycine: one candidate, as dockstring docks it
    ("CC(=O)[O-]", "CC(=O)O"),  # an anion alone: its acid
    ("C[NH3+]", "CN"),  # a cation alone: its base
    ("Cc1ccc([N+](=O)[O-])cc1", "Cc1ccc([N+](=O)[O-])cc1"),  # nitro is charge-separated but neutral: kept
    ("[O-][n+]1ccccc1", "[O-][n+]1ccccc1"),  # an N-oxide: kept
    ("C[N+](C)(C)CC(=O)[O-]", "C[N+](C)(C)CC(=O)[O-]"),  # a betaine: no proton removes it, neutral overall
])
def test_charges_a_proton_can_remove_are_removed_and_the_rest_must_balance(written, candidate):
    assert molecule.canonical_smiles(written) == rdkit_canon(candidate)


def test_canonical_smiles_is_its_own_fixed_point():
    """A candidate written back (the greedy member's text) parses to itself."""
    for smiles in [ASPIRIN, CELECOXIB, "[NH3+]CC(=O)[O-]", "C[N+](C)(C)CC(=O)[O-]", "C/C=C\\C", "C[C@H](N)C(=O)O"]:
        once = molecule.canonical_smiles(smiles)
        assert once is not None and molecule.canonical_smiles(once) == once


# -- parsing ------------------------------------------------------------------------------------------------

def test_parse_well_formed_completion_canonicalises_in_order():
    task = MoleculeTask("qed", n=5)
    text = task.prompt().prefix + 'OC(=O)c1ccccc1OC(C)=O", "C1=CC=CC=C1", "CCO"]}'
    assert task.parse(text) == [rdkit_canon(ASPIRIN), "c1ccccc1", "CCO"]


def test_parse_keeps_the_first_n_valid_molecules():
    """One molecule per completion by default (the released scripts' --num_guesses 1): extra ones are not scored."""
    text = '{"response": ["junk", "CCO", "CCN", "c1ccccc1"]}'
    assert MoleculeTask("qed").parse(text) == ["CCO"]
    assert MoleculeTask("qed", n=2).parse(text) == ["CCO", "CCN"]


def test_parse_removes_duplicates_after_canonicalisation():
    task = MoleculeTask("qed", n=5)
    # three spellings of ethanol and two of benzene
    text = '{"response": ["CCO", "OCC", "C(O)C", "c1ccccc1", "C1=CC=CC=C1"]}'
    assert task.parse(text) == ["CCO", "c1ccccc1"]


@pytest.mark.parametrize("text", [
    "",
    '{"response": []}',
    '{"response": ["not a molecule", "xyz", "C1CC", "c1cccc1"]}',  # words, unclosed ring, bad aromaticity
    '{"response": ["',  # nothing generated after the prefix
    "I am sorry, I cannot help with chemistry.",
    '{"response": ["C(C(C(C"]}',  # unbalanced branches
    '{"response": ["Cq"]}',  # unknown element
    '{"response": ["\\u00e9thanol", "Ç", "🧪"]}',  # unicode (escaped and raw)
    '{"response": ["' + "C" * 5000 + '"]}',  # a huge string is not a plausible molecule
    '{"response": [{"smiles": null}, 3, true]}',
    "\x00\x01\x02\"\"\"\\\\\\",
])
def test_parse_gives_nothing_for_malformed_or_adversarial_text(text):
    assert MoleculeTask("qed").parse(text) == []


def test_parse_recovers_valid_molecules_from_messy_output():
    task = MoleculeTask("qed", n=5)
    nested = '{"response": [["CCO"], {"x": "CCN"}], "other": {"deep": ["c1ccccc1"]}}'
    assert task.parse(nested) == ["CCO", "CCN", "c1ccccc1"]
    # several SMILES in one string, and a truncated completion whose last string never closes
    assert task.parse('{"response": ["CCO, CCN c1ccccc1", "CC(=O') == ["CCO", "CCN", "c1ccccc1"]
    # invalid entries are skipped, valid ones kept; a bare backslash (not valid JSON) is read literally
    assert task.parse('{"response": ["junk", "C/C=C\\C", "CCl"]}') == ["C/C=C\\C", "CCl"]


def test_parse_caps_the_number_of_candidates():
    alkanes = ", ".join(f'"{"C" * k}"' for k in range(1, 100))
    assert len(MoleculeTask("qed", n=1000).parse('{"response": [' + alkanes + "]}")) == molecule.MAX_CANDIDATES


def test_render_parse_round_trip_starts_with_prefix():
    task = MoleculeTask("rediscover:celecoxib")
    for smiles in [rdkit_canon(ASPIRIN), rdkit_canon(CELECOXIB), "C/C=C\\C", "C[C@H](N)C(=O)O"]:
        text = task.render(smiles)
        assert text.startswith(task.prompt().prefix)
        assert json.loads(text) == {"response": [smiles]}
        assert task.parse(text) == [smiles]


# -- objectives ---------------------------------------------------------------------------------------------

def test_qed_of_aspirin_matches_rdkit_and_recorded_value():
    task = MoleculeTask("qed")
    [score] = task.score([rdkit_canon(ASPIRIN)])
    assert score == pytest.approx(QED.qed(Chem.MolFromSmiles(ASPIRIN)), abs=1e-12)
    assert score == pytest.approx(0.5501217966938848, abs=1e-9)  # recorded with RDKit 2026.09.1


def test_rediscovery_of_celecoxib_scores_one_and_others_match_tanimoto():
    task = MoleculeTask("rediscover:celecoxib")
    aspirin, celecoxib = rdkit_canon(ASPIRIN), rdkit_canon(CELECOXIB)
    score_aspirin, score_celecoxib = task.score([aspirin, celecoxib])
    assert score_celecoxib == 1.0
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    fp = lambda s: gen.GetFingerprint(Chem.MolFromSmiles(s))  # noqa: E731
    assert score_aspirin == pytest.approx(DataStructs.TanimotoSimilarity(fp(ASPIRIN), fp(CELECOXIB)))
    assert score_aspirin == pytest.approx(5 / 59)  # recorded: 5 shared on-bits of 59 in the union
    assert task.solved_score == 1.0


@pytest.mark.parametrize("drug", sorted(molecule.DRUGS))
def test_every_named_drug_rediscovers_itself(drug):
    task = MoleculeTask(f"rediscover:{drug}")
    assert task.score(task.parse(task.render(rdkit_canon(molecule.DRUGS[drug])))) == [1.0]


def test_mpo_is_geometric_mean_of_its_documented_factors():
    task = MoleculeTask("mpo")
    m = Chem.MolFromSmiles(CELECOXIB)
    sa = molecule.load_sascorer().calculateScore(m)
    assert sa == pytest.approx(2.14436, abs=1e-4)  # recorded with RDKit 2026.09.1 Contrib SA_Score
    mw = Descriptors.MolWt(m)  # 381.4 Da, inside the 300-450 window
    expected = (QED.qed(m) * (10 - sa) / 9 * 1.0) ** (1 / 3)
    assert 300 < mw < 450
    assert task.score([rdkit_canon(CELECOXIB)]) == [pytest.approx(expected)]
    # aspirin (180 Da) sits 120 Da below the window: its weight factor is exp(-(120.16 / 75)^2)
    m = Chem.MolFromSmiles(ASPIRIN)
    factor = math.exp(-(((300 - Descriptors.MolWt(m)) / 75) ** 2))
    expected = (QED.qed(m) * (10 - molecule.load_sascorer().calculateScore(m)) / 9 * factor) ** (1 / 3)
    assert MoleculeTask("mpo").score([ASPIRIN]) == [pytest.approx(expected)]


def test_mpo_falls_back_to_the_proxy_without_contrib(monkeypatch):
    monkeypatch.setattr(molecule, "load_sascorer", lambda: None)
    task = MoleculeTask("mpo")
    m = Chem.MolFromSmiles(CELECOXIB)
    # celecoxib: 26 heavy atoms, no stereo, spiro, bridgehead or macrocycle -> 2 + 26^1.005 - 26
    proxy = 2 + 26 ** 1.005 - 26
    assert molecule.sa_proxy(m) == pytest.approx(proxy)
    assert task.score([rdkit_canon(CELECOXIB)]) == [pytest.approx((QED.qed(m) * (10 - proxy) / 9) ** (1 / 3))]


def test_window_desirability_by_hand():
    assert molecule.window(2.0, 1.0, 3.0, 1.0) == 1.0
    assert molecule.window(4.0, 1.0, 3.0, 1.0) == pytest.approx(math.exp(-1))
    assert molecule.window(-1.0, 1.0, 3.0, 0.5) == pytest.approx(math.exp(-16))


def test_logp_window_matches_crippen():
    m = Chem.MolFromSmiles(CELECOXIB)
    logp = Crippen.MolLogP(m)  # 3.51: just above the window
    assert MoleculeTask("logp-window").score([rdkit_canon(CELECOXIB)]) == [
        pytest.approx(math.exp(-((logp - 3.0) ** 2)))]


@pytest.mark.parametrize("target", ["qed", "mpo", "logp-window", "rediscover:celecoxib", "rediscover:caffeine"])
def test_scores_are_in_unit_interval_and_invalid_scores_zero(target):
    task = MoleculeTask(target)
    rng = random.Random(0)
    pool = list(molecule.DRUGS.values()) + molecule.EXAMPLES + ["C", "[Na+].[Cl-]", "C" * 60, "[2H]O[2H]",
                                                                 "c1ccc2ccccc2c1", "[Fe]", "O=C=O"]
    smiles = [rdkit_canon(s) for s in rng.sample(pool, len(pool))]
    scores = task.score(smiles + ["", "not smiles", "C1CC"])
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores[-3:] == [0.0, 0.0, 0.0]
    assert max(scores) > 0


# -- prompts ------------------------------------------------------------------------------------------------

def test_prompts_share_the_prefix_and_show_real_examples():
    task = MoleculeTask("rediscover:celecoxib", n=4)
    prompts = [task.prompt(), task.neighbourhood_prompt(rdkit_canon(ASPIRIN)),
               task.opro_prompt([("CCO", 0.1), ("CCN", 0.25)])]
    shown = molecule.EXAMPLES + [s for seed, variations in molecule.NS_EXAMPLES for s in [seed, *variations]]
    assert all(Chem.MolFromSmiles(s) is not None for s in shown)
    for p in prompts:
        assert p.prefix == '{"response": ["'
        assert p.messages[0]["role"] == "system" and p.messages[-1]["role"] == "user"
        text = " ".join(m["content"] for m in p.messages)
        assert "4" in text and "SMILES1" not in text
        assert "celecoxib" not in text.lower() and CELECOXIB not in text  # the oracle stays a black box
    assert molecule.EXAMPLES[0] in prompts[0].messages[2]["content"]  # an earlier answer
    assert molecule.EXAMPLES[0] in prompts[2].messages[-1]["content"]  # OPRO: in the instructions
    assert molecule.NS_EXAMPLES[0][1][0] in " ".join(m["content"] for m in prompts[1].messages)
    assert prompts[1].messages[-1]["content"].endswith(rdkit_canon(ASPIRIN))  # the seed is the last thing read
    opro = prompts[2].messages[-1]["content"]
    assert opro.index("CCO score: 0.100") < opro.index("CCN score: 0.250")  # worst first, best last


@pytest.mark.parametrize("n", [1, 4, 5, 7])
def test_on_policy_and_ns_examples_are_earlier_assistant_answers(n):
    """The format examples sit in earlier assistant turns, each a valid answer that the task parses back, and never
    in the last user message (where SmolLM2-135M copied them). On-policy answers hold n examples each, all ten
    examples in view; the two worked neighbourhood answers hold n variations each (at most the five there are)."""
    task = MoleculeTask("qed", n=n)
    seed = rdkit_canon(ASPIRIN)
    shown = set(molecule.EXAMPLES) | {s for seed_, variations in molecule.NS_EXAMPLES for s in [seed_, *variations]}
    for p in [task.prompt(), task.neighbourhood_prompt(seed)]:
        answers = [json.loads(m["content"])["response"] for m in p.messages if m["role"] == "assistant"]
        for a in answers:
            assert set(a) <= shown
            assert MoleculeTask("qed", n=len(a)).parse(p.prefix + json.dumps(a)[2:] + "}") == \
                [rdkit_canon(s) for s in a]
        roles = [m["role"] for m in p.messages]
        assert roles == ["system"] + ["user", "assistant"] * len(answers) + ["user"]
        assert not any(s in p.messages[-1]["content"].split() for s in shown)
    on_policy = [json.loads(m["content"])["response"] for m in task.prompt().messages if m["role"] == "assistant"]
    assert sum(on_policy, []) == molecule.EXAMPLES and all(1 <= len(a) <= n for a in on_policy[:-1])
    assert len(on_policy) == -(-len(molecule.EXAMPLES) // n)  # ceil: 10 answers at n = 1, 2 at n = 5
    ns = [json.loads(m["content"])["response"] for m in task.neighbourhood_prompt(seed).messages
          if m["role"] == "assistant"]
    assert ns == [variations[:n] for _, variations in molecule.NS_EXAMPLES]
    asked = "one SMILES string." if n == 1 else f"{n} SMILES strings."
    assert task.prompt().messages[1]["content"].endswith(asked)
    assert task.neighbourhood_prompt(seed).messages[-1]["content"].startswith(
        "Good. Now propose one small variation" if n == 1 else f"Good. Now propose {n} small variations")


def test_examples_are_not_rediscovery_targets():
    drugs = {rdkit_canon(s) for s in molecule.DRUGS.values()}
    shown = molecule.EXAMPLES + [s for seed, variations in molecule.NS_EXAMPLES for s in [seed, *variations]]
    assert not drugs & {rdkit_canon(s) for s in shown}


def test_defaults_follow_the_paper():
    d = MoleculeTask.defaults
    assert set(d.presets) == {"random", "ns", "opro", "grpo", "grpo-greedy", "migrate", "migrate-opro",
                              "migrate-evo", "discover"}
    assert (d.presets["discover"].gamma, d.presets["discover"].mu) == (8, 1)  # TTT-Discover's recipe
    paper = {k: p for k, p in d.presets.items() if k != "discover"}
    shape = {k: (p.alpha, p.beta, p.gamma) for k, p in paper.items()}
    assert shape["grpo"] == (5, 0, 0) and shape["grpo-greedy"] == (4, 1, 0)
    assert shape["migrate"] == (2, 1, 2) and shape["random"] == (5, 0, 0)
    assert all(p.alpha + p.beta + p.gamma == 5 for p in paper.values())  # baselines use GRPO's group size
    topk_mu = {k: (p.topk, p.mu) for k, p in paper.items()}
    assert topk_mu.pop("opro") == topk_mu.pop("migrate-opro") == (5, 2)  # OPRO lists the top 5
    assert topk_mu.pop("migrate-evo") == (1, 1) and set(topk_mu.values()) == {(1, 2)}
    assert (d.lr, d.lora_r, d.lora_alpha, d.max_new_tokens, d.iterations) == (5e-5, 64, 16, 256, 40)
    assert MoleculeTask("qed").n == 1  # --num_guesses 1: the 5 of "40 x 5" is the group, not molecules per answer
    assert MoleculeTask.default_target in MoleculeTask.target_sets["rdkit"]
    assert MoleculeTask("qed").warm_start(random.Random(0)) == []
    assert tasks.TASKS["molecule"] is MoleculeTask  # registered on import


@pytest.mark.parametrize("target", ["", "logp", "rediscover:", "rediscover:unobtainium", "qed:2", "dock"])
def test_bad_targets_raise_one_line_value_error(target):
    with pytest.raises(ValueError) as err:
        MoleculeTask(target)
    assert "\n" not in str(err.value) and "choose from" in str(err.value)


def test_bad_n_raises():
    with pytest.raises(ValueError):
        MoleculeTask("qed", n=0)


# -- docking ------------------------------------------------------------------------------------------------

def test_dock_score_by_hand():
    assert molecule.dock_score(-12.0, 1.0) == 1.0
    assert molecule.dock_score(-10.0, 0.8) == pytest.approx(1 - (-10 + 0.2 + 12) / 10)  # 0.78
    assert molecule.dock_score(-15.0, 1.0) == 1.0  # clipped above
    assert molecule.dock_score(-1.0, 0.5) == 0.0  # clipped below


def test_docking_without_dockstring_gives_one_line_install_hint(monkeypatch):
    real_import = builtins.__import__

    def no_dockstring(name, *args, **kwargs):
        if name == "dockstring" or name.startswith("dockstring."):
            raise ImportError("No module named 'dockstring'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dockstring)
    with pytest.raises(molecule.DockingUnavailable) as err:
        MoleculeTask("dock:DRD2")
    message = str(err.value)
    assert "\n" not in message and message.endswith(molecule.DOCKING_SETUP)
    assert "pip install dockstring==0.3.4" in message and "apt-get install -y openbabel" in message
    assert isinstance(err.value, ValueError)


def fake_dockstring(monkeypatch):
    """An importable stand-in for dockstring that knows two proteins: the checks run without the real package."""
    module = types.ModuleType("dockstring")
    module.list_all_target_names = lambda: ["DRD2", "KIT"]
    monkeypatch.setitem(sys.modules, "dockstring", module)


def fake_obabel(monkeypatch, folder, version_line):
    """PATH = `folder`, holding an `obabel` that prints version_line, or no obabel at all when it is None."""
    if version_line is not None:
        script = folder / "obabel"
        script.write_text(f"#!/bin/sh\necho '{version_line}'\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", str(folder))


@pytest.mark.parametrize("version_line, expected", [
    (None, "Open Babel (obabel), not on PATH"),
    ("Open Babel 2.4.1 -- Oct 10 2019 -- 10:00:00", "needs Open Babel 3.1, found 'Open Babel 2.4.1"),
])
def test_docking_without_open_babel_3_1_gives_one_line_setup_hint(monkeypatch, tmp_path, version_line, expected):
    fake_dockstring(monkeypatch)
    fake_obabel(monkeypatch, tmp_path, version_line)
    with pytest.raises(molecule.DockingUnavailable) as err:
        MoleculeTask("dock:DRD2")
    message = str(err.value)
    assert expected in message and message.endswith(molecule.DOCKING_SETUP) and "\n" not in message


def test_docking_target_is_spelled_as_dockstring_does_and_unknown_ones_raise(monkeypatch, tmp_path):
    fake_dockstring(monkeypatch)
    fake_obabel(monkeypatch, tmp_path, "Open Babel 3.1.1 -- Jan  4 2023 -- 09:58:24")
    task = MoleculeTask("dock:drd2")
    assert task.target == "dock:DRD2" and task.oracle.protein == "DRD2" and task.oracle.pool is None
    with pytest.raises(ValueError, match="unknown dockstring protein 'XYZ1'; choose from DRD2, KIT"):
        MoleculeTask("dock:XYZ1")


def test_paper_targets_are_the_released_scripts_58():
    paper = MoleculeTask.target_sets["paper"]
    assert len(paper) == len(set(paper)) == 58
    # first and last three of the list in scripts/dockstring/*.sh (dhdhagar/migrate), which keeps this order
    assert paper[:3] == ["dock:IGF1R", "dock:JAK2", "dock:KIT"]
    assert paper[-3:] == ["dock:CYP2C9", "dock:CYP3A4", "dock:HSP90AA1"]
    assert set(MoleculeTask.target_sets["dock-small"]) < set(paper)
    assert "paper-dock" not in MoleculeTask.target_sets  # five proteins of our choosing, now named dock-small


def test_paper_targets_are_all_dockstring_targets():
    dockstring = pytest.importorskip("dockstring", reason="dockstring is not installed (optional: docking)")
    assert {t[5:] for t in MoleculeTask.target_sets["paper"]} == set(dockstring.list_all_target_names())


def fake_vina(protein, smiles, num_cpus):
    """A stand-in for dockstring (module level, so spawned workers can import it): vina = -(heavy atoms) / 2;
    a molecule with sulfur hangs and must be stopped by the worker's timeout; one with chlorine fails."""
    if "S" in smiles:
        time.sleep(600)
    if "Cl" in smiles:
        raise RuntimeError("docking failed")
    return -Chem.MolFromSmiles(smiles).GetNumAtoms() / 2


def test_docking_scores_through_worker_pool(monkeypatch):
    monkeypatch.setattr(molecule, "check_docking", lambda protein: protein)
    task = MoleculeTask("dock:DRD2", workers=2, timeout_s=1)
    task.oracle.dock_fn = fake_vina
    start = time.monotonic()
    try:
        aspirin = rdkit_canon(ASPIRIN)
        scores = task.score([aspirin, "not smiles", "CCS", "CCCl", aspirin])
    finally:
        task.close()
    assert time.monotonic() - start < 60  # the hung docking was stopped by the 1 s alarm, not the 600 s sleep
    m = Chem.MolFromSmiles(ASPIRIN)
    expected = molecule.dock_score(-m.GetNumAtoms() / 2, QED.qed(m))
    assert scores == [pytest.approx(expected), 0.0, 0.0, 0.0, pytest.approx(expected)]


REPO = Path(__file__).resolve().parents[1]
STAND_IN_SCRIPT = """from tasks.molecule import DockingOracle


def stand_in(protein, smiles, num_cpus):
    return -float(len(smiles))

"""


def run_script(tmp_path, body: str) -> tuple[subprocess.CompletedProcess, int]:
    """Run a user's script that docks through DockingOracle with a stand-in for Vina (so dockstring and Open Babel
    need not be installed); returns the finished process and the line of the script that docks."""
    text = STAND_IN_SCRIPT + body
    script = tmp_path / "dock_script.py"
    script.write_text(text)
    line = next(i for i, code in enumerate(text.splitlines(), 1) if "oracle.vina" in code)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    return done, line


def test_docking_from_a_script_without_a_main_guard_fails_at_once_in_one_line(tmp_path):
    """Spawned workers run the main script again before taking work: from an unguarded line each one started a pool
    of its own, died, and was replaced, while the scorer waited out its deadline and returned no score (thousands
    of lines of tracebacks, exit status 0). The oracle now refuses before it starts any worker."""
    start = time.monotonic()
    done, line = run_script(tmp_path, 'oracle = DockingOracle("DRD2", workers=1, cpus_per_job=1, timeout_s=2, '
                                      'dock_fn=stand_in)\nprint(oracle.vina(["CCO"]))\n')
    assert done.returncode != 0 and done.stdout == ""
    assert time.monotonic() - start < 30  # not the batch deadline of 2 + 30 s
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"tasks.molecule.UnguardedScript: {tmp_path / 'dock_script.py'}, line {line}: ")
    assert last.endswith('must sit under `if __name__ == "__main__":`')
    assert done.stderr.count("Traceback") == 1  # the script's own, none from workers


def test_docking_from_a_guarded_script_scores_through_the_pool(tmp_path):
    done, _ = run_script(tmp_path, 'if __name__ == "__main__":\n'
                                   '    oracle = DockingOracle("DRD2", workers=1, cpus_per_job=1, timeout_s=30, '
                                   'dock_fn=stand_in)\n'
                                   '    print(oracle.vina(["CCO", "CCCO"]))\n'
                                   '    oracle.close()\n')
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[-3.0, -4.0]\n" and "Traceback" not in done.stderr


def stuck_vina(protein, smiles, num_cpus):
    """Ignores the worker's alarm when the molecule has sulfur, as a docking stuck inside a C++ call would."""
    if "S" in smiles:
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        time.sleep(600)
    return -float(len(smiles))


def test_a_worker_the_alarm_cannot_stop_is_replaced_by_a_fresh_pool():
    oracle = molecule.DockingOracle("DRD2", workers=1, cpus_per_job=1, timeout_s=1, dock_fn=stuck_vina)
    oracle.grace_s = 4  # the batch deadline: 2 molecules on 1 worker = 2 x (1 + 4) s
    start = time.monotonic()
    try:
        assert oracle.vina(["CCS", "CCO"]) == [None, None]  # CCO waited behind the stuck worker
        assert time.monotonic() - start < 60 and oracle.pool is None  # the stuck pool was terminated
        assert oracle.vina(["CCO"]) == [-3.0]  # a fresh pool scores again
    finally:
        oracle.close()
