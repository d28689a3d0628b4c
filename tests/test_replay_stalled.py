"""experiments.replay_stalled on a real sweep of the README's example task with the tiny model: runs that a short
--patience stopped are run again to the cap, each replay reproduces its stopped run record for record (the
determinism the script relies on), and takes its place; a replay that does not reproduce, or would run on other
code, replaces nothing."""
import csv
import json

import pytest

from experiments import replay_stalled
from experiments.records import RECORDS, RUNS, read_history, read_records
from rundir import read_config, slug
from tests.test_cli import EXAMPLE, migrate, model_dir  # noqa: F401 (model_dir: the tiny model's fixture)

CAP = 10


@pytest.fixture
def stopped_sweep(model_dir, tmp_path):  # noqa: F811
    sweep = tmp_path / "exp" / RUNS / "grpo-seed0"
    r = migrate("--task", EXAMPLE, "--model", model_dir, "--targets", "40,41", "--strategy", "grpo",
                "--iterations", str(CAP), "--patience", "2", "--no-early-stop", "--out", str(sweep))
    assert r.returncode == 0, r.stderr
    return sweep


def test_stopped_runs_are_replayed_to_the_cap_and_put_in_place(stopped_sweep):
    sweep = stopped_sweep
    stopped = replay_stalled.stopped_by_patience(sweep)
    # the tiny model's answers repeat: patience 2 ends at least one run before the cap
    assert stopped and all(read_history(sweep / slug(t))[-1]["iteration"] < CAP for t in stopped)
    before = {t: replay_stalled.without_timings(read_history(sweep / slug(t))) for t in stopped}
    experiment = sweep.parent.parent
    replay_stalled.main([str(experiment), "--only", "migrate-*,grpo-seed1"])  # matches no sweep here
    assert replay_stalled.without_timings(read_history(sweep / slug(stopped[0]))) == before[stopped[0]]
    assert not (experiment / RECORDS).exists()  # nothing replayed: nothing packed
    replay_stalled.main([str(experiment), "--only", "migrate-*,grpo-seed*"])
    config = read_config(sweep)
    assert config["settings"]["patience"] == CAP and config["replayed_to_the_cap"] == sorted(stopped)
    for t in stopped:
        after = replay_stalled.without_timings(read_history(sweep / slug(t)))
        assert after[-1]["iteration"] == CAP and after[:len(before[t])] == before[t]
    summary = {r["target"]: r for r in csv.DictReader(open(sweep / "summary.csv"))}
    for t in config["targets"]:
        assert int(summary[t]["evaluations"]) == json.loads((sweep / slug(t) / "best.json").read_text())["evaluations"]
    assert not replay_stalled.stopped_by_patience(sweep) and not (sweep.parent / "replays").exists()
    packed = read_records(experiment)[0]  # the records carry the replays
    assert packed.config["settings"]["patience"] == CAP
    assert packed.runs[slug(stopped[0])].history == read_history(sweep / slug(stopped[0]))


def test_a_replay_that_does_not_reproduce_replaces_nothing(stopped_sweep):
    sweep = stopped_sweep
    config = (sweep / "config.json").read_text()
    made_elsewhere = json.loads(config)
    made_elsewhere["code"]["code_hash"] = "0" * 16
    (sweep / "config.json").write_text(json.dumps(made_elsewhere))
    with pytest.raises(SystemExit, match="give --code a checkout of that commit"):  # other code would not replay it
        replay_stalled.main([str(sweep.parent.parent)])
    (sweep / "config.json").write_text(config)
    t = replay_stalled.stopped_by_patience(sweep)[0]
    log = sweep / slug(t) / "history.jsonl"
    records = read_history(sweep / slug(t))
    records[-1]["best_score"] += 0.5  # as if the stopped run had been made by other code
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(SystemExit, match="does not reproduce"):
        replay_stalled.main([str(sweep.parent.parent)])
    assert read_history(sweep / slug(t)) == records and read_config(sweep)["settings"]["patience"] == 2
