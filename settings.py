"""Every knob of a run, declared once.

`Settings` is a dataclass whose fields carry their default and, for those a user may set, their help text
(`knob`). Everything else is derived from it: migrate.py's flags, what `--resume` restores from config.json, and
what a task may override (a task's `TaskDefaults` are keyword overrides of these fields, checked by name).
Adding a setting is one field here. How a run's values are chosen is `loop.resolve_settings`.
"""
import dataclasses
import math
from dataclasses import dataclass, field


class UsageError(Exception):
    """Bad input, reported as one line without a traceback."""


def knob(default, help: str, *, flag: str | None = None, choices=None, default_text: str | None = None):
    """A setting a user can set (migrate.py's `--name`, or `flag`): its help and the default shown in brackets."""
    shown = default_text if default_text is not None else ("task default" if default is None else default)
    return field(default=default, metadata=dict(help=f"{help} [{shown}]", flag=flag, choices=choices))


@dataclass
class Settings:
    # what runs (set by the command line's own flags; config.json records them)
    task: str = "wordsearch"
    target: str = ""
    strategy: str = "migrate"
    model: str | None = None  # None = the embedded SmolLM2-135M-Instruct
    started: str = ""  # the day the run began (YYYY-MM-DD): a chat template that writes today's date writes this
    seed: int = knob(0, "random seed of sampling, warm start and LoRA init")
    # group composition (alpha on-policy, beta greedy, gamma neighbourhood members) and how NS seeds are chosen
    alpha: int = knob(10, "on-policy members per group", default_text="strategy preset")
    beta: int = knob(0, "greedy members per group (the iteration's parent)", default_text="strategy preset")
    gamma: int = knob(0, "neighbourhood members per group", default_text="strategy preset")
    topk: int = knob(3, "NS parents are drawn among the top-k past solutions; OPRO lists them",
                     default_text="strategy preset")
    neighbours: str = "parent"  # what NS prompts show: "parent", "ranked" or "islands" (the strategy's rule)
    update: bool = True  # GRPO steps on the LoRA adapter (the strategy's rule: off for inference-only baselines)
    objective: str = "grpo"  # "grpo" or "entropic" (the strategy's rule: loop.Strategy)
    on_own_prompt: bool = False  # members trained on their own prompt (the strategy's rule: loop.Strategy)
    pack: bool = knob(False, "alpha and gamma count candidates, pooled and packed into answers as in the paper's "
                             "word search", default_text="task default")
    # budget
    iterations: int = knob(100, "iterations per target", default_text="task default")
    budget: int = knob(1_000_000, "black-box evaluations per target, warm start included", default_text="unlimited")
    early_stop: bool = knob(True, "stop when a candidate reaches the task's solved score")
    patience: int = knob(10, "stop a search after this many iterations in a row that score nothing new")
    # sampling
    max_new_tokens: int = knob(64, "tokens sampled per completion", default_text="task default")
    temperature: float = knob(1.0, "sampling temperature")
    top_p: float = knob(1.0, "nucleus sampling threshold")
    # training: the Hugging Face Trainer defaults of the paper's runs for the optimiser
    mu: int = knob(2, "optimiser steps per group", default_text="task default")
    lr: float = knob(5e-5, "AdamW learning rate of the LoRA adapter", default_text="task default")
    lr_schedule: str = knob("linear", "linear: to 0 over the planned iterations", choices=("linear", "constant"))
    weight_decay: float = knob(0.0, "AdamW weight decay")
    max_grad_norm: float = knob(1.0, "clip the adapter's gradient norm to this, 0 = off")
    lora_r: int = knob(64, "LoRA rank", default_text="task default")
    lora_alpha: int = knob(16, "LoRA alpha (scale alpha/r)", default_text="task default")
    lora_dropout: float = knob(0.0, "LoRA dropout")
    eps_low: float = 0.2
    eps_high: float = 0.28
    kl_coef: float = knob(0.0, "weight of the KL penalty to the base model (LoRA switched off)")
    micro_batch: int = knob(0, "update the group this many rows at a time, gradients accumulated (the same update "
                               "with less memory); 0 = the whole group")
    grad_checkpoint: bool = knob(False, "recompute each layer in backward (less memory, more update time)")
    # MiGrATe-Evo's island database (the released EvolutionDatabase's settings)
    islands: int = knob(4, "MiGrATe-Evo: number of islands")
    migrate_every: int = knob(40, "MiGrATe-Evo: iterations between migrations")
    # where the adapter starts, and where the metrics go
    init_adapter: str = knob("", "start each search's LoRA from this adapter: a PEFT folder, an adapter.safetensors "
                                 "or a finished target's folder (its rank and alpha must be the run's)",
                             default_text="a fresh adapter from the seed")
    wandb: str = knob("", "send each iteration's metrics to this Weights & Biases project (pip install wandb; "
                          "WANDB_MODE=offline logs with no network)", default_text="off")
    # engine
    device: str | None = None  # None: cuda if available, else cpu
    dtype: str | None = None  # None: bfloat16 on cuda, float32 on cpu
    threads: int = knob(0, "CPU threads; 0: one per core this process may use, shared among torchrun's processes "
                           "on the machine (never the load: one command on one machine gives one result)",
                        default_text="cores")
    lockstep: int = knob(16, "searches of a sweep advanced together in one process, each with its own adapter: "
                             "one sampler call and one update for all of them; 1: one search at a time")
    compile_sampler: bool = knob(False, "torch.compile the sampler's decode step (a CUDA graph on a GPU)",
                                 flag="--compile")
    compile_logprobs: bool = knob(False, "torch.compile the fused log-prob chunk")
    sample_weights: str = knob("model", "base weights of the sampler's decode steps (quant.py): the model's own, "
                                        "oneDNN-packed float32, or 4-bit (the GGUF's codes: faster for a few rows on "
                                        "CPU, but an approximation of the model, whose use depends on the batch "
                                        "size); auto: int4 for a float32 model on CPU", choices=("auto", "model",
                                                                                                "packed", "int4"))
    task_options: dict = field(default_factory=dict)

    @property
    def group_size(self) -> int:
        return self.alpha + self.beta + self.gamma


KNOBS = tuple(f for f in dataclasses.fields(Settings) if "help" in f.metadata)  # the settings a user may set
DEFAULTS = {f.name: f.default for f in dataclasses.fields(Settings) if f.default is not dataclasses.MISSING}


POSITIVE = ("budget", "iterations", "patience", "topk", "mu", "max_new_tokens", "lora_r", "lora_alpha", "islands",
            "migrate_every", "lockstep")
AT_LEAST_ZERO = ("alpha", "beta", "gamma", "micro_batch", "threads", "temperature", "weight_decay", "max_grad_norm",
                 "kl_coef", "eps_low", "eps_high")
DTYPES = ("float32", "bfloat16", "float16")


def check_settings(s: Settings) -> None:
    """Every value a user, or a hand-edited config.json, can give, checked before any work starts: a bad one is a
    one-line error naming the flag."""
    check_types(s)
    for name in POSITIVE:
        if getattr(s, name) <= 0:
            raise UsageError(f"{flag(name)} must be positive, got {getattr(s, name)}")
    for name in AT_LEAST_ZERO:
        if not getattr(s, name) >= 0:  # NaN fails this too
            raise UsageError(f"{flag(name)} must be >= 0, got {getattr(s, name)}")
    if s.group_size == 0:
        raise UsageError("the group is empty: alpha + beta + gamma must be positive")
    if not 0 < s.lr < math.inf:
        raise UsageError(f"--lr must be a positive finite number, got {s.lr}")
    if not 0 < s.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1], got {s.top_p}")
    if not 0 <= s.lora_dropout < 1:
        raise UsageError(f"--lora-dropout must be in [0, 1), got {s.lora_dropout}")
    for name in ("temperature", "weight_decay", "max_grad_norm", "kl_coef"):
        if math.isinf(getattr(s, name)):
            raise UsageError(f"{flag(name)} must be finite, got {getattr(s, name)}")
    if not 0 <= s.seed < 2 ** 64:
        raise UsageError(f"--seed must be in [0, 2**64), got {s.seed}")
    for f in KNOBS:
        if f.metadata["choices"] and getattr(s, f.name) not in f.metadata["choices"]:
            raise UsageError(f"{flag(f.name)} must be one of {', '.join(f.metadata['choices'])}, got "
                             f"{getattr(s, f.name)!r}")
    if s.objective == "entropic" and s.group_size < 3:
        raise UsageError(f"the entropic objective needs a group of at least 3 (its adaptive beta overflows at 2), "
                         f"got {s.group_size}")
    if s.objective == "entropic" and s.kl_coef:
        raise UsageError("--kl-coef with the entropic objective is not implemented; leave it at 0")
    if s.dtype is not None and s.dtype not in DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, got {s.dtype!r}")


def check_types(s: Settings) -> None:
    """A value of the wrong kind (an iteration count "abc" in a hand-edited config.json) stops here, by name."""
    for f in dataclasses.fields(Settings):
        value, kind = getattr(s, f.name), f.type
        if kind in (int, float, str, bool):
            ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
            ok = ok or (kind is float and isinstance(value, int) and not isinstance(value, bool))
        else:  # str | None and dict fields
            ok = value is None or isinstance(value, (str, dict))
        if not ok:
            raise UsageError(f"{flag(f.name)} must be {getattr(kind, '__name__', kind)}, got {value!r}")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")
