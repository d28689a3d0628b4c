"""The files of one run, and the state that makes it resumable.

A run folder holds config.json (written by migrate.py) and, per target: state.pt (everything needed to continue
exactly, replaced atomically after every iteration), history.jsonl (one record per iteration), best.json,
adapter.safetensors and plot.svg. A sweep folder adds summary.md and summary.csv. Nothing here knows the
algorithm: migrate.py decides what goes into a record, this file only keeps it safe on disk.
"""
import csv
import dataclasses
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path


@dataclass
class RunState:
    history: object
    islands: object
    rng: random.Random
    generator: object  # torch.Generator of the sampler
    iteration: int = 0
    finished: bool = False


def save_state(run_dir: Path, state: RunState, policy) -> None:
    """Everything needed to continue exactly, written atomically (a crash leaves the previous state)."""
    import torch
    from model import lora_state_dict
    blob = dict(iteration=state.iteration, finished=state.finished, history=state.history, islands=state.islands,
                rng=state.rng.getstate(), generator=state.generator.get_state(), torch_rng=torch.get_rng_state(),
                adapter=lora_state_dict(policy.model) if policy.s.update else None,
                optimizer=policy.optimizer.state_dict() if policy.optimizer else None)
    tmp = run_dir / "state.pt.tmp"
    torch.save(blob, tmp)
    os.replace(tmp, run_dir / "state.pt")


def load_state(run_dir: Path, s, policy) -> RunState:
    import torch
    from model import load_lora_state_dict
    blob = torch.load(run_dir / "state.pt", weights_only=False)
    rng = random.Random()
    rng.setstate(blob["rng"])
    gen = torch.Generator(device=s.device)
    gen.set_state(blob["generator"])
    torch.set_rng_state(blob["torch_rng"])
    if s.update:
        load_lora_state_dict(policy.model, blob["adapter"])
        policy.optimizer.load_state_dict(blob["optimizer"])
    return RunState(blob["history"], blob["islands"], rng, gen, blob["iteration"], blob["finished"])


def keep_log_lines(path: Path, iterations: int) -> None:
    """Drop records past the saved state: written just before a crash, they will be written again."""
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    path.write_text("".join(l for l in lines if json.loads(l)["iteration"] <= iterations))


def write_results(run_dir: Path, s, state: RunState, policy, task) -> dict:
    from checkpoint import write_safetensors
    from model import lora_state_dict
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
    if s.update:
        write_safetensors(run_dir / "adapter.safetensors", lora_state_dict(policy.model))
    atomic_write(run_dir / "plot.svg", plot_svg(records, f"{s.task} / {s.target} / {s.strategy}"))
    return summary


def first_evaluation_reaching(records: list[dict], threshold: float) -> int | None:
    hit = next((r for r in records if r["best_score"] >= threshold), None)
    return hit["evaluations"] if hit else None


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in target)


def write_summary(out: Path, targets: list[str]) -> list[dict]:
    """Per target: best score, solved, evaluations used; markdown and CSV (missing targets show as empty)."""
    rows = []
    for t in targets:
        p = out / slug(t) / "best.json"
        b = json.loads(p.read_text()) if p.exists() else {}
        rows.append(dict(target=t, best_score=round(b["best_score"], 4) if b else None, solved=b.get("solved"),
                         evaluations=b.get("evaluations"), best=b.get("best")))
    md = ["| target | best score | solved | evaluations | best |", "|---|---|---|---|---|"]
    md += [f"| {r['target']} | {r['best_score']} | {r['solved']} | {r['evaluations']} | "
           f"{str(r['best'])[:40].replace('|', '/')} |" for r in rows]
    atomic_write(out / "summary.md", "\n".join(md) + "\n")
    with open(out / "summary.csv.tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(out / "summary.csv.tmp", out / "summary.csv")
    return rows
