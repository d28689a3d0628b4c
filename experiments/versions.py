"""One code version per report: which code made each sweep (config.json's code_hash), which code a report reads,
and the line that says so and counts the runs of other code it left out.

Left out: comparing code versions (a change to the engine is a new experiment, not a column of this one).
"""
import sys

from experiments.records import Sweep

OLDER, MIXED = "older code", "mixed code"


def code_label(config: dict) -> str:
    """A sweep's code: its code_hash; OLDER before config.json recorded one; MIXED once a resume by other code
    added iterations to it."""
    if "code" not in config:
        return OLDER
    return MIXED if config.get("resumed_with") else config["code"]["code_hash"]


def sweeps_by_code(sweeps: list[Sweep]) -> dict[str, list[Sweep]]:
    groups = {}
    for sweep in sweeps:
        groups.setdefault(code_label(sweep.config), []).append(sweep)
    return groups


def finished(sweeps: list[Sweep]) -> int:
    """How many runs of these sweeps reached their end (best.json)."""
    return sum(run.best is not None for s in sweeps for run in s.runs.values())


def choose_code(groups: dict[str, list[Sweep]], wanted: str | None = None) -> str:
    """The code whose runs are reported: `wanted` (a code_hash or its prefix, or 'older'/'mixed'), else the
    newest code with finished runs (its latest sweep's config.json written last), else the older code."""
    if wanted:
        match = [c for c in groups if c.startswith(wanted) or c == f"{wanted} code"]
        if len(match) != 1:
            sys.exit(f"--code-hash {wanted} matches {len(match)} of the codes here: {', '.join(groups)}")
        return match[0]
    hashed = [c for c, ss in groups.items() if c not in (OLDER, MIXED) and finished(ss)]
    if hashed:
        return max(hashed, key=lambda c: max(s.written for s in groups[c]))
    return OLDER if OLDER in groups else MIXED


def code_note(groups: dict[str, list[Sweep]], code: str) -> str:
    """One line: the commit(s) of the reported code, and how many finished runs of other code were left out."""
    if code in (OLDER, MIXED):
        made = f"Code: {code} (no single recorded version)"
    else:
        commits = sorted({(c["commit"] or "no git")[:7] + " (dirty)" * bool(c["dirty"])
                          for c in (s.config["code"] for s in groups[code])})
        made = f"Code: {', '.join(commits)}, code hash {code}"
    left = {c: finished(ss) for c, ss in groups.items() if c != code}
    left = {c: n for c, n in left.items() if n}
    if not left:
        return made + "."
    return (f"{made}. Left out: {sum(left.values())} runs of other code ("
            + ", ".join(f"{n} {c if c in (OLDER, MIXED) else 'of code ' + c}" for c, n in left.items()) + ").")
