"""experiments.molecule_origins on a hand-written run folder: the counts and the first proposer of the best are
worked out by hand below, so a change in what counts as an answer, a valid one, or an aromatic one shows."""
import json

from experiments.molecule_origins import is_aromatic, run_origins
from experiments.records import read_run


def member(origin, candidates):
    return {"origin": origin, "candidates": [{"candidate": c, "score": 0.5, "status": s} for c, s in candidates]}


def test_run_origins_counts_answers_and_names_the_first_proposer_of_the_best(tmp_path):
    records = [
        {"iteration": 0, "evaluations": 0, "members": []},
        {"iteration": 1, "evaluations": 2, "members": [
            member("on-policy", [("CCO", "new")]),
            member("on-policy", []),                            # an answer without a valid molecule
            member("neighbourhood", [("Cc1ccccc1", "new")]),  # the best, first proposed here
        ]},
        {"iteration": 2, "evaluations": 3, "members": [
            member("on-policy", [("Cc1ccccc1", "repeat")]),     # proposed again: not the first
            member("greedy", [("Cc1ccccc1", "repeat")]),     # a re-insert, not a sampled answer
            member("on-policy", [("c1ccncc1", "new")]),
        ]},
    ]
    (tmp_path / "history.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    (tmp_path / "best.json").write_text(json.dumps({"best": "Cc1ccccc1"}))
    o = run_origins(read_run(tmp_path))
    # 5 sampled answers (the greedy one is not), 4 holding a molecule; 3 new, 2 of them aromatic
    assert (o["answers"], o["valid"], o["new"], o["aromatic"]) == (5, 4, 3, 2)
    assert o["best_from"] == (1, "neighbourhood")


def test_is_aromatic():
    assert is_aromatic("c1ccccc1") and is_aromatic("C1=CC=CC=C1")  # Kekulé benzene is aromatic once parsed
    assert not is_aromatic("C1CCCCC1") and not is_aromatic("CCO")
