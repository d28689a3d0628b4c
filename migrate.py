"""MiGrATe: a language model searches for the best solution to one black-box problem and trains itself on its
own attempts while it searches (Mixed-Policy GRPO for Adaptation at Test-Time, arXiv 2508.08641).

One iteration (run_iteration below):
  1. plan the group: alpha on-policy prompts, gamma neighbourhood prompts built from the iteration's seed (a
     past solution), beta greedy members (that seed, re-inserted with its stored score);
  2. sample every prompted member in one batched sampler call;
  3. parse and score each completion with the task's black-box score (through the history's cache); with
     packing (word search), pool the candidates and pack them into answers (pack_group);
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
"""
import argparse
import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rundir import (RunFolderError, RunState, atomic_write, code_version, keep_log_lines, load_state, lock_folder,
                    save_state, short, slug, started, write_results, write_summary)

STRATEGIES = ("random", "ns", "opro", "grpo", "grpo-greedy", "migrate", "migrate-opro", "migrate-evo")


# ----------------------------------------------------------------------------------------------------------
# Settings: every knob of a run, resolved from the task's paper defaults and the command line.

@dataclass
class Settings:
    task: str
    target: str
    strategy: str
    model: str | None = None  # None = the embedded SmolLM2-135M-Instruct
    seed: int = 0
    # group composition (alpha on-policy, beta greedy, gamma neighbourhood) and seed choice
    alpha: int = 10
    beta: int = 0
    gamma: int = 0
    topk: int = 3
    seed_choice: str = "topk"  # "topk", "opro" or "evo"
    update: bool = True  # GRPO steps on the LoRA adapter (False for the inference-only baselines)
    # budget
    iterations: int = 100
    budget: int = 1_000_000  # black-box evaluations, warm start included
    early_stop: bool = True  # stop when a candidate reaches the task's solved score
    patience: int = 10  # stop after this many iterations in a row that score nothing new (a collapsed policy)
    # sampling
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    # training
    mu: int = 2
    lr: float = 5e-5
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    eps_low: float = 0.2
    eps_high: float = 0.28
    beta_kl: float = 0.0
    micro_batch: int = 0  # rows per forward/backward in the update, gradients accumulated (0 = the whole group)
    grad_checkpoint: bool = False  # recompute each layer in backward: less memory, one more forward
    pack: bool = False  # alpha and gamma count candidates, pooled and packed into answers (the paper's word search)
    # optimiser: the Hugging Face Trainer defaults of the paper's runs
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0 = no clipping
    lr_schedule: str = "linear"  # "linear" (to 0 over the planned iterations) or "constant"
    # MiGrATe-Evo's island database (the released EvolutionDatabase's settings)
    islands: int = 4
    migrate_every: int = 40
    # engine
    device: str = "cpu"
    dtype: str = "float32"
    compile_sampler: bool = False
    compile_logprobs: bool = False
    sample_weights: str = "auto"  # the sampler's decode weights (quant.py): auto (int4 on CPU float32), model, ...
    task_options: dict = field(default_factory=dict)

    @property
    def group_size(self) -> int:
        return self.alpha + self.beta + self.gamma


# ----------------------------------------------------------------------------------------------------------
# The policy: model + tokenizer + LoRA + optimiser, and how prompts become token ids.

class Policy:
    def __init__(self, model, tokenizer, s: Settings):
        import torch
        from model import add_lora, lora_state_dict
        self.model, self.tok, self.s = model, tokenizer, s
        self.params, self.optimizer = [], None
        if s.update:
            torch.manual_seed(s.seed)  # LoRA A is random: make it the seed's
            self.params = add_lora(model, r=s.lora_r, alpha=s.lora_alpha, dropout=s.lora_dropout)
            self.initial_adapter = {k: v.clone() for k, v in lora_state_dict(model).items()}
        self.end_of_turn = end_of_turn_id(tokenizer)

    def reset(self):
        """A fresh adapter and optimiser for a new target (a sweep loads the model once)."""
        import torch
        from model import load_lora_state_dict
        if self.s.update:
            load_lora_state_dict(self.model, self.initial_adapter)
            self.optimizer = torch.optim.AdamW(self.params, lr=self.s.lr, weight_decay=self.s.weight_decay)

    def prompt_ids(self, prompt) -> list[int]:
        text = self.tok.chat(prompt.messages, add_generation_prompt=True, assistant_prefix=prompt.prefix)
        return self.tok.encode(text)


def end_of_turn_id(tokenizer) -> int:
    """The token that closes an assistant turn; greedy members end with it, as sampled answers do."""
    marker = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>"}[tokenizer.chat_format]
    ids = tokenizer.encode(marker)
    if len(ids) != 1:
        raise UsageError(f"the model's tokenizer has no single {marker} token; is it a {tokenizer.chat_format} chat model?")
    return ids[0]


# ----------------------------------------------------------------------------------------------------------
# One iteration.

@dataclass
class Member:
    origin: str  # "online", "greedy", "neighbourhood", or "packed" (an answer packed from pooled candidates)
    prompt_kind: str  # which prompt produced it: "policy", "ns", "opro" or "greedy"
    seed: str | None = None  # the past solution an NS prompt was built from
    ask: int | None = None  # candidates its prompt asked for (packing); None: what task.parse keeps
    text: str = ""  # the completion, response prefix included
    tokens: list[int] = field(default_factory=list)  # completion ids, trained after the on-policy prompt
    candidates: list[dict] = field(default_factory=list)  # {"candidate", "score", "status"}
    reward: float = 0.0


def plan_group(s: Settings, task, history, islands, rng) -> list[tuple[Member, object]]:
    """The mixed group of MiGrATe: (member, prompt) pairs for alpha on-policy and gamma neighbourhood members,
    then beta greedy members whose completion is the iteration's seed (prompt None: nothing to sample).

    As in the paper's code, one seed serves the whole iteration: the NS prompts are built from it and it is the
    greedy member. With packing (word search), alpha and gamma count candidates: one on-policy call asks for
    alpha of them and one neighbourhood call for gamma."""
    seed = choose_seed(s, history, islands, rng) if s.gamma or s.beta else None
    if s.pack:
        plan = [(Member("online", "policy", ask=s.alpha), _ask(task.prompt, n=s.alpha))] if s.alpha else []
        if s.gamma:
            kind, prompt = neighbourhood_prompt(s, task, history, seed, n=s.gamma)
            plan.append((Member("neighbourhood", kind, seed, ask=s.gamma), prompt))
    else:
        plan = [(Member("online", "policy"), task.prompt()) for _ in range(s.alpha)]
        if s.gamma:
            kind, prompt = neighbourhood_prompt(s, task, history, seed)
            plan += [(Member("neighbourhood", kind, seed), prompt) for _ in range(s.gamma)]
    if seed is not None:
        plan += [(Member("greedy", "greedy", seed, text=task.render(seed)), None) for _ in range(s.beta)]
    return plan


def choose_seed(s: Settings, history, islands, rng) -> str | None:
    """The iteration's seed: random among the top-k (MiGrATe, GRPO-Greedy), drawn from the current island (Evo),
    or the best (OPRO, whose prompt lists the whole top-k). None while there is nothing to build on."""
    top = history.top(s.topk)
    if not top:
        return None
    if s.seed_choice == "evo":
        return islands.pick_seed(rng)
    if s.seed_choice == "opro":
        return top[0].candidate  # the released code inserted the k-th best here, a defect we do not copy
    return rng.choice(top).candidate


def neighbourhood_prompt(s: Settings, task, history, seed, n=None):
    """(prompt kind, prompt) of the neighbourhood members: a variation of the seed, or (OPRO) a better answer than
    the top-k listed worst to best. The on-policy prompt while there is no seed."""
    if seed is None:
        return "policy", _ask(task.prompt, n=n)
    if s.seed_choice == "opro":
        ranked = [(e.candidate, e.score) for e in reversed(history.top(s.topk))]
        return "opro", _ask(task.opro_prompt, ranked, n=n)
    return "ns", _ask(task.neighbourhood_prompt, seed, n=n)


def _ask(prompt_method, *args, n=None):
    """Only packing asks a task for a number of candidates; tasks without packing keep their simple signature."""
    return prompt_method(*args) if n is None else prompt_method(*args, n=n)


def sample_members(policy: Policy, task, plan, generator) -> None:
    """Fill in text and tokens of every prompted member with one batched sampler call."""
    from sampler import generate
    s, tok = policy.s, policy.tok
    prompted = [(m, p) for m, p in plan if p is not None]
    if not prompted:
        return
    out = generate(policy.model, [policy.prompt_ids(p) for _, p in prompted], s.max_new_tokens,
                   temperature=s.temperature, top_p=s.top_p, eos_ids=tok.eos_ids, generator=generator,
                   decode=tok.decode, stop=task.stop, compile=s.compile_sampler,
                   weights=s.sample_weights)
    policy_prefix = task.prompt().prefix
    for (m, p), ids in zip(prompted, out.tokens):
        m.text = p.prefix + tok.decode([t for t in ids if t not in tok.eos_ids])
        # Sampled ids are reused for training when the member's prompt ended with the on-policy prefix;
        # otherwise the text after that prefix is re-encoded (set in training_tokens).
        m.tokens = list(ids) if p.prefix == policy_prefix else []


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
        packed.append(Member("packed", "policy", text=task.render_answer([c for c, _ in answer]),
                             candidates=[dict(candidate=c, score=v, status="repeat") for c, v in answer],
                             reward=max(v for _, v in answer)))
    return packed


def learning_rate(s: Settings, iteration: int, step: int) -> float:
    """The Hugging Face Trainer's default schedule, which the paper's runs used: linear from lr to 0 over the
    planned optimiser steps (planned iterations x mu), no warm-up; or constant."""
    if s.lr_schedule == "constant":
        return s.lr
    planned = planned_iterations(s) * s.mu
    return s.lr * max(0.0, 1.0 - ((iteration - 1) * s.mu + step) / planned)


def planned_iterations(s: Settings) -> int:
    """The iterations a run plans for: the cap, or the budget in groups when the budget ends it first (the
    paper's 100 word-search iterations of 10 words = its budget of 1,000)."""
    return max(1, min(s.iterations, math.ceil(s.budget / s.group_size)))


def grpo_update(policy: Policy, task, members: list[Member], iteration: int) -> dict:
    """mu AdamW steps of the clipped GRPO loss on the LoRA adapter (learning_rate's schedule, gradient norm
    clipped at max_grad_norm); returns loss and clip statistics of the last step.

    Memory: each step runs the group in micro-batches of s.micro_batch rows whose gradients add up to the
    whole group's (grpo_loss's group_size), and s.grad_checkpoint recomputes each layer in backward."""
    import torch
    from grpo import completion_logprobs, group_advantages, grpo_loss
    from model import lora_disabled
    s, model = policy.s, policy.model
    rewards = torch.tensor([m.reward for m in members])
    advantages = group_advantages(rewards)
    keep = rewards > 0  # zero-reward members leave the loss but stay in the mean
    if not keep.any() or advantages.abs().max() == 0:
        return dict(loss=None, clip_fraction=None, skipped="no signal in this group")
    # Every member is trained as an answer to the on-policy prompt, so the group shares it: it runs once.
    prompt = torch.tensor(policy.prompt_ids(task.prompt()), device=s.device)
    completions, mask = pad_completions([training_tokens(policy, task, m) for m in members], s.device)
    adv, keep, G = advantages.to(s.device), keep.to(s.device), len(members)
    batches = micro_batches(G, s.micro_batch)

    def logprobs(rows):
        return completion_logprobs(model, prompt, completions[rows], compiled=s.compile_logprobs)

    def loss_of(logp, old, rows, ref):
        return grpo_loss(logp, old, adv[rows], mask[rows], member_mask=keep[rows], eps_low=s.eps_low,
                         eps_high=s.eps_high, ref_logp=ref, beta_kl=s.beta_kl, group_size=G)
    ref = None
    if s.beta_kl > 0:
        with torch.no_grad(), lora_disabled(model):
            ref = torch.cat([logprobs(rows) for rows in batches])
    model.train()
    model.checkpointing = s.grad_checkpoint
    old = None
    for step in range(s.mu):
        policy.optimizer.zero_grad(set_to_none=True)
        parts = []
        for rows in batches:
            logp = logprobs(rows)
            loss, _ = loss_of(logp, logp.detach() if old is None else old[rows], rows,
                              None if ref is None else ref[rows])
            loss.backward()  # gradients accumulate: each micro-batch adds its rows' share of the group's loss
            parts.append(logp.detach())
        logp = torch.cat(parts)
        if old is None:
            old = logp  # the policy before the first step (simplification 4)
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.params, s.max_grad_norm or float("inf"))
        lr = learning_rate(s, iteration, step)
        for group in policy.optimizer.param_groups:
            group["lr"] = lr
        policy.optimizer.step()
    model.checkpointing = False
    model.eval()
    loss, stats = loss_of(logp, old, slice(None), ref)  # the last step's loss and statistics, for the log
    return dict(loss=float(loss), lr=lr, grad_norm=float(grad_norm), **{k: float(v) for k, v in stats.items()})


def micro_batches(rows: int, size: int) -> list[slice]:
    """Row slices of at most `size` rows (0: all rows at once)."""
    size = size if 0 < size < rows else rows
    return [slice(i, i + size) for i in range(0, rows, size)]


def pad_completions(completions: list[list[int]], device):
    """(G, L) completion ids, right-padded with 0, and the (G, L) float mask of real tokens."""
    import torch
    L = max(len(c) for c in completions)
    ids = torch.zeros(len(completions), L, dtype=torch.long)
    mask = torch.zeros(len(completions), L)
    for i, c in enumerate(completions):
        ids[i, :len(c)] = torch.tensor(c, dtype=torch.long)
        mask[i, :len(c)] = 1.0
    return ids.to(device), mask.to(device)


def run_iteration(state, policy: Policy, task) -> dict:
    """Sample, score, build the group, update: one MiGrATe iteration. Returns its log record."""
    s, it = policy.s, state.iteration + 1
    t0 = time.time()
    plan = plan_group(s, task, state.history, state.islands, state.rng)
    sample_members(policy, task, plan, state.generator)
    t1 = time.time()
    score_members(task, state.history, plan, it)
    t2 = time.time()
    members = [m for m, _ in plan]
    group = pack_group(s, task, members, state.rng) if s.pack else members
    update = grpo_update(policy, task, group, it) if s.update and group else {}
    if s.seed_choice == "evo":
        add_to_islands(state.islands, members, it)
    t3 = time.time()
    best = state.history.best()
    record = dict(iteration=it, evaluations=state.history.evaluations,
                  best_score=best.score if best else 0.0, best=best.candidate if best else None,
                  mean_reward=sum(m.reward for m in group) / max(len(group), 1),
                  members=[dict(origin=m.origin, prompt=m.prompt_kind, seed=m.seed, reward=m.reward,
                                candidates=m.candidates, text=m.text) for m in members],
                  **update, time_sample=t1 - t0, time_score=t2 - t1, time_update=t3 - t2)
    if s.pack:
        record["packed"] = [dict(text=m.text, reward=m.reward) for m in group]
    return record


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
    import torch
    from history import History, Islands
    rng = random.Random(s.seed)
    state = RunState(History(s.budget), Islands(s.islands, migrate_every=s.migrate_every), rng,
                     torch.Generator(device=s.device).manual_seed(s.seed))
    warm = task.warm_start(rng)
    for r in state.history.score(task, warm, 0, "warm"):
        if s.seed_choice == "evo" and r["status"] == "new":
            state.islands.add(r["candidate"], r["score"])  # dealt round the islands, one each
            state.islands.next_island()
    return state


def warm_start_record(state: RunState) -> dict:
    """Iteration 0 of the log: the warm-start candidates, scored before the first group."""
    entries, best = list(state.history.entries.values()), state.history.best()
    return dict(iteration=0, evaluations=state.history.evaluations, best_score=best.score if best else 0.0,
                best=best.candidate if best else None,
                mean_reward=sum(e.score for e in entries) / len(entries) if entries else 0.0,
                members=[dict(origin="warm", prompt=None, seed=None, reward=e.score, text=None,
                              candidates=[dict(candidate=e.candidate, score=e.score, status="new")]) for e in entries])


def search(s: Settings, run_dir: Path, policy: Policy, task, quiet=False) -> dict:
    """Run (or continue) one search to its budget; returns the summary written to best.json."""
    from tqdm import tqdm
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / "best.json").exists() and not (run_dir / "state.pt").exists():
        # best.json is written when a search ends: this one finished, and only its light files were kept
        return json.loads((run_dir / "best.json").read_text())
    policy.reset()
    log_path = run_dir / "history.jsonl"
    if (run_dir / "state.pt").exists():
        state = load_state(run_dir, s, policy)
        keep_log_lines(log_path, state.iteration)  # drop a line written after the last saved state
    else:
        state = new_state(s, task)
        log_path.write_text(json.dumps(warm_start_record(state)) + "\n")
        save_state(run_dir, state, policy)
    bar = tqdm(total=s.iterations, initial=state.iteration, desc=f"{s.strategy} {s.target}"[:40],
               disable=quiet, dynamic_ncols=True)
    first = state.iteration + 1
    while not state.finished:
        t0 = time.time()
        record = run_iteration(state, policy, task)
        if record["iteration"] == first and not quiet:  # a measured rate: later iterations cost about the same
            bar.write(rate_note(s.target, record["iteration"], time.time() - t0, s.iterations - record["iteration"]),
                      file=sys.stderr)
        state.iteration = record["iteration"]
        solved = record["best_score"] >= task.solved_score
        stalled = state.iteration - state.history.last_find() >= s.patience  # repeats cost nothing: it would spin
        state.finished = (state.iteration >= s.iterations or state.history.exhausted or (solved and s.early_stop)
                          or stalled)
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        save_state(run_dir, state, policy)
        bar.update(1)
        bar.set_postfix_str(f"evals {record['evaluations']} best {record['best_score']:.3f} "
                            f"{str(record['best'])[:24]!r} mean {record['mean_reward']:.3f}")
    bar.close()
    return write_results(run_dir, s, state, policy, task)


def rate_note(target: str, iteration: int, seconds: float, left: int) -> str:
    """How long the rest of a search should take at the rate of the iteration just timed."""
    rest = seconds * left
    when = f"{rest:.0f} s" if rest < 90 else f"{rest / 60:.0f} min" if rest < 5400 else f"{rest / 3600:.1f} h"
    return (f"{short(target, 40)}: iteration {iteration} took {seconds:.0f} s; at that rate the {left} left take "
            f"about {when} (less if it is solved or stalls first)")


# ----------------------------------------------------------------------------------------------------------
# Command line, sweeps over targets (split across torchrun ranks), summary.

class UsageError(Exception):
    """Bad input, reported as one line without a traceback."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"migrate.py: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description="MiGrATe: test-time GRPO search for one black-box problem. "
                                  "[brackets] give the default.")
    a = p.add_argument
    a("--task", default="wordsearch", help="wordsearch, molecule, arc, or a file/module of your own Task [wordsearch]")
    a("--target", help="one target: a word, an objective such as rediscover:celecoxib, an ARC task id [task default]")
    a("--targets", help="comma-separated targets or a named set (e.g. paper): one independent search each")
    a("--strategy", default="migrate", choices=STRATEGIES, help="which method of the paper to run [migrate]")
    a("--model", help="HF checkpoint folder or .gguf file [embedded SmolLM2-135M-Instruct]")
    a("--out", help="run folder [runs/TASK-STRATEGY-seedN]")
    a("--resume", metavar="RUN_DIR", help="continue the run (or sweep) in this folder with its settings")
    a("--seed", type=int, help="seed of sampling, warm start and LoRA init [0]")
    a("--budget", type=int, help="black-box evaluations per target, warm start included [unlimited]")
    a("--iterations", type=int, help="iterations per target [task default]")
    a("--patience", type=int, help="stop a search after this many iterations in a row that score nothing new [10]")
    a("--alpha", type=int, help="on-policy members per group [strategy preset]")
    a("--beta", type=int, help="greedy members per group (the iteration's seed) [strategy preset]")
    a("--gamma", type=int, help="neighbourhood members per group [strategy preset]")
    a("--topk", type=int, help="NS seeds are drawn among the top-k past solutions; OPRO lists them [preset]")
    a("--pack", action=argparse.BooleanOptionalAction, help="alpha and gamma count candidates, pooled and packed "
      "into answers as in the paper's word search [task default]")
    a("--mu", type=int, help="optimiser steps per group [task default]")
    a("--lr", type=float, help="AdamW learning rate of the LoRA adapter [task default]")
    a("--lr-schedule", choices=("linear", "constant"), help="linear: to 0 over the planned iterations [linear]")
    a("--weight-decay", type=float, help="AdamW weight decay [0]")
    a("--max-grad-norm", type=float, help="clip the adapter's gradient norm to this, 0 = off [1.0]")
    a("--lora-r", type=int, help="LoRA rank [task default]")
    a("--lora-alpha", type=int, help="LoRA alpha (scale alpha/r) [task default]")
    a("--lora-dropout", type=float, help="LoRA dropout [0]")
    a("--beta-kl", type=float, help="KL penalty to the base model [0]")
    a("--micro-batch", type=int, help="update the group this many rows at a time, gradients accumulated "
      "(the same update with less memory) [0: the whole group]")
    a("--grad-checkpoint", action=argparse.BooleanOptionalAction, help="recompute each layer in backward "
      "(less memory, about a third more update time) [off]")
    a("--max-new-tokens", type=int, help="tokens sampled per completion [task default]")
    a("--temperature", type=float, help="sampling temperature [1.0]")
    a("--top-p", type=float, help="nucleus sampling threshold [1.0]")
    a("--islands", type=int, help="MiGrATe-Evo: number of islands [4]")
    a("--migrate-every", type=int, help="MiGrATe-Evo: iterations between migrations [40]")
    a("--no-early-stop", action="store_true", help="keep searching after the problem is solved")
    a("--device", help="cpu or cuda [cuda if available]")
    a("--dtype", choices=("float32", "bfloat16", "float16"), help="model dtype [float32 on cpu, bfloat16 on cuda]")
    a("--compile", action="store_true", help="torch.compile the sampler's decode step")
    a("--compile-logprobs", action="store_true", help="torch.compile the fused log-prob chunk")
    a("--sample-weights", choices=("auto", "model", "packed", "int4"), help="base weights of the sampler's decode "
      "steps (quant.py): the model's own, oneDNN-packed float32, or 4-bit (the GGUF's codes) [auto: int4 on CPU "
      "in float32, else model]")
    a("--arc-data", help="ARC: folder of task JSON files or one combined file [embedded ARC-AGI-1]")
    a("--sandbox", choices=("auto", "strict", "process"), help="ARC: isolate programs by Linux namespaces "
      "(auto: warn and fall back where unavailable; strict: refuse; process: the old unisolated path) [auto]")
    a("--quiet", action="store_true", help="no progress bar")
    a("--full", action="store_true", help="the paper's iterations and completion length on CPU too [a CPU demo]")
    a("--threads", type=int, help="CPU threads [free cores: cores less the 1-minute load average]")
    return p


# flags that are settings (the rest choose what to run and where)
SETTING_FLAGS = ("seed", "budget", "iterations", "patience", "alpha", "beta", "gamma", "topk", "pack", "mu", "lr",
                 "lr_schedule", "weight_decay", "max_grad_norm", "lora_r", "lora_alpha", "lora_dropout", "beta_kl",
                 "micro_batch", "grad_checkpoint", "max_new_tokens", "temperature", "top_p", "islands",
                 "migrate_every")


def resolve_settings(args, task_cls) -> Settings:
    """Paper defaults of the task and strategy, overridden by the flags the user gave."""
    d = task_cls.defaults
    if args.strategy not in d.presets:
        raise UsageError(f"task {task_cls.name} has no preset for strategy {args.strategy}")
    preset = d.presets[args.strategy]
    s = Settings(task=args.task, target="", strategy=args.strategy, model=args.model,
                 alpha=preset.alpha, beta=preset.beta, gamma=preset.gamma, seed_choice=preset.seed_choice,
                 update=preset.update, topk=preset.topk or d.topk, mu=preset.mu or d.mu, lr=d.lr,
                 lora_r=d.lora_r, lora_alpha=d.lora_alpha, max_new_tokens=d.max_new_tokens,
                 temperature=d.temperature, iterations=d.iterations, pack=d.pack)
    for name in SETTING_FLAGS:
        if getattr(args, name) is not None:
            setattr(s, name, getattr(args, name))
    if args.budget is not None and args.iterations is None:
        s.iterations = args.budget  # the budget decides; the iteration cap only guards against a stuck search
    s.early_stop = not args.no_early_stop
    s.compile_sampler, s.compile_logprobs = args.compile, args.compile_logprobs
    s.sample_weights = args.sample_weights or s.sample_weights
    if args.arc_data:
        s.task_options["arc_data"] = args.arc_data
    if getattr(args, "sandbox", None):
        s.task_options["sandbox"] = args.sandbox
    check_settings(s)
    return s


def check_settings(s: Settings) -> None:
    for name in ("budget", "iterations", "patience", "topk", "mu", "max_new_tokens", "lora_r", "islands",
                 "migrate_every"):
        if getattr(s, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(s, name)}")
    for name in ("alpha", "beta", "gamma"):
        if getattr(s, name) < 0:
            raise UsageError(f"--{name} must be >= 0, got {getattr(s, name)}")
    if s.group_size == 0:
        raise UsageError("the group is empty: alpha + beta + gamma must be positive")
    if s.lr <= 0 or s.temperature < 0 or not 0 < s.top_p <= 1:
        raise UsageError("--lr must be > 0, --temperature >= 0 and --top-p in (0, 1]")
    if s.weight_decay < 0 or s.max_grad_norm < 0 or s.micro_batch < 0:
        raise UsageError("--weight-decay, --max-grad-norm and --micro-batch must be >= 0")


def expand_targets(args, task_cls) -> list[str]:
    if args.target and args.targets:
        raise UsageError("give --target or --targets, not both")
    if args.target is not None and not args.target.strip():
        raise UsageError("--target is empty; leave it out for the task's default target")
    if args.targets:
        names = task_cls.target_sets.get(args.targets) or [t.strip() for t in args.targets.split(",") if t.strip()]
        if not names:
            raise UsageError(f"--targets {short(args.targets)!r} names no target")
    else:
        names = [args.target or task_cls.default_target]
    return names


def load_task_class(name: str):
    """A built-in task by name, or 'package.module' / 'path/to/file.py' defining and registering a Task."""
    import importlib
    import importlib.util
    import tasks
    if name.endswith(".py") or "." in name or ":" in name:
        path = name.split(":")[0]
        if path.endswith(".py"):
            spec = importlib.util.spec_from_file_location(Path(path).stem, path)
            if spec is None or not Path(path).exists():
                raise UsageError(f"task file {path} not found")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(path)
        found = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, tasks.Task)
                 and v is not tasks.Task]
        if not found:
            raise UsageError(f"{name} defines no tasks.Task subclass")
        return found[-1]
    try:
        return tasks.task_class(name)
    except KeyError as e:
        raise UsageError(e.args[0])


def prepare_out_dir(args, s: Settings, targets: list[str]) -> Path:
    """Lock the run folder, then write config.json for a new run, or check it for --resume. Only a folder whose
    search has saved its state is taken: one left by a start that failed (bad --model, failed download) is
    simply reused by the next command, which may then change any setting."""
    config = dict(settings=dataclasses.asdict(s), targets=targets, code=code_version())
    out = Path(args.resume or args.out or f"runs/{s.task}-{s.strategy}-seed{s.seed}")
    if args.resume:
        saved = read_config(out)  # before the lock: a folder that is no run folder is not created or touched
        lock_folder(out)
        if started(out, saved["targets"]):
            check_same_settings(out, saved, config)
            note_resuming_code(out, saved, config["code"])
            return out
    else:
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
    given = {k: v for k, v in config["settings"].items() if k not in ("target",)}
    # a setting missing from the saved config was added to the code after the run began: it takes its value
    differs = [k for k, v in given.items() if k in saved["settings"] and saved["settings"][k] != v]
    if differs:
        k = differs[0]
        raise UsageError(f"{out} was run with {k}={saved['settings'].get(k)!r}, not {given[k]!r}; "
                         "resume with the same settings or choose another --out")


def read_config(out: Path) -> dict:
    try:
        return json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        raise UsageError(f"{out} is not a run folder (no readable config.json)")


def settings_from_resume(args) -> argparse.Namespace:
    """For --resume: the saved command-line choices, with any flag the user gave on top (checked later)."""
    saved = read_config(Path(args.resume))
    st = saved["settings"]
    args.task, args.strategy, args.model = st["task"], st["strategy"], args.model or st["model"]
    args.targets = ",".join(saved["targets"])
    args.target = None
    for name in SETTING_FLAGS:
        if getattr(args, name) is None:
            setattr(args, name, st.get(name))  # None for a setting newer than the run: its default
    args.no_early_stop = args.no_early_stop or not st["early_stop"]
    args.arc_data = args.arc_data or st["task_options"].get("arc_data")
    args.device, args.dtype = args.device or st["device"], args.dtype or st["dtype"]
    return args


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


def cpu_demo(s: Settings, args, d) -> str:
    """On CPU, unless --full, --iterations or --budget was given: the task's demo settings (fewer iterations,
    shorter answers, a smaller update micro-batch: the same update in less memory) so that a first run ends in
    minutes on a laptop; a flag the user gave wins. Returns the note that says so, and how to get the paper's."""
    if s.device != "cpu" or args.full or args.iterations is not None or args.budget is not None:
        return ""
    for name in ("iterations", "max_new_tokens", "micro_batch"):
        if getattr(args, name) is None and f"demo_{name}" in d.extra:
            setattr(s, name, d.extra[f"demo_{name}"])
    if (s.iterations, s.max_new_tokens) == (d.iterations, d.max_new_tokens):
        return ""
    return (f"\nthis is the CPU demo; the paper's {d.iterations} iterations of {d.max_new_tokens} tokens: --full "
            "(it will say how long)")


def set_cpu_threads(flag: int | None) -> str:
    """torch's CPU threads: --threads, else OMP_NUM_THREADS, else the cores this process may use less those the
    1-minute load average shows busy (whole cores), shared among torchrun's local processes. Runs that share a
    machine then do not oversubscribe it, which would slow each of them down. Returns the note that says so."""
    import torch
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()  # macOS has none
    load = os.getloadavg()[0]
    if flag is not None and flag < 1:
        raise UsageError(f"--threads must be positive, got {flag}")
    if flag:
        n, why = flag, "--threads"
    elif os.environ.get("OMP_NUM_THREADS"):
        n, why = torch.get_num_threads(), "OMP_NUM_THREADS"
    else:
        n = max(1, (cores - int(load)) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
        why = f"{cores} cores, load {load:.1f}; --threads N to change"
    torch.set_num_threads(n)
    return f", {n} thread{'s' * (n > 1)} ({why})"


def rank_device(device: str) -> str:
    """torchrun starts one process per GPU: each takes the GPU of its LOCAL_RANK, not every rank cuda:0."""
    import torch
    if device != "cuda" or "LOCAL_RANK" not in os.environ:
        return device
    local = int(os.environ["LOCAL_RANK"])
    if local >= torch.cuda.device_count():
        raise UsageError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPUs are visible")
    torch.cuda.set_device(local)
    return f"cuda:{local}"


def on_rank0(fn, world: int):
    """fn() on rank 0 only; its result, or its UsageError, reaches every rank."""
    result, error = None, None
    if int(os.environ.get("RANK", 0)) == 0:
        try:
            result = fn()
        except (UsageError, RunFolderError) as e:
            error = str(e)
    if world > 1:
        import torch.distributed as dist
        box = [result, error]
        dist.broadcast_object_list(box, src=0)
        result, error = box
    if error:
        raise UsageError(error)
    return result


def main(argv=None) -> int:
    from assets import AssetError
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (UsageError, RunFolderError, AssetError) as e:
        print(f"migrate.py: error: {e}", file=sys.stderr)
        return 2


def run(args) -> int:
    import torch
    from checkpoint import ModelLoadError, load_model
    if args.resume:
        args = settings_from_resume(args)
    task_cls = load_task_class(args.task)
    s = resolve_settings(args, task_cls)
    s.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    s.dtype = args.dtype or ("bfloat16" if s.device == "cuda" else "float32")
    demo = cpu_demo(s, args, task_cls.defaults)
    targets = expand_targets(args, task_cls)
    tasks_by_target = {}
    for t in targets:  # build every task first: a bad target fails before any work starts
        try:
            tasks_by_target[t] = task_cls(t, **s.task_options)
        except ValueError as e:
            raise UsageError((str(e).splitlines() or [f"bad target {t!r}"])[0].replace(t, short(t)))
    threads = set_cpu_threads(args.threads) if s.device == "cpu" else ""
    if not args.quiet:
        print(f"{s.strategy} on {task_cls.name} ({short(', '.join(targets))}): up to {s.iterations} iterations of "
              f"{s.group_size} members, {s.max_new_tokens} new tokens each, on {s.device}{threads}{demo}",
              file=sys.stderr)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:  # torchrun: ranks only share the run folder's check and wait for each other at the end
        import datetime
        import torch.distributed as dist
        dist.init_process_group("gloo", timeout=datetime.timedelta(days=30))
    out = on_rank0(lambda: prepare_out_dir(args, s, targets), world)
    s = dataclasses.replace(s, device=rank_device(s.device))  # after config.json, which keeps plain "cuda"
    mine = targets[rank::world]
    try:
        model, tokenizer = load_model(s.model, device=s.device, dtype=getattr(torch, s.dtype))
    except ModelLoadError as e:
        raise UsageError(str(e))
    model.eval()
    policy = Policy(model, tokenizer, s)
    try:
        for t in mine:
            search(dataclasses.replace(s, target=t), out / slug(t), policy, tasks_by_target[t], quiet=args.quiet)
    except KeyboardInterrupt:
        print(f"\nstopped; every finished iteration is saved. Continue with: python migrate.py --resume {out}",
              file=sys.stderr)
        return 130
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0:
        write_summary(out, targets)
        if not args.quiet:
            print((out / "summary.md").read_text() + explain_scores(out, targets, task_cls) + f"\nrun folder: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
