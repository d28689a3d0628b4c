"""migrate.py as a user runs it: a tiny model folder on disk, the README's example task, the files a run leaves,
one-line errors for bad input (with nothing already written lost), --resume, and a torchrun sweep on 2 CPU
processes that splits the targets between ranks."""
import json
import os
import subprocess
import sys
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


def migrate(*args, cwd=None, torchrun=False):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] \
        if torchrun else [sys.executable]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(launcher + [str(ROOT / "migrate.py"), "--quiet", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


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
    assert "| 40 |" in (out / "summary.md").read_text()


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
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    one_line_error(migrate("--resume", str(out), "--lr", "0.5"), "lr", str(out))
    one_line_error(migrate("--task", EXAMPLE, "--model", model_dir, "--iterations", "2", "--out", str(out)),
                   "--resume")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    r = migrate("--resume", str(out), "--iterations", "3")  # more iterations is another configuration too
    one_line_error(r, "iterations")
    assert migrate("--resume", str(out)).returncode == 0  # a finished run resumes to itself
    assert len((out / "40" / "history.jsonl").read_text().splitlines()) == 3
    # A finished target kept without its (large) state, as bench/results commits it, is not searched again.
    (out / "40" / "state.pt").unlink()
    kept = (out / "40" / "history.jsonl").read_bytes()
    assert migrate("--resume", str(out)).returncode == 0
    assert (out / "40" / "history.jsonl").read_bytes() == kept and not (out / "40" / "state.pt").exists()
    assert "| 40 |" in (out / "summary.md").read_text()
    # A folder written before a setting existed (here: patience) still resumes, the setting at its default.
    config = json.loads((out / "config.json").read_text())
    del config["settings"]["patience"]
    (out / "config.json").write_text(json.dumps(config))
    assert migrate("--resume", str(out)).returncode == 0


def test_torchrun_splits_targets_across_ranks(model_dir, tmp_path):
    out = tmp_path / "sweep"
    r = migrate("--task", EXAMPLE, "--model", model_dir, "--targets", "10,20,30", "--iterations", "1",
                "--out", str(out), torchrun=True)
    assert r.returncode == 0, r.stderr[-2000:]
    ranks = {t: json.loads((out / t / "best.json").read_text())["rank"] for t in ("10", "20", "30")}
    assert ranks == {"10": 0, "20": 1, "30": 0}
    rows = (out / "summary.csv").read_text().splitlines()
    assert len(rows) == 4 and all(",None," not in row and not row.endswith(",") for row in rows[1:])
