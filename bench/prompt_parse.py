"""How often SmolLM2-135M-Instruct answers the word-search or molecule prompts in a form the task can use, a
baseline prompt against ours, printed side by side in one run.

For each prompt, N completions are sampled at temperature 1 (the loop's setting) and parsed with the task's own
parser. Printed per prompt: `usable`, the fraction of completions holding at least one real word (an entry of the
encoder's vocabulary, 2+ letters); `copied`, the fraction whose words all come from our prompts' example words
(the naive prompts' placeholders "word1", "word2" are not words: copying them already counts as unusable);
`distinct`, the number of different words found; `reward`, the mean completion reward (best word's score) for the
target. The naive prompts are the paper's plain format: a JSON list with placeholder words and no response prefix.

Measured on CPU with the defaults (n=64, seed 0, target computer), usable / copied / distinct:
on-policy naive 0.23 / - / 22, ours 0.92 / 0.00 / 113; NS naive 0.20 / - / 23, ours 0.80 / 0.09 / 77.
An earlier on-policy prompt with the example inside the instructions reached 0.94 usable but copied it 77% of
the time (22 distinct words); moving the example into a past "wrong" answer fixed that.

    python bench/prompt_parse.py                    # 64 completions per prompt, target "computer", CPU
    python bench/prompt_parse.py --n 128 --seed 1 --device cuda

Molecules (`--task molecule`, target rediscover:celecoxib, seed molecule aspirin, 256 new tokens, stop at '"]'):
`usable` is the fraction of completions holding at least one new valid molecule (task.parse keeps only SMILES that
RDKit reads; new: not written anywhere in the prompt), `copied` the fraction whose valid molecules all appear in
the prompt (its examples, the NS seed), `distinct` the number of different new molecules, `reward` the loop's
mean completion reward (copies included). The baseline ("before") is the task's earlier prompts, kept in this
file: the examples procaine and indole in the instructions. Ours shows small acyclic examples as earlier
assistant answers ("Good. Propose 5 more new molecules, different from these.") and, for NS, two worked
seed-to-variations answers before the real seed. Measured at 5 molecules per answer (MoleculeTask(n=5)), on CPU,
OMP_NUM_THREADS=1, n=64, seed 0 (seed 1 in brackets), usable / copied / distinct / reward:

    on-policy before  0.11 / 0.06 /  6 / 0.009   (0.20 / 0.14 / 10 / 0.021)
    on-policy ours    0.41 / 0.02 / 33 / 0.016   (0.42 / 0.03 / 34 / 0.020)
    NS before         0.06 / 0.00 /  6 / 0.002   (0.06 / 0.06 /  3 / 0.005)
    NS ours           0.38 / 0.03 / 26 / 0.032   (0.36 / 0.11 / 27 / 0.046)

At one molecule per answer (n = 1, the task's default as in the released scripts), seeds 0, 1, 2, n=64 each,
usable / copied: the on-policy prompt with two earlier answers of one example each (how the n = 5 prompt read at
n = 1) 0.10 (of 48) / 0.06 / 0.06 usable; with the ten examples as ten earlier answers of one (ours since) 0.27 / 0.30 /
0.22, copied 0.03 / 0.02 / 0.05. The neighbourhood prompt with one worked variation per example (ours) 0.19 / 0.16 /
0.33, copied 0.17 / 0.14 / 0.11; with all five variations shown, 0.27 / 0.31 / 0.22 (copied 0.08 / 0.19 / 0.19),
not distinguishable, so not kept. Seed 0 of "ours" is the default run's (below; its "before" rows, the procaine
and indole prompts at n = 1, gave 0.09 and 0.09); seeds 1 and 2 and the other variants were measured with this
file's measure_molecules on those prompts, in a scratch script, on the same 2-core AVX-512 machine under load.
The rest still fails mostly by writing letters that are not elements ("DISCO(D)=OIL"). Screened and dropped
(16-64 completions, some at 96 new tokens): the word-search recipe (drug-like examples in one past answer marked
"Wrong") 0.00-0.06 usable; small ring-containing examples 0.12; the acyclic examples in the instructions 0.39
usable but 0.31 copied; a third past answer, no better than two; NS with one worked example, as usable but its
new molecules were variations of the example's seed (mean Tanimoto to the real seed 0.06, against 0.20 with two
examples and the seed last). OPRO prompts are not in this bench (their text depends on a run's history); with a
fixed list of three scored small molecules, 96 new tokens, the acyclic example in the instructions gave 0.81
usable, 0.11 copied, against 0.22, 0.03 with the old one.

    OMP_NUM_THREADS=1 python bench/prompt_parse.py --task molecule         # about 8 minutes on one CPU thread
    OMP_NUM_THREADS=1 python bench/prompt_parse.py --weights int4 --batch 10  # the sampler's int4 decode weights

Left out: training (this measures the untrained policy, the start of every run), OPRO prompts (their text
depends on a run's history).
"""
import argparse
import json
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import checkpoint  # noqa: E402
from sampler import generate  # noqa: E402
from tasks import Prompt  # noqa: E402
from tasks.wordsearch import EXAMPLE, WordSearch, vocabulary_words  # noqa: E402

NAIVE_FORMAT = 'Respond in JSON format: {"response": ["word1", "word2"]}'
ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"


def naive_prompt() -> Prompt:
    return Prompt([{"role": "user", "content": f"Guess the secret word. Give 2 guesses. {NAIVE_FORMAT}"}])


def naive_ns_prompt(seed: str) -> Prompt:
    return Prompt([{"role": "user", "content": f"Give 2 words similar to {seed}. {NAIVE_FORMAT}"}])


# -- molecules: the task's prompts before this bench, kept here as the baseline ---------------------------------

BEFORE_EXAMPLES = ["CCN(CC)CCOC(=O)c1ccc(N)cc1", "c1ccc2[nH]ccc2c1"]  # procaine, indole
BEFORE_SYSTEM = {"role": "system", "content": "You are an expert medicinal chemist. You answer with JSON only."}


def before_format(n: int) -> str:
    example = json.dumps({"response": BEFORE_EXAMPLES})
    return f"Answer with a JSON object holding a list of {n} SMILES strings, like {example}"


def before_prompt(task) -> Prompt:
    from tasks.molecule import RESPONSE_PREFIX, describe
    user = (f"Propose {task.n} new molecules that {describe(task.target)}. Write each molecule as a SMILES "
            f"string. {before_format(task.n)}")
    return Prompt([BEFORE_SYSTEM, {"role": "user", "content": user}], RESPONSE_PREFIX)


def before_ns_prompt(task, seed: str) -> Prompt:
    from tasks.molecule import RESPONSE_PREFIX, describe
    user = (f"Here is a molecule: {seed}\nPropose {task.n} new molecules that are small variations of it "
            f"(change, add or remove a few atoms or bonds) and {describe(task.target)}. {before_format(task.n)}")
    return Prompt([BEFORE_SYSTEM, {"role": "user", "content": user}], RESPONSE_PREFIX)


def shown_molecules(prompt: Prompt) -> set[str]:
    """Canonical SMILES of every molecule written anywhere in the prompt (examples, the seed)."""
    from tasks.molecule import canonical_smiles
    pieces = {p.strip(".:") for m in prompt.messages for p in re.split(r'[\s",{}]+', m["content"])}
    return {c for c in map(canonical_smiles, pieces) if c is not None}


# -- measuring -----------------------------------------------------------------------------------------------------

SAMPLING = {"weights": "model", "batch": 0}  # set from --weights and --batch (0: all n rows in one call)


def sample(model, tok, task, prompt: Prompt, n: int, max_new: int, gen) -> list[str]:
    """n completions of one prompt at temperature 1, the response prefix put back in front (as migrate.py)."""
    ids = tok.encode(tok.chat(prompt.messages, add_generation_prompt=True, assistant_prefix=prompt.prefix))
    step = SAMPLING["batch"] or n
    texts = []
    for start in range(0, n, step):
        # stopping at the list's end saves time and changes nothing: the parser ignores text after the list
        out = generate(model, [ids] * min(step, n - start), max_new, temperature=1.0, eos_ids=tok.eos_ids,
                       decode=tok.decode, stop=task.stop, generator=gen, weights=SAMPLING["weights"])
        texts += out.text
    return [prompt.prefix + text for text in texts]


def measure(model, tok, task, prompt: Prompt, vocab: set[str], n: int, max_new: int, gen) -> dict:
    texts = sample(model, tok, task, prompt, n, max_new, gen)
    parsed = [task.parse(text) for text in texts]
    usable = [any(w in vocab for w in words) for words in parsed]
    copied = [bool(words) and all(w in EXAMPLE for w in words) for words in parsed]
    found = sorted({w for words in parsed for w in words})
    scores = dict(zip(found, task.score(found)))
    rewards = [max((scores[w] for w in words), default=0.0) for words in parsed]
    return {"usable": sum(usable) / n, "copied": sum(copied) / n, "distinct": len(found),
            "reward": sum(rewards) / n, "sample": [t[len(prompt.prefix):] for t in texts[:3]]}


def measure_molecules(model, tok, task, prompt: Prompt, n: int, max_new: int, gen) -> dict:
    """As measure, for SMILES. task.parse keeps only RDKit-valid molecules; a molecule is new when the prompt does
    not show it. The reward is the loop's: the best score in the completion, copies included."""
    shown = shown_molecules(prompt)
    texts = sample(model, tok, task, prompt, n, max_new, gen)
    parsed = [task.parse(text) for text in texts]
    new = [[m for m in mols if m not in shown] for mols in parsed]
    valid = sorted({m for mols in parsed for m in mols})
    scores = dict(zip(valid, task.score(valid)))
    rewards = [max((scores[m] for m in mols), default=0.0) for mols in parsed]
    return {"usable": sum(map(bool, new)) / n, "copied": sum(bool(p) and not q for p, q in zip(parsed, new)) / n,
            "distinct": len({m for mols in new for m in mols}), "reward": sum(rewards) / n,
            "sample": [t[len(prompt.prefix):] for t in texts[:3]]}


def wordsearch_bench(args):
    task = WordSearch(args.target or WordSearch.default_target)
    vocab = set(vocabulary_words(task.vocabulary_path(), min_len=2))
    seed = args.seed_word or "keyboard"
    prompts = {"on-policy naive": naive_prompt(), "on-policy ours": task.prompt(),
               "NS naive": naive_ns_prompt(seed), "NS ours": task.neighbourhood_prompt(seed)}
    return task, prompts, lambda model, tok, p, max_new, gen: measure(model, tok, task, p, vocab, args.n, max_new,
                                                                      gen)


def molecule_bench(args):
    from tasks.molecule import MoleculeTask
    task = MoleculeTask(args.target or MoleculeTask.default_target)
    seed = args.seed_word or ASPIRIN
    prompts = {"on-policy before": before_prompt(task), "on-policy ours": task.prompt(),
               "NS before": before_ns_prompt(task, seed), "NS ours": task.neighbourhood_prompt(seed)}
    return task, prompts, lambda model, tok, p, max_new, gen: measure_molecules(model, tok, task, p, args.n,
                                                                                max_new, gen)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="wordsearch", choices=["wordsearch", "molecule"])
    ap.add_argument("--n", type=int, default=64, help="completions per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="[the task's: 64 words, 256 molecules]")
    ap.add_argument("--target", default=None, help="[computer, rediscover:celecoxib]")
    ap.add_argument("--seed-word", default=None, help="the seed shown in the neighbourhood prompts [keyboard, aspirin]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=None, help="model folder or .gguf [SmolLM2-135M-Instruct]")
    ap.add_argument("--weights", default="model", help="sampler weights: model, packed or int4 (quant.py)")
    ap.add_argument("--batch", type=int, default=0, help="rows per sampler call [all n]; the fast weights serve "
                    "at most quant.FAST_ROWS rows, so use the loop's group size (10) to measure them")
    args = ap.parse_args(argv)
    SAMPLING.update(weights=args.weights, batch=args.batch)

    torch.manual_seed(args.seed)
    model, tok = checkpoint.load_model(args.model, device=args.device)
    task, prompts, run = {"wordsearch": wordsearch_bench, "molecule": molecule_bench}[args.task](args)
    max_new = args.max_new_tokens or task.defaults.max_new_tokens
    print(f"{'prompt':<16} {'usable':>7} {'copied':>7} {'distinct':>8} {'reward':>7}   "
          f"(n={args.n}, target={task.target}, seed={args.seed})")
    for name, prompt in prompts.items():
        gen = torch.Generator(args.device).manual_seed(args.seed)  # same random stream for every prompt
        r = run(model, tok, prompt, max_new, gen)
        print(f"{name:<16} {r['usable']:>7.2f} {r['copied']:>7.2f} {r['distinct']:>8d} {r['reward']:>7.3f}   "
              f"e.g. {r['sample'][0][:80]!r}", flush=True)


if __name__ == "__main__":
    main()
