"""The adapter a run trains goes out and comes back, and the metrics reach Weights & Biases: a finished search
leaves its adapter in our format and in PEFT's, both reading back to the same tensors; --init-adapter starts every
search of a sweep from a saved adapter (and refuses one of another rank in one line); with --wandb each search
of a lockstep sweep logs every record to its own run (a fake wandb module, as tests/test_tracking.py uses)."""
import dataclasses
import json

import pytest
import torch

import loop
from adapter import PEFT_FOLDER, AdapterError, read_adapter
from tests.test_tracking import fake_wandb  # noqa: F401  (a fixture)
from tests.test_train import CountA, make_policy


def trained(tmp_path, **overrides):
    s, policy = make_policy("grpo", iterations=3, patience=3, **overrides)
    loop.search(policy, [loop.Search(s, CountA("x"), tmp_path)], quiet=True)
    return s


def test_a_finished_search_leaves_its_adapter_in_both_formats(tmp_path):
    s = trained(tmp_path)
    ours, peft = read_adapter(tmp_path / "adapter.safetensors"), read_adapter(tmp_path / PEFT_FOLDER)
    assert (peft.r, peft.alpha, peft.targets) == (s.lora_r, s.lora_alpha, ("q_proj", "v_proj"))
    assert ours.tensors.keys() == peft.tensors.keys()
    assert all(torch.equal(ours.tensors[k], peft.tensors[k]) for k in ours.tensors)
    assert any(v.abs().sum() > 0 for k, v in ours.tensors.items() if k.endswith("lora_B"))  # it was trained
    config = json.loads((tmp_path / PEFT_FOLDER / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == s.lora_r


def test_every_search_starts_from_the_given_adapter(tmp_path):
    trained(tmp_path / "first")
    saved = read_adapter(tmp_path / "first")
    s, policy = make_policy("grpo", adapters=2, init_adapter=str(tmp_path / "first"))
    for slot, seed in enumerate((0, 1)):  # whatever its seed, a search starts from the saved adapter
        x = loop.Search(dataclasses.replace(s, seed=seed), CountA("x"), tmp_path / f"s{seed}", slot=slot)
        policy.start(x)
        mine = policy.adapter(x)
        assert all(torch.equal(mine[k], saved.tensors[k]) for k in saved.tensors)
        assert x.optimizer.steps == 0  # a fresh optimiser over it


def test_an_adapter_of_another_rank_is_refused_in_one_line(tmp_path):
    trained(tmp_path / "first")
    with pytest.raises(AdapterError, match="rank 4 .* --lora-r 4"):
        make_policy("grpo", lora_r=8, init_adapter=str(tmp_path / "first"))


def test_each_search_of_a_lockstep_sweep_logs_to_its_own_run(tmp_path, fake_wandb):
    s, policy = make_policy("grpo", adapters=2, iterations=3, patience=3, wandb="migrate-tests")
    searches = [loop.Search(dataclasses.replace(s, seed=k, target=f"t{k}"), CountA("x"), tmp_path / f"t{k}")
                for k in (0, 1)]
    loop.search(policy, searches, quiet=True)
    assert [r.init["name"] for r in fake_wandb.runs] == [f"{tmp_path.name}/t0", f"{tmp_path.name}/t1"]
    for run, x in zip(fake_wandb.runs, searches):
        lines = (x.run_dir / "history.jsonl").read_text().splitlines()
        assert [d["iteration"] for d in run.logged] == [json.loads(l)["iteration"] for l in lines]
        assert run.exit_code == 0 and run.summary["iterations"] == 3
        assert run.init["config"]["target"] == x.s.target
