"""Many searches in one process give what each gives alone: the same groups, scores and records (the update's
floats within 1e-5, relative), and adapters within 1e-4, whether they share the sampler and the update (lockstep),
leave early, wait for a slot, or are stopped and resumed. Tiny models on CPU, float32; the scripted sampler of
test_loop and the real one. Why 1e-4 for adapters: a batched product sums in another order than a lone one (float32
rounding, 1e-7), and AdamW divides each step by the root of the squared gradient, so an entry whose gradient is
near zero can turn that rounding into a few thousandths of a step (lr here is 3e-2)."""
import dataclasses
import json
import math

import pytest
import torch

import loop
from checkpoint import read_safetensors
from tests.test_loop import FruitTask, scripted, setup  # noqa: F401  (scripted is a fixture)
from tests.test_train import CountA, make_policy, started

SEEDS = (0, 1, 2)


def records(run_dir):
    """The run's records without timings and the lockstep mark, which say how it ran, not what it found."""
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(l).items() if not k.startswith("time_") and k != "lockstep"}
            for l in lines]


def assert_same_records(got, want, rel=1e-5):
    """Equal records; floats of the update (loss, gradient norm, ratios) within float32 rounding."""
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], float) and not isinstance(b[k], bool):
                assert math.isclose(a[k], b[k], rel_tol=rel, abs_tol=1e-7), (k, a[k], b[k])
            else:
                assert a[k] == b[k], (a["iteration"], k)


def sweep(strategy, folder, seeds=SEEDS, slots=None, iterations=(5, 5, 5), **overrides):
    """The searches of `seeds` (iteration caps `iterations`) in one process, `slots` of them at a time."""
    s, policy = make_policy(strategy, adapters=slots or len(seeds), **overrides)
    searches = [loop.Search(dataclasses.replace(s, seed=k, target=f"t{k}", iterations=n, patience=n),
                            CountA("x"), folder / f"t{k}") for k, n in zip(seeds, iterations)]
    return loop.search(policy, searches, quiet=True)


def alone(strategy, folder, seed, iterations=5, **overrides):
    s, policy = make_policy(strategy, **overrides)
    s = dataclasses.replace(s, seed=seed, target=f"t{seed}", iterations=iterations, patience=iterations)
    return loop.search(policy, [loop.Search(s, CountA("x"), folder / f"t{seed}")], quiet=True)[0]


def assert_same_runs(a, b, seeds=SEEDS):
    for k in seeds:
        assert_same_records(records(a / f"t{k}"), records(b / f"t{k}"))
        if (b / f"t{k}" / "adapter.safetensors").exists():
            mine, theirs = read_safetensors(a / f"t{k}" / "adapter.safetensors"), \
                read_safetensors(b / f"t{k}" / "adapter.safetensors")
            for name in theirs:
                torch.testing.assert_close(mine[name], theirs[name], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("strategy", ["grpo", "migrate", "migrate-evo", "random", "discover"])
def test_searches_in_lockstep_equal_the_same_searches_alone(tmp_path, strategy):
    """Three searches of different seeds, the real sampler and update, float32; one of them stops after two
    iterations and the others go on without it. migrate's groups differ in size between searches (no greedy
    member before a search has a parent), so both LoRA paths run (blocks of equal and of other sizes)."""
    iterations = (5, 2, 5)
    sweep(strategy, tmp_path / "lockstep", iterations=iterations)
    for k, n in zip(SEEDS, iterations):
        alone(strategy, tmp_path / "alone", k, iterations=n)
    assert_same_runs(tmp_path / "lockstep", tmp_path / "alone")
    lockstep = [json.loads(l) for l in (tmp_path / "lockstep" / "t0" / "history.jsonl").read_text().splitlines()]
    assert [r.get("lockstep") for r in lockstep[1:]] == [3, 3, 2, 2, 2]  # t1 left after iteration 2


def test_more_searches_than_slots_wait_and_take_a_freed_slot(tmp_path):
    """Two slots for three searches: the third starts in the slot of the first to finish, from its own seed."""
    sweep("grpo", tmp_path / "lockstep", slots=2, iterations=(2, 4, 3))
    for k, n in zip(SEEDS, (2, 4, 3)):
        alone("grpo", tmp_path / "alone", k, iterations=n)
    assert_same_runs(tmp_path / "lockstep", tmp_path / "alone")


def test_a_stopped_lockstep_sweep_resumes_to_the_unbroken_one(tmp_path, monkeypatch):
    sweep("migrate", tmp_path / "whole")
    real, calls = loop.run_iteration, []

    def stop_after_two(*a, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(loop, "run_iteration", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        sweep("migrate", tmp_path / "broken")
    monkeypatch.setattr(loop, "run_iteration", real)
    sweep("migrate", tmp_path / "broken")  # a fresh process: new model and bank, states from disk
    assert_same_runs(tmp_path / "broken", tmp_path / "whole")


def test_lockstep_with_the_scripted_sampler_keeps_each_search_its_own_history(scripted, tmp_path):
    """No model: the plans, parents, scores and budgets of three searches of different seeds and budgets."""
    s, task, policy, _ = setup("migrate", budget=12)
    s.iterations = s.patience = 6
    sweep_policy = loop.Policy(None, policy.tok, s, generate=policy.generate, adapters=3)
    searches = [loop.Search(dataclasses.replace(s, seed=k, target=f"t{k}", budget=b), FruitTask("x"),
                            tmp_path / "lockstep" / f"t{k}") for k, b in zip(SEEDS, (12, 9, 20))]
    loop.search(sweep_policy, searches, quiet=True)
    for k, b in zip(SEEDS, (12, 9, 20)):
        one = dataclasses.replace(s, seed=k, target=f"t{k}", budget=b)
        loop.search(loop.Policy(None, policy.tok, one, generate=policy.generate),
                    [loop.Search(one, FruitTask("x"), tmp_path / "alone" / f"t{k}")], quiet=True)
        assert records(tmp_path / "lockstep" / f"t{k}") == records(tmp_path / "alone" / f"t{k}")


def answers(words):
    """Members answering the on-policy prompt with these words, rewarded by their share of "a"."""
    return [loop.Member("on-policy", "on-policy", text=">" + w, reward=w.count("a") / len(w)) for w in words]


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-4), ("bfloat16", 1e-1)])
def test_one_lockstep_update_moves_each_adapter_as_its_update_alone(dtype, tol):
    """The same groups, one update of mu = 2 steps: each adapter moves as alone, within 1e-4 of the step's size in
    float32 and 1e-1 in bfloat16 (base weights; adapters and optimiser float32)."""
    def group(k):
        return answers((("aab", "bbb", "abb", "aaa"), ("ab", "ba", "aaab", "bbbb"), ("a", "bb", "aba", "baa"))[k])

    s, bank = make_policy("grpo", adapters=3, dtype=dtype)
    searches = [started(dataclasses.replace(s, seed=k), bank, slot=k) for k in SEEDS]
    before = [bank.adapter(x) for x in searches]
    loop.grpo_update(bank, [(x, group(k)) for k, x in enumerate(searches)])
    for k, x in enumerate(searches):
        s1, one = make_policy("grpo", dtype=dtype)
        y = started(dataclasses.replace(s1, seed=k), one)
        loop.grpo_update(one, [(y, group(k))])
        got, want = bank.adapter(x), one.adapter(y)
        for name in want:
            step = (want[name] - before[k][name]).abs().max()
            assert step > 0, name
            assert (got[name] - want[name]).abs().max() <= tol * step, name


def test_width_buckets_hold_groups_within_the_slack_of_their_narrowest():
    # widths sorted: 7 (0), 7 (4), 9 (2), 11 (5), 20 (3), 21 (1); 9 > 1.25 x 7, 11 <= 1.25 x 9, 20 > 1.25 x 9
    assert loop.width_buckets([7, 21, 9, 20, 7, 11], slack=1.25) == [[0, 4], [2, 5], [1, 3]]
    assert loop.width_buckets([7, 21, 9], slack=float("inf")) == [[0, 1, 2]]
    assert loop.width_buckets([5]) == [[0]]


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("bfloat16", 5e-2)])
def test_an_update_in_width_buckets_equals_one_pass_of_every_group(monkeypatch, dtype, tol):
    """Groups of completions 1-2 and 9-10 tokens wide (two buckets) against one pass padding all to the widest
    (the slow twin), one step: each search's loss and gradient are the same, within 1e-5 of the largest in
    float32, 5e-2 in bfloat16 (base weights; the adapters float32)."""
    def group(k):
        return answers((("ab", "b", "a", "bb"), ("aabababbab", "bbbbababa", "abababab", "aaaabbbba"))[k])

    def update(buckets):
        s, bank = make_policy("grpo", adapters=2, dtype=dtype, mu=1)
        searches = [started(dataclasses.replace(s, seed=k), bank, slot=k) for k in (0, 1)]
        with monkeypatch.context() as m:
            m.setattr(loop, "width_buckets", buckets)
            out = loop.grpo_update(bank, [(x, group(k)) for k, x in enumerate(searches)])
        return [o["loss"] for o in out], [p.grad.clone() for p in bank.params]  # grads: the step's, clipped

    passes, width_buckets = [], loop.width_buckets
    losses, grads = update(lambda widths: passes.append(width_buckets(widths)) or passes[-1])
    assert passes[0] == [[0], [1]]
    want_losses, want_grads = update(lambda widths: [list(range(len(widths)))])
    assert losses == pytest.approx(want_losses, rel=tol)
    for slot in (0, 1):
        assert max(want[slot].abs().max() for want in want_grads) > 0  # B's (A's is 0 while B is 0)
        for got, want in zip(grads, want_grads):
            assert (got[slot] - want[slot]).abs().max() <= tol * want[slot].abs().max()
