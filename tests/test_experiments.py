"""The experiments harness on hand-made runs: the best-so-far curve, the tables, the paired statistics, the choice
of one code version and the wall-time estimate, each checked against values worked out by hand."""
import gzip
import json
from pathlib import Path

import pytest

import experiments.run as run_module
from experiments.__main__ import PROTOCOLS, parse_args
from experiments.measures import curve, run_dynamics, timings
from experiments.records import RECORDS, Run, Sweep, sweep_line
from experiments.report import (add_untrained_runs, collect, compare_settings, write_dynamics_table, write_table,
                                write_target_table)
from experiments.run import estimate_seconds, print_estimate, run_sweeps
from experiments.stats import bootstrap_interval, holm, paired_differences, sign_test, verdict, wilson, wins_ties_losses
from experiments.versions import MIXED, OLDER, choose_code, code_note, sweeps_by_code
from loop import STRATEGIES


def finished_run(records, best, solved=False, drift=None):
    return Run(records, dict(best_score=best, solved=solved, evaluations=records[-1]["evaluations"]), drift)


def one_record_run(best, evaluations=1, solved=False):
    return finished_run([dict(evaluations=evaluations, best_score=best)], best, solved)


def sweep(name, runs: dict, code=None, written=0, settings=None, **extra):
    """A sweep of runs by target; its strategy is its name's."""
    config = dict(settings=dict(task="wordsearch", strategy=name.rsplit("-seed", 1)[0], **(settings or {})),
                  targets=list(runs) or ["cat"], **extra)
    if code:
        config["code"] = code
    return Sweep(name, config, written, runs)


def args_of(strategies, seeds, budget, threshold=0.8):
    return parse_args(["--strategies", ",".join(strategies), "--seeds", ",".join(map(str, seeds)),
                       "--budget", str(budget), "--threshold", str(threshold)])


def test_curve_is_best_so_far_per_evaluation():
    records = [dict(evaluations=2, best_score=0.3), dict(evaluations=4, best_score=0.5),
               dict(evaluations=5, best_score=0.4)]
    # nothing is known before the warm start's 2 evaluations; each record's best counts from its total on
    assert curve(records, 6) == [0.0, 0.0, 0.3, 0.3, 0.5, 0.5, 0.5]
    assert curve(records, 3) == [0.0, 0.0, 0.3, 0.3]  # cut at the budget


def test_curve_steps_once_per_new_candidate():
    member = lambda *cands: dict(candidates=[dict(candidate=c, score=v, status=st) for c, v, st in cands])  # noqa
    records = [dict(evaluations=2, best_score=0.4, members=[member(("a", 0.4, "new"), ("b", 0.1, "new"))]),
               dict(evaluations=4, best_score=0.9, members=[member(("a", 0.4, "repeat"), ("c", 0.2, "new")),
                                                            member(("d", 0.9, "new"))])]
    # the repeat of "a" costs nothing; "c" is the 3rd evaluation, "d" the 4th: the 0.9 counts from 4, not from 3
    assert curve(records, 5) == [0.0, 0.4, 0.4, 0.4, 0.9, 0.9]
    assert curve(records, 3) == [0.0, 0.4, 0.4, 0.4]


def test_tables_average_over_targets_and_seeds(tmp_path):
    sweeps = [sweep(f"grpo-seed{seed}", dict(cat=one_record_run(a), dog=one_record_run(b, 3, solved=b == 1.0)))
              for seed, (a, b) in enumerate([(0.2, 0.6), (0.4, 1.0)])]
    results = collect(args_of(["grpo", "random"], [0, 1], 4, 0.5), sweeps, ["cat", "dog"])
    assert set(results) == {"grpo"}  # random has no runs: left out rather than shown as zeros
    text = write_table(results, tmp_path, 0.5)
    # bests 0.2, 0.6, 0.4, 1.0: mean 0.55, sample std 0.342; seed means 0.4 and 0.7: std 0.212; 1 of 4 solved,
    # Wilson with z^2 = 3.8416: centre (0.25 + 0.4802) / 1.9604 = 0.3725, half 1.96 * sqrt(0.046875 + 0.060025)
    # / 1.9604 = 0.3269, so [0.05, 0.70]; the threshold 0.5 is first reached at evaluation 3 by the "dog" runs
    assert "| grpo | 4 | 0.550 ± 0.342 | 0.212 | 0.25 [0.05, 0.70] | 3.0 | 2/4 |" in text
    assert "| reference |" not in text  # nothing to pair with
    write_target_table(results, tmp_path, ["cat", "dog"])
    assert (tmp_path / "targets.md").read_text().splitlines()[2:] == ["| cat | 0.300 |", "| dog | 0.800 |"]


def test_unfinished_runs_are_not_reported():
    unfinished = Run([dict(evaluations=1, best_score=0.9)])  # no best.json yet
    results = collect(args_of(["grpo"], [0], 2), [sweep("grpo-seed0", dict(cat=one_record_run(0.1),
                                                                           dog=unfinished))], ["cat", "dog"])
    assert [r["target"] for r in results["grpo"]] == ["cat"]


def test_table_rounds_a_mean_once(tmp_path):
    # bests 0.4745 and 0.47450507: mean 0.47450254, which is 0.475 to three places; rounding it to four places
    # first (0.4745, stored as 0.47449999...) printed 0.474
    sweeps = [sweep(f"grpo-seed{seed}", dict(cat=one_record_run(b))) for seed, b in enumerate([0.4745, 0.47450507])]
    results = collect(args_of(["grpo"], [0, 1], 2), sweeps, ["cat"])
    assert "| grpo | 2 | 0.475 ± 0.000 |" in write_table(results, tmp_path, 0.8)


def paired_results():
    # grpo against random on the same (seed, target): 0.5 > 0.4 win, 0.3 = 0.3 tie, 0.2 < 0.6 loss;
    # grpo's seed-1 "dog" run has no random partner and is left out of the pairs
    sweeps = []
    for strategy, bests in [("random", {(0, "cat"): 0.4, (0, "dog"): 0.3, (1, "cat"): 0.6}),
                            ("grpo", {(0, "cat"): 0.5, (0, "dog"): 0.3, (1, "cat"): 0.2, (1, "dog"): 0.9})]:
        for seed in (0, 1):
            sweeps.append(sweep(f"{strategy}-seed{seed}",
                                {t: one_record_run(b) for (sd, t), b in bests.items() if sd == seed}))
    return collect(args_of(["random", "grpo"], [0, 1], 2), sweeps, ["cat", "dog"])


def test_paired_differences_and_wins_ties_losses():
    results = paired_results()
    diffs = paired_differences(results["grpo"], results["random"])
    assert diffs == pytest.approx([0.1, 0.0, -0.4])  # ordered (0, cat), (0, dog), (1, cat)
    assert wins_ties_losses(diffs) == (1, 1, 1)
    assert wins_ties_losses([1e-7, -1e-7, 2e-6]) == (1, 2, 0)  # float32 last-bit differences are ties


def test_paired_table(tmp_path):
    text = write_table(paired_results(), tmp_path, 0.8)
    # mean diff (0.1 + 0 - 0.4) / 3 = -0.1; a resample of three pairs is all -0.4 (or all 0.1) with probability
    # 1/27 = 3.7 % > 2.5 %, so the percentile interval is the extremes [-0.4, 0.1]; sign test 1 win, 1 loss: p = 1
    # (and Holm's p of a table of one comparison is p)
    assert "| grpo | random | 3 | -0.100 | [-0.400, +0.100] | 1.000 | 1.000 | 1/1/1 | not distinguishable |" in text
    assert "| random | grpo |" not in text  # each pair of strategies once
    # seed means 0.35 and 0.6: std 0.177; 0 of 3 solved: Wilson [0, 2 * (3.8416 / 6) / (1 + 3.8416 / 3)] = [0, 0.56]
    assert text.splitlines()[2] == "| random | 3 | 0.433 ± 0.153 | 0.177 | 0.00 [0.00, 0.56] | - | 0/3 |"
    assert (tmp_path / "paired.csv").read_text().splitlines()[1].startswith("grpo,random,end,3,")
    assert (tmp_path / "paired.csv").read_text().splitlines()[0].endswith(",verdict,holm_p")


def test_pairs_at_equal_evaluations_cut_both_runs_where_the_shorter_ended(tmp_path):
    # grpo repeated itself and ended after 3 evaluations with 0.9; random went on to 8 and ended at 0.7, but had
    # only 0.3 after 3: at the end grpo leads by 0.2, at equal evaluations (3) by 0.6
    grpo = finished_run([dict(evaluations=1, best_score=0.2), dict(evaluations=3, best_score=0.9)], 0.9)
    random = finished_run([dict(evaluations=1, best_score=0.3), dict(evaluations=5, best_score=0.5),
                           dict(evaluations=8, best_score=0.7)], 0.7)
    results = collect(args_of(["random", "grpo"], [0], 10), [sweep("grpo-seed0", dict(cat=grpo)),
                                                            sweep("random-seed0", dict(cat=random))], ["cat"])
    assert paired_differences(results["grpo"], results["random"]) == pytest.approx([0.2])
    assert paired_differences(results["grpo"], results["random"], equal_evaluations=True) == pytest.approx([0.6])
    text = write_table(results, tmp_path, 0.8)
    end, equal = text.split("Paired best score, at equal evaluations:")
    assert "| grpo | random | 1 | +0.200 |" in end and "| grpo | random | 1 | +0.600 |" in equal


def test_bootstrap_interval():
    diffs = [0.3, -0.1, 0.2, 0.05, 0.4, -0.2, 0.1, 0.0]
    lo, hi = bootstrap_interval(diffs)
    assert lo < sum(diffs) / len(diffs) < hi
    assert bootstrap_interval(diffs) == (lo, hi)  # fixed seed: reproducible
    # two pairs 0 and 1: a resample's mean is 0, 0.5 or 1 with probability 1/4, 1/2, 1/4
    assert bootstrap_interval([0.0, 1.0]) == (0.0, 1.0)
    assert bootstrap_interval([0.0] * 5) == (0.0, 0.0)
    assert verdict(bootstrap_interval([0.0] * 5), sign_test(0, 0)) == "not distinguishable"


def test_sign_test_against_binomial_sums():
    assert sign_test(0, 0) == 1.0  # all ties
    assert sign_test(1, 1) == 1.0  # 2 * (1 + 2) / 4 = 1.5, capped at 1
    assert sign_test(8, 0) == 2 / 256
    assert sign_test(1, 9) == 2 * (1 + 10) / 1024
    # 14 against 16: 2 * sum_{i<=14} C(30, i) / 2^30 = (2^30 - C(30, 15)) / 2^30 = 918624304 / 1073741824
    assert sign_test(14, 16) == pytest.approx(918624304 / 1073741824)


def test_holm_adjustment_by_hand():
    # sorted: 0.01 x 4 = 0.04; 0.03 x 3 = 0.09; 0.04 x 2 = 0.08, raised to 0.09 (never below a smaller p's);
    # 0.5 x 1 = 0.5. Returned in the input's order.
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.3, 0.6]) == pytest.approx([0.6, 0.6])  # 0.3 x 2, then 0.6 x 1 = 0.6
    assert holm([0.9, 0.8]) == [1.0, 1.0]  # capped at 1
    assert holm([]) == []


def test_verdict_needs_the_interval_and_the_sign_test():
    assert verdict((0.01, 0.2), 0.01) == "better"
    assert verdict((-0.2, -0.01), 0.01) == "worse"
    assert verdict((-0.01, 0.2), 0.01) == "not distinguishable"  # the interval holds 0
    assert verdict((0.1, 0.2), 0.5) == "not distinguishable"  # e.g. two pairs: a narrow interval, no evidence


def test_wilson_interval():
    # 1 of 30: p = 1/30, z^2/n = 0.128053; centre (0.033333 + 0.064027) / 1.128053 = 0.086308;
    # half 1.96 * sqrt(0.033333 * 0.966667 / 30 + 3.8416 / 3600) / 1.128053 = 0.080400
    assert wilson(1, 30) == pytest.approx((0.005908, 0.166708), abs=1e-5)
    # 0 of 30: centre = half = (3.8416 / 60) / 1.128053 = 0.056759, so [0, 0.113517]
    assert wilson(0, 30) == pytest.approx((0.0, 0.113517), abs=1e-5)


def test_report_reads_one_code_version():
    a = dict(commit="1111111aaaa", dirty=False, code_hash="aaaa")
    b = dict(commit="2222222bbbb", dirty=True, code_hash="bbbb")
    runs = lambda n: {f"t{i}": one_record_run(0.5) for i in range(n)}  # noqa: E731
    sweeps = [sweep("grpo-seed0", runs(2), a, written=1000), sweep("grpo-seed1", runs(1), b, written=2000),
              sweep("ns-seed0", runs(3)), sweep("random-seed0", runs(1), a, resumed_with=[b])]
    groups = sweeps_by_code(sweeps)
    assert {c: [s.name for s in ss] for c, ss in groups.items()} == {
        "aaaa": ["grpo-seed0"], "bbbb": ["grpo-seed1"], OLDER: ["ns-seed0"], MIXED: ["random-seed0"]}
    assert choose_code(groups) == "bbbb"  # bbbb started last: the newest
    started = sweep("opro-seed0", {}, dict(commit="3333333", dirty=False, code_hash="cccc"), written=3000)
    assert choose_code(sweeps_by_code(sweeps + [started])) == "bbbb"  # cccc started last but finished no run yet
    assert choose_code(groups, "aa") == "aaaa"
    assert choose_code(groups, "older") == OLDER
    with pytest.raises(SystemExit, match="matches 0 of the codes"):
        choose_code(groups, "dddd")
    assert choose_code({OLDER: groups[OLDER], MIXED: groups[MIXED]}) == OLDER  # no recorded code: report the old
    assert code_note(groups, "bbbb") == ("Code: 2222222 (dirty), code hash bbbb. Left out: 6 runs of other code "
                                         "(2 of code aaaa, 3 older code, 1 mixed code).")
    args = args_of(["grpo"], [0, 1], 2)
    assert [r["seed"] for r in collect(args, groups["bbbb"], ["t0", "t1"])["grpo"]] == [1]


def timed_history(times, evaluations, warm=20):
    """A run's history: the warm start, then one record per (sample, score, update) seconds."""
    records = [dict(iteration=0, evaluations=warm, best_score=0.1)]
    return records + [dict(iteration=i + 1, evaluations=e, best_score=0.1, time_sample=s, time_score=c,
                           time_update=u) for i, ((s, c, u), e) in enumerate(zip(times, evaluations))]


def write_history(folder: Path, records: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def write_config(sweep_dir: Path, strategy: str, targets: list[str], code: dict | None = None) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    config = dict(settings=dict(task="wordsearch", strategy=strategy), targets=targets)
    (sweep_dir / "config.json").write_text(json.dumps(config | (dict(code=code) if code else {})))


def test_timings_and_estimate_arithmetic():
    t = timings(timed_history([(4, 0.5, 5.5), (3, 0.5, 6.5)], [35, 50]))
    assert t == dict(iterations=2, evaluations=30, seconds=20.0, sampling_seconds=8.0, warm=20)
    # in lockstep with three others, a run is charged a quarter of the sampling and update it shared
    shared = timed_history([(4, 0.5, 5.5), (3, 0.5, 6.5)], [35, 50])
    for r in shared[1:]:
        r["lockstep"] = 4
    assert timings(shared) == dict(iterations=2, evaluations=30, seconds=5.75, sampling_seconds=2.75, warm=20)
    # budget 110 less the warm start's 20: migrate ceil(90 / 15) = 6 iterations of 10 s, 3 runs = 180 s; random
    # ceil(90 / 20) = 5 iterations of 4 s, 2 runs = 40 s; 220 s over 2 processes
    rates = {True: (10.0, 15.0), False: (4.0, 20.0)}
    assert estimate_seconds({"migrate": 3, "random": 2}, {"migrate": True, "random": False}, rates, 110, 20, 2) == 110
    assert run_module.duration(110) == "2 min" and run_module.duration(7.4 * 3600) == "7.4 h"
    # an iteration cap of 5 stops migrate first (5 of its 6 iterations: 150 s), not random (5 of 5: 40 s)
    assert estimate_seconds({"migrate": 3, "random": 2}, {"migrate": True, "random": False}, rates, 110, 20, 2,
                            iterations=5) == 95
    # iterations that scored nothing (a model that writes no valid molecule): only the cap ends a run
    rates[True] = (10.0, 0.0)
    assert estimate_seconds({"migrate": 3}, {"migrate": True}, rates, 110, 20, 2, iterations=5) == 75
    assert run_module.duration(estimate_seconds({"migrate": 3}, {"migrate": True}, rates, 110, 20, 2)).startswith(
        "unknown")


def test_estimate_line_from_runs_of_this_code(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_module, "code_version", lambda task: dict(commit="c", dirty=False, code_hash="now"))
    code = dict(commit="c", dirty=False, code_hash="now")
    write_config(tmp_path / "migrate-seed0", "migrate", ["cat", "dog"], code)
    write_config(tmp_path / "random-seed0", "random", ["cat", "dog"], code)
    write_config(tmp_path / "ns-seed0", "ns", ["cat", "dog"])  # older code: its times do not count
    write_history(tmp_path / "migrate-seed0" / "cat", timed_history([(4, 0.5, 5.5), (3, 0.5, 6.5)], [35, 50]))
    (tmp_path / "migrate-seed0" / "cat" / "best.json").write_text("{}")  # finished: not to run again
    write_history(tmp_path / "random-seed0" / "cat", timed_history([(3.5, 0.5, 0.0)], [40]))  # still running
    write_history(tmp_path / "ns-seed0" / "cat", timed_history([(100, 0, 0)], [21]))
    args = parse_args(["--task", "wordsearch", "--strategies", "random,migrate", "--seeds", "0,1", "--budget",
                       "110", "--nproc", "2"])
    print_estimate(args, tmp_path, ["cat", "dog"])
    # runs left: random 4, migrate 3; 3 * 6 * 10 s + 4 * 5 * 4 s = 260 s over 2 processes = 130 s
    assert capsys.readouterr().out == (
        "estimate: 2 min for 7 runs with 2 processes (measured: 10.0 s per training iteration of 15.0 "
        "evaluations, 4.0 s per sampling-only iteration of 20.0 evaluations, over 3 iterations of 2 runs of this "
        f"code in {tmp_path}; runs that stop early take less)\n")


def test_estimate_calibrates_when_nothing_is_timed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_module, "code_version", lambda task: dict(commit="c", dirty=False, code_hash="now"))
    called = []

    def fake_calibrate(args, targets, strategy):
        called.append((targets, strategy))
        return {strategy: [timings(timed_history([(4, 0.5, 5.5), (3, 0.5, 6.5)], [35, 50]))]}
    monkeypatch.setattr(run_module, "calibrate", fake_calibrate)
    args = parse_args(["--task", "wordsearch", "--strategies", "random,migrate", "--seeds", "0", "--budget", "110"])
    print_estimate(args, tmp_path / "runs", ["cat"])
    assert called == [(["cat"], "migrate")]  # a training strategy: its iterations time sampling too
    # a sampling-only iteration is timed as a training one less its update: 8 s / 2 = 4 s of 15 evaluations;
    # random ceil(90 / 15) = 6 * 4 s + migrate 6 * 10 s = 84 s
    assert capsys.readouterr().out.startswith(
        "estimate: 1 min for 2 runs with 1 process (measured: 10.0 s per training iteration of 15.0 evaluations, "
        "4.0 s per sampling-only iteration of 15.0 evaluations, over 2 iterations of a migrate calibration sweep "
        "of 1 search at load ")


def test_calibration_runs_every_target_and_seed_in_one_lockstep_sweep(monkeypatch):
    launched = []

    def fake_run(args, cmd, label):  # stands in for migrate.py: each search writes one timed iteration
        launched.append(cmd)
        out, targets, seeds = (cmd[cmd.index(flag) + 1] for flag in ("--out", "--targets", "--seeds"))
        for seed in seeds.split(","):
            for target in targets.split(","):
                history = timed_history([(6, 0.5, 3.5)], [12], warm=10)
                history[1]["lockstep"] = 4
                write_history(Path(out.format(seed=seed)) / target, history)
    monkeypatch.setattr(run_module, "run", fake_run)
    args = parse_args(["--task", "wordsearch", "--strategies", "migrate", "--seeds", "0,1", "--budget", "110",
                       "--nproc", "2"])
    found = run_module.calibrate(args, ["cat", "dog"], "migrate")
    cmd = launched[0]
    assert len(launched) == 1 and "torch.distributed.run" in cmd and cmd[cmd.index("--nproc_per_node") + 1] == "2"
    assert cmd[-2:] == ["--iterations", "2"] and cmd[cmd.index("--strategy") + 1] == "migrate"
    # four searches, each charged a quarter of the (6 + 3.5) s it shared and its 0.5 s of scoring alone
    each = dict(iterations=1, evaluations=2, seconds=2.875, sampling_seconds=2.0, warm=10)
    assert found == {"migrate": [each] * 4}


def test_protocol_paper_sets_defaults_that_flags_override():
    args = parse_args(["--protocol", "paper", "--nproc", "2", "--lr", "5e-4"])
    assert (args.task, args.targets, args.seeds, args.budget, args.iterations) == \
        ("wordsearch", "paper", [0, 1, 2], 1000, 100)  # the paper's 100 iterations of 10 words
    paper = {"random", "ns", "opro", "grpo", "grpo-greedy", "migrate", "migrate-opro", "migrate-evo"}
    assert set(args.strategies) == paper < set(STRATEGIES) and args.strategies[:4] == ["random", "ns", "grpo", "migrate"]
    assert args.nproc == 2 and args.extra == ["--lr", "5e-4"]
    assert parse_args(["--protocol", "paper", "--seeds", "0", "--iterations", "7"]).iterations == 7
    assert parse_args([]).budget == 200 and parse_args([]).iterations is None


def test_a_protocols_own_migrate_flags_come_first_so_flags_beside_it_win():
    assert parse_args(["--protocol", "tuned"]).extra == ["--lr", "5e-4"]
    assert parse_args(["--protocol", "tuned", "--lr", "1e-4"]).extra == ["--lr", "5e-4", "--lr", "1e-4"]
    assert parse_args(["--protocol", "paper", "--mu", "1"]).extra == ["--mu", "1"]
    from migrate import build_parser  # migrate.py keeps the last of a repeated flag
    assert build_parser().parse_args(["--lr", "5e-4", "--lr", "1e-4"]).lr == 1e-4


def test_protocols_name_real_strategies_and_tune_on_other_targets():
    from tasks.wordsearch import PAPER_TARGETS
    for name, protocol in PROTOCOLS.items():
        strategies = protocol["strategies"].split(",")
        assert len(set(strategies)) == len(strategies) and set(strategies) <= set(STRATEGIES), name
    assert not set(PROTOCOLS["tune"]["targets"].split(",")) & set(PAPER_TARGETS)


def test_sweep_passes_the_iteration_cap_to_migrate(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(run_module, "run", lambda args, cmd, label: ran.append(cmd))
    one = ["--strategies", "grpo", "--seeds", "1"]
    for argv in (["--protocol", "paper"], ["--budget", "50"]):
        run_sweeps(parse_args(argv + one + ["--lr", "1e-4"]), tmp_path)
    capped, uncapped = ran
    assert capped[capped.index("--iterations") + 1] == "100" and capped[-2:] == ["--lr", "1e-4"]
    assert capped[capped.index("--patience") + 1] == "100"  # every iteration runs, as in the released code
    assert "--iterations" not in uncapped and uncapped[uncapped.index("--budget") + 1] == "50"
    assert "--patience" not in uncapped  # without a cap, patience is what stops a policy that only repeats
    run_sweeps(parse_args(["--nproc", "2"] + one), tmp_path)
    assert ran[-1][1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]  # its own port


def test_a_strategys_seeds_run_in_one_lockstep_and_finished_ones_are_not_relaunched(tmp_path, monkeypatch):
    """Seed 0 started (resumed), seed 1 finished (left alone), seeds 2 and 3 new (started together, a run folder
    each: --out with {seed})."""
    ran = []
    monkeypatch.setattr(run_module, "run", lambda args, cmd, label: ran.append(cmd))
    for k, ended in ((0, ("a",)), (1, ("a", "b"))):
        sweep_dir = tmp_path / f"grpo-seed{k}"
        write_config(sweep_dir, "grpo", ["a", "b"])
        for target in ended:
            (sweep_dir / target).mkdir()
            (sweep_dir / target / "best.json").write_text("{}")
        (sweep_dir / "summary.csv").write_text("target\n")
    run_sweeps(parse_args(["--strategies", "grpo", "--seeds", "0,1,2,3", "--targets", "a,b"]), tmp_path)
    resumed, started = ran
    assert resumed[-2:] == ["--resume", str(tmp_path / "grpo-seed0")]
    assert started[started.index("--seeds") + 1] == "2,3"
    assert started[started.index("--out") + 1] == str(tmp_path / "grpo-seed{seed}")
    (tmp_path / "grpo-seed0" / "b").mkdir()
    (tmp_path / "grpo-seed0" / "b" / "best.json").write_text("{}")
    ran.clear()
    run_sweeps(parse_args(["--strategies", "grpo", "--seeds", "0,1"]), tmp_path)
    assert ran == []


def test_run_dynamics_and_its_table(tmp_path):
    def member(origin, *statuses):
        return dict(origin=origin, candidates=[dict(candidate="w", score=0.1, status=s) for s in statuses])
    warm = dict(iteration=0, evaluations=20, best_score=0.3)
    records = [warm,
               dict(iteration=1, evaluations=23, best_score=0.4, ratio_mean=0.99, clip_fraction=0.0,
                    members=[member("on-policy", "new", "new", "repeat"), member("greedy", "repeat")]),
               dict(iteration=2, evaluations=23, best_score=0.4, loss=None, skipped="no signal in this group",
                    members=[member("neighbourhood", "repeat"), member("greedy", "repeat")]),
               dict(iteration=3, evaluations=24, best_score=0.4, ratio_mean=1.03, clip_fraction=0.1,
                    members=[member("on-policy", "new", "new", "over_budget"), member("on-policy")])]
    d = run_dynamics(records, iterations=100, budget=1000)
    # 3 iterations (the warm start is none), updates at 1 and 3, one skipped; sampled candidates: 3 + 1 + 3 = 7,
    # 4 of them new; the last quarter (iteration 3 alone) sampled 3, 2 new; 4 sampled answers (greedy ones are
    # none), the last of them without a candidate, 2 of them in the last quarter; it stopped at iteration 3 of
    # 100 with 24 of 1000 evaluations, unsolved: stalled
    assert d["ratio_moves"] == pytest.approx([0.01, 0.03]) and d["clip"] == [0.0, 0.1]
    assert {k: v for k, v in d.items() if k not in ("ratio_moves", "clip")} == dict(
        iterations=3, updates=2, skipped=1, answers=4, valid=3, answers_late=2, valid_late=1, new=4, sampled=7,
        new_late=2, sampled_late=3, stalled=True)
    assert not run_dynamics(records, iterations=3, budget=1000)["stalled"]
    random_run = dict(iteration=1, evaluations=22, best_score=0.3, members=[member("on-policy", "new", "repeat")])
    sweeps = [sweep("grpo-seed0", dict(cat=finished_run(records, 0.4, drift=dict(kl_per_token=0.0125)))),
              sweep("random-seed0", dict(cat=finished_run([warm, random_run], 0.3)))]
    results = collect(args_of(["grpo", "random"], [0], 30, 0.9), sweeps, ["cat"])
    assert results["random"][0]["dynamics"]["kl"] is None  # no drift.json: not measured
    text = write_dynamics_table(results, tmp_path)
    rows = text.splitlines()
    assert rows[2] == ("| grpo | 1 | 3.0 | 24 | 2.0 / 1.0 | 0.0200 | 0.0300 | 0.0500 | 0.01250 (1) | 0.750 | 0.500 | "
                       "0.571 | 0.667 | 1 |")
    # one iteration is its own last quarter; no iteration cap known: inf, so stalled
    assert rows[3] == "| random | 1 | 1.0 | 22 | 0.0 / 0.0 | - | - | - | - (0) | 1.000 | 1.000 | 0.500 | 0.500 | 1 |"
    assert (tmp_path / "dynamics.md").read_text() == text


def packed_experiment(folder: Path, sweeps: list[Sweep]) -> Path:
    """An experiment folder holding only these sweeps' packed records, as a fresh clone has them."""
    folder.mkdir(parents=True)
    (folder / RECORDS).write_bytes(gzip.compress("".join(map(sweep_line, sweeps)).encode()))
    return folder


def test_compare_settings_pairs_each_setting_with_the_first(tmp_path):
    # two settings, two strategies, runs on (seed 0, cat) and (seed 0, dog); "fast" against "paper":
    # grpo 0.5 - 0.2 = +0.3 and 0.4 - 0.4 = 0 (a tie); migrate 0.9 - 0.3 = +0.6 and 0.1 - 0.5 = -0.4
    bests = {"paper": {"grpo": (0.2, 0.4), "migrate": (0.3, 0.5)}, "fast": {"grpo": (0.5, 0.4), "migrate": (0.9, 0.1)}}
    code = dict(code_hash="abc", commit="c0ffee0", dirty=False)
    for setting, by_strategy in bests.items():
        packed_experiment(tmp_path / setting, [
            sweep(f"{strategy}-seed0", dict(cat=one_record_run(cat, solved=cat == 0.9),
                                            dog=one_record_run(dog, solved=dog == 0.9)), code)
            for strategy, (cat, dog) in by_strategy.items()])
    args = parse_args(["--strategies", "grpo,migrate", "--seeds", "0", "--budget", "2"])
    text = compare_settings(args, [tmp_path / "paper", tmp_path / "fast"], tmp_path)
    assert "| paper | all | 4 | 0.350 | 0/4 | - | - | - | - | - |" in text
    # pooled diffs +0.3, 0, +0.6, -0.4: mean +0.125; sign test 2 wins 1 loss: p = 2 * (1 + 3) / 8 = 1
    assert "| fast | all | 4 | 0.475 | 1/4 | +0.125 | [" in text and "| 1.000 | 2/1/1 | not distinguishable |" in text
    assert "| fast | grpo | 2 | 0.450 | 0/2 | +0.150 | [+0.000, +0.300] | 1.000 | 1/1/0 |" in text
    assert (tmp_path / "settings.md").read_text() == text


def test_untrained_runs_come_from_another_experiment_of_the_same_code(tmp_path):
    code = dict(code_hash="abc", commit="c0ffee0", dirty=False)
    packed_experiment(tmp_path / "paper", [sweep("random-seed0", dict(cat=one_record_run(0.4)), code),
                                           sweep("grpo-seed0", dict(cat=one_record_run(0.9)), code)])
    args = parse_args(["--strategies", "grpo", "--seeds", "0", "--budget", "2"])
    small = collect(args, [sweep("grpo-seed0", dict(cat=one_record_run(0.6)), code)], ["cat"])
    merged, line = add_untrained_runs(args, tmp_path / "paper", "abc", ["cat"], small)
    assert list(merged) == ["random", "grpo"]  # STRATEGIES order; the paper's grpo (it trains) is not taken
    assert merged["random"][0]["best"] == 0.4 and merged["grpo"][0]["best"] == 0.6
    assert line.startswith("random: the runs in")
    with pytest.raises(SystemExit, match="no runs of code other"):
        add_untrained_runs(args, tmp_path / "paper", "other", ["cat"], small)


def test_the_references_choose_what_every_strategy_is_paired_against():
    """random, ns, grpo by default; a protocol of TTT-Discover pairs against migrate instead of grpo."""
    from experiments.stats import comparisons
    runs = lambda best: [dict(seed=s, target="t", best=best + 0.01 * s) for s in range(3)]  # noqa: E731
    results = {"random": runs(0.1), "migrate": runs(0.5), "discover": runs(0.4), "grpo": runs(0.3)}
    pairs = lambda refs: {(r["strategy"], r["reference"]) for r in comparisons(results, references=refs)}  # noqa: E731
    assert pairs(("random", "ns", "grpo")) == {("migrate", "random"), ("discover", "random"), ("grpo", "random"),
                                               ("migrate", "grpo"), ("discover", "grpo")}
    assert pairs(("random", "migrate")) == {("migrate", "random"), ("discover", "random"), ("grpo", "random"),
                                            ("discover", "migrate"), ("grpo", "migrate")}
    assert parse_args(["--protocol", "discover-words"]).references == ["random", "ns", "migrate"]
