"""Every run folder records the code that made it (config.json "code"), and says so when resumed by other code."""
import json
import subprocess
from pathlib import Path

import rundir


def test_code_hash_follows_the_code_files_only(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "migrate.py").write_text("x = 1\n")
    (tmp_path / "tasks" / "t.py").write_text("y = 2\n")
    (tmp_path / "README.md").write_text("words\n")
    first = rundir.code_version(tmp_path)
    assert first["commit"] is None and len(first["code_hash"]) == 16  # not a git checkout: the hash still tells
    (tmp_path / "README.md").write_text("other words\n")
    assert rundir.code_version(tmp_path)["code_hash"] == first["code_hash"]
    (tmp_path / "tasks" / "t.py").write_text("y = 3\n")
    assert rundir.code_version(tmp_path)["code_hash"] != first["code_hash"]


def test_a_tasks_hash_leaves_out_the_other_tasks_files(tmp_path):
    (tmp_path / "tasks").mkdir()
    for name in ("migrate.py", "tasks/__init__.py", "tasks/wordsearch.py", "tasks/arc.py", "tasks/mine.py"):
        (tmp_path / name).write_text("v = 1\n")
    before = {task: rundir.code_version(tmp_path, task)["code_hash"] for task in ("wordsearch", "arc", None)}
    (tmp_path / "tasks" / "arc.py").write_text("v = 2\n")  # ARC's own file: word search runs are the same code
    after = {task: rundir.code_version(tmp_path, task)["code_hash"] for task in ("wordsearch", "arc", None)}
    assert after["wordsearch"] == before["wordsearch"]
    assert after["arc"] != before["arc"] and after[None] != before[None]
    for shared in ("migrate.py", "tasks/mine.py"):  # shared code, and a file no task claims, count for every task
        (tmp_path / shared).write_text("v = 3\n")
        now = rundir.code_version(tmp_path, "wordsearch")["code_hash"]
        assert now != after["wordsearch"]
        after["wordsearch"] = now


def test_every_task_only_file_exists_and_each_task_claims_its_module():
    import tasks
    root = Path(rundir.__file__).parent
    for task, files in rundir.TASK_ONLY_FILES.items():
        assert all((root / f).is_file() for f in files), task
        module = tasks.task_class(task).__module__.replace(".", "/") + ".py"
        assert module in files, task


def test_the_commit_is_git_head_and_dirty_says_whether_code_changed_since(tmp_path):
    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True, text=True)  # noqa
    git("init", "-q")
    (tmp_path / "migrate.py").write_text("x = 1\n")
    git("add", "migrate.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    head = git("rev-parse", "HEAD").stdout.strip()
    assert rundir.code_version(tmp_path) | {"code_hash": None} == dict(commit=head, dirty=False, code_hash=None)
    (tmp_path / "migrate.py").write_text("x = 2\n")
    assert rundir.code_version(tmp_path)["dirty"] is True


def test_resuming_with_other_code_warns_once_and_is_recorded(tmp_path, capsys):
    saved = dict(settings={}, targets=["a"], code=dict(commit="abc", dirty=False, code_hash="0" * 16))
    (tmp_path / "config.json").write_text(json.dumps(saved))
    now = rundir.code_version()
    rundir.note_resuming_code(tmp_path, dict(saved), now)
    assert "started by other code (abc)" in capsys.readouterr().err
    assert json.loads((tmp_path / "config.json").read_text())["resumed_with"] == [now]
    same = json.loads((tmp_path / "config.json").read_text()) | {"code": now}
    rundir.note_resuming_code(tmp_path, same, now)  # same code: silent, nothing written
    assert capsys.readouterr().err == ""
