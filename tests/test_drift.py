"""experiments.drift on a real run folder of the tiny model: zero drift for an adapter that does nothing, positive
drift for one that does, and only finished training runs with an adapter measured, once."""
import json

import pytest
import torch

from experiments import drift
from experiments.records import RECORDS, RUNS, read_records
from checkpoint import read_safetensors, write_safetensors
from tests.test_cli import EXAMPLE, migrate, model_dir  # noqa: F401 (a fixture)


def test_drift_is_zero_for_a_silent_adapter_and_positive_for_a_moved_one(model_dir, tmp_path):  # noqa: F811
    for strategy in ("grpo", "random"):
        r = migrate("--task", EXAMPLE, "--model", model_dir, "--strategy", strategy, "--iterations", "1",
                    "--out", str(tmp_path / "exp" / RUNS / f"{strategy}-seed0"))
        assert r.returncode == 0, r.stderr
    run = tmp_path / "exp" / RUNS / "grpo-seed0" / "40"
    adapter = read_safetensors(run / "adapter.safetensors")
    silent = {k: torch.zeros_like(v) if ".lora_B" in k else v for k, v in adapter.items()}  # B = 0: no change
    write_safetensors(run / "adapter.safetensors", silent)
    assert [r.name for _, r in drift.runs_to_measure([tmp_path / "exp"])] == ["40"]  # random does not train
    assert drift.measure([tmp_path / "exp"], samples=3) == 1
    d = json.loads((run / "drift.json").read_text())
    assert d["kl_per_token"] == 0.0 and d["logratio"] == 0.0 and d["tokens"] > 0
    assert drift.measure([tmp_path / "exp"], samples=3) == 0  # measured once

    torch.manual_seed(0)
    moved = {k: torch.randn_like(v) * 0.5 if ".lora_B" in k else v for k, v in adapter.items()}
    write_safetensors(run / "adapter.safetensors", moved)
    (run / "drift.json").unlink()
    assert drift.measure([tmp_path / "exp"], samples=3) == 1
    d = json.loads((run / "drift.json").read_text())
    # answers sampled from the trained policy are likelier under it than under the base: KL and log-ratio > 0
    assert d["kl_per_token"] > 1e-3 and d["logratio"] > 0
    drift.main([str(tmp_path / "exp"), "--samples", "3"])  # nothing left to measure: it packs the records
    packed = {s.name: s for s in read_records(tmp_path / "exp")}
    assert (tmp_path / "exp" / RECORDS).exists() and packed["grpo-seed0"].runs["40"].drift == d


def test_a_folder_without_sweeps_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "grpo-seed0").mkdir()  # a sweep folder passed where the experiment folder belongs
    with pytest.raises(SystemExit) as e:
        drift.main([str(tmp_path / "grpo-seed0")])
    assert e.value.code == 2 and "holds no run folders" in capsys.readouterr().err
