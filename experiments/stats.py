"""The statistics of a report: paired differences, their bootstrap interval, the exact sign test, Holm's
adjustment over a table's comparisons, and the Wilson interval of a solved fraction.

Left out on purpose: the Wilcoxon test (the sign test needs no symmetry of the differences).
"""
import math

import numpy as np

PAIRED_REFERENCES = ("random", "ns", "grpo")  # sampling alone, the neighbourhood without training, on-policy GRPO
TIE = 1e-6  # scores this close are one score: the same word embedded in another batch differs in the last bits
RESAMPLES = 10_000


def mean_std(xs):
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / max(len(xs) - 1, 1))


def paired_differences(runs: list[dict], reference: list[dict], equal_evaluations=False) -> list[float]:
    """Best score minus the reference's on the same (seed, target), hence from the same warm start; runs without
    a partner are left out. Ordered by (seed, target), so that the bootstrap is reproducible. With
    equal_evaluations, each run's best within the evaluations the shorter run of the pair used: an iteration cap
    lets a policy that repeats itself (repeats are free) end with fewer evaluations than its partner."""
    ref = {(r["seed"], r["target"]): r for r in reference}

    def diff(r, q):
        if not equal_evaluations:
            return r["best"] - q["best"]
        e = min(r["evaluations"], q["evaluations"])
        return r["curve"][e] - q["curve"][e]
    return [diff(r, ref[r["seed"], r["target"]])
            for r in sorted(runs, key=lambda r: (r["seed"], r["target"])) if (r["seed"], r["target"]) in ref]


def wins_ties_losses(diffs: list[float]) -> tuple[int, int, int]:
    wins, losses = sum(d > TIE for d in diffs), sum(d < -TIE for d in diffs)
    return wins, len(diffs) - wins - losses, losses


def bootstrap_interval(diffs: list[float], resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the mean difference: resample the pairs with replacement."""
    d = np.asarray(diffs, dtype=np.float64)
    means = d[np.random.default_rng(seed).integers(0, len(d), (resamples, len(d)))].mean(axis=1)  # (resamples,)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test, ties already dropped: twice the binomial(n, 1/2) tail of the rarer sign."""
    n = wins + losses
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2 ** n)


def holm(ps: list[float]) -> list[float]:
    """Holm's step-down adjustment of m p-values, in their order: the i-th smallest is multiplied by m - i + 1,
    then made non-decreasing. An adjusted p below 0.05 holds for the whole family of m tests at once."""
    adjusted, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(sorted(range(len(ps)), key=lambda i: ps[i])):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a fraction k/n (stays inside [0, 1] and is not empty at k = 0 or n)."""
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(centre - half, 0.0), min(centre + half, 1.0)


def verdict(interval: tuple[float, float], p: float) -> str:
    """A difference counts only when the bootstrap interval excludes 0 and the sign test agrees (p < 0.05):
    with a handful of pairs the bootstrap interval is too narrow to trust alone."""
    lo, hi = interval
    if p >= 0.05 or lo <= 0 <= hi:
        return "not distinguishable"
    return "better" if lo > 0 else "worse"


def pair_statistics(diffs: list[float]) -> dict:
    """The paired comparison of one list of differences: mean, bootstrap interval, sign test, W/T/L, verdict."""
    w, t, l = wins_ties_losses(diffs)
    ci, p = bootstrap_interval(diffs), sign_test(w, l)
    return dict(pairs=len(diffs), mean_diff=sum(diffs) / len(diffs), ci_low=ci[0], ci_high=ci[1], sign_p=p,
                wins=w, ties=t, losses=l, verdict=verdict(ci, p))


def comparisons(results: dict, equal_evaluations=False, references=PAIRED_REFERENCES) -> list[dict]:
    """Every strategy against each reference present, each pair of strategies once (ns against random, not also
    random against ns); the rows are one family for Holm's adjustment of the sign test."""
    refs = [r for r in references if r in results]
    rows = []
    for ref in refs:
        for strategy, runs in results.items():
            if strategy == ref or strategy in refs[:refs.index(ref)]:
                continue
            diffs = paired_differences(runs, results[ref], equal_evaluations)
            if diffs:
                rows.append(dict(strategy=strategy, reference=ref, at="equal evaluations" if equal_evaluations
                                 else "end", **pair_statistics(diffs)))
    for row, p in zip(rows, holm([r["sign_p"] for r in rows])):
        row["holm_p"] = p
    return rows
