"""The search memory of one run: every scored candidate, the score cache, and the seed pools.

- History: each distinct candidate is scored once (a repeat costs no evaluation and is logged as a repeat);
  keeps the best-first ranking that greedy members and NS seeds are drawn from; counts evaluations against the
  budget, which is how strategies are compared fairly.
- Islands: the island-model database of the MiGrATe-Evo variant: several sub-populations that evolve apart,
  an elite archive of the best overall, and periodic migration of each island's best to its neighbour.

Both are saved with a run's state as plain data (dicts, lists, numbers, strings: history_data, islands_data),
which torch.load(weights_only=True) reads back without running any code from the file.
"""
import dataclasses
import random
from dataclasses import dataclass, field


@dataclass
class Entry:
    candidate: str
    score: float
    iteration: int  # 0 = warm start
    origin: str  # "warm", "online", "greedy" or "neighbourhood"


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
        strategy ever sees more evaluations than the budget allows."""
        todo = []
        for c in dict.fromkeys(candidates):
            if c not in self.entries and len(todo) < self.budget - self.evaluations:
                todo.append(c)
        for c, s in zip(todo, task.score(todo) if todo else []):
            self.entries[c] = Entry(c, min(max(float(s), 0.0), 1.0), iteration, origin)
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
    """MiGrATe-Evo's seed database. Seeds are drawn from one island at a time (round-robin); a child joins the
    island of its seed, on-policy finds join a random island; every `migrate_every` iterations each island's best
    is copied to the next island in a ring. Island size is capped, worst dropped; the elite archive keeps the
    best `archive_size` overall and is where greedy members come from."""
    n_islands: int = 4
    island_size: int = 20
    archive_size: int = 10
    migrate_every: int = 5
    islands: list[dict[str, float]] = field(default_factory=list)
    archive: dict[str, float] = field(default_factory=dict)
    turn: int = 0

    def __post_init__(self):
        if not self.islands:
            self.islands = [{} for _ in range(self.n_islands)]

    def add(self, candidate: str, score: float, island: int) -> None:
        pool = self.islands[island]
        pool[candidate] = score
        if len(pool) > self.island_size:
            del pool[min(pool, key=pool.get)]
        self.archive[candidate] = score
        if len(self.archive) > self.archive_size:
            del self.archive[min(self.archive, key=self.archive.get)]

    def pick_seed(self, rng: random.Random, topk: int) -> tuple[str, int] | None:
        """A random member of the current island's top-k, and the island index (None while all are empty)."""
        for _ in range(self.n_islands):
            island = self.turn % self.n_islands
            self.turn += 1
            pool = self.islands[island]
            if pool:
                best = sorted(pool, key=lambda c: -pool[c])[:topk]
                return rng.choice(best), island
        return None

    def migrate(self) -> None:
        bests = [max(p, key=p.get) if p else None for p in self.islands]
        for i, cand in enumerate(bests):
            if cand is not None:
                self.add(cand, self.islands[i][cand], (i + 1) % self.n_islands)  # add() keeps the size cap


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
