"""tracking.py: nothing happens without a project, a missing wandb is one line naming `pip install wandb`, and
with a project each iteration's scalar metrics reach wandb (a fake module here; the real one offline in the heavy
test, read back from the run file wandb writes)."""
import json
import struct
import sys
import types
from pathlib import Path

import pytest

import tracking
from tracking import TrackingError, open_tracker

RECORDS = [  # as loop.py writes history.jsonl: the warm start, an iteration with no update, one with an update
    dict(iteration=0, evaluations=20, best_score=0.25, best="cat", mean_reward=0.1, members=[{"reward": 0.1}]),
    dict(iteration=1, evaluations=28, best_score=0.25, best="cat", mean_reward=0.0, loss=None, clip_fraction=None,
         skipped="no signal in this group", members=[], time_sample=1.5, time_score=0.25, time_update=0.0),
    dict(iteration=2, evaluations=35, best_score=0.75, best="dog", mean_reward=0.5, loss=-0.125, lr=4.5e-05,
         grad_norm=0.5, clip_fraction=0.0, clip_low=0.0, clip_high=0.0, members=[], time_sample=1.25,
         time_score=0.5, time_update=2.0),
]
SUMMARY = dict(target="dog", best="dog", best_score=0.75, solved=False, evaluations=35, iterations=2,
               first_solved_at=None, top=[{"candidate": "dog"}], report={})


class FakeRun:
    def __init__(self, **kwargs):
        self.init, self.id, self.logged, self.metrics, self.summary = kwargs, kwargs.get("id") or "fake0001", [], [], {}
        self.exit_code = None

    def define_metric(self, name, step_metric=None):
        self.metrics.append((name, step_metric))

    def log(self, data):
        self.logged.append(data)

    def finish(self, exit_code=0):
        self.exit_code = exit_code


@pytest.fixture
def fake_wandb(monkeypatch):
    module = types.ModuleType("wandb")
    module.runs = []

    def init(**kwargs):
        module.runs.append(FakeRun(**kwargs))
        return module.runs[-1]
    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


def test_no_project_is_a_no_op_that_never_imports_wandb(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)  # importing it would fail
    tracker = open_tracker(None, "run", {"lr": 1e-5}, tmp_path / "t")
    for record in RECORDS:
        tracker.log(record)
    tracker.close(SUMMARY)
    assert not (tmp_path / "t").exists()


def test_missing_wandb_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(TrackingError, match=r"^--wandb proj needs the wandb package: pip install wandb$"):
        open_tracker("proj", "run", {}, tmp_path)


def test_failed_start_is_one_line(fake_wandb, tmp_path):
    def init(**kwargs):
        raise RuntimeError("api_key not configured (no-tty)\ncall wandb.login()")
    fake_wandb.init = init
    with pytest.raises(TrackingError) as e:
        open_tracker("proj", "run", {}, tmp_path)
    message = str(e.value)
    assert "\n" not in message and "api_key not configured" in message and "WANDB_MODE=offline" in message


def test_logs_scalar_metrics_per_iteration(fake_wandb, tmp_path):
    settings = {"lr": 5e-5, "lora_r": 64, "task_options": {}}
    tracker = open_tracker("proj", "run/dog", settings, tmp_path / "dog")
    for record in RECORDS:
        tracker.log(record)
    tracker.close(SUMMARY)
    run = fake_wandb.runs[0]
    assert run.init["project"] == "proj" and run.init["name"] == "run/dog" and run.init["config"] == settings
    assert run.init["dir"] == str(tmp_path / "dog")
    assert run.metrics == [("iteration", None), ("*", "iteration")]
    assert run.logged[0] == dict(iteration=0, evaluations=20, best_score=0.25, mean_reward=0.1)
    assert run.logged[1] == dict(iteration=1, evaluations=28, best_score=0.25, mean_reward=0.0, time_sample=1.5,
                                 time_score=0.25, time_update=0.0)  # None, text and lists left out
    assert run.logged[2] == {k: v for k, v in RECORDS[2].items() if k not in ("best", "members")}
    assert run.summary == dict(best="dog", best_score=0.75, solved=False, evaluations=35, iterations=2,
                               first_solved_at=None)
    assert run.exit_code == 0


def test_resumed_search_continues_the_same_run(fake_wandb, tmp_path):
    first = open_tracker("proj", "run", {}, tmp_path)
    first.close(failed=True)
    open_tracker("proj", "run", {}, tmp_path)
    (a, b) = fake_wandb.runs
    assert a.init["id"] is None and a.exit_code == 1 and a.summary == {}
    assert (b.init["id"], b.init["resume"]) == ("fake0001", "allow")
    assert (tmp_path / tracking.RUN_ID_FILE).read_text().strip() == "fake0001"


def test_non_finite_numbers_are_left_out():
    assert tracking.scalar_metrics({"loss": float("nan"), "grad_norm": float("inf"), "solved": True, "n": 3}) == \
        {"solved": True, "n": 3}


# ----------------------------------------------------------------------------------------------- heavy

def wandb_records(path: Path):
    """The protobuf records of a .wandb run file: wandb's log format (a 7-byte file header ':W&B', magic,
    version; then 32 KiB blocks of chunks, each with a 7-byte header: crc32, length, kind 1 full / 2 first /
    3 middle / 4 last; a block's tail shorter than a header is padding)."""
    from wandb.proto import wandb_internal_pb2
    data, pos, parts = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


@pytest.mark.heavy
def test_real_wandb_offline(monkeypatch, tmp_path):
    pytest.importorskip("wandb", reason="needs wandb (pip install wandb in a scratch environment)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    tracker = open_tracker("migrate-test", "run/dog", {"lr": 5e-5, "lora_r": 64}, tmp_path)
    for record in RECORDS:
        tracker.log(record)
    tracker.close(SUMMARY)
    files = sorted(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1
    history, config, exits = [], {}, []
    for record in wandb_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {(i.key or ".".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item}
            history.append({k: v for k, v in items.items() if not k.startswith("_")})  # wandb's own _step, ...
        elif kind == "run":
            config = {i.key: json.loads(i.value_json) for i in record.run.config.update if i.key != "_wandb"}
            assert (record.run.project, record.run.display_name) == ("migrate-test", "run/dog")
        elif kind == "exit":
            exits.append(record.exit.exit_code)
    assert config == {"lr": 5e-5, "lora_r": 64} and exits == [0]
    assert history == [tracking.scalar_metrics(r) for r in RECORDS]
    run_id = (tmp_path / tracking.RUN_ID_FILE).read_text().strip()
    assert files[0].name == f"run-{run_id}.wandb"
    # a resumed search opens the same wandb run again (wandb sync merges the two files)
    again = open_tracker("migrate-test", "run/dog", {"lr": 5e-5, "lora_r": 64}, tmp_path)
    again.log(RECORDS[-1])
    again.close(SUMMARY)
    assert [f.name for f in sorted(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))] == [files[0].name] * 2
