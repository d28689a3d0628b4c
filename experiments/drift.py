"""How far test-time training moved the policy: KL(trained || base) per token, on the trained policy's own answers.

For each finished training run in the given experiment folders' run folders that still holds its adapter
(adapter.safetensors stays out of git, so this runs on the machine that finished the run) and has no drift.json
yet: sample --samples answers to the task's on-policy prompt with the run's adapter, then teacher-force them
through the model with the adapter on and off (model.lora_disabled, the switch the KL penalty uses) and write
drift.json beside best.json:
  kl_per_token   mean over answer tokens of KL(p_trained || p_base), the full next-token distributions;
  logratio       mean over answer tokens of log p_trained(token) - log p_base(token) (how much likelier the
                 trained policy made its own answers);
  tokens         how many answer tokens the means are over.
Then it packs each experiment's records, so the committed runs.jsonl.gz carries the measurements, and the
report's dynamics.md gives the mean of kl_per_token per strategy. The answers are sampled with the model's own
float32 weights (not the sampler's int4 ones), so the KL is the trained policy's, not the sampler's.

    python -m experiments.drift results/wordsearch-paper --samples 16 --threads 1
"""
import argparse
import json
from dataclasses import fields
from pathlib import Path

import torch

from checkpoint import load_model, read_safetensors
from experiments.records import RUNS, pack, sweep_folders
from loop import Policy
from model import load_lora_state_dict, lora_disabled
from rundir import read_config
from sampler import generate
from settings import Settings
from tasks import load_task_class


def answer_logprobs(model, prompt: list[int], answer: list[int]) -> torch.Tensor:
    """(len(answer), V) float32 log-probabilities of the next token at each answer position."""
    ids = torch.tensor([prompt + answer[:-1]])
    logits = model(ids)[0, len(prompt) - 1:]  # the states that predict each answer token
    return logits.float().log_softmax(-1)


@torch.no_grad()
def policy_drift(model, prompt: list[int], answers: list[list[int]]) -> dict:
    """KL(adapter on || adapter off) and the log-ratio of the answers' own tokens, averaged over their tokens."""
    kl = logratio = 0.0
    tokens = 0
    for answer in answers:
        if not answer:
            continue
        trained = answer_logprobs(model, prompt, answer)
        with lora_disabled(model):
            base = answer_logprobs(model, prompt, answer)
        kl += float((trained.exp() * (trained - base)).sum())
        y = torch.tensor(answer)[:, None]
        logratio += float((trained.gather(1, y) - base.gather(1, y)).sum())
        tokens += len(answer)
    return dict(kl_per_token=kl / max(tokens, 1), logratio=logratio / max(tokens, 1), tokens=tokens)


def run_settings(config: dict) -> Settings:
    known = {f.name for f in fields(Settings)}
    return Settings(**{k: v for k, v in config["settings"].items() if k in known})


def runs_to_measure(folders: list[Path]):
    """(sweep config, run folder) of every finished training run with an adapter and without drift.json."""
    for folder in folders:
        for sweep in sweep_folders(folder):
            config = read_config(sweep)
            if not config["settings"].get("update", False):
                continue
            for run in sorted(p.parent for p in sweep.glob("*/adapter.safetensors")):
                if (run / "best.json").exists() and not (run / "drift.json").exists():
                    yield config, run


def measure(folders: list[Path], samples: int, seed: int = 0) -> int:
    """Write drift.json for every run that needs one; returns how many were written."""
    policies, written = {}, 0
    for config, run in runs_to_measure(folders):
        s = run_settings(config)
        key = (s.model, s.lora_r, s.lora_alpha)
        if key not in policies:  # one model per checkpoint and LoRA shape, its adapter swapped per run
            model, tok = load_model(s.model)
            policies[key] = Policy(model.eval(), tok, s)
        policy = policies[key]
        model, tok = policy.model, policy.tok
        load_lora_state_dict(model, read_safetensors(run / "adapter.safetensors"))
        task = load_task_class(s.task)(json.loads((run / "best.json").read_text()).get("target", run.name),
                                       **s.task_options)
        prompt = policy.prompt_ids(task.prompt())
        out = generate(model, [prompt] * samples, s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                       eos_ids=tok.eos_ids, generator=torch.Generator().manual_seed(seed), weights="model")
        result = dict(policy_drift(model, prompt, out.tokens), samples=samples, seed=seed)
        (run / "drift.json").write_text(json.dumps(result) + "\n")
        print(f"{run}: KL {result['kl_per_token']:.5f} per token, log-ratio {result['logratio']:+.5f} "
              f"over {result['tokens']} tokens", flush=True)
        written += 1
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m experiments.drift", description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path, help="experiment folders (--out of python -m experiments)")
    ap.add_argument("--samples", type=int, default=16, help="answers sampled per run")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    args = ap.parse_args(argv)
    for folder in args.folders:  # a sweep folder (…-seed0), or records without run folders, would measure nothing
        if not sweep_folders(folder):
            ap.error(f"{folder} holds no run folders ({RUNS}/*-seedN/config.json): pass an experiment folder "
                     "(--out of python -m experiments) on the machine that made its runs")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"wrote {measure(args.folders, args.samples)} drift.json files")
    for folder in args.folders:
        if pack(folder):
            print(f"packed the runs' records into {folder}/runs.jsonl.gz")


if __name__ == "__main__":
    main()
