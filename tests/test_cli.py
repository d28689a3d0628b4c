"""migrate.py as a user runs it: a tiny model folder on disk, the README's example task, the files a run leaves,
one-line errors for bad input (with nothing already written lost), --resume, and a torchrun sweep on 2 CPU
processes that splits the targets between ranks."""
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from tests.test_checkpoint import write_hf_folder
from tests.tiny_model import tiny_model

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = str(ROOT / "examples" / "digit_sum.py")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "model"
    write_hf_folder(folder, tiny_model(seed=3, vocab_size=259))  # 256 bytes + "ab" + two chat tokens
    return str(folder)


def migrate(*args, cwd=None, torchrun=False, env=None, quiet=True):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] \
        if torchrun else [sys.executable]
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(launcher + [str(ROOT / "migrate.py"), *["--quiet"] * quiet, *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


def test_a_run_leaves_its_files(model_dir, tmp_path):
    out = tmp_path / "run"
    r = migrate("--task", EXAMPLE, "--model", model_dir, "--iterations", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["settings"]["alpha"] == 5 and cfg["settings"]["gamma"] == 2 and cfg["targets"] == ["40"]
    lines = (out / "40" / "history.jsonl").read_text().splitlines()
    assert [json.loads(l)["iteration"] for l in lines] == [0, 1, 2]  # 0: the (empty) warm start
    best = json.loads((out / "40" / "best.json").read_text())
    assert best["evaluations"] == len({c["candidate"] for l in lines for m in json.loads(l)["members"]
                                       for c in m["candidates"]})
    assert (out / "40" / "plot.svg").read_text().startswith("<svg")
    assert (out / "40" / "adapter.safetensors").stat().st_size > 0
    assert not (out / "40" / "state.pt").exists()  # only needed to continue; best.json marks the end
    assert "| 40 |" in (out / "summary.md").read_text()


def test_a_run_says_what_it_will_do_how_long_it_takes_and_what_it_found(model_dir, tmp_path):
    r = migrate("--task", EXAMPLE, "--model", model_dir, "--iterations", "2", "--out", str(tmp_path / "o"),
                quiet=False)
    assert r.returncode == 0, r.stderr
    assert "migrate on digitsum (40): up to 2 iterations of 8 members, 12 new tokens each" in r.stderr
    assert "1 thread (OMP_NUM_THREADS)" in r.stderr
    assert "40: iteration 1 took" in r.stderr and "the 1 left take about" in r.stderr  # the measured rate
    assert "| 40 |" in r.stdout and "best score: the task's score in [0, 1]" in r.stdout


def one_line_error(r, *words):
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_bad_input_gives_one_line_errors(model_dir, tmp_path):
    one_line_error(migrate("--task", "nosuch"), "unknown task", "nosuch")
    one_line_error(migrate("--strategy", "nosuch"), "invalid choice", "nosuch")
    one_line_error(migrate("--task", EXAMPLE, "--model", model_dir, "--target", "abc"), "digitsum target", "abc")
    one_line_error(migrate("--task", EXAMPLE, "--model", model_dir, "--budget", "-3"), "--budget must be positive")
    one_line_error(migrate("--task", EXAMPLE, "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o")),
                   "does not exist")
    one_line_error(migrate("--resume", str(tmp_path)), "not a run folder")


def test_resume_checks_settings_and_keeps_what_was_written(model_dir, tmp_path):
    out = tmp_path / "run"
    assert migrate("--task", EXAMPLE, "--model", model_dir, "--iterations", "2", "--out", str(out)).returncode == 0
    files = lambda: {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}  # its pid
    before = files()
    one_line_error(migrate("--resume", str(out), "--lr", "0.5"), "lr", str(out))
    one_line_error(migrate("--task", EXAMPLE, "--model", model_dir, "--iterations", "2", "--out", str(out)),
                   "--resume")
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(dict(config, code=dict(code_hash="older code"))))
    before[out / "config.json"] = (out / "config.json").read_bytes()
    one_line_error(migrate("--task", EXAMPLE, "--model", model_dir, "--iterations", "2", "--out", str(out)),
                   "already holds this run")  # the same settings from other code: still this run
    assert files() == before
    r = migrate("--resume", str(out), "--iterations", "3")  # more iterations is another configuration too
    one_line_error(r, "iterations")
    assert migrate("--resume", str(out)).returncode == 0  # a finished run resumes to itself, not searched again
    assert (out / "40" / "history.jsonl").read_bytes() == before[out / "40" / "history.jsonl"]
    assert "| 40 |" in (out / "summary.md").read_text()
    # A folder written before a setting existed (here: patience) still resumes, the setting at its default.
    config = json.loads((out / "config.json").read_text())
    del config["settings"]["patience"]
    (out / "config.json").write_text(json.dumps(config))
    assert migrate("--resume", str(out)).returncode == 0


def test_a_failed_start_does_not_block_the_corrected_command(model_dir, tmp_path):
    out = tmp_path / "run"
    one_line_error(migrate("--task", EXAMPLE, "--model", model_dir + "-typo", "--out", str(out)), "does not exist")
    r = migrate("--task", EXAMPLE, "--model", model_dir, "--iterations", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "config.json").read_text())["settings"]["model"] == model_dir
    # the same with --resume: the folder of a start that failed takes the corrected flag
    out2 = tmp_path / "run2"
    one_line_error(migrate("--task", EXAMPLE, "--model", model_dir + "-typo", "--out", str(out2)), "does not exist")
    r = migrate("--resume", str(out2), "--model", model_dir, "--iterations", "1")
    assert r.returncode == 0, r.stderr
    assert (out2 / "40" / "best.json").exists()
    # once a search has saved an iteration, the folder is taken
    one_line_error(migrate("--task", EXAMPLE, "--model", model_dir, "--out", str(out)), "other settings")


def test_a_folder_in_use_is_refused_with_the_holders_pid(model_dir, tmp_path):
    from tests.test_rundir import HOLD
    out = tmp_path / "run"
    assert migrate("--task", EXAMPLE, "--model", model_dir, "--iterations", "1", "--out", str(out)).returncode == 0
    holder = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(ROOT), out=str(out))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        one_line_error(migrate("--resume", str(out)), f"in use by process {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    assert migrate("--resume", str(out)).returncode == 0  # the kernel dropped the killed holder's lock


def test_a_run_killed_with_sigkill_resumes_to_the_unbroken_history(model_dir, tmp_path):
    flags = ["--task", EXAMPLE, "--model", model_dir, "--iterations", "40", "--patience", "40", "--no-early-stop"]
    assert migrate(*flags, "--out", str(tmp_path / "whole")).returncode == 0
    out = tmp_path / "killed"
    log = out / "40" / "history.jsonl"
    run = subprocess.Popen([sys.executable, str(ROOT / "migrate.py"), "--quiet", *flags, "--out", str(out)],
                           env=dict(os.environ, OMP_NUM_THREADS="1"), stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 4):
        time.sleep(0.05)
    run.kill()  # SIGKILL: no handler runs, the lock is left to the kernel
    run.wait()
    assert not (out / "40" / "best.json").exists()  # it really was stopped mid-search
    r = migrate("--resume", str(out))
    assert r.returncode == 0, r.stderr
    strip = lambda p: [{k: v for k, v in json.loads(l).items() if not k.startswith("time_")}
                       for l in p.read_text().splitlines()]
    assert strip(log) == strip(tmp_path / "whole" / "40" / "history.jsonl")


def test_sigterm_stops_like_ctrl_c_with_the_resume_hint(model_dir, tmp_path):
    import signal
    out = tmp_path / "run"
    flags = ["--task", EXAMPLE, "--model", model_dir, "--iterations", "40", "--patience", "40", "--no-early-stop"]
    run = subprocess.Popen([sys.executable, str(ROOT / "migrate.py"), "--quiet", *flags, "--out", str(out)],
                           env=dict(os.environ, OMP_NUM_THREADS="1"), stderr=subprocess.PIPE, text=True)
    log = out / "40" / "history.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 2):
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 128 + signal.SIGTERM
    assert f"Continue with: python migrate.py --resume {out}" in err
    assert migrate("--resume", str(out)).returncode == 0


def test_seeds_run_in_lockstep_one_folder_each_as_each_seed_alone(model_dir, tmp_path):
    """--seeds 0,1: two run folders, the four searches (2 targets x 2 seeds) in one lockstep; each history equals
    its seed's run alone; a stop is resumed by naming both folders. Folders that are no one sweep are refused."""
    flags = ["--task", EXAMPLE, "--model", model_dir, "--targets", "40,30", "--iterations", "2", "--patience", "2"]
    r = migrate(*flags, "--seeds", "0,1", "--out", str(tmp_path / "both-{seed}"))
    assert r.returncode == 0, r.stderr
    for seed in (0, 1):
        assert migrate(*flags, "--seed", str(seed), "--out", str(tmp_path / f"alone-{seed}")).returncode == 0
        assert json.loads((tmp_path / f"both-{seed}" / "config.json").read_text())["settings"]["seed"] == seed
        for target in ("40", "30"):
            strip = lambda p: [{k: v for k, v in json.loads(l).items() if not k.startswith("time_") and k != "lockstep"}
                               for l in p.read_text().splitlines()]  # noqa: E731
            assert strip(tmp_path / f"both-{seed}" / target / "history.jsonl") == \
                strip(tmp_path / f"alone-{seed}" / target / "history.jsonl")
    both = f"{tmp_path / 'both-0'},{tmp_path / 'both-1'}"
    assert migrate("--resume", both).returncode == 0  # finished: each summary rewritten
    assert migrate(*flags, "--iterations", "1", "--out", str(tmp_path / "other")).returncode == 0
    one_line_error(migrate("--resume", f"{tmp_path / 'both-0'},{tmp_path / 'other'}"), "not one sweep")
    one_line_error(migrate(*flags, "--seeds", "0,1", "--out", str(tmp_path / "no-template")), "{seed}")


def test_bad_targets_fail_before_the_model_loads(tmp_path):
    missing = str(tmp_path / "no-model")  # were the model loaded first, the error would name it
    one_line_error(migrate("--task", EXAMPLE, "--model", missing, "--target", ""), "--target is empty")
    one_line_error(migrate("--task", EXAMPLE, "--model", missing, "--targets", ",,,"), "names no target")
    r = migrate("--task", EXAMPLE, "--model", missing, "--target", "7" * 5000 + "x")
    one_line_error(r, "digitsum target")
    assert len(r.stderr) < 300


def test_an_unwritable_out_or_cache_is_named(model_dir, tmp_path):
    (tmp_path / "file").write_text("")
    bad = tmp_path / "file" / "run"  # under a file: no user can write there, root included
    one_line_error(migrate("--task", EXAMPLE, "--model", model_dir, "--out", str(bad)), f"cannot write to {bad}")
    env = {"MIGRATE_CACHE": str(bad)}  # the default model must be fetched into it
    one_line_error(migrate("--task", EXAMPLE, "--out", str(tmp_path / "o"), env=env),
                   f"cannot write to the asset cache {bad}", "MIGRATE_CACHE")


def test_torchrun_splits_targets_across_ranks(model_dir, tmp_path):
    out = tmp_path / "sweep"
    r = migrate("--task", EXAMPLE, "--model", model_dir, "--targets", "10,20,30", "--iterations", "1",
                "--out", str(out), torchrun=True)
    assert r.returncode == 0, "\n".join(line for line in r.stderr.splitlines()  # the ranks' own words, not
                                         if "torch/distributed" not in line)[:3000]  # torchrun's traceback
    ranks = {t: json.loads((out / t / "best.json").read_text())["rank"] for t in ("10", "20", "30")}
    assert ranks == {"10": 0, "20": 1, "30": 0}
    rows = (out / "summary.csv").read_text().splitlines()
    assert len(rows) == 4 and all(",None," not in row and not row.endswith(",") for row in rows[1:])


def test_several_ranks_without_torchrun_get_a_one_line_error(model_dir, tmp_path):
    """The ranks meet through the store torchrun's agent hosts; without it there is no one to meet."""
    r = migrate("--task", EXAMPLE, "--model", model_dir, "--out", str(tmp_path / "o"),
                env={"WORLD_SIZE": "2", "RANK": "1", "TORCHELASTIC_USE_AGENT_STORE": ""})
    one_line_error(r, "WORLD_SIZE is 2", "torchrun")
    assert not (tmp_path / "o").exists()


def test_cpu_threads_follow_the_machine_never_its_load(monkeypatch):
    """One command on one machine gives one history: the thread count (which changes the order of float sums)
    comes from the cores this process may use, never from what else is running."""
    import torch

    import migrate
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    s = types.SimpleNamespace(threads=0)
    counts = set()
    for load in ((0.0, 0.0, 0.0), (1.7, 1.0, 0.5), (9.0, 9.0, 9.0)):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: load)
        counts.add(migrate.cpu_threads(s)[0])
    assert counts == {4}
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two torchrun processes share the cores
    assert migrate.cpu_threads(s)[0] == 2
    assert migrate.cpu_threads(types.SimpleNamespace(threads=5)) == (5, "--threads")  # the setting wins
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert migrate.cpu_threads(s) == (3, "OMP_NUM_THREADS")


def test_the_cpu_demo_is_one_flag_away_from_the_papers_settings():
    import migrate
    from loop import resolve_settings
    from tasks import task_class
    cls = task_class("molecule")
    d = cls.defaults

    def resolve(*flags):
        args = migrate.build_parser().parse_args(["--task", "molecule", *flags])
        given = dict(migrate.given_settings(args), device="cpu")
        s = resolve_settings(cls, "migrate", given)
        return s, migrate.cpu_demo(s, given, args.full, d)
    s, note = resolve()
    assert (s.iterations, s.max_new_tokens) == (d.extra["demo_iterations"], d.extra["demo_max_new_tokens"])
    assert "--full" in note and s.iterations < d.iterations and s.max_new_tokens < d.max_new_tokens
    s, note = resolve("--full")
    assert (s.iterations, s.max_new_tokens, note) == (d.iterations, d.max_new_tokens, "")
    s, _ = resolve("--iterations", "7")  # a count the user chose is kept, and with it the paper's length
    assert (s.iterations, s.max_new_tokens) == (7, d.max_new_tokens)
    s, _ = resolve("--max-new-tokens", "50")  # a demo still, with the length the user gave
    assert (s.iterations, s.max_new_tokens) == (d.extra["demo_iterations"], 50)
    arc = task_class("arc")
    s = resolve_settings(arc, "migrate", {"device": "cpu"})
    migrate.cpu_demo(s, {}, False, arc.defaults)
    assert s.micro_batch == arc.defaults.extra["demo_micro_batch"] > 0  # less memory, the same update


def test_every_knob_is_a_flag_whose_default_is_none():
    import migrate
    import settings
    args = migrate.build_parser().parse_args([])
    for f in settings.KNOBS:
        assert getattr(args, f.name) is None, f.name  # so a flag left out can be told from one given
    assert "micro_batch" in {f.name for f in settings.KNOBS} and "neighbours" not in {f.name for f in settings.KNOBS}
    assert migrate.build_parser().parse_args(["--no-early-stop", "--compile"]).early_stop is False
    assert migrate.given_settings(migrate.build_parser().parse_args(["--lr", "0.5", "--sandbox", "strict"])) == \
        {"lr": 0.5, "task_options": {"sandbox": "strict"}}


def test_the_end_of_a_run_says_what_the_numbers_mean(tmp_path):
    import migrate
    from tasks import task_class
    for name, words in (("wordsearch", "cosine"), ("molecule", "objective"), ("arc", "train pairs")):
        assert words in task_class(name).defaults.extra["score_meaning"], name
    (tmp_path / "t1").mkdir()
    (tmp_path / "t1" / "best.json").write_text(json.dumps(dict(report={"pass@2": True, "votes": [[3]]})))
    text = migrate.explain_scores(tmp_path, ["t1", "t2"], task_class("arc"))  # t2 has not finished
    assert text.splitlines()[1:] == ["t1: pass@2 True"]


def test_torchrun_ranks_each_get_a_share_of_every_target():
    import migrate
    # a sweep lists its searches seed by seed: four targets, seeds 0-2
    searches = [types.SimpleNamespace(s=types.SimpleNamespace(target=t, seed=k)) for k in range(3) for t in "abcd"]
    shares = [[f"{x.s.target}{x.s.seed}" for x in migrate.rank_share(searches, rank, 2)] for rank in (0, 1)]
    # dealt target by target: not rank 0 = a, c and rank 1 = b, d, as dealing seed by seed would give
    assert shares == [["a0", "a2", "b1", "c0", "c2", "d1"], ["a1", "b0", "b2", "c1", "d0", "d2"]]
    assert migrate.rank_share(searches, 0, 1) == sorted(searches, key=lambda x: x.s.target)  # one rank: all
    assert migrate.rank_share(searches[:1], 1, 2) == []  # more ranks than searches


def test_torchrun_ranks_take_their_own_gpu(monkeypatch):
    import torch

    import migrate
    picked = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", picked.append)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert migrate.rank_device("cuda") == "cuda:1" and picked == [1]
    assert migrate.rank_device("cpu") == "cpu"
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(migrate.UsageError, match="LOCAL_RANK 2"):
        migrate.rank_device("cuda")
    monkeypatch.delenv("LOCAL_RANK")
    assert migrate.rank_device("cuda") == "cuda"


FAILING_TASK = '''
import sys
sys.path.insert(0, {examples!r})
from digit_sum import DigitSum


class FailsOnThirteen(DigitSum):
    name = "fails-on-13"

    def score(self, candidates):
        if self.target == 13:
            raise RuntimeError("the black box broke")
        return super().score(candidates)
'''


def test_a_failing_torchrun_rank_ends_the_run_instead_of_hanging(model_dir, tmp_path):
    """Rank 1's target breaks mid-search: rank 0 finishes its own, both meet, and the run ends with a one-line
    error naming the rank (rather than waiting at the final barrier for the store's 30-day timeout)."""
    task = tmp_path / "fails.py"
    task.write_text(FAILING_TASK.format(examples=str(ROOT / "examples")))
    out = tmp_path / "sweep"
    r = migrate("--task", str(task), "--model", model_dir, "--targets", "10,13", "--iterations", "1",
                "--out", str(out), torchrun=True)
    assert r.returncode != 0
    assert "rank 1 failed (TaskProtocolError: task 'fails-on-13' (target 13): score() raised RuntimeError: " \
           "the black box broke)" in r.stderr
    assert (out / "10" / "best.json").exists() and not (out / "13" / "best.json").exists()
