"""The whole loop on a tiny random model: GRPO raises the reward of a toy task, and a stopped run resumes to the
same history as one that was never stopped."""
import json

import pytest
import torch

import loop
from tasks import Preset, Prompt, Task, TaskDefaults, load_task_class
from tests.test_loop import search_one
from tiny_model import tiny_model

CHARS = "abcdefghijklmnopqrstuvwxyz>?"
VOCAB = len(CHARS) + 1


class TinyTokenizer:
    """id 0 ends a turn; id i > 0 is CHARS[i - 1], so "a" is id 1."""
    eos_ids = {0}
    end_of_turn = 0

    def chat(self, messages, add_generation_prompt=True, assistant_prefix="", today=None):
        return "".join(m["content"] for m in messages) + assistant_prefix

    def encode(self, text):
        return [0] if text == "<|im_end|>" else [CHARS.index(c) + 1 for c in text if c in CHARS]

    def decode(self, ids):
        return "".join(CHARS[i - 1] for i in ids if i > 0)


class CountA(Task):
    """Every completion is one candidate; its score is the fraction of its characters that are "a"."""
    name = "count-a"
    defaults = TaskDefaults({"random": Preset(16), "ns": Preset(0, 0, 16), "opro": Preset(0, 0, 16),
                             "grpo": Preset(16), "grpo-greedy": Preset(15, 1, 0), "migrate": Preset(11, 1, 4),
                             "migrate-opro": Preset(11, 1, 4), "migrate-evo": Preset(11, 1, 4, mu=1),
                             "discover": Preset(0, 0, 8, mu=1)},
                            topk=2, mu=2, lr=3e-2, lora_r=4, lora_alpha=8, max_new_tokens=6, iterations=12)

    def prompt(self):
        return Prompt([{"role": "user", "content": "say?"}], prefix=">")

    def neighbourhood_prompt(self, parent):
        return Prompt([{"role": "user", "content": f"like{parent[:4]}?"}], prefix=">")

    def opro_prompt(self, ranked):
        return self.neighbourhood_prompt(ranked[-1][0])

    def parse(self, text):
        body = text.removeprefix(">")
        return [body] if body else []

    def render(self, c):
        return ">" + c

    def score(self, cands):
        return [c.count("a") / len(c) for c in cands]


def make_policy(strategy, adapters=1, **overrides):
    s = loop.resolve_settings(CountA, strategy, {"device": "cpu"})
    s.task, s.target, s.early_stop = "count-a", "x", False
    for k, v in overrides.items():
        setattr(s, k, v)
    torch.manual_seed(0)
    model = tiny_model(seed=1, vocab_size=VOCAB).to(s.device, getattr(torch, s.dtype))
    policy = loop.Policy(model, TinyTokenizer(), s, adapters=adapters)
    return s, policy


def started(s, policy, slot=0):
    """A search of CountA started in a slot (its seed's adapter, a fresh optimiser), before iteration 1."""
    x = loop.Search(s, CountA("x"), None, slot=slot)
    policy.start(x)
    x.state = loop.new_state(s, x.task)
    return x


def strip_timings(records):
    return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in records]


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (bench/gpu.sh runs this there)")


@pytest.mark.parametrize("device,dtype", [("cpu", "float32"), ("cpu", "bfloat16"),
                                          pytest.param("cuda", "bfloat16", marks=CUDA)])
def test_grpo_raises_the_mean_reward(tmp_path, device, dtype):
    """The whole loop, sampler and update included, in float32 and in bfloat16 (the GPU's default dtype), so a
    dtype bug shows up on CPU: the adapter must stay float32 and still learn."""
    s, policy = make_policy("grpo", dtype=dtype, device=device)
    x = loop.Search(s, CountA("x"), tmp_path)
    summary = loop.search(policy, [x], quiet=True)[0]
    records = [json.loads(l) for l in (tmp_path / "history.jsonl").read_text().splitlines()]
    means = [r["mean_reward"] for r in records if r["iteration"] >= 1]
    first, last = sum(means[:3]) / 3, sum(means[-3:]) / 3
    assert last > first + 0.1, means  # with this seed: about 0.04 -> 0.22
    assert records[-1]["loss"] is not None and 0 <= records[-1]["clip_fraction"] <= 1
    assert summary["iterations"] == 12 and (tmp_path / "adapter.safetensors").exists()
    assert policy.model.lm_head.weight.dtype == getattr(torch, dtype)
    assert all(p.dtype == torch.float32 for p in policy.params)
    assert all(v.dtype == torch.float32 for v in x.optimizer.exp_avg + x.optimizer.exp_avg_sq)


def test_inference_only_baseline_does_not_train(tmp_path):
    s, policy = make_policy("random")
    before = [p.clone() for p in policy.model.parameters()]
    search_one(s, tmp_path, policy, CountA("x"))
    assert all(torch.equal(a, b) for a, b in zip(before, policy.model.parameters()))
    assert not (tmp_path / "adapter.safetensors").exists()


@pytest.mark.parametrize("strategy", ["migrate", "migrate-evo"])
def test_stopped_and_resumed_run_equals_an_unbroken_run(tmp_path, monkeypatch, strategy):
    s, policy = make_policy(strategy, iterations=5)
    search_one(s, tmp_path / "whole", policy, CountA("x"))

    real, calls = loop.run_iteration, []

    def stop_after_three(*a, **kw):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(loop, "run_iteration", stop_after_three)
    s, policy = make_policy(strategy, iterations=5)
    with pytest.raises(KeyboardInterrupt):
        search_one(s, tmp_path / "broken", policy, CountA("x"))
    monkeypatch.setattr(loop, "run_iteration", real)
    s, policy = make_policy(strategy, iterations=5)  # a fresh process: new model, state from disk
    search_one(s, tmp_path / "broken", policy, CountA("x"))

    whole = [json.loads(l) for l in (tmp_path / "whole" / "history.jsonl").read_text().splitlines()]
    broken = [json.loads(l) for l in (tmp_path / "broken" / "history.jsonl").read_text().splitlines()]
    assert len(whole) == len(broken) == 6  # the warm start (iteration 0) and five iterations
    assert strip_timings(whole) == strip_timings(broken)


def test_example_task_runs_through_the_loop(tmp_path):
    """The README's fork example, three iterations of MiGrATe on the tiny model."""
    task_cls = load_task_class("examples/digit_sum.py")
    s = loop.resolve_settings(task_cls, "migrate", {"iterations": 3, "device": "cpu"})
    s.task, s.target = "digitsum", "40"
    policy = loop.Policy(tiny_model(seed=2, vocab_size=VOCAB), TinyTokenizer(), s)
    task = task_cls("40")
    assert task.score(["99994", "1"]) == [1.0, 1 - 39 / 40]
    search_one(s, tmp_path, policy, task)
    records = [json.loads(l) for l in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [0, 1, 2, 3]
    assert [m["origin"] for m in records[-1]["members"]].count("neighbourhood") == 2


def test_update_clips_the_gradient_norm_and_uses_adamw_without_weight_decay(tmp_path):
    s, policy = make_policy("grpo", max_grad_norm=1e-3)
    x = started(s, policy)
    assert x.optimizer.weight_decay == 0.0
    members = [loop.Member("on-policy", "on-policy", text=">" + t, reward=r)
               for t, r in (("aab", 2 / 3), ("bbb", 0.0), ("abb", 1 / 3), ("aaa", 1.0))]
    [out] = loop.grpo_update(policy, [(x, members)])
    norm = sum(float(p.grad.pow(2).sum()) for p in policy.params if p.grad is not None) ** 0.5
    assert out["grad_norm"] > 1e-3 and norm == pytest.approx(1e-3, rel=1e-4)  # clipped in place before the step
    assert out["lr"] == pytest.approx(s.lr * (1 - 1 / (12 * 2)))  # the second of 2 x 12 planned steps


def _adapter_grads_after_one_update(**overrides):
    """Adapter gradients of one GRPO step on a fixed group of 5 (3 kept, 2 with reward 0), after a step that
    moved the adapter away from B = 0 so that every LoRA matrix has a gradient."""
    s, policy = make_policy("grpo", mu=1, lr_schedule="constant", max_grad_norm=0.0, **overrides)
    x = started(s, policy)
    with torch.no_grad():
        for p in policy.params[1::2]:  # lora_B
            p.normal_(0, 0.05, generator=torch.Generator().manual_seed(3))
    members = [loop.Member("on-policy", "on-policy", text=">" + t, reward=r)
               for t, r in (("aab", 2 / 3), ("bbbbb", 0.0), ("abb", 1 / 3), ("aaaa", 1.0), ("bb", 0.0))]
    x.optimizer.step = lambda lr: None  # keep the gradients of the step, not its update
    [out] = loop.grpo_update(policy, [(x, members)])
    return out, [p.grad.clone() for p in policy.params]


@pytest.mark.parametrize("overrides", [dict(micro_batch=2), dict(micro_batch=1), dict(grad_checkpoint=True),
                                       dict(micro_batch=3, grad_checkpoint=True)])
def test_micro_batches_and_checkpointing_give_the_whole_group_gradient(overrides):
    """Invariant: gradients accumulated over micro-batches (each loss divided by the whole group's G), and
    gradients through recomputed layers, equal the one-pass gradient of the whole group. float32: 1e-6 relative
    to the largest entry (sums in another order)."""
    ref_out, ref = _adapter_grads_after_one_update()
    out, grads = _adapter_grads_after_one_update(**overrides)
    assert any(g.abs().max() > 0 for g in ref)
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * float(b.abs().max()) + 1e-12)
    assert out["loss"] == pytest.approx(ref_out["loss"], abs=1e-6)
    assert out["clip_fraction"] == pytest.approx(ref_out["clip_fraction"])


def test_micro_batches_cover_every_row_once():
    assert loop.micro_batches(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 6)]
    assert loop.micro_batches(5, 0) == [slice(0, 5)] == loop.micro_batches(5, 9)


@pytest.mark.parametrize("strategy", ["discover", "migrate-entropic", "migrate-puct"])
def test_ttt_discover_and_its_crossings_train_through_the_loop(tmp_path, strategy):
    s, policy = make_policy(strategy, iterations=6, patience=6)
    x = loop.Search(s, CountA("x"), tmp_path)
    loop.search(policy, [x], quiet=True)
    records = [json.loads(l) for l in (tmp_path / "history.jsonl").read_text().splitlines()][1:]
    updates = [r for r in records if r.get("loss") is not None]
    assert updates and all(r["clip_fraction"] == 0.0 for r in updates) == (strategy != "migrate-puct")
    assert all(("beta" in r) == (strategy != "migrate-puct") for r in updates)
    assert x.optimizer.steps == len(updates) * s.mu


def test_discover_trains_each_member_on_the_prompt_that_made_it(tmp_path):
    """MiGrATe trains every member as an answer to the on-policy prompt; TTT-Discover on its own prompt."""
    for strategy, trained_on in (("discover", "likeaab?"), ("migrate", "say?")):
        s, policy = make_policy(strategy)
        x = started(s, policy)
        ns = CountA("x").neighbourhood_prompt("aab")
        members = [loop.Member("neighbourhood", "ns", "aab", text=">" + w, tokens=[], prompt=ns,
                               reward=w.count("a") / len(w)) for w in ("ab", "bab", "aaab", "bb")]
        seen, prompt_ids = [], policy.prompt_ids
        policy.prompt_ids = lambda p: seen.append(p.messages[-1]["content"]) or prompt_ids(p)
        loop.grpo_update(policy, [(x, members)])
        assert trained_on in seen, (strategy, seen)

