"""How often SmolLM2-135M-Instruct answers the word-search prompts in a form the task can use, naive prompt
against ours, printed side by side in one run.

For each prompt, N completions are sampled at temperature 1 (the loop's setting) and parsed with the task's own
parser. Printed per prompt: `usable`, the fraction of completions holding at least one real word (an entry of the
encoder's vocabulary, 2+ letters); `copied`, the fraction whose words are all copied from the prompt's example;
`distinct`, the number of different words found; `reward`, the mean completion reward (best word's score) for the
target. The naive prompts are the paper's plain format: a JSON list with placeholder words and no response prefix.

    python bench/prompt_parse.py                    # 64 completions per prompt, target "computer", CPU
    python bench/prompt_parse.py --n 128 --seed 1 --device cuda

Left out: training (this measures the untrained policy, the start of every run), OPRO prompts (their text
depends on a run's history).
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import checkpoint  # noqa: E402
from sampler import generate  # noqa: E402
from tasks import Prompt  # noqa: E402
from tasks.wordsearch import EXAMPLE, WordSearch, vocabulary_words  # noqa: E402

NAIVE_FORMAT = 'Respond in JSON format: {"response": ["word1", "word2"]}'


def naive_prompt() -> Prompt:
    return Prompt([{"role": "user", "content": f"Guess the secret word. Give 2 guesses. {NAIVE_FORMAT}"}])


def naive_ns_prompt(seed: str) -> Prompt:
    return Prompt([{"role": "user", "content": f"Give 2 words similar to {seed}. {NAIVE_FORMAT}"}])


def measure(model, tok, task, prompt: Prompt, vocab: set[str], n: int, max_new: int, gen) -> dict:
    ids = tok.encode(tok.chat(prompt.messages, add_generation_prompt=True, assistant_prefix=prompt.prefix))
    out = generate(model, [ids] * n, max_new, temperature=1.0, eos_ids=tok.eos_ids, decode=tok.decode,
                   generator=gen)
    parsed = [task.parse(prompt.prefix + text) for text in out.text]
    usable = [any(w in vocab for w in words) for words in parsed]
    copied = [bool(words) and all(w in EXAMPLE for w in words) for words in parsed]
    found = sorted({w for words in parsed for w in words})
    scores = dict(zip(found, task.score(found)))
    rewards = [max((scores[w] for w in words), default=0.0) for words in parsed]
    return {"usable": sum(usable) / n, "copied": sum(copied) / n, "distinct": len(found),
            "reward": sum(rewards) / n, "sample": out.text[:3]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=64, help="completions per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--target", default="computer")
    ap.add_argument("--seed-word", default="keyboard", help="the seed shown in the neighbourhood prompts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=None, help="model folder or .gguf [SmolLM2-135M-Instruct]")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    model, tok = checkpoint.load_model(args.model, device=args.device)
    task = WordSearch(args.target)
    vocab = set(vocabulary_words(task.vocabulary_path(), min_len=2))
    prompts = {"on-policy naive": naive_prompt(), "on-policy ours": task.prompt(),
               "NS naive": naive_ns_prompt(args.seed_word), "NS ours": task.neighbourhood_prompt(args.seed_word)}
    print(f"{'prompt':<16} {'usable':>7} {'copied':>7} {'distinct':>8} {'reward':>7}   "
          f"(n={args.n}, target={args.target}, seed={args.seed})")
    for name, prompt in prompts.items():
        gen = torch.Generator(args.device).manual_seed(args.seed)  # same random stream for every prompt
        r = measure(model, tok, task, prompt, vocab, args.n, args.max_new_tokens, gen)
        print(f"{name:<16} {r['usable']:>7.2f} {r['copied']:>7.2f} {r['distinct']:>8d} {r['reward']:>7.3f}   "
              f"e.g. {r['sample'][0]!r}", flush=True)


if __name__ == "__main__":
    main()
