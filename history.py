"""The search memory of one run: every scored candidate, the score cache, and the parent pools.

- History: each distinct candidate is scored once (a repeat costs no evaluation and is logged as a repeat);
  keeps the best-first ranking that greedy members and NS parents are drawn from; counts evaluations against the
  budget, which is how strategies are compared fairly. A task's scores are checked, not repaired: one finite
  number in [0, 1] per candidate, or TaskProtocolError (a clamped 2.5 would read as solved, and a short list
  would leave candidates unscored, to be counted again the next time they come up).
- Islands: the island-model database of the MiGrATe-Evo variant, with the settings of the paper's released
  EvolutionDatabase: sub-populations that evolve apart, an elite archive of the best overall, parents drawn from
  one island per iteration (explore or exploit), and a ring migration of each island's best every 40 iterations.

Both are saved with a run's state as plain data (dicts, lists, numbers, strings: history_data, islands_data),
which torch.load(weights_only=True) reads back without running any code from the file.
"""
import dataclasses
import random
import reprlib
from dataclasses import dataclass, field


class TaskProtocolError(Exception):
    """A task's score() raised, or returned something other than one finite score in [0, 1] per candidate.

    The message is one line naming the task and what it returned."""


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlist = 40, 40, 4


def _short(value) -> str:
    """A one-line repr of at most about 60 characters."""
    return _REPR.repr(value)


def _as_score(value) -> float | None:
    """value as a float when it is a number in [0, 1] (NaN is not), else None."""
    if isinstance(value, (bool, str, bytes)):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return x if 0.0 <= x <= 1.0 else None


def checked_scores(task, candidates: list[str]) -> list[float]:
    """task.score(candidates), each score a float; TaskProtocolError when score() raises or breaks the protocol."""
    label = f"task {getattr(task, 'name', '') or type(task).__name__!r}"
    if getattr(task, "target", None):
        label += f" (target {task.target!r})"
    try:
        returned = task.score(candidates)
    except Exception as e:
        first = (str(e).splitlines() or [""])[0][:200]
        raise TaskProtocolError(f"{label}: score() raised {type(e).__name__}: {first}") from e
    try:
        scores = list(returned)
    except TypeError:
        raise TaskProtocolError(f"{label}: score() returned {_short(returned)}, not a list of scores") from None
    if len(scores) != len(candidates):
        raise TaskProtocolError(f"{label}: score() returned {len(scores)} scores for {len(candidates)} candidates: "
                                f"{_short(scores)}")
    checked = [_as_score(s) for s in scores]
    for candidate, s, x in zip(candidates, scores, checked):
        if x is None:
            raise TaskProtocolError(f"{label}: score() gave {_short(s)} for {_short(candidate)}; a score must be a "
                                    f"finite number in [0, 1]")
    return checked


@dataclass
class Entry:
    candidate: str
    score: float
    iteration: int  # 0 = warm start
    origin: str  # "warm", "on-policy", "greedy" or "neighbourhood"


@dataclass
class History:
    budget: int  # black-box evaluations allowed
    entries: dict[str, Entry] = field(default_factory=dict)  # candidate -> first time it was scored
    evaluations: int = 0

    @property
    def exhausted(self) -> bool:
        return self.evaluations >= self.budget

    def score(self, task, candidates: list[str], iteration: int, origin: str) -> list[dict]:
        """Score candidates through the cache; returns one record per candidate (its score and whether it was new).

        New candidates past the budget are not evaluated: they score 0 and are marked "over_budget", so no
        strategy ever sees more evaluations than the budget allows. A task that breaks the protocol raises
        TaskProtocolError before anything is recorded."""
        todo = []
        for c in dict.fromkeys(candidates):
            if c not in self.entries and len(todo) < self.budget - self.evaluations:
                todo.append(c)
        for c, s in zip(todo, checked_scores(task, todo) if todo else []):
            self.entries[c] = Entry(c, s, iteration, origin)
        self.evaluations += len(todo)
        records = []
        for c in candidates:
            e = self.entries.get(c)
            status = "new" if c in todo else ("repeat" if e else "over_budget")
            records.append(dict(candidate=c, score=e.score if e else 0.0, status=status))
        return records

    def last_find(self) -> int:
        """The iteration that scored the newest candidate (0 = the warm start)."""
        return max((e.iteration for e in self.entries.values()), default=0)

    def top(self, k: int) -> list[Entry]:
        """The k best candidates, best first; ties go to the earlier find (stable and reproducible)."""
        order = sorted(self.entries.values(), key=lambda e: -e.score)
        return order[:k]

    def best(self) -> Entry | None:
        top = self.top(1)
        return top[0] if top else None


@dataclass
class Islands:
    """MiGrATe-Evo's parent database (the released code's settings as defaults).

    One island is current at a time: it gives the iteration's parent, receives every candidate the iteration scored
    (score 0 and duplicates left out), then the turn passes to the next island (`next_island`, after every
    update). A parent is drawn with probability explore_p from the island's top explore_topk that are not elites
    (explore), else from the elites that live on the island, or its top exploit_topk when it holds none
    (exploit). Elites: the archive_size best candidates seen. Every migrate_every iterations each island sends
    its best migration_rate (at least one) to both ring neighbours."""
    n_islands: int = 4
    migrate_every: int = 40
    archive_size: int = 5
    migration_rate: float = 0.05
    explore_p: float = 0.2
    explore_topk: int = 3
    exploit_topk: int = 3
    islands: list[dict[str, float]] = field(default_factory=list)  # candidate -> score, per island
    archive: dict[str, float] = field(default_factory=dict)
    current: int = 0

    def __post_init__(self):
        if not self.islands:
            self.islands = [{} for _ in range(self.n_islands)]

    def add(self, candidate: str, score: float, island: int | None = None) -> None:
        pool = self.islands[self.current if island is None else island]
        if score <= 0 or candidate in pool:
            return
        pool[candidate] = score
        if candidate in self.archive:
            return
        if len(self.archive) < self.archive_size:
            self.archive[candidate] = score
            return
        worst = min(self.archive, key=self.archive.get)
        if score > self.archive[worst]:
            del self.archive[worst]
            self.archive[candidate] = score

    def next_island(self) -> None:
        self.current = (self.current + 1) % self.n_islands

    def pick_parent(self, rng: random.Random) -> str | None:
        """One parent from the current island, or None while it is empty."""
        pool = self.islands[self.current]
        if not pool:
            return None
        ranked = sorted(pool, key=lambda c: -pool[c])  # best first; ties keep insertion order
        if rng.random() < self.explore_p:
            plain = [c for c in ranked if c not in self.archive] or ranked
            return rng.choice(plain[:self.explore_topk])
        elites = [c for c in ranked if c in self.archive]
        return rng.choice(elites or ranked[:self.exploit_topk])

    def migrate(self) -> None:
        movers = []
        for pool in self.islands:
            ranked = sorted(pool, key=lambda c: -pool[c])
            movers.append(ranked[:max(1, int(len(ranked) * self.migration_rate))])
        for i, group in enumerate(movers):
            for c in group:
                for j in ((i + 1) % self.n_islands, (i - 1) % self.n_islands):
                    self.islands[j].setdefault(c, self.islands[i][c])


# ----------------------------------------------------------------------------------------------------------
# Plain data for state.pt: insertion order is kept, so top() breaks ties the same way after a resume.

def history_data(h: History) -> dict:
    return dict(budget=h.budget, evaluations=h.evaluations, entries=[dataclasses.asdict(e) for e in h.entries.values()])


def history_from_data(d: dict) -> History:
    return History(d["budget"], {e["candidate"]: Entry(**e) for e in d["entries"]}, d["evaluations"])


def islands_data(isl: Islands) -> dict:
    return dataclasses.asdict(isl)


def islands_from_data(d: dict) -> Islands:
    return Islands(**d)
