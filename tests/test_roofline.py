"""bench/roofline.py's counting: the matrix products it counts from the shapes are the ones torch runs (FLOPs of
every aten::mm the profiler records in the update's forward and backward and in a prefill, on a tiny model with
LoRA), its weight bytes are the model's, and its timer keeps the fastest call after the warm-up."""
import torch
from torch.profiler import ProfilerActivity, profile

import sampler
from bench.roofline import LORA_TARGETS, Shapes, best_time, block_linears, phase_bytes, phase_products
from grpo import completion_logprobs, grpo_loss
from model import add_lora
from tests.tiny_model import tiny_model


def recorded_flops(prof) -> int:
    """2 m k n of every matrix product of two 2-D operands the profiler saw."""
    total = 0
    for e in prof.events():
        shapes = e.input_shapes
        if e.name == "aten::mm":
            (m, k), (_, n) = shapes[0], shapes[1]
        elif e.name == "aten::addmm":
            (m, k), (_, n) = shapes[1], shapes[2]
        else:
            continue
        total += 2 * m * k * n
    return total


def matrix_flops(products) -> int:
    """Counted FLOPs of the 2-D products (attention's batched ones run inside SDPA, which records no mm)."""
    return sum(p.flops for p in products if p.batch == 1)


def test_counted_products_are_the_ones_torch_runs():
    model = tiny_model()
    s = Shapes(prompt=7, answers=3, answer_tokens=5, context=12, lora_r=4)
    add_lora(model, targets=LORA_TARGETS, r=s.lora_r, alpha=8)
    model.train()
    prompt = torch.arange(1, s.prompt + 1)
    g = torch.Generator().manual_seed(0)
    answers = torch.randint(0, model.cfg.vocab_size, (s.answers, s.answer_tokens), generator=g)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as fwd:
        logp = completion_logprobs(model, [prompt], answers, [s.answers], shared=True)
        loss = grpo_loss(logp, logp.detach(), torch.tensor([1.0, -0.5, -0.5]), torch.ones(answers.shape))[0]
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as bwd:
        loss.backward()
    model.eval()
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as pre:
        sampler._prefill(model, [prompt.tolist()], "cpu")
    counted = phase_products(model.cfg, s)
    assert recorded_flops(fwd) == matrix_flops(counted["update forward"]) > 0
    assert recorded_flops(bwd) == matrix_flops(counted["update backward"]) > 0
    assert recorded_flops(pre) == matrix_flops(counted["prefill"]) > 0


def test_weight_bytes_are_the_models():
    model = tiny_model()
    s = Shapes(prompt=7, answers=3, answer_tokens=5, context=12, lora_r=4)
    adapter = sum(p.numel() for p in add_lora(model, targets=LORA_TARGETS, r=s.lora_r, alpha=8))
    linears = sum(p.numel() for n, p in model.named_parameters() if n.endswith("proj.weight"))
    head = model.lm_head.weight.numel()
    cfg = model.cfg
    kv = 2 * cfg.n_layers * cfg.n_kv_heads * s.context * cfg.head_dim
    assert phase_bytes(cfg, s, 4)["decode, 1 row"] == 4 * (linears + adapter + head + kv)
    assert phase_bytes(cfg, s, 2)["prefill"] == 2 * (linears + head) + 4 * adapter  # adapters stay float32
    assert phase_bytes(cfg, s, 2)["optimiser"] == 10 * 4 * adapter
    assert sum(k * n for k, n in block_linears(cfg).values()) * cfg.n_layers == linears


def test_best_time_is_the_fastest_call_after_the_warm_up():
    readings = iter([0, 10, 10, 13, 13, 15, 15, 19])  # calls of 10 (warm-up), 3, 2 and 4 seconds

    def clock():
        return next(readings)
    assert best_time(lambda _: None, clock, repeats=3, budget=100) == 2
    slow = iter([0, 50])  # a warm-up over the budget is the only call, and it counts
    assert best_time(lambda _: None, lambda: next(slow), repeats=3, budget=5) == 50
