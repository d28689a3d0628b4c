"""The files of one run, and the state that makes it resumable.

A run folder holds config.json (prepare_out_dir: settings, targets and the code that ran), .lock (the pid of the
process running it) and, per target: state.pt (everything needed to continue exactly, replaced atomically after
every iteration and deleted once best.json is written), history.jsonl (one record per iteration), best.json,
adapter.safetensors and plot.svg. A sweep folder adds summary.md and summary.csv. Nothing here knows the
algorithm: loop.py decides what goes into a record, this file only keeps it safe on disk and refuses, in one
line, what it cannot trust.
"""
import csv
import dataclasses
import hashlib
import io
import json
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from settings import UsageError


class RunFolderError(Exception):
    """A run folder that cannot be used as it is (locked, read-only, damaged), reported as one line."""


@dataclass
class RunState:
    history: object
    islands: object  # MiGrATe-Evo's parent database
    archive: object  # TTT-Discover's PUCT archive of states
    rng: random.Random
    generator: object  # torch.Generator of the sampler
    iteration: int = 0
    finished: bool = False


# ----------------------------------------------------------------------------------------------------------
# Claiming a folder: one process at a time, and only a search that has saved its state makes the folder taken.

_held = {}  # folder -> its open .lock file, kept open (and so locked) for the life of this process


def lock_folder(out: Path) -> None:
    """Make out if needed and hold its lock until this process exits. The lock is the OS's (flock): the kernel
    drops it however the process ends, SIGKILL included, so a dead run never leaves a stale lock behind."""
    import fcntl
    key = out.resolve()
    if key in _held:
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        f = open(out / ".lock", "a+")
    except OSError as e:
        raise RunFolderError(f"cannot write to {e.filename or out} ({e.strerror}); a run folder must be writable")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "another process"
        f.close()
        raise RunFolderError(f"{out} is in use by process {pid}; let it finish (or stop it), then --resume {out}")
    f.truncate(0)
    f.write(f"{os.getpid()}\n")
    f.flush()
    _held[key] = f


def started(out: Path, targets: list[str]) -> bool:
    """Whether a search in out has saved its state (scored warm start or later): before that, the folder holds
    nothing worth keeping (a start that failed on a bad --model or a download) and a new command may take it."""
    return any((out / slug(t) / name).exists() for t in targets for name in ("state.pt", "best.json"))


# ----------------------------------------------------------------------------------------------------------
# state.pt: tensors and plain data only, so torch.load(weights_only=True) reads it and runs no code from it.

def save_state(run_dir: Path, state: RunState, adapter: dict | None, optimizer: dict | None) -> None:
    """Everything needed to continue exactly, written atomically (a crash leaves the previous state): the search's
    state, its adapter and its optimiser's state (torch.optim.AdamW's format)."""
    import torch
    from history import archive_data, history_data, islands_data
    blob = dict(iteration=state.iteration, finished=state.finished, history=history_data(state.history),
                islands=islands_data(state.islands), archive=archive_data(state.archive), rng=state.rng.getstate(),
                generator=state.generator.get_state(), torch_rng=torch.get_rng_state(),
                adapter=adapter, optimizer=optimizer)
    buffer = io.BytesIO()  # serialised in memory, so that a full disk is an OSError of our own write
    torch.save(blob, buffer)
    atomic_write(run_dir / "state.pt", buffer.getvalue())


def load_state(run_dir: Path, device) -> tuple[RunState, dict | None, dict | None]:
    """The state saved after the last finished iteration, with the adapter and optimiser state saved beside it;
    a file that cannot be read is a one-line error."""
    import torch
    from history import Archive, History, archive_from_data, history_from_data, islands_from_data
    path = run_dir / "state.pt"
    try:
        blob = read_state_file(path)
        history, islands = blob["history"], blob["islands"]
        if not isinstance(history, History):  # the first format pickled these objects; such runs still resume
            history, islands = history_from_data(history), islands_from_data(islands)
        archive = archive_from_data(blob["archive"]) if "archive" in blob else Archive()  # none before PUCT
        rng = random.Random()
        rng.setstate(blob["rng"])
        gen = torch.Generator(device=device)
        gen.set_state(blob["generator"])
        torch.set_rng_state(blob["torch_rng"])
        state = RunState(history, islands, archive, rng, gen, blob["iteration"], blob["finished"])
        return state, blob["adapter"], blob["optimizer"]
    except Exception as e:  # truncated, random bytes, foreign or tampered: nothing in it can be trusted
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise RunFolderError(f"{path} is damaged ({why}); this target cannot continue exactly: delete {run_dir} "
                             "to search it again from the start") from None


def read_state_file(path: Path) -> dict:
    """torch.load that runs no code from the file. Besides tensors and plain data, it admits (by name) only the
    History, Entry and Islands objects that state.pt held before it was plain data, so old folders resume."""
    import torch
    from history import Entry, History, Islands
    with torch.serialization.safe_globals([History, Entry, Islands]):
        return torch.load(path, weights_only=True)


# ----------------------------------------------------------------------------------------------------------
# history.jsonl and the files of a finished search.

def keep_log_lines(path: Path, iterations: int) -> None:
    """Cut history.jsonl back to the saved state, iterations 0..iterations. A record past it, or a half-written
    last line, was written by the iteration a crash interrupted: it is dropped and that iteration runs again, so
    nothing saved is lost. A damaged or missing record inside the saved range cannot be rebuilt: one-line error."""
    lines = path.read_text().splitlines() if path.exists() else []
    kept = []
    for n, line in enumerate(lines):
        try:
            iteration = json.loads(line)["iteration"]
        except (ValueError, TypeError, KeyError):
            if n == len(lines) - 1:
                break  # the crash came mid-write; the saved state is older than this line
            raise RunFolderError(f"{path} line {n + 1} is damaged; restore the file, or delete {path.parent} "
                                 "to search this target again from the start")
        if iteration <= iterations:
            kept.append(line + "\n")
    if len(kept) != iterations + 1:
        raise RunFolderError(f"{path} holds {len(kept)} of the {iterations + 1} records of the saved state; "
                             f"restore the file, or delete {path.parent} to search this target again from the start")
    atomic_write(path, "".join(kept))


def write_results(run_dir: Path, s, state: RunState, adapter: dict | None, task) -> dict:
    from adapter import PEFT_FOLDER, adapter_metadata, base_model_name, write_peft_folder
    from checkpoint import write_safetensors
    from model import LORA_TARGETS
    records = [json.loads(l) for l in (run_dir / "history.jsonl").read_text().splitlines()]
    best = state.history.best()
    entries = [dataclasses.asdict(e) for e in state.history.top(len(state.history.entries))]
    summary = dict(target=s.target, strategy=s.strategy, seed=s.seed, rank=int(os.environ.get("RANK", 0)),
                   best=best.candidate if best else None, best_score=best.score if best else 0.0,
                   solved=bool(best and best.score >= task.solved_score),
                   evaluations=state.history.evaluations, iterations=state.iteration,
                   first_solved_at=first_evaluation_reaching(records, task.solved_score),
                   report=task.report(entries), top=entries[:10])
    atomic_write(run_dir / "best.json", json.dumps(summary, indent=1))
    if adapter is not None:  # ours, and the same in PEFT's format (docs/adapters.md)
        base = base_model_name(s.model)
        try:
            write_safetensors(run_dir / "adapter.safetensors", adapter,
                              adapter_metadata(s.lora_r, s.lora_alpha, s.lora_dropout, LORA_TARGETS, base))
            write_peft_folder(run_dir / PEFT_FOLDER, adapter, base, s.lora_r, s.lora_alpha, s.lora_dropout,
                              LORA_TARGETS)
        except OSError as e:
            raise write_failed(run_dir / "adapter.safetensors", e) from None
    atomic_write(run_dir / "plot.svg", plot_svg(records, f"{s.task} / {s.target} / {s.strategy}"))
    # Last: a crash before this line leaves state.pt, and the next --resume writes these files again.
    (run_dir / "state.pt").unlink(missing_ok=True)  # 44 MB with the default model; a finished search needs none
    return summary


def check_finished(run_dir: Path, trained: bool) -> dict:
    """A finished search's summary (best.json), once its history holds every iteration and its adapter reads
    back: a file damaged since the run ended is named, never passed over."""
    from checkpoint import ModelLoadError, read_safetensors
    try:
        summary = json.loads((run_dir / "best.json").read_text())
        lines = (run_dir / "history.jsonl").read_text().splitlines()
        iterations = [json.loads(line)["iteration"] for line in lines]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunFolderError(f"{run_dir} finished but cannot be read ({type(e).__name__}: {e}); restore its files "
                             "from a copy, or delete the folder to search the target again") from None
    if iterations != list(range(summary.get("iterations", -1) + 1)):
        raise RunFolderError(f"{run_dir / 'history.jsonl'} holds {len(iterations)} records, not the "
                             f"{summary.get('iterations', 0) + 1} of the finished search; restore it from a copy, "
                             "or delete the folder to search the target again")
    if trained:
        try:
            read_safetensors(run_dir / "adapter.safetensors")
        except ModelLoadError as e:
            raise RunFolderError(f"{run_dir / 'adapter.safetensors'} is damaged ({e}); restore it from a copy, or "
                                 "delete the folder to search the target again") from None
    return summary


def first_evaluation_reaching(records: list[dict], threshold: float) -> int | None:
    hit = next((r for r in records if r["best_score"] >= threshold), None)
    return hit["evaluations"] if hit else None


def atomic_write(path: Path, data: str | bytes) -> None:
    """Replace path in one step: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_failed(path, e) from None


def append_record(path: Path, record: dict) -> None:
    """One line of history.jsonl; a line cut short by a crash is dropped on resume (keep_log_lines)."""
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:
        raise write_failed(path, e) from None


def write_failed(path: Path, e: OSError) -> RunFolderError:
    return RunFolderError(f"cannot write {path} ({e.strerror or e}); free space on its disk (or make it writable), "
                          "then continue with --resume: every iteration saved before this one is kept")


def plot_svg(records: list[dict], title: str, w=640, h=360, pad=48) -> str:
    """Best-so-far and group mean reward per iteration as a dependency-free SVG (open it in any browser)."""
    n = max(len(records), 1)
    x = lambda i: pad + (w - 2 * pad) * (i / max(n - 1, 1))
    y = lambda v: h - pad - (h - 2 * pad) * v
    line = lambda key: " ".join(f"{x(i):.1f},{y(r[key]):.1f}" for i, r in enumerate(records))
    ticks = "".join(f'<line x1="{pad}" x2="{w - pad}" y1="{y(v)}" y2="{y(v)}" stroke="#ddd"/>'
                    f'<text x="{pad - 6}" y="{y(v) + 4}" text-anchor="end">{v:.2f}</text>' for v in (0, .25, .5, .75, 1))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">'
            f'<rect width="{w}" height="{h}" fill="white"/>{ticks}'
            f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>'
            f'<text x="{w / 2}" y="{h - 10}" text-anchor="middle">iteration (0..{len(records) - 1})</text>'
            f'<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{line("best_score")}"/>'
            f'<polyline fill="none" stroke="#ff7f0e" stroke-width="1.5" points="{line("mean_reward")}"/>'
            f'<text x="{w - pad}" y="{pad - 14}" text-anchor="end" fill="#1f77b4">best so far</text>'
            f'<text x="{w - pad}" y="{pad}" text-anchor="end" fill="#ff7f0e">group mean reward</text></svg>')


def slug(target: str) -> str:
    """A folder name for a target; a long one (over 80 characters) is cut and keeps a hash of the whole."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in target)
    if len(name) > 80:
        name = name[:64] + "-" + hashlib.sha256(target.encode()).hexdigest()[:12]
    return name


def short(text: str, n: int = 60) -> str:
    """text for a message or a table cell: one line, at most n characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= n else line[:n - 3] + "..."


def write_summary(out: Path, targets: list[str]) -> list[dict]:
    """Per target: best score, solved, evaluations used; markdown and CSV (missing targets show as empty)."""
    rows = []
    for t in targets:
        p = out / slug(t) / "best.json"
        b = json.loads(p.read_text()) if p.exists() else {}
        rows.append(dict(target=t, best_score=round(b["best_score"], 4) if b else None, solved=b.get("solved"),
                         evaluations=b.get("evaluations"), best=b.get("best")))
    md = ["| target | best score | solved | evaluations | best |", "|---|---|---|---|---|"]
    cell = lambda text, n: short(text, n).replace("|", "/")  # a multi-line ARC program must stay in its cell
    md += [f"| {cell(r['target'], 60)} | {r['best_score']} | {r['solved']} | {r['evaluations']} | "
           f"{cell(r['best'], 40)} |" for r in rows]
    atomic_write(out / "summary.md", "\n".join(md) + "\n")
    with open(out / "summary.csv.tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(out / "summary.csv.tmp", out / "summary.csv")
    return rows


# ----------------------------------------------------------------------------------------------------------
# Which code made a run: config.json records it, so published results say which code made them.

CODE_FILES = ("*.py", "tasks/*.py")  # what decides a run's results (bench/ and tests/ do not)
# Files that only one built-in task runs. A task's hash leaves out the other tasks' files, so that work on one
# task does not turn a long experiment on another into "other code"; any file not listed counts for every task.
TASK_ONLY_FILES = {"wordsearch": ("tasks/wordsearch.py", "tasks/minilm.py"),
                   "molecule": ("tasks/molecule.py",),
                   "arc": ("tasks/arc.py", "tasks/arc_common.py", "tasks/sandbox.py", "tasks/sandbox_worker.py")}


def code_files(root: Path, task: str | None = None) -> list[Path]:
    """The code files whose content decides a run of `task` (None or a task of your own: all of them)."""
    others = {f for name, files in TASK_ONLY_FILES.items() if name != task for f in files} \
        if task in TASK_ONLY_FILES else set()
    return [path for pattern in CODE_FILES for path in sorted(root.glob(pattern))
            if path.relative_to(root).as_posix() not in others]


def code_version(root: Path = Path(__file__).resolve().parent, task: str | None = None) -> dict:
    """{"commit": git HEAD or None, "dirty": uncommitted changes to the code files, "code_hash": sha256 of the code
    files of `task` (code_files)}. The hash is what resume compares: a commit that only touched the README, or
    only another task's files, changes nothing."""
    import subprocess
    h = hashlib.sha256()
    for path in code_files(root, task):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    commit, dirty = None, None
    try:
        git = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True, text=True, timeout=10)  # noqa: E731
        head = git("rev-parse", "HEAD")
        if head.returncode == 0:
            commit = head.stdout.strip()
            dirty = bool(git("status", "--porcelain", "--", *CODE_FILES).stdout.strip())
    except (OSError, subprocess.SubprocessError):  # no git: the hash still identifies the code
        pass
    return dict(commit=commit, dirty=dirty, code_hash=h.hexdigest()[:16])


# ----------------------------------------------------------------------------------------------------------
# config.json: a new run writes it; --resume reads it back and refuses other settings.

def prepare_out_dir(out: Path, resume: bool, settings: dict, targets: list[str]) -> Path:
    """Lock the run folder, then write config.json for a new run, or check it for --resume. Only a folder whose
    search has saved its state is taken: one left by a start that failed (bad --model, failed download) is
    simply reused by the next command, which may then change any setting."""
    config = dict(settings=settings, targets=targets, code=code_version(task=settings.get("task")))
    if resume:
        saved = read_config(out)  # before the lock: a folder that is no run folder is not created or touched
        lock_folder(out)
        if started(out, saved["targets"]):
            check_same_settings(out, saved, config)
            note_resuming_code(out, saved, config["code"])
            return out
    else:
        leftovers = (".lock", "config.json.tmp")  # a lock, and a config.json whose write a crash or full disk cut
        if out.is_dir() and not (out / "config.json").exists() and any(p.name not in leftovers for p in out.iterdir()):
            raise UsageError(f"{out} holds other files and no run; choose a new or empty --out")
        lock_folder(out)
        saved = read_config(out) if (out / "config.json").exists() else None
        if saved and started(out, saved["targets"]):
            plain = json.loads(json.dumps(config))  # as config.json reads back (tuples become lists)
            if (saved["settings"], saved["targets"]) == (plain["settings"], plain["targets"]):  # code may differ
                raise UsageError(f"{out} already holds this run; continue it with --resume {out}")
            raise UsageError(f"{out} holds a run with other settings; choose another --out")
    atomic_write(out / "config.json", json.dumps(config, indent=1))
    return out


def note_resuming_code(out: Path, saved: dict, code: dict) -> None:
    """Resuming with other code mixes two versions in one run: say so once, and record it in config.json."""
    if saved.get("code", {}).get("code_hash") == code["code_hash"]:
        return
    was = saved.get("code", {}).get("commit") or "before commits were recorded"
    print(f"migrate.py: warning: {out} was started by other code ({was}); its results now mix two versions",
          file=sys.stderr)
    saved.setdefault("resumed_with", []).append(code)
    atomic_write(out / "config.json", json.dumps(saved, indent=1))


def check_same_settings(out: Path, saved: dict, config: dict) -> None:
    # the target is each search's own; where the metrics go changes no result
    given = {k: v for k, v in json.loads(json.dumps(config["settings"])).items() if k not in ("target", "wandb")}
    # a setting missing from the saved config was added to the code after the run began: it takes its value
    differs = [k for k, v in given.items() if k in saved["settings"] and saved["settings"][k] != v]
    if differs:
        k = differs[0]
        raise UsageError(f"{out} was run with {k}={saved['settings'].get(k)!r}, not {given[k]!r}; "
                         "resume with the same settings or choose another --out")


def read_config(out: Path) -> dict:
    try:
        config = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        raise UsageError(f"{out} is not a run folder (no readable config.json)")
    settings, targets = (config.get("settings"), config.get("targets")) if isinstance(config, dict) else (None, None)
    if not (isinstance(settings, dict) and all(isinstance(settings.get(k), str) for k in ("task", "strategy"))
            and isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets)):
        raise UsageError(f"{out}/config.json is damaged: it needs settings (with task and strategy) and a non-empty "
                         "list of targets; restore it, or start the run again in a new --out")
    return config
