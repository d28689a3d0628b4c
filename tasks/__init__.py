"""The task protocol: everything the MiGrATe loop needs from a black-box problem, and nothing more.

A task owns text: it writes prompts, parses completions into candidates and scores candidates. The loop owns
tokens, sampling and training, and never looks inside a candidate (a word, a SMILES string, a program).

A candidate is a canonical string (lower-cased word, canonical SMILES, program source). A completion may hold
several candidates (the word-search prompt asks for two words); its reward is the best score among them, 0 if
none parses. Scores are in [0, 1] and `solved_score` (1.0) means the problem is solved.
"""
import difflib
import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from rundir import slug
from settings import DEFAULTS, UsageError


@dataclass
class Prompt:
    """A chat prompt plus the text the assistant's answer is forced to start with (e.g. '{"response": ["')."""
    messages: list[dict]  # [{"role": "system"|"user"|"assistant", "content": str}, ...]
    prefix: str = ""


@dataclass
class Preset:
    """A task's numbers for one strategy (a row of the task's table): alpha on-policy, beta greedy and gamma
    neighbourhood members, the top-k past solutions that parents are drawn from (OPRO: how many its prompt lists)
    and mu optimiser steps per group. How the strategy uses them (what NS prompts show, whether it trains) is the
    strategy's own rule: loop.STRATEGIES."""
    alpha: int
    beta: int = 0
    gamma: int = 0
    topk: int | None = None  # None: Settings' topk
    mu: int | None = None  # None: Settings' mu


class TaskDefaults:
    """A task's numbers: its strategies' group compositions (`presets`), overrides of `settings.Settings`' defaults
    by field name (the paper's lr, LoRA rank, completion length, iterations, ...), and `extra` facts the entry
    point reads (CPU demo settings, what the score means)."""

    def __init__(self, presets: dict[str, Preset], extra: dict | None = None, **overrides):
        unknown = sorted(set(overrides) - set(DEFAULTS))
        if unknown:
            raise TypeError(f"TaskDefaults: {', '.join(unknown)} is not a setting (see settings.Settings)")
        self.presets, self.extra, self.overrides = presets, extra or {}, overrides

    def __getattr__(self, name: str):
        """defaults.lr: the task's value of the setting lr, its override or else the Settings default."""
        if name in DEFAULTS:
            return self.overrides.get(name, DEFAULTS[name])
        raise AttributeError(name)


class Task:
    """Base class. Subclasses set `name`, `defaults`, `target_sets`, `default_target` and implement the methods."""
    name: str = ""
    defaults: TaskDefaults
    target_sets: dict[str, list[str]] = {}  # named sets usable as --targets NAME, e.g. {"paper": [...]}
    default_target: str = ""
    solved_score: float = 1.0
    answer_size: int = 1  # candidates one answer to the on-policy prompt holds (word search: 2 words)
    stop: tuple[str, ...] = ()  # strings that end a completion early, e.g. the close of the answer's JSON list

    def __init__(self, target: str, **options):
        self.target = target

    # -- prompts ---------------------------------------------------------------------------------------
    # `n` is how many candidates a prompt asks for: answer_size when None. Only packing tasks (defaults.pack)
    # are asked for other counts, so a task without packing may ignore it.
    def prompt(self, n: int | None = None) -> Prompt:
        """The on-policy prompt; every group member is trained as an answer to it (with n = answer_size)."""
        raise NotImplementedError

    def neighbourhood_prompt(self, parent: str, n: int | None = None) -> Prompt:
        """Ask for a variation of one past candidate, the parent."""
        raise NotImplementedError

    def opro_prompt(self, ranked: list[tuple[str, float]], n: int | None = None) -> Prompt:
        """Show past (candidate, score) pairs, worst first and best last, and ask for a better one."""
        raise NotImplementedError

    # -- candidates ------------------------------------------------------------------------------------
    def parse(self, completion: str) -> list[str]:
        """Candidates in a completion (prefix included), canonicalised, in order, duplicates removed.

        Never raises: malformed or adversarial text gives []."""
        raise NotImplementedError

    def render(self, candidate: str) -> str:
        """A canonical completion for a past candidate (prefix included): the text of a greedy member."""
        raise NotImplementedError

    def render_answer(self, candidates: list[str]) -> str:
        """A canonical completion holding up to answer_size candidates: the text of a packed member."""
        if len(candidates) != 1:
            raise NotImplementedError(f"task {self.name} has no answers of {len(candidates)} candidates")
        return self.render(candidates[0])

    def score(self, candidates: list[str]) -> list[float]:
        """The black-box score of each candidate, in [0, 1]; batched because oracles are faster in batches."""
        raise NotImplementedError

    def warm_start(self, rng) -> list[str]:
        """Candidates scored before iteration 1 (a random.Random is given); [] if the task has none."""
        return []

    def report(self, history: list[dict]) -> dict:
        """Task-specific summary of a finished run (e.g. ARC test-output votes); {} by default."""
        return {}


TASKS: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls
    return cls


def task_class(name: str) -> type[Task]:
    """Look up a task by name, importing the built-in ones on first use (they pull heavy optional imports)."""
    from tasks import arc, molecule, wordsearch  # noqa: F401  (importing registers them; cached after the first)
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; choose from {', '.join(sorted(TASKS))}")
    return TASKS[name]


def load_task_class(name: str) -> type[Task]:
    """A built-in task by name, or 'package.module' / 'path/to/file.py' defining a Task subclass (the last one)."""
    if not (name.endswith(".py") or "." in name or ":" in name):
        try:
            return task_class(name)
        except KeyError as e:
            raise UsageError(e.args[0])
    path = name.split(":")[0]
    try:
        if path.endswith(".py"):
            spec = importlib.util.spec_from_file_location(Path(path).stem, path)
            if spec is None or not Path(path).is_file():
                raise UsageError(f"task file {path} not found")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(path)
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001  the user's own file: say which and why in one line
        where = f" (line {e.lineno})" if isinstance(e, SyntaxError) else ""
        raise UsageError(f"task {path} failed to load{where}: {type(e).__name__}: {e}") from None
    found = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, Task) and v is not Task]
    if not found:
        raise UsageError(f"{name} defines no tasks.Task subclass")
    return found[-1]


def expand_targets(task_cls: type[Task], spec: str) -> list[str]:
    """--targets: a named set of the task (e.g. "paper") or comma-separated targets, each distinct and each with a
    run folder of its own. A single name close to a named set is a likely typo: ask rather than search for it."""
    if spec in task_cls.target_sets:
        return list(task_cls.target_sets[spec])
    names = [t.strip() for t in spec.split(",") if t.strip()]
    if not names:
        raise UsageError(f"--targets {spec!r} names no target")
    close = difflib.get_close_matches(spec, task_cls.target_sets, n=1, cutoff=0.75)
    if len(names) == 1 and close:
        raise UsageError(f"--targets {spec!r}: did you mean the set {close[0]!r}? For one target of that name, "
                         f"give --target {spec}")
    folders = {}  # run folder name -> target
    for t in names:
        if slug(t) in folders:
            same = "is given twice" if folders[slug(t)] == t else f"and {folders[slug(t)]!r} share a run folder"
            raise UsageError(f"--targets: {t!r} {same}; give each target once")
        folders[slug(t)] = t
    return names
