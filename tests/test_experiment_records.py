"""An experiment's records: run folders read in today's words, packed into runs.jsonl.gz and unpacked again
unchanged, packing that merges and is byte-stable, and the committed docking experiment's tables recomputed from
its committed records byte for byte."""
import json
import os
import shutil
from pathlib import Path

import pytest

from experiments import records
from experiments.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
OLD_MEMBER = {"origin": "online", "prompt": "online", "seed": None, "reward": 0.2, "text": "cat",
              "candidates": [{"candidate": "cat", "score": 0.2, "status": "new"}]}
NS_MEMBER = {"origin": "neighbourhood", "prompt": "ns", "seed": "cat", "reward": 0.5, "text": "cart",
             "candidates": [{"candidate": "cart", "score": 0.5, "status": "new"}]}


def write_sweep(folder: Path, targets=("cat", "dog"), neighbours="seed", best=0.5, drift=True):
    """A sweep folder as older code wrote it: "online" members, the parent under "seed"."""
    folder.mkdir(parents=True)
    config = dict(settings=dict(task="wordsearch", strategy="migrate", seed=1, neighbours=neighbours),
                  targets=list(targets), code=dict(commit="c0ffee0", dirty=False, code_hash="abc"))
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    for t in targets:
        run = folder / t
        run.mkdir()
        history = [dict(iteration=0, evaluations=1, best_score=0.2, members=[OLD_MEMBER]),
                   dict(iteration=1, evaluations=2, best_score=best, members=[NS_MEMBER, OLD_MEMBER])]
        (run / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
        (run / "best.json").write_text(json.dumps(dict(target=t, seed=1, best="cart", best_score=best, solved=False,
                                                       evaluations=2, top=[dict(candidate="cart", origin="online")])))
        if drift:
            (run / "drift.json").write_text(json.dumps(dict(kl_per_token=0.01)))
    os.utime(folder / "config.json", (1_700_000_000, 1_700_000_000))


def test_older_records_read_in_todays_words(tmp_path):
    write_sweep(tmp_path / "migrate-seed1")
    sweep = records.read_sweep(tmp_path / "migrate-seed1")
    first, second = sweep.runs["cat"].history[1]["members"]
    assert list(second) == ["origin", "prompt", "parent", "reward", "text", "candidates"]  # in place of "seed"
    assert (second["origin"], second["prompt"], second["parent"]) == ("on-policy", "on-policy", None)
    assert (first["origin"], first["prompt"], first["parent"]) == ("neighbourhood", "ns", "cat")
    assert sweep.runs["cat"].best["top"][0]["origin"] == "on-policy"
    assert sweep.config["settings"]["neighbours"] == "parent"
    # the random seed keeps its name
    assert sweep.config["settings"]["seed"] == 1 and sweep.runs["cat"].best["seed"] == 1
    assert sweep.written == 1_700_000_000


def test_pack_then_unpack_gives_the_same_runs(tmp_path):
    experiment = tmp_path / "exp"
    write_sweep(experiment / records.RUNS / "migrate-seed1")
    write_sweep(experiment / records.RUNS / "grpo-seed0", targets=("owl",), neighbours="ranked", drift=False)
    assert records.pack(experiment)
    packed = (experiment / records.RECORDS).read_bytes()
    before = records.current_sweeps(experiment)
    assert [s.name for s in before] == ["grpo-seed0", "migrate-seed1"]
    shutil.move(experiment / records.RUNS, tmp_path / "elsewhere")  # a fresh clone: records, no run folders
    assert records.current_sweeps(experiment) == before
    assert records.unpack(experiment) == 3
    assert [records.read_sweep(f) for f in records.sweep_folders(experiment)] == before  # mtime restored too
    assert (experiment / records.RUNS / "grpo-seed0" / "summary.csv").exists()  # a finished sweep, as made here
    assert records.unpack(experiment) == 0  # a folder already there is left as it is
    assert not records.pack(experiment) and (experiment / records.RECORDS).read_bytes() == packed


def test_packing_lays_run_folders_over_the_records(tmp_path):
    experiment = tmp_path / "exp"
    write_sweep(experiment / records.RUNS / "migrate-seed1")
    write_sweep(experiment / records.RUNS / "grpo-seed0", targets=("owl",))
    records.pack(experiment)
    shutil.rmtree(experiment / records.RUNS)
    write_sweep(experiment / records.RUNS / "migrate-seed1", targets=("cat", "dog"), best=0.75)
    shutil.rmtree(experiment / records.RUNS / "migrate-seed1" / "dog")  # this machine holds only "cat"
    assert records.pack(experiment)
    shutil.rmtree(experiment / records.RUNS)
    sweeps = {s.name: s for s in records.read_records(experiment)}
    assert sweeps["migrate-seed1"].runs["cat"].best["best_score"] == 0.75  # the folder's run replaced the record
    assert sweeps["migrate-seed1"].runs["dog"].best["best_score"] == 0.5  # the record without a folder stayed
    assert list(sweeps["migrate-seed1"].runs) == ["cat", "dog"] and "grpo-seed0" in sweeps


def test_sweeps_outside_runs_are_refused_in_one_line(tmp_path):
    write_sweep(tmp_path / "migrate-seed1")
    with pytest.raises(SystemExit, match="move them into .*runs/"):
        records.current_sweeps(tmp_path)


def test_report_only_packs_the_run_folders_first(tmp_path, capsys):
    experiment = tmp_path / "exp"
    write_sweep(experiment / records.RUNS / "migrate-seed1")
    main(["--strategies", "migrate", "--seeds", "1", "--targets", "cat,dog", "--budget", "2", "--report-only",
          "--out", str(experiment)])
    assert "| migrate | 2 | 0.500 ± 0.000 | - | 0.00 [0.00, 0.66] | - | 0/2 |" in (experiment / "table.md").read_text()
    assert [s.name for s in records.read_records(experiment)] == ["migrate-seed1"]
    assert "packed the runs' records" in capsys.readouterr().out


def test_docking_tables_recomputed_from_the_committed_records_byte_for_byte(tmp_path):
    committed = ROOT / "results" / "docking"
    shutil.copy(committed / records.RECORDS, tmp_path / records.RECORDS)
    main(["--protocol", "docking", "--report-only", "--out", str(tmp_path)])
    for name in ("table.md", "table.csv", "paired.csv", "targets.md", "dynamics.md", "curves.svg"):
        assert (tmp_path / name).read_bytes() == (committed / name).read_bytes(), name


def test_a_fresh_clone_reruns_no_finished_run(tmp_path, monkeypatch, capsys):
    import experiments.run as run_module
    experiment = tmp_path / "exp"
    write_sweep(experiment / records.RUNS / "migrate-seed1")
    records.pack(experiment)
    shutil.rmtree(experiment / records.RUNS)  # records only, as committed
    launched = []
    monkeypatch.setattr(run_module, "run", lambda args, cmd, label: launched.append(cmd))
    main(["--task", "wordsearch", "--strategies", "migrate", "--seeds", "1", "--targets", "cat,dog", "--budget", "2",
          "--out", str(experiment)])
    assert not launched and "estimate" not in capsys.readouterr().out  # unpacked: every run found finished
    assert (experiment / "table.md").exists()
