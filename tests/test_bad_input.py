"""Bad input, as a careless user or a hand-edited run folder gives it: every case is a one-line error that says
what to do, or the right behaviour, and nothing saved is lost. The command line runs in this process
(migrate.main) on a tiny model folder, so each case costs milliseconds."""
import errno
import json
import math
from pathlib import Path

import pytest
import torch

import loop
import rundir
from settings import UsageError
from tasks import expand_targets, load_task_class, task_class
from tests.test_checkpoint import write_hf_folder
from tests.test_loop import search_one, FruitTask, scripted, setup  # noqa: F401  (scripted is a fixture)
from tests.tiny_model import tiny_model

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = str(ROOT / "examples" / "digit_sum.py")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "model"
    write_hf_folder(folder, tiny_model(seed=3, vocab_size=259))
    return str(folder)


def cli(capsys, monkeypatch, *argv) -> tuple[int, str]:
    """migrate.py's exit code and its stderr, run in this process."""
    import migrate
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    code = migrate.main(["--quiet", *argv])
    return code, capsys.readouterr().err


def one_line(code, err, *words):
    assert code == 2 and err.startswith("migrate.py: error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err, err


@pytest.mark.parametrize("given,words", [
    ({"lr": math.nan}, "--lr must be a positive finite number"),
    ({"lr": math.inf}, "--lr must be a positive finite number"),
    ({"temperature": math.nan}, "--temperature must be >= 0"),
    ({"kl_coef": math.nan}, "--kl-coef must be >= 0"),
    ({"lora_dropout": 1.5}, "--lora-dropout must be in [0, 1)"),
    ({"seed": 2 ** 70}, "--seed must be in [0, 2**64)"),
    ({"device": "tpu"}, "--device must be cpu or cuda"),
    ({"iterations": "abc"}, "--iterations must be int"),
    ({"alpha": "5"}, "--alpha must be int"),
    ({"dtype": "int8"}, "--dtype must be one of"),
])
def test_bad_values_are_refused_before_any_work(given, words):
    with pytest.raises(UsageError, match=words.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")
                       .replace("*", r"\*")):
        loop.resolve_settings(FruitTask, "migrate", dict({"device": "cpu"}, **given))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a torch that sees no GPU")
def test_cuda_on_a_machine_without_one_says_so():
    with pytest.raises(UsageError, match="sees no GPU.*use --device cpu"):
        loop.resolve_settings(FruitTask, "migrate", {"device": "cuda"})


def test_settings_only_the_model_can_judge_are_refused_before_any_work():
    model = tiny_model()  # dim 32, 256 positions
    for given, words in (({"lora_r": 10 ** 9}, "--lora-r 1000000000 is above the model's width 32"),
                         ({"max_new_tokens": 10 ** 6}, "leaves no room for a prompt in the model's 256 positions")):
        s = loop.resolve_settings(FruitTask, "migrate", dict(given, device="cpu"))
        with pytest.raises(UsageError, match=words):
            loop.Policy(model, None, s)


def test_a_prompt_and_completion_past_the_model_positions_stop_with_the_limit(scripted, tmp_path):
    s, task, policy, state = setup("random")
    policy.model = tiny_model(max_seq_len=8)  # FruitTask's prompt is a few characters; 8 + 64 > 8
    plan = loop.plan_group(s, task, state)
    with pytest.raises(UsageError, match="pass the model's 8 positions; lower --max-new-tokens"):
        loop.sample_members(policy, [loop.Search(s, task, tmp_path, state=state)], [plan])


def test_a_diverging_update_stops_the_run_and_keeps_the_last_good_state(tmp_path):
    """An lr near float32's largest number overflows the adapter within a few steps: the run stops in one line
    and never saves a non-finite adapter."""
    from tests.test_train import CountA, make_policy
    s, policy = make_policy("grpo", lr=3e37, iterations=6, patience=6)
    with pytest.raises(loop.TrainingDiverged, match="the update diverged.*Lower --lr"):
        search_one(s, tmp_path, policy, CountA("x"))
    saved = rundir.read_state_file(tmp_path / "state.pt")
    assert all(v.isfinite().all() for v in saved["adapter"].values())
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert len(lines) == saved["iteration"] + 1  # the log ends where the state does: nothing to repair on resume


@pytest.mark.parametrize("spec,words", [
    ("paperr", "did you mean the set 'paper'"),
    ("computer,computer", "'computer' is given twice"),
    ("a b,a_b", "'a_b' and 'a b' share a run folder"),
])
def test_targets_that_would_mislead_are_questioned(spec, words):
    with pytest.raises(UsageError, match=words):
        expand_targets(task_class("wordsearch"), spec)


def test_a_broken_task_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.py"
    for source, words in (("def f(:\n", "failed to load (line 1): SyntaxError"),
                          ("import no_such_module_here\n", "failed to load: ModuleNotFoundError")):
        bad.write_text(source)
        with pytest.raises(UsageError, match=r"task .*bad.py " + words.replace("(", r"\(").replace(")", r"\)")):
            load_task_class(str(bad))


def test_a_task_path_outside_the_folder_still_runs_under_runs():
    import migrate
    s = loop.resolve_settings(FruitTask, "migrate", {"device": "cpu"})
    assert migrate.default_out(FruitTask, s) == "runs/fruit-migrate-seed{seed}"


def damaged_config(folder: Path, config) -> str:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


GOOD = dict(settings=dict(task="wordsearch", strategy="migrate", iterations=3), targets=["computer"])


@pytest.mark.parametrize("config,words", [
    ([1, 2], "config.json is damaged"),
    ({"targets": ["computer"]}, "config.json is damaged"),
    (dict(GOOD, targets=[]), "non-empty list of targets"),
    (dict(GOOD, settings=dict(GOOD["settings"], strategy="nosuch")), "unknown strategy 'nosuch'"),
    (dict(GOOD, settings=dict(GOOD["settings"], iterations="abc")), "--iterations must be int"),
    (dict(GOOD, settings=dict(GOOD["settings"], alpha="5")), "--alpha must be int"),
])
def test_a_hand_edited_config_is_named_on_resume(config, words, tmp_path, capsys, monkeypatch):
    one_line(*cli(capsys, monkeypatch, "--resume", damaged_config(tmp_path / "run", config)), words)


@pytest.mark.parametrize("flags,words", [(["--task", "arc"], "--task cannot change it"),
                                         (["--strategy", "grpo"], "--strategy cannot change it"),
                                         (["--targets", "a,b"], "cannot change them")])
def test_resume_refuses_flags_that_would_be_ignored(flags, words, tmp_path, capsys, monkeypatch):
    one_line(*cli(capsys, monkeypatch, "--resume", damaged_config(tmp_path / "run", GOOD), *flags), words)


def test_a_full_disk_is_named_and_leaves_no_partial_file(tmp_path, monkeypatch):
    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(rundir.RunFolderError, match="No space left on device.*free space.*--resume"):
        rundir.atomic_write(tmp_path / "config.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_a_config_cut_by_a_full_disk_does_not_block_the_next_command(tmp_path):
    (tmp_path / "config.json.tmp").write_text('{"settin')  # what a crash mid-write leaves
    assert rundir.prepare_out_dir(tmp_path, False, {"task": "t"}, ["a"]) == tmp_path
    assert json.loads((tmp_path / "config.json").read_text())["targets"] == ["a"]


def test_damage_to_a_finished_run_is_named_on_resume(model_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    code, err = cli(capsys, monkeypatch, "--task", EXAMPLE, "--model", model_dir, "--iterations", "2",
                    "--out", str(out))
    assert code == 0, err
    log, adapter = out / "40" / "history.jsonl", out / "40" / "adapter.safetensors"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:-1]) + "\n")  # a record deleted
    one_line(*cli(capsys, monkeypatch, "--resume", str(out)), "history.jsonl holds 2 records, not the 3")
    log.write_text("\n".join(lines) + "\n")
    adapter.write_bytes(adapter.read_bytes()[:100])  # truncated
    one_line(*cli(capsys, monkeypatch, "--resume", str(out)), "adapter.safetensors is damaged")
