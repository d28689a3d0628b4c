"""python migrate.py: search for the best solution to one black-box problem with MiGrATe.

Read it top to bottom: parse the flags, resolve the run's settings (loop.resolve_settings, from plain values),
claim the run folder (rundir.py), load the model (checkpoint.py), then run one search per target (loop.search),
with the targets split across torchrun's processes, and summarise. The algorithm is loop.py; nothing imports this
file.
"""
import argparse
import dataclasses
import datetime
import json
import os
import pickle
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from adapter import write_hf_base
from assets import AssetError
from checkpoint import ModelLoadError, load_model
from history import TaskProtocolError
from loop import STRATEGIES, Policy, Search, TrainingDiverged, resolve_settings, search
from rundir import RunFolderError, prepare_out_dir, read_config, short, slug, write_summary
from settings import KNOBS, UsageError, check_settings
from tasks import expand_targets, load_task_class


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"migrate.py: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The flags that choose what runs and where, then one flag per setting (settings.Settings' knobs)."""
    p = OneLineParser(description="MiGrATe: test-time GRPO search for one black-box problem. "
                                  "[brackets] give the default.")
    a = p.add_argument
    a("--task", help="wordsearch, molecule, arc, or a file/module of your own Task [wordsearch]")
    a("--target", help="one target: a word, an objective such as rediscover:celecoxib, an ARC task id [task default]")
    a("--targets", help="comma-separated targets or a named set (e.g. paper): one independent search each")
    a("--strategy", choices=STRATEGIES, help="which method of the paper to run [migrate]")
    a("--model", help="HF checkpoint folder, .gguf file, or ORG/NAME in the local Hugging Face cache "
                      "[embedded SmolLM2-135M-Instruct]")
    a("--seeds", help="comma-separated random seeds: the targets under each, one run folder per seed ({seed} in "
                      "--out), all searched together in lockstep [--seed]")
    a("--out", help="run folder [runs/TASK-STRATEGY-seed{seed}]")
    a("--resume", metavar="RUN_DIR", help="continue the run (or sweep) in this folder with its settings; several "
                                          "folders of one sweep's seeds, comma-separated, continue together")
    a("--device", help="cpu or cuda [cuda if available]")
    a("--dtype", choices=("float32", "bfloat16", "float16"), help="model dtype [float32 on cpu, bfloat16 on cuda]")
    a("--arc-data", help="ARC: folder of task JSON files or one combined file [embedded ARC-AGI-1]")
    a("--sandbox", choices=("auto", "strict", "process"), help="ARC: isolate programs by Linux namespaces "
      "(auto: warn and fall back where unavailable; strict: refuse; process: no isolation) [auto]")
    a("--quiet", action="store_true", help="no progress bar")
    a("--full", action="store_true", help="the paper's iterations and completion length on CPU too [a CPU demo]")
    a("--export-base", metavar="DIR", help="write a Hugging Face copy of --model (a GGUF; default the embedded "
      "SmolLM2) to DIR, the base that goes with a run's adapter in peft, vLLM and llama.cpp, then exit")
    for f in KNOBS:  # one flag per setting; None = not given, so a given flag can be told from a default
        kind = f.type  # int, float, str or bool
        extra = dict(action=argparse.BooleanOptionalAction) if kind is bool else dict(type=kind)
        p.add_argument(f.metadata["flag"] or "--" + f.name.replace("_", "-"), dest=f.name, default=None,
                       help=f.metadata["help"], choices=f.metadata["choices"], **extra)
    return p


def given_settings(args) -> dict:
    """The settings the user set on the command line, as plain values."""
    given = {f.name: getattr(args, f.name) for f in KNOBS if getattr(args, f.name) is not None}
    if given.get("init_adapter"):  # a path that a resume from another folder still finds
        given["init_adapter"] = str(Path(given["init_adapter"]).expanduser().resolve())
    given.update({k: v for k in ("model", "device", "dtype") if (v := getattr(args, k)) is not None})
    options = {k: v for k in ("arc_data", "sandbox") if (v := getattr(args, k))}
    if options:
        given["task_options"] = options
    return given


def cpu_demo(s, given: dict, full: bool, d) -> str:
    """On CPU, unless --full, --iterations or --budget was given: the task's demo settings (fewer iterations,
    shorter answers, a smaller update micro-batch: the same update in less memory) so that a first run ends in
    minutes on a laptop; a flag the user gave wins. Returns the note that says so, and how to get the paper's."""
    if s.device != "cpu" or full or "iterations" in given or "budget" in given:
        return ""
    for name in ("iterations", "max_new_tokens", "micro_batch"):
        if name not in given and f"demo_{name}" in d.extra:
            setattr(s, name, d.extra[f"demo_{name}"])
    if (s.iterations, s.max_new_tokens) == (d.iterations, d.max_new_tokens):
        return ""
    return (f"\nthis is the CPU demo; the paper's {d.iterations} iterations of {d.max_new_tokens} tokens: --full "
            "(it will say how long)")


def cpu_threads(s) -> tuple[int, str]:
    """torch's CPU threads and why: the setting, else OMP_NUM_THREADS, else the cores this process may use shared
    among torchrun's local processes. Never the machine's load: threads change the order of floating-point sums,
    so a load-dependent count would make one command give another history on a busier machine."""
    if s.threads:
        return s.threads, "--threads"
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads(), "OMP_NUM_THREADS"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()  # macOS has none
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", 1))), f"{cores} cores; --threads N to change"


def default_out(task_cls, s) -> str:
    """runs/TASK-STRATEGY-seed{seed} under the working directory, named by the task's name, never by its file's
    path (a path such as ../tasks/x.py would put the run outside runs/)."""
    return f"runs/{slug(task_cls.name)}-{s.strategy}-seed{{seed}}"


def native_bfloat16() -> bool:
    """Whether the CPU multiplies bfloat16 natively (Linux's flags; elsewhere assumed so)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return "avx512_bf16" in flags or "amx_bf16" in flags


def explain_scores(out: Path, targets: list[str], task_cls) -> str:
    """What the summary's numbers mean (each task says it), then the yes/no measures of a task's report, such
    as ARC's pass@2 on the test output."""
    lines = [task_cls.defaults.extra.get("score_meaning", f"best score: the task's score in [0, 1], "
                                                          f"{task_cls.solved_score} = solved")]
    for t in targets:
        path = out / slug(t) / "best.json"
        report = json.loads(path.read_text()).get("report", {}) if path.exists() else {}
        flags = [f"{k} {v}" for k, v in report.items() if isinstance(v, bool)]
        if flags:
            lines.append(f"{short(t, 40)}: {', '.join(flags)}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# torchrun: each rank searches its share of the targets; the ranks share no tensors.

def rank_device(device: str) -> str:
    """torchrun starts one process per GPU: each takes the GPU of its LOCAL_RANK, not every rank cuda:0."""
    if device != "cuda" or "LOCAL_RANK" not in os.environ:
        return device
    local = int(os.environ["LOCAL_RANK"])
    if local >= torch.cuda.device_count():
        raise UsageError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPUs are visible")
    torch.cuda.set_device(local)
    return f"cuda:{local}"


def rank_store(world: int):
    """The key-value store torchrun's agent hosts for its ranks, or None for one process. The ranks meet through
    it alone (no process group: they exchange no tensors, and a gloo group can abort a rank at exit)."""
    if world == 1:
        return None
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        raise UsageError(f"WORLD_SIZE is {world}: start several processes with torchrun")
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=datetime.timedelta(days=30))  # a rank may wait for the others' whole searches
    return dist.PrefixStore(f"migrate-{os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)}", store)


def on_rank0(fn, store):
    """fn() on rank 0 only; its result, or its UsageError, reaches every rank."""
    result, error = None, None
    if int(os.environ.get("RANK", 0)) == 0:
        try:
            result = fn()
        except (UsageError, RunFolderError) as e:
            error = str(e)
        if store:
            store.set("rank0", pickle.dumps((result, error)))
    elif store:
        result, error = pickle.loads(store.get("rank0"))
    if error:
        raise UsageError(error)
    return result


def gather_failures(store, rank: int, world: int, failure: Exception | None) -> list[str]:
    """Every rank's failure message ("" for none), once all ranks have finished their targets."""
    store.set(f"failure{rank}", "" if failure is None else f"{type(failure).__name__}: {failure}")
    return [store.get(f"failure{r}").decode() for r in range(world)]


def rank_share(searches: list, rank: int, world: int) -> list:
    """This rank's searches, dealt round the ranks target by target (each target's seeds in turn), so that every
    rank gets a share of each target. Dealt seed by seed, an even number of targets would give each rank whole
    targets, and a rank whose targets end early (solved at once) would sit idle while the others run on."""
    targets = list(dict.fromkeys(x.s.target for x in searches))
    by_target = sorted(searches, key=lambda x: targets.index(x.s.target))  # stable: seeds keep their order
    return by_target[rank::world]


def search_my_share(s, mine: list, quiet: bool) -> None:
    """This process's share of the searches, advanced in lockstep --lockstep at a time (each with its own adapter
    of the model's bank), with the model loaded once."""
    if not mine:  # more torchrun ranks than searches
        return
    try:
        model, tokenizer = load_model(s.model, device=mine[0].s.device, dtype=getattr(torch, s.dtype))
    except ModelLoadError as e:
        raise UsageError(str(e))
    search(Policy(model.eval(), tokenizer, s, adapters=min(s.lockstep, len(mine))), mine, quiet=quiet)


# ----------------------------------------------------------------------------------------------------------

class Stop(KeyboardInterrupt):
    """SIGTERM stops a run as Ctrl-C does: every finished iteration is saved, and the hint says how to go on."""


def stop(signum, frame):
    raise Stop()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, stop)
    try:
        return run(args)
    except (UsageError, RunFolderError, AssetError, TrainingDiverged, TaskProtocolError) as e:
        print(f"migrate.py: error: {e}", file=sys.stderr)
        return 2


@dataclass
class Sweep:
    """One run folder: its settings (its random seed) and targets, one search each."""
    out: Path
    s: object  # settings.Settings
    targets: list[str]


def resumed_sweeps(args) -> tuple[type, list[Sweep]]:
    """--resume DIR[,DIR...]: the saved runs say what runs (their task, strategy, settings and targets, which no
    flag may change), and several folders continue together only if they are one sweep's seeds."""
    configs = [(Path(f), read_config(Path(f))) for f in args.resume.split(",")]
    first = configs[0][1]["settings"]
    for flag in ("task", "strategy"):
        if getattr(args, flag) not in (None, first[flag]):
            raise UsageError(f"{args.resume} is a {flag} {first[flag]!r} run; --{flag} cannot change it on --resume")
    if args.target or args.targets or args.seeds:
        raise UsageError(f"{args.resume} searches its own targets and seeds; --target(s) and --seeds cannot change "
                         "them on --resume")
    args.task, args.strategy = first["task"], first["strategy"]
    task_cls = load_task_class(args.task)
    given = dict(given_settings(args), task=args.task)
    sweeps = [Sweep(out, resolve_settings(task_cls, args.strategy, given, c["settings"]), c["targets"])
              for out, c in configs]
    shared = [{k: v for k, v in dataclasses.asdict(sw.s).items() if k not in ("seed", "started")} for sw in sweeps]
    if any(other != shared[0] for other in shared[1:]):
        raise UsageError(f"{args.resume}: these folders are not one sweep (their settings differ beyond the seed); "
                         "resume them one at a time")
    return task_cls, sweeps


def new_sweeps(args, task_cls, s) -> list[Sweep]:
    """The targets under s's seed, or under each of --seeds: one run folder each (--out holds {seed})."""
    if args.target and args.targets:
        raise UsageError("give --target or --targets, not both")
    if args.target is not None and not args.target.strip():
        raise UsageError("--target is empty; leave it out for the task's default target")
    targets = expand_targets(task_cls, args.targets) if args.targets else [args.target or task_cls.default_target]
    if args.seeds and args.seed is not None:
        raise UsageError("give --seed or --seeds, not both")
    try:
        seeds = [int(k) for k in args.seeds.split(",")] if args.seeds else [s.seed]
    except ValueError:
        raise UsageError(f"--seeds takes comma-separated whole numbers, got {args.seeds!r}") from None
    template = args.out or default_out(task_cls, s)
    if len(set(seeds)) != len(seeds) or (len(seeds) > 1 and "{seed}" not in template):
        raise UsageError("--seeds needs distinct seeds and, for several, an --out holding {seed} (a run folder each)")
    sweeps = [Sweep(Path(template.replace("{seed}", str(k))), dataclasses.replace(s, seed=k), targets)
              for k in seeds]
    for sw in sweeps:
        check_settings(sw.s)  # each seed within range
    return sweeps


def build_tasks(task_cls, sweeps: list[Sweep], options: dict) -> dict:
    """One task per target, built before any work starts so that a bad target fails first."""
    tasks_by_target = {}
    for t in dict.fromkeys(t for sw in sweeps for t in sw.targets):
        try:
            tasks_by_target[t] = task_cls(t, **options)
        except ValueError as e:
            raise UsageError((str(e).splitlines() or [f"bad target {t!r}"])[0].replace(t, short(t)))
    return tasks_by_target


def run(args) -> int:
    if args.export_base:
        print(f"wrote {write_hf_base(args.model, args.export_base)}")
        return 0
    if args.resume:
        task_cls, sweeps = resumed_sweeps(args)
        s, demo = sweeps[0].s, ""
    else:
        task_cls = load_task_class(args.task or "wordsearch")
        given = dict(given_settings(args), task=args.task or "wordsearch")
        s = resolve_settings(task_cls, args.strategy or "migrate", given)
        demo = cpu_demo(s, given, args.full, task_cls.defaults)
        sweeps = new_sweeps(args, task_cls, s)
    tasks_by_target = build_tasks(task_cls, sweeps, s.task_options)
    threads = ""
    if s.device == "cpu":
        s.threads, why = cpu_threads(s)
        for sw in sweeps:
            sw.s.threads = s.threads
        torch.set_num_threads(s.threads)
        threads = f", {s.threads} thread{'s' * (s.threads > 1)} ({why})"
        if s.dtype == "bfloat16" and not native_bfloat16():
            threads += ("\nnote: this CPU has no native bfloat16 (avx512_bf16, amx_bf16): its bfloat16 products run "
                        "several times slower than float32 (docs/performance.md)")
    targets = list(dict.fromkeys(t for sw in sweeps for t in sw.targets))
    seeds = ", seeds " + ",".join(str(sw.s.seed) for sw in sweeps) if len(sweeps) > 1 else ""
    if not args.quiet:
        print(f"{s.strategy} on {task_cls.name} ({short(', '.join(targets))}{seeds}): up to {s.iterations} iterations "
              f"of {s.group_size} members, {s.max_new_tokens} new tokens each, on {s.device}{threads}, sampling with "
              f"{s.sample_weights} decode weights{demo}", file=sys.stderr)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    store = rank_store(world)  # torchrun: ranks only share the run folder's check and wait for each other at the end
    outs = on_rank0(lambda: [prepare_out_dir(sw.out, bool(args.resume), dataclasses.asdict(sw.s), sw.targets)
                             for sw in sweeps], store)
    resume = f"python migrate.py --resume {','.join(map(str, outs))}"
    device = rank_device(s.device)  # after config.json, which keeps plain "cuda"
    searches = [Search(dataclasses.replace(sw.s, target=t, device=device), tasks_by_target[t], sw.out / slug(t))
                for sw in sweeps for t in sw.targets]
    failure = None
    try:
        search_my_share(s, rank_share(searches, rank, world), args.quiet)
    except KeyboardInterrupt as e:
        print(f"\nstopped; every finished iteration is saved. Continue with: {resume}", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(e, Stop) else signal.SIGINT)
    except Exception as e:  # noqa: BLE001  a rank that fails must still meet the others, which wait for it
        if world == 1:
            raise
        failure = e
    if store:
        failures = gather_failures(store, rank, world, failure)
        if failure is not None:
            raise failure
        failed = [(r, f) for r, f in enumerate(failures) if f]
        if failed:
            raise UsageError(f"rank {failed[0][0]} failed ({failed[0][1]}); its searches are unfinished: fix it, "
                             f"then {resume}")
    if rank == 0:
        for sw in sweeps:
            write_summary(sw.out, sw.targets)
            if not args.quiet:
                print((sw.out / "summary.md").read_text() + explain_scores(sw.out, sw.targets, task_cls)
                      + f"\nrun folder: {sw.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
