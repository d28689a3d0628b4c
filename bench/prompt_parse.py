"""How often SmolLM2-135M-Instruct answers the word-search prompts in a form the task can use, naive prompt
against ours, printed side by side in one run.

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
    # stopping at the list's end saves time and changes nothing: the parser ignores text after the list
    out = generate(model, [ids] * n, max_new, temperature=1.0, eos_ids=tok.eos_ids, decode=tok.decode,
                   stop=('"]',), generator=gen)
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
              f"e.g. {r['sample'][0][:80]!r}", flush=True)


if __name__ == "__main__":
    main()
