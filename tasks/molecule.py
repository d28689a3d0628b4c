"""Molecule optimisation: the model proposes SMILES strings, a black-box chemistry oracle scores them.

A candidate is a molecule as the field defines one before scoring (docs/molecules.md gives the rule's sources):
one connected, sanitised, net-neutral organic molecule of C, N, O, S, P, F, Cl and Br, every atom at one of RDKit's
valences for its element, no radicals, isotope labels or dummy atoms, fewer than 50 heavy atoms. Acids and bases
are first neutralised with RDKit's Uncharger, as dockstring does before docking, so a zwitterion and its neutral
form are one candidate. Anything else (invalid SMILES, a salt, a metal, hypervalent iodine) gives no candidate,
exactly as unparseable text does, and scores 0 if scored directly. Objectives, chosen by --target:

- `dock:<PROTEIN>`: the paper's docking score, 1 - ((vina + (1 - QED)) + 12) / 10 clipped to [0, 1], with the
  Vina score from dockstring (AutoDock Vina against one of its 58 prepared protein targets) at dockstring's default
  seed, so a molecule's score repeats exactly (tests/golden/docking.json); run in a pool of worker processes with
  the paper's 90 s timeout per docking. Needs dockstring and Open Babel (DOCKING_SETUP). `--targets paper` is the
  released scripts' 58 proteins, `dock-small` five of them for shorter runs. The workers are spawned, and spawned
  workers run the calling script again: a script that docks must do it under `if __name__ == "__main__":`, or
  UnguardedScript says so before any worker starts.
- `qed`, `rediscover:<drug>`, `mpo`, `logp-window`: RDKit-only objectives that take milliseconds per molecule, for
  CPU demos and tests.

Prompts ask for n molecules per answer in a JSON list, with the answer forced to start with '{"response": ["' and
real example SMILES: as earlier assistant answers in the on-policy and neighbourhood prompts, in the instructions
of the OPRO prompt (bench/prompt_parse.py measures them). n = 1 by default, as in the released scripts
(`--num_guesses 1`: the "5" of 40 x 5 is the group size); `MoleculeTask(target, n=5)` asks for five and rewards a
completion with its best. A completion yields at most n candidates, its first n valid molecules (the released
code read only the first string of the list). Measured with an earlier, instructions-only prompt, SmolLM2-135M-
Instruct at temperature 1 (16 completions per setting, transformers reference, rediscover:celecoxib): a usable
SMILES in 3/16 completions at n = 1, 4/16 at n = 3 and 2/16 at n = 5.

What it leaves out: the paper's molecule runs had no warm start and neither does this task; molecules are not
filtered for novelty, drug-likeness or reactive groups beyond the candidate rule (the oracle alone decides);
docking poses are not kept; stereo-chemistry is kept as written (RDKit's isomeric canonical SMILES), so two
stereo-isomers are two candidates; tautomers are not merged.
"""
import ast
import importlib.util
import json
import math
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rdkit import Chem, DataStructs, RDLogger
from rdkit.Chem import QED, Crippen, Descriptors, RDConfig, rdFingerprintGenerator, rdMolDescriptors
from rdkit.Chem.MolStandardize import rdMolStandardize

import tasks

RDLogger.DisableLog("rdApp.*")  # model output is mostly invalid SMILES; RDKit would print an error for each

# Well-known drugs for the rediscovery objectives (SMILES checked against their molecular formulas with RDKit).
# The prompt examples below are deliberately not in this table, so an example copied verbatim solves nothing.
DRUGS = {
    "celecoxib": "Cc1ccc(-c2cc(C(F)(F)F)nn2-c2ccc(S(N)(=O)=O)cc2)cc1",  # C17H14F3N3O2S
    "troglitazone": "Cc1c(C)c2OC(C)(COc3ccc(CC4SC(=O)NC4=O)cc3)CCc2c(C)c1O",  # C24H27NO5S
    "albuterol": "CC(C)(C)NCC(O)c1ccc(O)c(CO)c1",  # C13H21NO3
    "osimertinib": "COc1cc(N(C)CCN(C)C)c(NC(=O)C=C)cc1Nc1nccc(-c2cn(C)c3ccccc23)n1",  # C28H33N7O2
    "sildenafil": "CCCc1nn(C)c2c(=O)[nH]c(-c3cc(S(=O)(=O)N4CCN(C)CC4)ccc3OCC)nc12",  # C22H30N6O4S
    "ibuprofen": "CC(C)Cc1ccc(cc1)C(C)C(=O)O",  # C13H18O2
    "caffeine": "Cn1cnc2c1c(=O)n(C)c(=O)n2C",  # C8H10N4O2
}

# Real molecules shown in prompts (a 135M model copies placeholder text such as "SMILES1" verbatim): the on-policy
# prompt's past answers, n molecules each (ten answers at n = 1, two at n = 5). Small and acyclic on purpose:
# SmolLM2-135M at temperature 1 imitates what it sees, and a slip in a short chain (an atom changed, a branch
# added) usually still gives a valid molecule, where a slip in a ring closure or an aromatic ring does not
# (bench/prompt_parse.py).
EXAMPLES = ["CCOC(C)=O", "CCN(CC)CCO", "CC(C)CC(=O)O", "CC(N)C(=O)O", "OCC(O)CO",
            "CCCN(C)C", "CC(C)OC(C)=O", "NCCO", "CCC(=O)N", "COCCOC"]
# Two worked neighbourhood answers (seed, its variations) shown before the real seed: one chain, one ring.
NS_EXAMPLES = [("CCN(CC)CCO", ["CCN(CC)CCOC", "CCN(C)CCO", "CCN(CC)CCN", "CCN(CC)CC(C)O", "CCCN(CC)CCO"]),
               ("Cc1ccccc1O", ["Cc1ccccc1", "Cc1ccccc1OC", "Cc1ccccc1N", "Cc1cccnc1O", "CCc1ccccc1O"])]

# The 58 dockstring proteins the released scripts loop over (scripts/dockstring/*.sh), in their order.
PAPER_TARGETS = ["IGF1R", "JAK2", "KIT", "LCK", "MAPK14", "MAPKAPK2", "MET", "PTK2", "PTPN1", "SRC", "ABL1", "AKT1",
                 "AKT2", "CDK2", "CSF1R", "EGFR", "KDR", "MAPK1", "FGFR1", "ROCK1", "MAP2K1", "PLK1", "HSD11B1",
                 "PARP1", "PDE5A", "PTGS2", "ACHE", "MAOB", "CA2", "GBA", "HMGCR", "NOS1", "REN", "DHFR", "ESR1",
                 "ESR2", "NR3C1", "PGR", "PPARA", "PPARD", "PPARG", "AR", "THRB", "ADAM17", "F10", "F2", "BACE1",
                 "CASP3", "MMP13", "DPP4", "ADRB1", "ADRB2", "DRD2", "DRD3", "ADORA2A", "CYP2C9", "CYP3A4",
                 "HSP90AA1"]
# Our choice, not the paper's: dockstring's five regression-benchmark proteins, for runs that fit an afternoon.
DOCK_SMALL_TARGETS = ["ESR2", "F2", "KIT", "PARP1", "PGR"]

DOCKING_SETUP = "apt-get install -y openbabel && pip install dockstring==0.3.4"  # the README's set-up line

RESPONSE_PREFIX = '{"response": ["'
MAX_SMILES_CHARS = 200  # longer strings are not plausible drug-like SMILES; RDKit would waste time on them
MAX_CANDIDATES = 32  # per completion: a runaway list cannot flood the oracle
MAX_TEXT_CHARS = 20_000  # parse at most this much of a completion
_QUOTED = re.compile(r'"((?:[^"\\\n]|\\.)*)"')  # a JSON string literal on one line


class DockingUnavailable(ValueError):
    """dockstring or Open Babel is missing: a one-line message saying how to install them.

    A ValueError, so entry scripts report it like any other unusable --target."""


# -- candidates -----------------------------------------------------------------------------------------------

# What counts as a molecule; docs/molecules.md gives each choice's source.
ELEMENTS = frozenset({"C", "N", "O", "S", "P", "F", "Cl", "Br"})
CHARGEABLE = frozenset({"N", "O"})  # the charge-separated forms of neutral groups: nitro, N-oxide, azide
MAX_HEAVY_ATOMS = 49  # REINVENT's training molecules have fewer than 50
_PERIODIC_TABLE = Chem.GetPeriodicTable()
_UNCHARGER = rdMolStandardize.Uncharger()


def allowed_valences(atom) -> tuple[int, ...]:
    """RDKit's valences for the atom's element; a charged atom takes those of its isoelectronic neighbour in the
    periodic table (N+ as C: 4, O- as F: 1), as RDKit's own valence model does."""
    return tuple(_PERIODIC_TABLE.GetValenceList(atom.GetAtomicNum() - atom.GetFormalCharge()))


def expanded_by_double_bonds(atom) -> bool:
    """False for an S or P above its first valence without the double bonds to O, N or S that make it a sulfoxide,
    sulfone, sulfonamide or phosphate (the only such atoms drugs hold): a sulfurane such as CC[SH2]C is rejected."""
    excess = atom.GetTotalValence() - _PERIODIC_TABLE.GetDefaultValence(atom.GetAtomicNum())
    if excess <= 0 or atom.GetFormalCharge():
        return True
    doubles = sum(b.GetBondType() == Chem.BondType.DOUBLE and b.GetOtherAtom(atom).GetSymbol() in ("O", "N", "S")
                  for b in atom.GetBonds())
    return 2 * doubles >= excess


def rejection(m) -> str | None:
    """Why a sanitised, uncharged RDKit molecule is not a candidate (a few words), or None when it is one."""
    atoms = list(m.GetAtoms())
    symbols = {a.GetSymbol() for a in atoms}
    if len(Chem.GetMolFrags(m)) != 1:
        return "more than one fragment"
    if any(a.GetIsotope() for a in atoms):
        return "isotope label"
    if not symbols <= ELEMENTS:
        return f"element {min(symbols - ELEMENTS)} is not allowed"
    if "C" not in symbols:
        return "no carbon: not organic"
    if any(a.GetNumRadicalElectrons() for a in atoms):
        return "radical"
    if Chem.GetFormalCharge(m) != 0:
        return "net charge"
    if any(a.GetFormalCharge() and (a.GetSymbol() not in CHARGEABLE or abs(a.GetFormalCharge()) > 1)
           for a in atoms):
        return "charge other than +1 or -1 on N or O"
    for a in atoms:
        if a.GetTotalValence() not in allowed_valences(a) or not expanded_by_double_bonds(a):
            return f"{a.GetSymbol()} with valence {a.GetTotalValence()}"
    if m.GetNumHeavyAtoms() > MAX_HEAVY_ATOMS:
        return f"more than {MAX_HEAVY_ATOMS} heavy atoms"
    return None


def candidate_mol(text: str):
    """The RDKit molecule `text` spells if it is a candidate (acids and bases neutralised), else None. Never raises."""
    if not text or len(text) > MAX_SMILES_CHARS or not text.isascii() or not text.isprintable():
        return None
    try:
        m = Chem.MolFromSmiles(text)
        if m is None or m.GetNumAtoms() == 0:
            return None
        m = _UNCHARGER.uncharge(m)
        return m if rejection(m) is None else None
    except Exception:  # RDKit raises on a few pathological inputs instead of returning None
        return None


def canonical_smiles(text: str) -> str | None:
    """RDKit's canonical SMILES of the candidate `text` spells, or None if it spells none. Never raises."""
    m = candidate_mol(text)
    return None if m is None else Chem.MolToSmiles(m)


def quoted_strings(text: str) -> list[str]:
    """Every JSON string literal in `text`, unescaped; the model often writes a bare backslash, kept as is."""
    out = []
    for raw in _QUOTED.findall(text):
        try:
            out.append(json.loads(f'"{raw}"'))
        except ValueError:
            out.append(raw)
    return out


def parse_smiles_list(text: str, limit: int = MAX_CANDIDATES) -> list[str]:
    """The first `limit` canonical SMILES found in the quoted strings of `text`, in order, duplicates removed.

    A quoted string may hold several SMILES separated by commas or spaces (a SMILES never contains either), so
    '["CCO, CCN"]' still gives two candidates. The JSON key "response" is just an invalid SMILES and drops out."""
    found: list[str] = []
    for string in quoted_strings(text[:MAX_TEXT_CHARS]):
        for piece in re.split(r"[,\s]+", string):
            smiles = canonical_smiles(piece)
            if smiles is not None and smiles not in found:
                found.append(smiles)
                if len(found) >= min(limit, MAX_CANDIDATES):
                    return found
    return found


# -- RDKit objectives -----------------------------------------------------------------------------------------

def qed(m) -> float:
    """Bickerton's quantitative estimate of drug-likeness, already in [0, 1]."""
    return float(QED.qed(m))


_MORGAN = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)


def morgan(m):
    return _MORGAN.GetFingerprint(m)


def load_sascorer():
    """RDKit's Contrib SA_Score module (Ertl & Schuffenhauer), loaded from its file without touching sys.path;
    None if this RDKit build ships without Contrib."""
    path = Path(RDConfig.RDContribDir) / "SA_Score" / "sascorer.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("rdkit_contrib_sascorer", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception:
        return None
    return module


def sa_proxy(m) -> float:
    """A documented stand-in for the SA score when Contrib is missing, on the same 1 (easy) .. 10 (hard) scale.

    It keeps the SA score's structural complexity penalties (size, stereo centres, spiro and bridgehead atoms,
    macrocycles) and drops its fragment-frequency term, which needs the PubChem fragment table:
    sa = 2 + (n^1.005 - n) + log10(stereo + 1) + log10(spiro + 1) + log10(bridgehead + 1) + [macrocycle] log10(2)
    """
    n = m.GetNumAtoms()
    stereo = len(Chem.FindMolChiralCenters(m, includeUnassigned=True))
    spiro = rdMolDescriptors.CalcNumSpiroAtoms(m)
    bridge = rdMolDescriptors.CalcNumBridgeheadAtoms(m)
    macro = any(len(ring) > 8 for ring in m.GetRingInfo().AtomRings())
    sa = 2 + (n ** 1.005 - n) + math.log10(stereo + 1) + math.log10(spiro + 1) + math.log10(bridge + 1)
    sa += math.log10(2) if macro else 0.0
    return min(10.0, max(1.0, sa))


def window(x: float, lo: float, hi: float, width: float) -> float:
    """Smooth desirability of x for the range [lo, hi]: 1 inside, exp(-((distance to the range) / width)^2) outside."""
    gap = max(lo - x, 0.0, x - hi)
    return math.exp(-((gap / width) ** 2))


@dataclass
class MPOConfig:
    """The `mpo` objective: geometric mean of QED, ease of synthesis and a molecular-weight window."""
    mw_lo: float = 300.0  # Da: the lead-like to drug-like range
    mw_hi: float = 450.0
    mw_width: float = 75.0  # a molecule 75 Da outside the range keeps exp(-1) = 0.37 of this factor


def mpo(m, sa_score, cfg: MPOConfig = MPOConfig()) -> float:
    """mpo = (QED * (10 - SA) / 9 * window(MW, 300, 450, 75)) ^ (1/3), each factor in [0, 1]; SA in [1, 10]."""
    ease = (10.0 - sa_score(m)) / 9.0
    weight = window(Descriptors.MolWt(m), cfg.mw_lo, cfg.mw_hi, cfg.mw_width)
    return (qed(m) * ease * weight) ** (1.0 / 3.0)


def logp_window(m) -> float:
    """logp-window = window(Crippen logP, 1, 3, 1): a one-property objective with a plateau, the easiest one."""
    return window(Crippen.MolLogP(m), 1.0, 3.0, 1.0)


# -- docking --------------------------------------------------------------------------------------------------

def dock_score(vina: float, qed_value: float) -> float:
    """The paper's docking objective: 1 - ((vina + (1 - QED)) - (-12)) / 10, clipped to [0, 1].

    Vina scores are kcal/mol, lower is better; vina = -12 with QED = 1 scores 1.0, vina >= -1 scores 0."""
    return min(1.0, max(0.0, 1.0 - ((vina + (1.0 - qed_value)) + 12.0) / 10.0))


def obabel_version() -> str | None:
    """The first line of `obabel -V` (e.g. 'Open Babel 3.1.1 -- Jan  4 2023 -- 09:58:24'), None if it won't run."""
    try:
        done = subprocess.run(["obabel", "-V"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def check_docking(protein: str) -> str:
    """The protein name as dockstring spells it; DockingUnavailable, one line naming DOCKING_SETUP, when dockstring
    or Open Babel 3.1 is missing. Checked once here: dockstring would otherwise fail, and score 0, every molecule."""
    try:
        import dockstring
    except ImportError:
        raise DockingUnavailable(f"docking needs dockstring, not installed; set up with: {DOCKING_SETUP}") from None
    version = obabel_version()
    if version is None:
        raise DockingUnavailable(f"docking needs Open Babel (obabel), not on PATH; set up with: {DOCKING_SETUP}")
    if not version.startswith("Open Babel 3.1"):  # dockstring refuses any other version
        raise DockingUnavailable(f"dockstring needs Open Babel 3.1, found {version!r}; set up with: {DOCKING_SETUP}")
    valid = sorted(dockstring.list_all_target_names())
    match = {v.upper(): v for v in valid}.get(protein.upper())
    if match is None:
        raise ValueError(f"unknown dockstring protein {protein!r}; choose from {', '.join(valid)}")
    return match


def _raise_timeout(signum, frame):
    raise TimeoutError


def dockstring_vina(protein: str, smiles: str, num_cpus: int) -> float | None:
    """dockstring's Vina score (kcal/mol) of one molecule at dockstring's default seed, as in the paper's code;
    raises on a docking failure (dockstring's errors, Open Babel refusing the molecule)."""
    from dockstring import load_target
    vina, _aux = load_target(protein).dock(smiles, num_cpus=num_cpus)
    return None if vina is None else float(vina)


def vina_worker(dock_fn, protein: str, smiles: str, timeout_s: float, num_cpus: int) -> float | None:
    """Run dock_fn on one molecule in a worker process; None on any failure or after timeout_s seconds.

    The alarm interrupts dockstring's wait on its Vina or Open Babel subprocess, and subprocess.run kills that
    child on the way out, so a long docking frees its worker."""
    signal.signal(signal.SIGALRM, _raise_timeout)
    signal.alarm(max(1, math.ceil(timeout_s)))
    try:
        return dock_fn(protein, smiles, num_cpus)
    except BaseException:  # DockingError, TimeoutError, Open Babel failures: all mean "no score"
        return None
    finally:
        signal.alarm(0)


class UnguardedScript(RuntimeError):
    """Docking was asked for from a line of the main script that every docking worker would run again."""


def is_main_guard(node) -> bool:
    """True for `if __name__ == "__main__":` (either operand order)."""
    if not (isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and len(node.test.ops) == 1
            and isinstance(node.test.ops[0], ast.Eq)):
        return False
    sides = [node.test.left, *node.test.comparators]
    return ({ast.dump(side) for side in sides}
            == {ast.dump(ast.Name("__name__", ast.Load())), ast.dump(ast.Constant("__main__"))})


def unguarded_script_line() -> tuple[str, int] | None:
    """(path, line) of the main script's top-level statement running now, when it lies outside an
    `if __name__ == "__main__":` block; None when it lies inside one or no script will be re-run.

    Spawned workers run the main script again before they take work (Python's rule for "safe importing of main
    module"); a worker reaching this statement would start a pool of its own, fail, and be replaced, again and
    again, while every docking waits for its deadline."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    name = getattr(getattr(main, "__spec__", None), "name", None) or ""
    if path is None or name.endswith("__main__"):  # interactive, `python -c`, or a package's __main__: not re-run
        return None
    line, frame = None, sys._getframe()
    while frame is not None:  # the outermost frame of the script's own top level
        if frame.f_globals is vars(main) and frame.f_code.co_name == "<module>":
            line = frame.f_lineno
        frame = frame.f_back
    if line is None:
        return None
    try:
        tree = ast.parse(Path(path).read_bytes())
    except (OSError, SyntaxError, ValueError):
        return None
    guarded = any(is_main_guard(node) and node.lineno <= line <= node.end_lineno for node in tree.body)
    return None if guarded else (path, line)


def refuse_unguarded_script() -> None:
    """UnguardedScript, one line saying what to change, when spawned workers would re-run the calling line."""
    where = unguarded_script_line()
    if where is not None:
        raise UnguardedScript(f"{where[0]}, line {where[1]}: docking workers run the main script again, so the "
                              f"code that docks must sit under `if __name__ == \"__main__\":`")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use, not the machine's
    except AttributeError:  # macOS
        return os.cpu_count() or 1


class DockingOracle:
    """Vina scores of many SMILES at once, from a lazily started pool of worker processes.

    Each worker docks one molecule at a time with cpus_per_job Vina threads (the paper's code: 2); by default as
    many workers as the cores hold. The thread count changes the speed, not the score (tests/test_docking.py)."""

    def __init__(self, protein: str, workers: int | None = None, cpus_per_job: int = 2, timeout_s: float = 90.0,
                 dock_fn=dockstring_vina):
        # dock_fn must be a module-level function: spawned workers receive it by name
        self.protein, self.timeout_s, self.dock_fn = protein, timeout_s, dock_fn
        self.cpus_per_job = cpus_per_job
        self.workers = workers or max(1, min(8, available_cores() // cpus_per_job))
        self.grace_s = 30.0  # slack of the batch deadline over the workers' own timeouts (pool start-up, imports)
        self.pool = None

    def vina(self, smiles: list[str]) -> list[float | None]:
        if not smiles:
            return []
        if self.pool is None:
            # spawn, not fork: the parent holds torch threads, and forking a threaded process can deadlock.
            # forkserver would not help: its workers also run the main script again.
            refuse_unguarded_script()
            self.pool = multiprocessing.get_context("spawn").Pool(self.workers)
        jobs = [self.pool.apply_async(vina_worker, (self.dock_fn, self.protein, s, self.timeout_s, self.cpus_per_job))
                for s in smiles]
        # Each worker stops its own docking after timeout_s. One deadline for the whole batch catches a worker the
        # alarm cannot reach (stuck inside a C++ call) or one that died; its molecules score None.
        waves = math.ceil(len(smiles) / self.workers)
        deadline = time.monotonic() + waves * (self.timeout_s + self.grace_s)
        out, stuck = [], False
        for job in jobs:
            try:
                out.append(job.get(timeout=max(0.0, deadline - time.monotonic())))
            except multiprocessing.TimeoutError:
                out.append(None)
                stuck = True
            except Exception:
                out.append(None)
        if stuck:
            self.close()  # a stuck worker would hold its slot for good: the next call starts a fresh pool
        return out

    def close(self):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


# -- the task -------------------------------------------------------------------------------------------------

def describe(target: str) -> str:
    """What the prompt says the molecules should be good at. The rediscovery target's name is kept hidden: the
    oracle is a black box and naming the drug would turn search into recall."""
    if target.startswith("dock:"):
        return f"bind strongly to the protein {target[5:]} and are drug-like"
    return {
        "qed": "are as drug-like as possible (high QED)",
        "mpo": "are drug-like, easy to synthesise and weigh between 300 and 450 daltons",
        "logp-window": "have a logP between 1 and 3",
    }.get(target, "score highly on a hidden objective; drug-like molecules are a good start")


# Each strategy's group, as the released code ran it (scripts/dockstring/*.sh; random, ns and opro from
# dockstring_inference.py; no Evo script: Evo keeps MiGrATe's group and the Evo word search's mu 1): alpha
# on-policy, beta greedy and gamma neighbourhood molecules an iteration, the top-k that parents are drawn
# from (OPRO: listed), mu steps per group.
PRESETS = {  # strategy:    alpha beta gamma topk mu
    "random":       tasks.Preset( 5, 0,  0,  1, 2),
    "ns":           tasks.Preset( 0, 0,  5,  1, 2),
    "opro":         tasks.Preset( 0, 0,  5,  5, 2),
    "grpo":         tasks.Preset( 5, 0,  0,  1, 2),
    "grpo-greedy":  tasks.Preset( 4, 1,  0,  1, 2),
    "migrate":      tasks.Preset( 2, 1,  2,  1, 2),
    "migrate-opro": tasks.Preset( 2, 1,  2,  5, 2),
    "migrate-evo":  tasks.Preset( 2, 1,  2,  1, 1),
    "discover":     tasks.Preset( 0, 0,  8,  1, 1),  # TTT-Discover: 8 rollouts of one state, one step (its recipe)
}


@tasks.register
class MoleculeTask(tasks.Task):
    """Propose molecules (SMILES) that maximise a chemistry oracle."""
    name = "molecule"
    stop = ('"]',)  # the close of the JSON list: nothing after it is read
    defaults = tasks.TaskDefaults(
        PRESETS, lr=5e-5, lora_r=64, lora_alpha=16, max_new_tokens=256, iterations=40,
        # CPU demo (migrate.py --full for the above): a SMILES answer rarely needs more than 96 tokens
        extra={"demo_iterations": 10, "demo_max_new_tokens": 96,
               "score_meaning": "best score: the target's objective in [0, 1] (rediscover:DRUG: Tanimoto similarity "
                                "to DRUG, 1.0 = DRUG itself; qed: drug-likeness; dock:PROTEIN: 1 - ((Vina + 1 - QED) "
                                "+ 12) / 10); evaluations = distinct molecules scored"},
    )
    target_sets = {
        "paper": [f"dock:{p}" for p in PAPER_TARGETS],  # needs docking (DOCKING_SETUP)
        "dock-small": [f"dock:{p}" for p in DOCK_SMALL_TARGETS],
        "rdkit": ["qed", "rediscover:celecoxib", "mpo", "logp-window"],
        "rediscover": [f"rediscover:{d}" for d in DRUGS],
    }
    default_target = "rediscover:celecoxib"

    def __init__(self, target: str = default_target, n: int = 1, workers: int | None = None,
                 cpus_per_job: int = 2, timeout_s: float = 90.0, **options):
        target = target.strip()
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n (molecules per answer) must be a positive integer, got {n!r}")
        self.n = n
        self.cache: dict[str, float] = {}  # a molecule repeated within one batch is scored once
        self.oracle = None
        self.sa_module = None
        if target.startswith("dock:"):
            protein = check_docking(target[5:])
            target = f"dock:{protein}"
            self.oracle = DockingOracle(protein, workers, cpus_per_job, timeout_s)
        elif target.startswith("rediscover:"):
            drug = target.split(":", 1)[1].lower()
            if drug not in DRUGS:
                raise ValueError(f"unknown drug {drug!r} for rediscover:; choose from {', '.join(DRUGS)}")
            target = f"rediscover:{drug}"
            self.reference = morgan(candidate_mol(DRUGS[drug]))
        elif target not in ("qed", "mpo", "logp-window"):
            raise ValueError(f"unknown molecule target {target!r}; choose from qed, mpo, logp-window, "
                             f"rediscover:<{'|'.join(DRUGS)}> or dock:<dockstring protein, e.g. DRD2>")
        super().__init__(target, **options)

    # -- prompts ----------------------------------------------------------------------------------------------
    # Measured with bench/prompt_parse.py --task molecule (SmolLM2-135M, temperature 1): with procaine and indole
    # as examples in the instructions, 6-20% of answers held a new valid molecule; with small acyclic examples as
    # earlier answers, the on-policy and neighbourhood prompts reach 36-42%, with 2-11% of answers only copies.
    # Those figures are for n = 5; at n = 1 (the default) 22-30% and 16-33% (module docstring of the bench).
    def _system(self) -> dict:
        return {"role": "system", "content": "You are an expert medicinal chemist. You answer with JSON only."}

    def _answer(self, smiles: list[str]) -> dict:
        """An earlier assistant turn holding `smiles` in the answer format."""
        return {"role": "assistant", "content": json.dumps({"response": smiles})}

    def _count(self, noun: str) -> str:
        """'one new molecule' at n = 1, '5 new molecules' otherwise: the prompts read naturally at any n."""
        return f"one {noun}" if self.n == 1 else f"{self.n} {noun}s"

    def _format(self) -> str:
        return f"Answer with a JSON object holding a list of {self._count('SMILES string')}"

    def prompt(self) -> tasks.Prompt:
        # Earlier answers of n molecules each (accepted, then "more, different from these") show the format and
        # keep all ten examples in view, whatever n; the model continues the pattern with new molecules instead of
        # copying one. Two answers of one example each (the n = 1 prompt until measured) held a new valid
        # molecule in 10 % of completions, ten answers of one in 25 %.
        ask = (f"Propose {self._count('new molecule')}. We want molecules that {describe(self.target)}. "
               f"{self._format()}.")
        more = {"role": "user", "content": f"Good. Propose {self._count('more new molecule')}, different from these."}
        messages = [self._system(), {"role": "user", "content": ask}]
        for start in range(0, len(EXAMPLES), self.n):
            messages += [self._answer(EXAMPLES[start:start + self.n]), more]
        return tasks.Prompt(messages, RESPONSE_PREFIX)

    def _vary(self, seed: str) -> str:
        return (f"Here is a molecule: {seed}\nPropose {self._count('small variation')} of it (change, add or remove "
                f"a few atoms or bonds). We want molecules that {describe(self.target)}. {self._format()}.")

    def neighbourhood_prompt(self, seed: str) -> tasks.Prompt:
        # Two worked examples of the request, then the real seed as the last thing the model reads: with the seed
        # further back, the model varied the worked examples' seeds instead. At n = 1 each worked answer shows one
        # variation; showing all five was not distinguishable (a new valid molecule in 0.27 of completions against
        # 0.23, seeds 0-2 of 64 each, per seed -0.11 to +0.15: bench/prompt_parse.py).
        messages = [self._system()]
        for demo_seed, variations in NS_EXAMPLES:
            messages += [{"role": "user", "content": self._vary(demo_seed)}, self._answer(variations[:self.n])]
        messages.append({"role": "user", "content": f"Good. Now propose {self._count('small variation')} of this "
                                                    f"molecule: {seed}"})
        return tasks.Prompt(messages, RESPONSE_PREFIX)

    def opro_prompt(self, ranked: list[tuple[str, float]]) -> tasks.Prompt:
        # The scored list already shows SMILES, so the example sits in the instructions (copied in ~10% of answers)
        shown = "\n".join(f"{smiles} score: {score:.3f}" for smiles, score in ranked)
        user = (f"We want molecules that {describe(self.target)}. Here are molecules scored so far, from worst "
                f"to best:\n{shown}\nPropose {self._count('new molecule')} scoring higher than all of "
                f"these. {self._format()}, like {json.dumps({'response': EXAMPLES[:min(self.n, 5)]})}")
        return tasks.Prompt([self._system(), {"role": "user", "content": user}], RESPONSE_PREFIX)

    # -- candidates -------------------------------------------------------------------------------------------
    def parse(self, completion: str) -> list[str]:
        try:
            return parse_smiles_list(completion, self.n)
        except Exception:  # the protocol promises never to raise on model output
            return []

    def render(self, candidate: str) -> str:
        # json.dumps escapes the backslash of stereo bonds (C/C=C\\C), so the completion is valid JSON
        return RESPONSE_PREFIX + json.dumps(candidate)[1:-1] + '"]}'

    def score(self, candidates: list[str]) -> list[float]:
        todo = [c for c in dict.fromkeys(candidates) if c not in self.cache]
        if self.oracle is not None:
            self._dock(todo)
        else:
            for c in todo:
                self.cache[c] = self._score_rdkit(c)
        return [self.cache[c] for c in candidates]

    def _score_rdkit(self, smiles: str) -> float:
        m = candidate_mol(smiles)
        if m is None:
            return 0.0
        try:
            if self.target == "qed":
                value = qed(m)
            elif self.target == "mpo":
                value = mpo(m, self._sa_score)
            elif self.target == "logp-window":
                value = logp_window(m)
            else:  # rediscover: Tanimoto similarity of Morgan bit vectors (radius 2, 2048 bits); 1.0 = same graph
                value = DataStructs.TanimotoSimilarity(morgan(m), self.reference)
        except Exception:  # an RDKit descriptor that fails on an exotic molecule means "no score", not a crash
            return 0.0
        return min(1.0, max(0.0, float(value)))

    def _sa_score(self, m) -> float:
        if self.sa_module is None:
            self.sa_module = load_sascorer() or False  # False: tried and missing, use the proxy
        return float(self.sa_module.calculateScore(m)) if self.sa_module else sa_proxy(m)

    def _dock(self, smiles: list[str]):
        valid = [s for s in smiles if candidate_mol(s) is not None]
        for s in smiles:
            self.cache[s] = 0.0
        for s, vina in zip(valid, self.oracle.vina(valid)):
            if vina is not None:
                self.cache[s] = dock_score(vina, qed(candidate_mol(s)))

    def close(self):
        """Stop the docking workers (if any were started)."""
        if self.oracle is not None:
            self.oracle.close()
