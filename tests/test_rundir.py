"""The run folder as something to trust: one process at a time (the OS lock, tried with real processes), damaged
state.pt and history.jsonl files, a state.pt that would run code if unpickled, old folders, and the light files a
finished search keeps. The loop runs with test_loop's scripted sampler (no model), so every record is known."""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import loop
import rundir
from history import Entry, History, Islands
from tests.test_loop import search_one, scripted, setup  # noqa: F401  (scripted is a fixture)

ROOT = Path(__file__).resolve().parents[1]


def records(run_dir):
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(l).items() if not k.startswith("time_")} for l in lines]


def interrupted_run(run_dir, monkeypatch, after=2, iterations=4):
    """A search of `iterations` stopped by Ctrl-C after `after` iterations: state.pt holds iteration `after`."""
    s, task, policy, _ = setup("ns")
    s.iterations, s.early_stop = iterations, False
    real, done = loop.run_iteration, []

    def stop(*a, **kw):
        if len(done) == after:
            raise KeyboardInterrupt
        done.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(loop, "run_iteration", stop)
    with pytest.raises(KeyboardInterrupt):
        search_one(s, run_dir, policy, task)
    monkeypatch.setattr(loop, "run_iteration", real)
    return s, task, policy


def unbroken_run(run_dir, iterations=4):
    s, task, policy, _ = setup("ns")
    s.iterations, s.early_stop = iterations, False
    search_one(s, run_dir, policy, task)
    return records(run_dir)


# -- the lock ----------------------------------------------------------------------------------------------

HOLD = """
import sys, time
sys.path.insert(0, {root!r})
import rundir
from pathlib import Path
rundir.lock_folder(Path({out!r}))
print("locked", flush=True)
time.sleep(300)
"""


def test_a_second_process_is_refused_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(ROOT), out=str(out))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = subprocess.run([sys.executable, "-c", HOLD.format(root=str(ROOT), out=str(out))],
                                capture_output=True, text=True, timeout=60)
        assert second.returncode != 0 and "locked" not in second.stdout
        assert f"in use by process {holder.pid}" in second.stderr
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs, only the kernel drops the lock
        holder.wait()
    again = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(ROOT), out=str(out))],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert again.stdout.readline().strip() == "locked"
        assert (out / ".lock").read_text().strip() == str(again.pid)
    finally:
        again.kill()
        again.wait()


def test_a_folder_that_cannot_be_written_is_named(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(rundir.RunFolderError, match=f"cannot write to {tmp_path / 'file'}"):
        rundir.lock_folder(tmp_path / "file" / "run")  # a file where a folder should be
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    if os.access(ro, os.W_OK):
        pytest.skip("this user writes to read-only folders (root)")
    with pytest.raises(rundir.RunFolderError, match=f"cannot write to {ro / 'run'}.*Permission denied"):
        rundir.lock_folder(ro / "run")


# -- state.pt ----------------------------------------------------------------------------------------------

def test_state_is_plain_data_and_resumes_to_the_unbroken_history(scripted, tmp_path, monkeypatch):
    s, task, policy = interrupted_run(tmp_path / "stopped", monkeypatch)
    blob = torch.load(tmp_path / "stopped" / "state.pt", weights_only=True)  # no allow-list needed
    assert blob["iteration"] == 2 and isinstance(blob["history"], dict) and isinstance(blob["islands"], dict)
    search_one(s, tmp_path / "stopped", policy, task)
    assert records(tmp_path / "stopped") == unbroken_run(tmp_path / "whole")


class Payload:
    """Unpickled without weights_only, this runs a shell command (it touches a file)."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_state_file_that_would_run_code_is_refused(scripted, tmp_path, monkeypatch):
    s, task, policy = interrupted_run(tmp_path / "run", monkeypatch)
    blob = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    blob["history"] = Payload(tmp_path / "payload-ran")
    torch.save(blob, tmp_path / "run" / "state.pt")
    with pytest.raises(rundir.RunFolderError, match="state.pt is damaged"):
        search_one(s, tmp_path / "run", policy, task)
    assert not (tmp_path / "payload-ran").exists()


@pytest.mark.parametrize("damage", ["truncated", "random", "empty"])
def test_a_damaged_state_file_is_a_one_line_error(scripted, tmp_path, monkeypatch, damage):
    s, task, policy = interrupted_run(tmp_path, monkeypatch)
    path = tmp_path / "state.pt"
    data = path.read_bytes()
    damaged = {"truncated": data[:len(data) // 2], "random": random.Random(0).randbytes(len(data)), "empty": b""}
    path.write_bytes(damaged[damage])
    with pytest.raises(rundir.RunFolderError) as e:
        search_one(s, tmp_path, policy, task)
    message = str(e.value)
    assert "\n" not in message and f"{path} is damaged" in message and f"delete {tmp_path}" in message


def test_a_state_file_of_the_old_format_still_resumes(scripted, tmp_path, monkeypatch):
    """Before plain data, state.pt held the History and Islands objects: they are admitted by name."""
    s, task, policy = interrupted_run(tmp_path / "stopped", monkeypatch)
    path = tmp_path / "stopped" / "state.pt"
    blob = torch.load(path, weights_only=True)
    entries = {e["candidate"]: Entry(**e) for e in blob["history"]["entries"]}
    blob["history"] = History(blob["history"]["budget"], entries, blob["history"]["evaluations"])
    blob["islands"] = Islands(**blob["islands"])
    torch.save(blob, path)
    search_one(s, tmp_path / "stopped", policy, task)
    assert records(tmp_path / "stopped") == unbroken_run(tmp_path / "whole")


# -- history.jsonl -----------------------------------------------------------------------------------------

def test_a_half_written_last_line_is_dropped_and_its_iteration_runs_again(scripted, tmp_path, monkeypatch):
    s, task, policy = interrupted_run(tmp_path / "stopped", monkeypatch)
    log = tmp_path / "stopped" / "history.jsonl"
    line = log.read_text().splitlines()[-1].replace('"iteration": 2', '"iteration": 3')
    with open(log, "a") as f:
        f.write(line[:len(line) // 2])  # the crash came in the middle of writing iteration 3
    search_one(s, tmp_path / "stopped", policy, task)
    assert records(tmp_path / "stopped") == unbroken_run(tmp_path / "whole")


def test_a_damaged_or_missing_saved_record_is_a_one_line_error(scripted, tmp_path, monkeypatch):
    s, task, policy = interrupted_run(tmp_path, monkeypatch)
    log = tmp_path / "history.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text(lines[0] + lines[1][:20] + "\n" + lines[2])
    with pytest.raises(rundir.RunFolderError, match=f"{log} line 2 is damaged"):
        search_one(s, tmp_path, policy, task)
    log.write_text(lines[0] + lines[1])  # iteration 2 is saved in state.pt but lost from the log
    with pytest.raises(rundir.RunFolderError, match="holds 2 of the 3 records"):
        search_one(s, tmp_path, policy, task)


# -- a finished search ------------------------------------------------------------------------------------

def test_a_finished_search_drops_its_state_and_is_not_searched_again(scripted, tmp_path):
    unbroken_run(tmp_path)
    assert (tmp_path / "best.json").exists() and not (tmp_path / "state.pt").exists()
    kept = (tmp_path / "history.jsonl").read_bytes()
    s, task, policy, _ = setup("ns")
    s.iterations, s.early_stop = 4, False
    assert search_one(s, tmp_path, policy, task)["iterations"] == 4
    assert (tmp_path / "history.jsonl").read_bytes() == kept


def test_summary_keeps_one_row_per_target_whatever_the_best_or_target(tmp_path):
    program = "def transform(grid):\n    return [row[::-1] for row in grid]  # a | pipe"
    long_target = "C" * 5000
    for target, best in (("abc", program), (long_target, "CCO")):
        (tmp_path / rundir.slug(target)).mkdir()
        (tmp_path / rundir.slug(target) / "best.json").write_text(json.dumps(
            dict(best_score=0.5, solved=False, evaluations=3, best=best)))
    rundir.write_summary(tmp_path, ["abc", long_target])
    lines = (tmp_path / "summary.md").read_text().splitlines()
    assert len(lines) == 4 and all(l.count("|") == 6 for l in lines), lines
    assert "def transform(grid): return" in lines[2] and max(map(len, lines)) < 200


def test_a_long_target_gets_a_short_distinct_folder_name():
    a, b = "C" * 5000, "C" * 4999 + "N"
    assert len(rundir.slug(a)) <= 80 and rundir.slug(a) != rundir.slug(b)
    assert rundir.slug("rediscover:celecoxib") == "rediscover_celecoxib"  # short names are as before


def test_a_new_run_is_not_written_into_a_folder_of_other_files(tmp_path):
    from settings import UsageError
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="holds other files and no run"):
        rundir.prepare_out_dir(tmp_path, False, {"seed": 0}, ["a"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no config.json, no .lock
    empty = tmp_path / "empty"
    empty.mkdir()
    assert rundir.prepare_out_dir(empty, False, {"seed": 0}, ["a"]) == empty
    assert (empty / "config.json").exists()
