"""The MiGrATe loop: a language model searches for the best solution to one black-box problem and trains itself
on its own attempts while it searches (Mixed-Policy GRPO for Adaptation at Test-Time, arXiv 2508.08641).

One iteration (run_iteration below):
  1. plan the group: alpha on-policy prompts, gamma neighbourhood prompts built from the iteration's parent (a
     past solution), beta greedy members (that parent, re-inserted with its stored score);
  2. sample every prompted member in one batched sampler call;
  3. parse and score each completion with the task's black-box score (through the history's cache); with
     packing (word search), pool the candidates and pack them into answers (pack_group): those are the group;
  4. train: advantages = reward - group mean, clipped GRPO loss, mu AdamW steps on the LoRA adapter.

Simplifications we made on purpose, and why:
  1. Every member is trained as an answer to the on-policy prompt, whichever prompt produced it (the paper's
     choice: the policy should learn to produce good solutions without being shown one).
  2. A completion may hold several candidates (a packed answer of two words); its reward is the best of them.
  3. The budget counts distinct black-box evaluations; a repeat is free and logged as a repeat.
  4. old_logp is the policy before the first of the mu steps, so the first step's ratio is exactly 1 and its
     log-probs are reused as old_logp instead of running the model twice.
  5. No reference model is kept: the KL term (off by default, as in the paper) uses the base model obtained by
     switching the LoRA adapter off.
  6. A group with no signal (every reward equal, or all 0) takes no optimiser step.

Many searches, one model: a sweep advances its searches in lockstep (`search`), each with its own adapter in the
model's LoRA bank, its own history, random generators and optimiser. Every step that is the search's own (its
group, its scores, its loss normalisation, gradient clipping, learning rate and AdamW step) runs as it would
alone; only the model's work is batched: one sampler call for every search's prompts, one forward and backward
for every search's group. One search is a sweep of one.

The command line is migrate.py; this module knows nothing of it: settings come in as plain values.
"""
import dataclasses
import datetime
import json
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

import sampler
from grpo import (adaptive_beta, completion_logprobs, discover_loss, entropic_advantages, group_advantages, grpo_loss,
                  share_prompt_pays)
from history import Archive, History, Islands
from adapter import check_adapter_fits, check_adapter_settings, read_adapter
from model import LORA_TARGETS, add_lora, load_lora_state_dict, lora_disabled, lora_state_dict, seeded_adapter
from optim import AdamW, clip_grad_norm
from rundir import (RunState, append_record, atomic_write, check_finished, keep_log_lines, load_state, save_state,
                    short, write_results)
from settings import DEFAULTS, Settings, UsageError, check_settings, check_types
from tracking import Tracker, open_tracker

# ----------------------------------------------------------------------------------------------------------
# The policy: model + tokenizer + LoRA + optimiser, and how prompts become token ids.

class Policy:
    """What the loop acts with: the model and its LoRA bank (`adapters` slots, one per search advanced at once),
    the tokenizer, the sweep's settings, and the sampler (sampler.generate; a test may hand in a scripted one)."""

    def __init__(self, model, tokenizer, s: Settings, generate=None, adapters: int = 1):
        self.model, self.tok, self.s = model, tokenizer, s
        self.generate = generate or sampler.generate
        self.adapters, self.params, self.init_adapter = adapters, [], None
        if model is not None:
            check_fits_model(s, model.cfg)
        if s.update or s.init_adapter:  # an inference-only baseline samples from a given adapter, untrained
            self.params = add_lora(model, r=s.lora_r, alpha=s.lora_alpha, dropout=s.lora_dropout, adapters=adapters)
        if s.init_adapter:
            saved = read_adapter(s.init_adapter)
            check_adapter_settings(saved, s.lora_r, s.lora_alpha, LORA_TARGETS)
            check_adapter_fits(saved, model)
            self.init_adapter = saved.tensors
        self.end_of_turn = getattr(tokenizer, "end_of_turn", None)
        if self.end_of_turn is None:
            raise UsageError("the model's tokenizer has no end-of-turn or end-of-sequence token; is it a chat model?")
        # the date a chat template writes into its prompt (Llama 3.2): the run's first day, also on resume
        self.today = datetime.date.fromisoformat(s.started) if s.started else None

    def start(self, x: "Search", adapter: dict | None = None, optimizer: dict | None = None) -> None:
        """The search's slot takes its adapter (the one it saved, else --init-adapter's, else a fresh one from its
        seed) and, if it trains, the search a fresh AdamW over that slot (or the state it saved)."""
        if not self.params:
            return
        load_lora_state_dict(self.model, adapter or self.init_adapter or seeded_adapter(self.model, x.s.seed),
                             x.slot)
        if self.s.update:
            x.optimizer = AdamW(self.params, x.slot, weight_decay=self.s.weight_decay)
            if optimizer:
                x.optimizer.load_state_dict(optimizer)

    def adapter(self, x: "Search") -> dict | None:
        """The search's adapter, as its run folder keeps it."""
        return lora_state_dict(self.model, x.slot) if self.s.update else None

    def prompt_ids(self, prompt) -> list[int]:
        """The checkpoint's own chat template (tokenizer.chat), the task's response prefix after it."""
        try:
            text = self.tok.chat(prompt.messages, add_generation_prompt=True, assistant_prefix=prompt.prefix,
                                 today=self.today)
        except ValueError as e:  # the template refused the conversation (Gemma: no system role)
            raise UsageError(f"the model's chat template refused the task's prompt: {e}") from None
        return self.tok.encode(text)


@dataclass
class Search:
    """One search of a sweep: its settings (its target and random seed), task and run folder; its state (history,
    islands, random generators, iteration) and its optimiser once started; the slot of its adapter in the bank."""
    s: Settings
    task: object
    run_dir: Path
    slot: int = 0
    state: RunState | None = None
    optimizer: AdamW | None = None
    tracker: Tracker = field(default_factory=Tracker)  # Weights & Biases, when --wandb asks


def check_fits_model(s: Settings, cfg) -> None:
    """Settings that only the model can judge, refused before any work: a completion longer than the model's
    positions, or a LoRA rank above the width of the layers it adapts (it would add nothing but memory)."""
    if s.max_new_tokens >= cfg.max_seq_len:
        raise UsageError(f"--max-new-tokens {s.max_new_tokens} leaves no room for a prompt in the model's "
                         f"{cfg.max_seq_len} positions")
    if s.update and s.lora_r > cfg.dim:
        raise UsageError(f"--lora-r {s.lora_r} is above the model's width {cfg.dim}; choose at most {cfg.dim}")


class TrainingDiverged(Exception):
    """An update whose gradient or adapter is not finite: the run stops before saving it (one line)."""


# ----------------------------------------------------------------------------------------------------------
# The strategies: the paper's eight, and TTT-Discover's (arXiv 2601.16175) with its two ideas crossed with MiGrATe's
# group. A rule says where an iteration's parent comes from, whether and how the strategy trains; the numbers
# (alpha, beta, gamma, top-k, mu) are each task's table (PRESETS in tasks/wordsearch.py, molecule.py, arc.py),
# under the strategy's name or, for a strategy of your own, under `numbers_of`: a new strategy is one entry here,
# plus at most a branch in plan_group.

@dataclass(frozen=True)
class Strategy:
    neighbours: str = "parent"  # NS prompts show: "parent" (a random top-k one), "ranked" (OPRO), "islands" (Evo),
    #                             or "puct" (the parent TTT-Discover's PUCT rule picks from its archive of states)
    trains: bool = True  # GRPO steps on the adapter; False: an inference-only baseline
    numbers_of: str | None = None  # use the task's numbers of this strategy
    objective: str = "grpo"  # "grpo": MiGrATe's clipped loss of reward - group mean; "entropic": TTT-Discover's
    on_own_prompt: bool = False  # train each member on the prompt that produced it (TTT-Discover), not the
    #                              on-policy prompt (MiGrATe); a group then comes from one prompt, and is not packed
    settings: tuple = ()  # (setting, value) pairs the strategy's own code fixes, over the task's


DISCOVER = (("lr", 4e-5), ("lr_schedule", "constant"), ("lora_r", 32), ("lora_alpha", 32), ("max_grad_norm", 0.0),
            ("kl_coef", 0.0))  # TTT-Discover's recipe: Adam at a constant 4e-5, rank 32 (alpha = rank), no clip, no KL

STRATEGIES = {
    "random": Strategy(trains=False), "ns": Strategy(trains=False), "opro": Strategy("ranked", trains=False),
    "grpo": Strategy(), "grpo-greedy": Strategy(), "migrate": Strategy(), "migrate-opro": Strategy("ranked"),
    "migrate-evo": Strategy("islands"),
    "discover": Strategy("puct", objective="entropic", on_own_prompt=True, settings=DISCOVER),
    "migrate-entropic": Strategy(objective="entropic", numbers_of="migrate"),
    "migrate-puct": Strategy("puct", numbers_of="migrate"),
}


def resolve_settings(task_cls, strategy: str = "migrate", given: dict | None = None,
                     saved: dict | None = None) -> Settings:
    """A run's settings, each from the first of: `given` (the values the user set, e.g. {"lr": 5e-4}), `saved`
    (the settings a resumed run wrote to config.json), the strategy (its rule, and its numbers in the task's
    table), the task's overrides, Settings' defaults."""
    given = dict(given or {})
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    rule = STRATEGIES[strategy]
    d, numbers = task_cls.defaults, rule.numbers_of or strategy
    if numbers not in d.presets:
        raise UsageError(f"task {task_cls.name} has no numbers for strategy {numbers}")
    p = d.presets[numbers]
    values = dict(d.overrides, **dict(rule.settings), alpha=p.alpha, beta=p.beta, gamma=p.gamma,
                  neighbours=rule.neighbours, update=rule.trains, objective=rule.objective,
                  on_own_prompt=rule.on_own_prompt, **{k: v for k, v in (("topk", p.topk), ("mu", p.mu)) if v})
    if rule.on_own_prompt:
        values["pack"] = False  # a packed answer comes from no prompt
    if saved:  # a setting newer than the run keeps its default
        values.update({k: v for k, v in saved.items() if k in DEFAULTS and k not in ("target", "task_options")})
    elif "budget" in given and "iterations" not in given:
        values["iterations"] = given["budget"]  # the budget decides; the iteration cap only guards a stuck search
    options = dict((saved or {}).get("task_options", {}), **given.pop("task_options", {}))
    values.update(task=task_cls.name, target="", strategy=strategy)
    values.setdefault("started", datetime.date.today().isoformat())
    values.update(given)
    s = Settings(**values)
    s.task_options = options
    check_types(s)
    s.device = check_device(s.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    s.dtype = s.dtype or ("bfloat16" if s.device.startswith("cuda") else "float32")
    if s.sample_weights == "auto":  # int4 decode weights for a float32 model on CPU (quant.py measures them)
        s.sample_weights = "int4" if (s.device, s.dtype) == ("cpu", "float32") else "model"
    check_settings(s)
    return s


def check_device(device: str) -> str:
    if device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", device):
        raise UsageError(f"--device must be cpu or cuda (or cuda:N), got {device!r}")
    if device != "cpu" and not torch.cuda.is_available():
        build = "a CPU build" if torch.version.cuda is None else "no GPU visible"
        raise UsageError(f"--device {device}, but torch {torch.__version__} sees no GPU ({build}); use --device cpu")
    return device


# ----------------------------------------------------------------------------------------------------------
# One iteration.

@dataclass
class Member:
    origin: str  # "on-policy", "greedy", "neighbourhood", or "packed" (an answer packed from pooled candidates)
    prompt_kind: str  # which prompt produced it: "on-policy", "ns", "opro" or "greedy"
    parent: str | None = None  # the past solution an NS prompt was built from, or a greedy member re-inserts
    ask: int | None = None  # candidates its prompt asked for (packing); None: what task.parse keeps
    prompt: object = None  # the Prompt that produced it (None: greedy and packed members)
    text: str = ""  # the completion, response prefix included
    tokens: list[int] = field(default_factory=list)  # completion ids, trained after the on-policy prompt
    candidates: list[dict] = field(default_factory=list)  # {"candidate", "score", "status"}
    reward: float = 0.0


def plan_group(s: Settings, task, state: RunState) -> list[tuple[Member, object]]:
    """The mixed group of MiGrATe: (member, prompt) pairs for alpha on-policy and gamma neighbourhood members,
    then beta greedy members whose completion is the iteration's parent (prompt None: nothing to sample).

    As in the paper's code, one parent serves the whole iteration: the NS prompts are built from it and it is the
    greedy member. With packing (word search), alpha and gamma count candidates: one on-policy call asks for
    alpha of them and one neighbourhood call for gamma."""
    history = state.history
    parent = choose_parent(s, history, state.islands, state.archive, state.rng) if s.gamma or s.beta else None
    if s.pack:
        plan = [(Member("on-policy", "on-policy", ask=s.alpha), _ask(task.prompt, n=s.alpha))] if s.alpha else []
        if s.gamma:
            kind, prompt = neighbourhood_prompt(s, task, history, parent, n=s.gamma)
            plan.append((Member("neighbourhood", kind, parent, ask=s.gamma), prompt))
    else:
        on_policy = task.prompt()
        plan = [(Member("on-policy", "on-policy"), on_policy) for _ in range(s.alpha)]
        if s.gamma:
            kind, prompt = neighbourhood_prompt(s, task, history, parent)
            plan += [(Member("neighbourhood", kind, parent), prompt) for _ in range(s.gamma)]
    if parent is not None:
        plan += [(Member("greedy", "greedy", parent, text=task.render(parent)), None) for _ in range(s.beta)]
    return plan


def choose_parent(s: Settings, history, islands, archive, rng) -> str | None:
    """The iteration's parent: random among the top-k (MiGrATe, GRPO-Greedy), drawn from the current island
    (Evo), the best (OPRO, whose prompt lists the whole top-k), or the PUCT choice of TTT-Discover's archive.
    None while there is nothing to build on."""
    top = history.top(s.topk)
    if not top:
        return None
    if s.neighbours == "puct":
        return archive.pick_parent()  # None: the root, whose prompt is the on-policy one
    if s.neighbours == "islands":
        return islands.pick_parent(rng)
    if s.neighbours == "ranked":
        return top[0].candidate  # the released code inserted the k-th best here, a defect we do not copy
    return rng.choice(top).candidate


def neighbourhood_prompt(s: Settings, task, history, parent, n=None):
    """(prompt kind, prompt) of the neighbourhood members: a variation of the parent, or (OPRO) a better answer
    than the top-k listed worst to best. The on-policy prompt while there is no parent."""
    if parent is None:
        return "on-policy", _ask(task.prompt, n=n)
    if s.neighbours == "ranked":
        ranked = [(e.candidate, e.score) for e in reversed(history.top(s.topk))]
        return "opro", _ask(task.opro_prompt, ranked, n=n)
    return "ns", _ask(task.neighbourhood_prompt, parent, n=n)


def _ask(prompt_method, *args, n=None):
    """Only packing asks a task for a number of candidates; tasks without packing keep their simple signature."""
    return prompt_method(*args) if n is None else prompt_method(*args, n=n)


def sample_members(policy: Policy, searches: list[Search], plans: list) -> None:
    """Fill in text and tokens of every prompted member of every search with one batched sampler call: each
    search's prompts run with its own adapter and draw from its own random generator."""
    s, tok = policy.s, policy.tok
    prompted = [(x, m, p) for x, plan in zip(searches, plans) for m, p in plan if p is not None]
    if not prompted:
        return
    prompts = [policy.prompt_ids(p) for _, _, p in prompted]
    limit = policy.model.cfg.max_seq_len if policy.model is not None else None
    if limit and max(map(len, prompts)) + s.max_new_tokens > limit:
        raise UsageError(f"a prompt of {max(map(len, prompts))} tokens and --max-new-tokens {s.max_new_tokens} pass "
                         f"the model's {limit} positions; lower --max-new-tokens")
    if policy.adapters == 1:
        generator, adapters = searches[0].state.generator, None
    else:  # a lockstep sweep: rows in slot order, one generator per slot
        generator = [None] * policy.adapters
        for x in searches:
            generator[x.slot] = x.state.generator
        adapters = [x.slot for x, _, _ in prompted]
    # Two fast paths, each chosen here with its slow twin: weights="int4" decodes with 4-bit base weights
    # (quant.py; twin "model", the model's own), and compile=True replays one CUDA graph per decode step on a GPU
    # (sampler._cuda_graphs; twin: eager steps). resolve_settings names both in config.json.
    out = policy.generate(policy.model, prompts, s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                          eos_ids=tok.eos_ids, generator=generator, adapters=adapters, decode=tok.decode,
                          stop=searches[0].task.stop, compile=s.compile_sampler, weights=s.sample_weights)
    for (x, m, p), ids, text in zip(prompted, out.tokens, out.text):
        m.prompt = p
        m.text = p.prefix + text  # the sampler decoded it without the EOS token
        # Sampled ids are reused for training when the member's prompt ended with the on-policy prefix;
        # otherwise the text after that prefix is re-encoded (set in training_tokens).
        m.tokens = list(ids) if s.on_own_prompt or p.prefix == x.task.prompt().prefix else []


def training_tokens(policy: Policy, task, m: Member) -> list[int]:
    """Completion ids of a member as an answer to the on-policy prompt (its response prefix stripped)."""
    if m.tokens:
        return m.tokens
    prefix = task.prompt().prefix
    body = m.text[len(prefix):] if m.text.startswith(prefix) else m.text
    return policy.tok.encode(body) + [policy.end_of_turn]


def score_members(task, history, plan, iteration: int) -> None:
    for m, _ in plan:
        cands = task.parse(m.text)
        if m.ask is not None:
            cands = cands[:m.ask]
        m.candidates = history.score(task, cands, iteration, m.origin)
        m.reward = max((c["score"] for c in m.candidates), default=0.0)


def pack_group(s: Settings, task, members: list[Member], rng) -> list[Member]:
    """The paper's word-search group: the candidates the sampled members found, padded with random repeats to
    alpha + gamma (as the released code pads a short answer), plus the beta greedy ones, cut or padded at random
    to the group size, sorted best first and packed into answers of task.answer_size, each rewarded with its
    best candidate. Returns the packed answers, trained as answers to the on-policy prompt."""
    def found(greedy):
        return [(c["candidate"], c["score"]) for m in members if (m.origin == "greedy") == greedy
                for c in m.candidates if c["status"] != "over_budget"]
    sampled, size, k = found(False), s.group_size, task.answer_size
    if sampled:
        sampled += [rng.choice(sampled) for _ in range(s.alpha + s.gamma - len(sampled))]
    pool = sampled + found(True)
    if not pool:
        return []
    pool = rng.sample(pool, size) if len(pool) > size else pool + rng.choices(pool, k=size - len(pool))
    pool.sort(key=lambda p: -p[1])
    packed = []
    for i in range(0, size - size % k, k):
        answer = pool[i:i + k]
        rng.shuffle(answer)
        packed.append(Member("packed", "on-policy", text=task.render_answer([c for c, _ in answer]),
                             candidates=[dict(candidate=c, score=v, status="repeat") for c, v in answer],
                             reward=max(v for _, v in answer)))
    return packed


def learning_rate(s: Settings, iteration: int, step: int, evaluations: int = 0) -> float:
    """The Hugging Face Trainer's default schedule, which the paper's runs used: linear from lr to 0 over the run,
    no warm-up; or constant. The run is measured by its optimiser steps (iterations x mu) or by its budget of
    evaluations, whichever is further spent: repeats are free here, so when the budget ends a run its iterations
    are no clock (a word-search MiGrATe run finds about 4 new words an iteration, not the paper's 10)."""
    if s.lr_schedule == "constant":
        return s.lr
    spent = max(((iteration - 1) * s.mu + step) / (s.iterations * s.mu), evaluations / s.budget)
    return s.lr * max(0.0, 1.0 - spent)


def grpo_update(policy: Policy, batch: list[tuple[Search, list[Member]]]) -> list[dict]:
    """mu AdamW steps of the clipped GRPO loss for each search's group, all searches in one forward and backward
    per micro-batch; returns each search's loss and clip statistics of its last step.

    Each search's update is the one it takes alone: its loss is normalised over its own group (grpo_loss's
    group_size), its gradient lands in its own adapter's slot and is clipped by its own norm (max_grad_norm),
    and its own AdamW steps at its own point of learning_rate's schedule. A group with no signal takes no step,
    its optimiser untouched. Memory: each step runs micro-batches of s.micro_batch rows of every group, whose
    gradients add up to the whole groups' (the same update in less memory), and s.grad_checkpoint recomputes
    each layer in backward."""
    s, model = policy.s, policy.model
    out, train, index = [None] * len(batch), [], []  # index: where each trained group's record goes in out
    for i, (x, members) in enumerate(batch):
        rewards = torch.tensor([m.reward for m in members])
        advantages, keep, info = group_signal(s, rewards)
        if advantages is None:
            out[i] = dict(loss=None, clip_fraction=None, skipped="no signal in this group")
            continue
        completions, mask = pad_completions([training_tokens(policy, x.task, m) for m in members], s.device)
        # MiGrATe trains every member as an answer to the on-policy prompt; TTT-Discover on the prompt that made
        # it (one a group). Either way the group shares one prompt.
        prompt = policy.prompt_ids(members[0].prompt if s.on_own_prompt else x.task.prompt())
        train.append(TrainingGroup(x, torch.tensor(prompt, device=s.device), completions, mask,
                                   advantages.to(s.device), keep.to(s.device)))
        index.append(i)
        out[i] = info
    if not train:
        return out
    # One pass per bucket of groups of similar completion width, since a pass pads every completion to its
    # widest; micro-batches within a bucket.
    passes = [(bucket, rows) for bucket in width_buckets([g.completions.shape[1] for g in train])
              for rows in micro_batches(max(len(train[k].completions) for k in bucket), s.micro_batch)]
    # Fast path: each prompt's layers run once for its whole group (model.SharedPrefix) where that saves work;
    # the slow twin runs G full rows. Both give the same log-probs and gradients (tests/test_grpo.py). Many
    # searches always share: their prompts then run in one batch.
    shared = len(train) > 1 or share_prompt_pays(train[0].prompt, len(train[0].completions))

    def logprobs(bucket: list[int], rows: slice) -> list[torch.Tensor]:
        """The log-probs of the given rows of each group of the bucket, from one batched pass."""
        prompts, counts, blocks = [None] * policy.adapters, [0] * policy.adapters, []
        for k in bucket:
            g = train[k]
            block = g.completions[rows]
            prompts[g.search.slot], counts[g.search.slot] = g.prompt, len(block)
            blocks.append(block)
        width = max(b.shape[1] for b in blocks)  # right-padded to one length; the mask hides the padding
        ids = torch.cat([torch.nn.functional.pad(b, (0, width - b.shape[1])) for b in blocks])
        logp = completion_logprobs(model, prompts, ids, counts, shared, compiled=s.compile_logprobs)
        return [part[:, :b.shape[1]] for part, b in zip(logp.split([len(b) for b in blocks]), blocks)]

    def each_group(logps_of_pass) -> list[torch.Tensor]:
        """Each group's log-probs over all its rows, from every pass's [(bucket, rows), logps]."""
        parts = [[] for _ in train]
        for (bucket, _), logps in logps_of_pass:
            for k, logp in zip(bucket, logps):
                parts[k].append(logp)
        return [torch.cat(p) for p in parts]

    def loss_of(g: TrainingGroup, logp, old, rows, ref):
        if s.objective == "entropic":  # a sum over every member's tokens, unclipped (its docstring)
            loss, stats = discover_loss(logp, old, g.advantages[rows], g.mask[rows])
            return loss, dict(stats, clip_fraction=torch.zeros(()))  # nothing is clipped
        return grpo_loss(logp, old, g.advantages[rows], g.mask[rows], member_mask=g.keep[rows], eps_low=s.eps_low,
                         eps_high=s.eps_high, ref_logp=ref, kl_coef=s.kl_coef, group_size=len(g.completions))
    refs = [None] * len(train)
    if s.kl_coef > 0:
        with torch.no_grad(), lora_disabled(model):
            refs = each_group([(p, logprobs(*p)) for p in passes])
    model.train()
    model.checkpointing = s.grad_checkpoint
    olds = [None] * len(train)
    for step in range(s.mu):
        for p in policy.params:
            p.grad = None
        done = []
        for bucket, rows in passes:
            logps = logprobs(bucket, rows)
            loss = sum(loss_of(train[k], logp, logp.detach() if olds[k] is None else olds[k][rows], rows,
                               None if refs[k] is None else refs[k][rows])[0]
                       for k, logp in zip(bucket, logps))
            loss.backward()  # each search's loss reaches only its own adapter; passes add up
            done.append(((bucket, rows), [logp.detach() for logp in logps]))
        logps = each_group(done)
        olds = [old if old is not None else logp for old, logp in zip(olds, logps)]  # before the first step
        for g, i in zip(train, index):
            x = g.search
            grad_norm = clip_grad_norm(policy.params, x.slot, s.max_grad_norm or float("inf"))
            lr = learning_rate(x.s, x.state.iteration + 1, step, x.state.history.evaluations)
            x.optimizer.step(lr)
            if not (torch.isfinite(grad_norm) and all(p[x.slot].isfinite().all() for p in policy.params)):
                raise TrainingDiverged(f"{short(x.s.target, 40)}, iteration {x.state.iteration + 1}: the update "
                                       f"diverged (gradient norm {float(grad_norm):g}, lr {lr:g}); the last good "
                                       "iteration is saved. Lower --lr and start again")
            out[i] = dict(out[i], lr=lr, grad_norm=float(grad_norm))
    model.checkpointing = False
    model.eval()
    for g, i, logp, old, ref in zip(train, index, logps, olds, refs):  # the last step's loss and statistics
        loss, stats = loss_of(g, logp, old, slice(None), ref)
        out[i] = dict(loss=float(loss), **out[i], **{name: float(v) for name, v in stats.items()})
    return out


@dataclass
class TrainingGroup:
    """One search's group as the update takes it: the prompt every member continues (P,), the completions and
    their mask (G, L), the advantages and the members that enter the loss (G,)."""
    search: Search
    prompt: torch.Tensor
    completions: torch.Tensor
    mask: torch.Tensor
    advantages: torch.Tensor
    keep: torch.Tensor


def group_signal(s: Settings, rewards: torch.Tensor) -> tuple:
    """(advantages, members that enter the loss, what to log), or (None, None, {}) for a group with no signal.

    MiGrATe (grpo): reward - group mean; zero-reward members leave the loss but stay in the mean. TTT-Discover
    (entropic): exp(beta r) weights against the others', beta solved per group (grpo.adaptive_beta); every member
    enters; a group of equal rewards is dropped, as its recipe drops them."""
    if s.objective == "entropic":
        if rewards.max() == rewards.min():
            return None, None, {}
        beta = adaptive_beta(rewards)
        return entropic_advantages(rewards, beta), torch.ones_like(rewards, dtype=torch.bool), dict(beta=beta)
    advantages, keep = group_advantages(rewards), rewards > 0
    if not keep.any() or advantages.abs().max() == 0:
        return None, None, {}
    return advantages, keep, {}


WIDTH_SLACK = 1.25  # a bucket's widest completion is at most this times its narrowest


def width_buckets(widths: list[int], slack: float = WIDTH_SLACK) -> list[list[int]]:
    """Indices of the groups whose completions are `widths` wide, in buckets of similar width, narrowest first:
    a pass pads each group to at most `slack` times its own width. One bucket of all groups is the slow twin
    (more padded tokens, the same log-probs)."""
    buckets = []
    for k in sorted(range(len(widths)), key=lambda k: (widths[k], k)):
        if buckets and widths[k] <= slack * widths[buckets[-1][0]]:
            buckets[-1].append(k)
        else:
            buckets.append([k])
    return [sorted(b) for b in buckets]


def micro_batches(rows: int, size: int) -> list[slice]:
    """Row slices of at most `size` rows (0: all rows at once)."""
    size = size if 0 < size < rows else rows
    return [slice(i, i + size) for i in range(0, rows, size)]


def pad_completions(completions: list[list[int]], device):
    """(G, L) completion ids, right-padded with 0, and the (G, L) float mask of real tokens."""
    L = max(len(c) for c in completions)
    ids = torch.zeros(len(completions), L, dtype=torch.long)
    mask = torch.zeros(len(completions), L)
    for i, c in enumerate(completions):
        ids[i, :len(c)] = torch.tensor(c, dtype=torch.long)
        mask[i, :len(c)] = 1.0
    return ids.to(device), mask.to(device)


def run_iteration(policy: Policy, searches: list[Search]) -> list[dict]:
    """Sample, score, build the group, update: one MiGrATe iteration of every search (in slot order), in
    lockstep. Returns each search's log record; its time_sample and time_update are of the whole lockstep."""
    t0 = time.time()
    plans = [plan_group(x.s, x.task, x.state) for x in searches]
    sample_members(policy, searches, plans)
    t1 = time.time()
    groups, score_times = [], []
    for x, plan in zip(searches, plans):
        start = time.time()
        score_members(x.task, x.state.history, plan, x.state.iteration + 1)
        members = [m for m, _ in plan]
        # word search (pack): the group trained is the pooled candidates packed into answers, as the paper's code
        groups.append(pack_group(x.s, x.task, members, x.state.rng) if x.s.pack else members)
        score_times.append(time.time() - start)
    t2 = time.time()
    updates = [{} for _ in searches]
    if policy.s.update:
        trained = [i for i, group in enumerate(groups) if group]
        for i, update in zip(trained, grpo_update(policy, [(searches[i], groups[i]) for i in trained])):
            updates[i] = update
    t3 = time.time()
    records = []
    for x, plan, group, update, t_score in zip(searches, plans, groups, updates, score_times):
        it, members = x.state.iteration + 1, [m for m, _ in plan]
        if x.s.neighbours == "islands":
            add_to_islands(x.state.islands, members, it)
        if x.s.neighbours == "puct":
            add_to_archive(x.state.archive, members)
        best = x.state.history.best()
        record = dict(iteration=it, evaluations=x.state.history.evaluations,
                      best_score=best.score if best else 0.0, best=best.candidate if best else None,
                      mean_reward=sum(m.reward for m in group) / max(len(group), 1),
                      members=[dict(origin=m.origin, prompt=m.prompt_kind, parent=m.parent, reward=m.reward,
                                    candidates=m.candidates, text=m.text) for m in members],
                      **update, time_sample=t1 - t0, time_score=t_score, time_update=t3 - t2)
        if len(searches) > 1:
            record["lockstep"] = len(searches)  # the searches that shared this iteration's sampling and update
        if x.s.pack:
            record["packed"] = [dict(text=m.text, reward=m.reward) for m in group]
        records.append(record)
    return records


def add_to_archive(archive, members: list[Member]) -> None:
    """TTT-Discover's archive after an iteration: each sampled member's attempts count as visits of the state its
    prompt started from (an on-policy prompt: the root), what they found joins as that state's children, and the
    archive is pruned once."""
    found: dict = {}  # parent -> [attempts, children]
    for m in members:
        if m.origin == "greedy":
            continue  # re-inserted, not sampled
        entry = found.setdefault(m.parent if m.prompt_kind == "ns" else None, [0, []])
        entry[0] += m.ask or 1
        entry[1] += [(c["candidate"], c["score"]) for c in m.candidates
                     if c["status"] != "over_budget" and c["score"] > 0]
    for parent, (attempts, children) in found.items():
        archive.update(parent, children, attempts)
    archive.prune()


def add_to_islands(islands, members: list[Member], iteration: int) -> None:
    """Evo, as the released code: what the iteration sampled joins the current island, the turn passes to the
    next island, and every migrate_every iterations the islands' best migrate."""
    for m in members:
        if m.origin != "greedy":
            for c in m.candidates:
                if c["status"] != "over_budget":
                    islands.add(c["candidate"], c["score"])
    islands.next_island()
    if iteration % islands.migrate_every == 0:
        islands.migrate()


# ----------------------------------------------------------------------------------------------------------
# A run: the warm start, then iterations until the budget is spent (files and resume: rundir.py).

def new_state(s: Settings, task) -> RunState:
    rng = random.Random(s.seed)
    state = RunState(History(s.budget), Islands(s.islands, migrate_every=s.migrate_every), Archive(), rng,
                     torch.Generator(device=s.device).manual_seed(s.seed))
    warm = task.warm_start(rng)
    for r in state.history.score(task, warm, 0, "warm"):
        if s.neighbours == "islands" and r["status"] == "new":
            state.islands.add(r["candidate"], r["score"])  # dealt round the islands, one each
            state.islands.next_island()
        if s.neighbours == "puct" and r["status"] == "new":
            state.archive.add(r["candidate"], r["score"])  # the root's children, not yet visited
    return state


def warm_start_record(state: RunState) -> dict:
    """Iteration 0 of the log: the warm-start candidates, scored before the first group."""
    entries, best = list(state.history.entries.values()), state.history.best()
    return dict(iteration=0, evaluations=state.history.evaluations, best_score=best.score if best else 0.0,
                best=best.candidate if best else None,
                mean_reward=sum(e.score for e in entries) / len(entries) if entries else 0.0,
                members=[dict(origin="warm", prompt=None, parent=None, reward=e.score, text=None,
                              candidates=[dict(candidate=e.candidate, score=e.score, status="new")]) for e in entries])


def search(policy: Policy, searches: list[Search], quiet=False) -> list[dict]:
    """Run (or continue) every search to its end, in lockstep: policy.adapters of them at a time, each in a
    slot of the model's LoRA bank; a search that ends (solved, budget, iteration cap, patience) writes its
    results and leaves its slot to the next. Returns the summaries written to best.json, in the given order."""
    summaries, waiting, live = {}, list(searches), []
    label = f"{len(searches)} searches" if len(searches) > 1 else searches[0].s.target
    bar = tqdm(total=sum(x.s.iterations for x in searches), desc=f"{policy.s.strategy} {label}"[:40],
               disable=quiet, dynamic_ncols=True)
    try:
        run_all(policy, waiting, live, summaries, bar, quiet)
    except BaseException:
        for x in live:
            x.tracker.close(failed=True)
        raise
    bar.close()
    return [summaries[id(x)] for x in searches]


def run_all(policy: Policy, waiting: list[Search], live: list[Search], summaries: dict, bar, quiet: bool) -> None:
    """search's loop: start waiting searches in free slots, iterate the live ones, finish those that end."""
    timed = False
    while waiting or live:
        while waiting and len(live) < policy.adapters:
            x = waiting.pop(0)
            x.slot = min(set(range(policy.adapters)) - {y.slot for y in live})
            begin(policy, x)
            bar.update(x.state.iteration if x.state else x.s.iterations)
            if x.state is None:  # it finished in an earlier session: only its light files are left
                summaries[id(x)] = check_finished(x.run_dir, x.s.update)
            elif x.state.finished:  # stopped between its last state and its results: write them now
                summaries[id(x)] = finish(policy, x)
            else:
                live.append(x)
        if not live:
            continue
        live.sort(key=lambda x: x.slot)
        t0 = time.time()
        records = run_iteration(policy, live)
        if not timed and not quiet:  # a measured rate: later iterations cost about the same
            bar.write(rate_note(live, records, time.time() - t0, bool(waiting)), file=sys.stderr)
            timed = True
        for x, record in zip(live, records):
            finish_iteration(policy, x, record)
            bar.update(1)
            if x.state.finished:
                summaries[id(x)] = finish(policy, x)
                bar.update(x.s.iterations - x.state.iteration)
        bar.set_postfix_str(progress(records))
        live[:] = [x for x in live if not x.state.finished]


def finish(policy: Policy, x: Search) -> dict:
    """A search that ended: its results on disk (rundir.write_results), its tracked run closed."""
    summary = write_results(x.run_dir, x.s, x.state, policy.adapter(x), x.task)
    x.tracker.close(summary)
    return summary


def begin(policy: Policy, x: Search) -> None:
    """Load the search's saved state into its slot, or start it (the warm start, scored and saved); x.state stays
    None when it finished in an earlier session (best.json written, state.pt deleted)."""
    x.run_dir.mkdir(parents=True, exist_ok=True)
    x.state = None
    if (x.run_dir / "best.json").exists() and not (x.run_dir / "state.pt").exists():
        return
    log = x.run_dir / "history.jsonl"
    x.tracker = open_tracker(x.s.wandb, f"{x.run_dir.parent.name}/{x.run_dir.name}", dataclasses.asdict(x.s),
                             x.run_dir)
    if (x.run_dir / "state.pt").exists():
        x.state, adapter, optimizer = load_state(x.run_dir, x.s.device)
        policy.start(x, adapter, optimizer)
        keep_log_lines(log, x.state.iteration)  # drop a line written after the last saved state
    else:
        policy.start(x)
        x.state = new_state(x.s, x.task)
        warm = warm_start_record(x.state)
        atomic_write(log, json.dumps(warm) + "\n")
        save_state(x.run_dir, x.state, policy.adapter(x), x.optimizer.state_dict() if x.optimizer else None)
        x.tracker.log(warm)


def progress(records: list[dict]) -> str:
    """The progress bar's note: the search's numbers, or for many the best of them."""
    if len(records) == 1:
        r = records[0]
        return (f"evals {r['evaluations']} best {r['best_score']:.3f} {str(r['best'])[:24]!r} "
                f"mean {r['mean_reward']:.3f}")
    top = max(records, key=lambda r: r["best_score"])
    return f"{len(records)} searching, best {top['best_score']:.3f} {str(top['best'])[:24]!r}"


def finish_iteration(policy: Policy, x: Search, record: dict) -> None:
    """Whether the search goes on, then its record and state on disk."""
    s, state = x.s, x.state
    state.iteration = record["iteration"]
    solved = record["best_score"] >= x.task.solved_score
    stalled = state.iteration - state.history.last_find() >= s.patience  # repeats cost nothing: it would spin
    state.finished = state.iteration >= s.iterations or state.history.exhausted or (solved and s.early_stop) \
        or stalled
    append_record(x.run_dir / "history.jsonl", record)
    save_state(x.run_dir, state, policy.adapter(x), x.optimizer.state_dict() if x.optimizer else None)
    x.tracker.log(record)


def rate_note(live: list[Search], records: list[dict], seconds: float, more_waiting: bool) -> str:
    """How long the rest should take at the rate of the iteration just timed."""
    what = short(live[0].s.target, 40) if len(live) == 1 else f"{len(live)} searches in lockstep"
    note = f"{what}: iteration {records[0]['iteration']} took {seconds:.0f} s"
    if more_waiting:  # the searches still waiting for a slot make any estimate from here a guess
        return note
    left = max(x.s.iterations - r["iteration"] for x, r in zip(live, records))
    rest = seconds * left
    when = f"{rest:.0f} s" if rest < 90 else f"{rest / 60:.0f} min" if rest < 5400 else f"{rest / 3600:.1f} h"
    return f"{note}; at that rate the {left} left take about {when} (less if it is solved or stalls first)"
