"""The search memory of one run: every scored candidate, the score cache, and the parent pools.

- History: each distinct candidate is scored once (a repeat costs no evaluation and is logged as a repeat);
  keeps the best-first ranking that greedy members and NS parents are drawn from; counts evaluations against the
  budget, which is how strategies are compared fairly. A task's scores are checked, not repaired: one finite
  number in [0, 1] per candidate, or TaskProtocolError (a clamped 2.5 would read as solved, and a short list
  would leave candidates unscored, to be counted again the next time they come up).
- Islands: the island-model database of the MiGrATe-Evo variant, with the settings of the paper's released
  EvolutionDatabase: sub-populations that evolve apart, an elite archive of the best overall, parents drawn from
  one island per iteration (explore or exploit), and a ring migration of each island's best every 40 iterations.
- Archive: TTT-Discover's archive of states (arXiv 2601.16175, its released PUCTSampler): the next group starts
  from the state with the best PUCT score (value, visit counts, rank prior), visits are backed up the lineage, and
  each state keeps its two best children.

All three are saved with a run's state as plain data (dicts, lists, numbers, strings: history_data, islands_data,
archive_data), which torch.load(weights_only=True) reads back without running any code from the file.
"""
import dataclasses
import math
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


ROOT = ""  # the archive's empty state: no solution yet, whose prompt is the task's on-policy prompt


@dataclass
class Archive:
    """TTT-Discover's archive of states and its PUCT choice of the state the next group starts from (the released
    PUCTSampler, `puct_backprop`, with its defaults). A state is a scored candidate; the root (ROOT) is the empty
    state, always kept, whose prompt is the task's on-policy prompt; every other state remembers the states it
    was found from (its lineage, nearest first, by state id).

    The choice (pick_parent) is the argmax over states s of
        score(s) = Q(s) + c * scale * P(s) * sqrt(1 + T) / (1 + n(s))
    Q(s): the best score of a child found from s once s has been tried (n(s) > 0), else s's own score;
    n(s): attempts started from s or from any of its descendants; T: attempts in all;
    P(s) = (N - rank(s)) / (N (N + 1) / 2), rank 0 the best of the N states (ties: the earlier state ranks higher);
    scale = max - min of the scores of the states other than the root (all states while there are none), at least
    1e-6. Ties in score(s) go to the higher own score, then to the earlier state.

    update(parent, children, attempts) records one group's attempts from a parent: each counts one visit for the
    parent and for each ancestor still in the archive, and one in T, failed or not; Q(parent) takes the best child
    score; the children join as new states (one already in the archive is not added twice). prune(), once an
    iteration after its updates (the recipe prunes once a batch), keeps each state's children_kept best children
    and then, past max_states, the root and the best states. A candidate found again after it was pruned is a new
    state (a new id, no visits), as in the recipe, where every state has its own id."""
    c: float = 1.0  # puct_c
    children_kept: int = 2  # topk_children
    max_states: int = 1000  # max_buffer_size
    scores: dict[str, float] = field(default_factory=lambda: {ROOT: 0.0})  # state -> its score, oldest first
    ids: dict[str, int] = field(default_factory=lambda: {ROOT: 0})
    lineage: dict[str, list[int]] = field(default_factory=lambda: {ROOT: []})  # ancestors' ids, nearest first
    visits: dict[str, int] = field(default_factory=dict)  # n
    best_child: dict[str, float] = field(default_factory=dict)  # the best score of a child found from the state
    attempts: int = 0  # T
    next_id: int = 1

    def add(self, candidate: str, score: float, parent: str | None = None) -> None:
        """A state found from `parent` (None: the root), unless the archive holds it already; no visit is counted
        (a warm-start candidate joins this way)."""
        parent = self._state(parent)
        if candidate == ROOT or candidate in self.scores:
            return
        self.scores[candidate] = score
        self.ids[candidate] = self.next_id
        self.lineage[candidate] = [self.ids[parent]] + self.lineage[parent]
        self.next_id += 1

    def update(self, parent: str | None, children: list[tuple[str, float]], attempts: int) -> None:
        """A group's `attempts` from `parent` (None: the root, i.e. the on-policy prompt), which found `children`,
        (candidate, score) pairs; an attempt that found nothing counts as a visit all the same."""
        parent = self._state(parent)
        present = {i: s for s, i in self.ids.items()}
        for i in [self.ids[parent]] + self.lineage[parent]:
            if i in present:
                self.visits[present[i]] = self.visits.get(present[i], 0) + attempts
        self.attempts += attempts
        if children:
            best = max(score for _, score in children)
            self.best_child[parent] = max(self.best_child.get(parent, best), best)
        for candidate, score in children:
            self.add(candidate, score, parent)

    def _state(self, parent: str | None) -> str:
        parent = ROOT if parent is None else parent
        if parent not in self.scores:
            raise ValueError(f"parent {_short(parent)} is not in the archive; pick it with pick_parent()")
        return parent

    def puct_scores(self) -> dict[str, float]:
        """score(s) of every state, in archive order."""
        states = list(self.scores)
        N = len(states)
        ranked = sorted(states, key=lambda s: -self.scores[s])  # stable: ties keep archive order
        prior = {s: (N - rank) / (N * (N + 1) / 2) for rank, s in enumerate(ranked)}
        found = [self.scores[s] for s in states if s != ROOT] or [self.scores[ROOT]]
        scale = max(max(found) - min(found), 1e-6)
        growth = math.sqrt(1 + self.attempts)
        out = {}
        for s in states:
            n = self.visits.get(s, 0)
            q = self.best_child.get(s, self.scores[s]) if n > 0 else self.scores[s]
            out[s] = q + self.c * scale * prior[s] * growth / (1 + n)
        return out

    def pick_parent(self) -> str | None:
        """The state the next group starts from: the PUCT argmax (deterministic), None for the root."""
        puct = self.puct_scores()
        best = max(puct, key=lambda s: (puct[s], self.scores[s]))  # max keeps the first of equals
        return None if best == ROOT else best

    def prune(self) -> None:
        """Each state keeps its children_kept best children (ties: the earlier), a pruned state's surviving
        children included, in the recipe's order, which later ties follow: the root, then each parent's children,
        best first. Past max_states, the root and the best states stay (ties: the later in that order, as the
        recipe's argsort reversed), in that order."""
        by_parent: dict[int, list[str]] = {}
        for s in self.scores:
            if s != ROOT:
                by_parent.setdefault(self.lineage[s][0], []).append(s)
        order = [ROOT] + [s for children in by_parent.values()
                          for s in sorted(children, key=lambda s: -self.scores[s])[:self.children_kept]]
        if len(order) > self.max_states:
            best = set(sorted(order[1:], key=lambda s: self.scores[s])[::-1][:self.max_states - 1])
            order = [s for s in order if s == ROOT or s in best]
        for s in set(self.scores) - set(order):
            del self.ids[s], self.lineage[s]
            self.visits.pop(s, None)
            self.best_child.pop(s, None)
        self.scores = {s: self.scores[s] for s in order}


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


def archive_data(a: Archive) -> dict:
    return dataclasses.asdict(a)


def archive_from_data(d: dict) -> Archive:
    return Archive(**d)
