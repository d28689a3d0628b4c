"""bench/search.py's aggregation on hand-made run folders: the best-so-far curve, the table and the per-target
table, checked against values worked out by hand."""
import json
from argparse import Namespace

from bench.search import collect, curve, write_table, write_target_table


def fake_run(folder, records, best, solved=False):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "best.json").write_text(json.dumps(dict(best_score=best, solved=solved)))


def test_curve_is_best_so_far_per_evaluation(tmp_path):
    fake_run(tmp_path, [dict(evaluations=2, best_score=0.3), dict(evaluations=4, best_score=0.5),
                        dict(evaluations=5, best_score=0.4)], 0.5)
    # nothing is known before the warm start's 2 evaluations; each record's best counts from its total on
    assert curve(tmp_path, 6) == [0.0, 0.0, 0.3, 0.3, 0.5, 0.5, 0.5]
    assert curve(tmp_path, 3) == [0.0, 0.0, 0.3, 0.3]  # cut at the budget


def test_tables_average_over_targets_and_seeds(tmp_path):
    for seed, (a, b) in enumerate([(0.2, 0.6), (0.4, 1.0)]):
        fake_run(tmp_path / f"grpo-seed{seed}" / "cat", [dict(evaluations=1, best_score=a)], a)
        fake_run(tmp_path / f"grpo-seed{seed}" / "dog", [dict(evaluations=3, best_score=b)], b, solved=b == 1.0)
    args = Namespace(strategies=["grpo", "random"], seeds=[0, 1], budget=4, threshold=0.5)
    results = collect(args, tmp_path, ["cat", "dog"])
    assert set(results) == {"grpo"}  # random has no runs: left out rather than shown as zeros
    text = write_table(results, tmp_path, 0.5)
    # bests 0.2, 0.6, 0.4, 1.0: mean 0.55, sample std 0.342; seed means 0.4 and 0.7: std 0.212;
    # the threshold 0.5 is first reached at evaluation 3 by the two "dog" runs
    assert "| grpo | 4 | 0.550 ± 0.342 | 0.212 | 0.25 | 3.0 | 2/4 | - | - |" in text
    write_target_table(results, tmp_path, ["cat", "dog"])
    assert (tmp_path / "targets.md").read_text().splitlines()[2:] == ["| cat | 0.300 |", "| dog | 0.800 |"]


def test_paired_comparison_against_random(tmp_path):
    # grpo against random on the same (seed, target): 0.5 > 0.4 win, 0.3 = 0.3 tie, 0.2 < 0.6 loss;
    # grpo's seed-1 "dog" run has no random partner and is left out of the pairs
    for strategy, bests in [("random", {(0, "cat"): 0.4, (0, "dog"): 0.3, (1, "cat"): 0.6}),
                            ("grpo", {(0, "cat"): 0.5, (0, "dog"): 0.3, (1, "cat"): 0.2, (1, "dog"): 0.9})]:
        for (seed, target), b in bests.items():
            fake_run(tmp_path / f"{strategy}-seed{seed}" / target, [dict(evaluations=1, best_score=b)], b)
    args = Namespace(strategies=["random", "grpo"], seeds=[0, 1], budget=2, threshold=0.8)
    lines = write_table(collect(args, tmp_path, ["cat", "dog"]), tmp_path, 0.8).splitlines()
    assert lines[2].endswith("| 0.00 | - | 0/3 | - | 1/1/1 |")  # none reached 0.8; random against grpo: mirrored
    assert lines[3].endswith("| 1/1/1 | - |")
    assert (tmp_path / "table.csv").read_text().splitlines()[2].endswith(",1/1/1,")
