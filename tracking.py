"""Optional experiment tracking: each iteration's metrics sent to Weights & Biases.

open_tracker(project, ...) gives a Tracker: a no-op when project is None, else one wandb run per search, made
with the run's settings as its config. wandb is imported only then, so it is no requirement of the project;
when it is missing the error says `pip install wandb`. Tracker.log sends the scalar metrics of one history.jsonl
record (iteration, evaluations, best score, mean reward, loss, clip statistics, learning rate, gradient norm,
times) plotted against the iteration; close() ends the run, with the search's summary when it finished.

The wandb run's id is kept in the search's folder (wandb_run_id), so a resumed search goes on in the same wandb
run; an iteration that a crash interrupted is run again and logged twice at the same iteration. wandb's own
settings apply as usual: WANDB_MODE=offline logs with no network into FOLDER/wandb/ (`wandb sync` uploads it
later), WANDB_API_KEY or `wandb login` authenticates, WANDB_ENTITY picks the team.

Deliberately left out: the candidates and completions of each iteration (history.jsonl holds them), artifacts
(the adapter files), and any other tracking service.
"""
import math
from pathlib import Path

from settings import UsageError

RUN_ID_FILE = "wandb_run_id"
# summary fields (best.json) worth a place in the wandb run's summary
SUMMARY_FIELDS = ("best", "best_score", "solved", "evaluations", "iterations", "first_solved_at")


class TrackingError(UsageError):
    """wandb missing or unable to start; reported as one line."""


class Tracker:
    """Tracking switched off: every call does nothing."""

    def log(self, record: dict) -> None:
        pass

    def close(self, summary: dict | None = None, failed: bool = False) -> None:
        pass


class WandbTracker(Tracker):
    def __init__(self, run):
        self.run = run
        run.define_metric("iteration")
        run.define_metric("*", step_metric="iteration")  # a re-run iteration is a second point, not an error

    def log(self, record: dict) -> None:
        self.run.log(scalar_metrics(record))

    def close(self, summary: dict | None = None, failed: bool = False) -> None:
        if summary:
            self.run.summary.update({k: summary[k] for k in SUMMARY_FIELDS if k in summary})
        self.run.finish(exit_code=1 if failed else 0)


def scalar_metrics(record: dict) -> dict[str, float]:
    """The numbers of a history.jsonl record: ints, floats and booleans, finite; lists, text and None dropped."""
    return {k: v for k, v in record.items()
            if isinstance(v, (int, float)) and not (isinstance(v, float) and not math.isfinite(v))}


def open_tracker(project: str | None, run_name: str, config: dict, folder) -> Tracker:
    """A Tracker for one search: Tracker() when project is None, else a wandb run in `project` named run_name,
    with `config` (the run's settings), its files under folder/wandb/."""
    if not project:
        return Tracker()
    try:
        import wandb
    except ImportError:
        raise TrackingError(f"--wandb {project} needs the wandb package: pip install wandb") from None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    id_file = folder / RUN_ID_FILE
    run_id = id_file.read_text().strip() if id_file.exists() else None  # None: wandb makes one
    try:
        # reinit="create_new" (wandb >= 0.19): the searches of a lockstep sweep each keep a run open at once
        run = wandb.init(project=project, name=run_name, config=config, dir=str(folder), id=run_id,
                         resume="allow" if run_id else None, reinit="create_new")
    except Exception as e:  # noqa: BLE001  wandb raises many kinds (no login, no network, bad project name)
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise TrackingError(f"wandb could not start a run in project {project!r} ({why}); run `wandb login`, or "
                            "set WANDB_MODE=offline to log without network") from None
    id_file.write_text(run.id + "\n")
    return WandbTracker(run)
