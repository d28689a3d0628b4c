"""A search's optimiser over its slot of a LoRA bank equals torch's AdamW and clip_grad_norm_ on the same search
run alone (float32: exactly, step after step), and touches no other slot."""
import pytest
import torch

from optim import AdamW, clip_grad_norm

SHAPES = [(4, 6), (5, 4)]


def bank_and_twin(slot, seed=0):
    g = torch.Generator().manual_seed(seed)
    bank = [torch.randn(3, *shape, generator=g).requires_grad_(True) for shape in SHAPES]
    alone = [p.detach()[slot].clone().requires_grad_(True) for p in bank]
    return bank, alone


@pytest.mark.parametrize("weight_decay,max_norm", [(0.0, 1.0), (0.01, 0.05), (0.0, float("inf"))])
def test_a_slot_steps_exactly_as_torch_adamw_steps_the_search_alone(weight_decay, max_norm):
    slot = 1
    bank, alone = bank_and_twin(slot)
    others = [p.detach()[[0, 2]].clone() for p in bank]
    ours = AdamW(bank, slot, weight_decay=weight_decay)
    theirs = torch.optim.AdamW(alone, lr=1.0, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(1)
    for step, lr in enumerate((1e-2, 5e-3, 2e-3, 0.0)):
        grads = [torch.randn(shape, generator=g) * (step + 1) for shape in SHAPES]
        for p, a, gr in zip(bank, alone, grads):
            p.grad = torch.zeros_like(p)
            p.grad[slot] = gr
            a.grad = gr.clone()
        norm = clip_grad_norm(bank, slot, max_norm)
        assert torch.equal(norm, torch.nn.utils.clip_grad_norm_(alone, max_norm))
        ours.step(lr)
        for group in theirs.param_groups:
            group["lr"] = lr
        theirs.step()
        for p, a in zip(bank, alone):
            assert torch.equal(p.detach()[slot], a.detach()), step
    for p, before in zip(bank, others):
        assert torch.equal(p.detach()[[0, 2]], before)  # the other searches' adapters never move


def test_state_dict_is_torch_adamws_and_round_trips():
    bank, alone = bank_and_twin(0)
    ours, theirs = AdamW(bank, 0), torch.optim.AdamW(alone, lr=1e-3)
    for p, a in zip(bank, alone):
        p.grad, a.grad = torch.ones_like(p), torch.ones_like(a)
    ours.step(1e-3)
    theirs.step()
    mine, torchs = ours.state_dict(), theirs.state_dict()
    assert mine["state"].keys() == torchs["state"].keys()
    for i in torchs["state"]:
        for k in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(mine["state"][i][k], torchs["state"][i][k]), (i, k)
    again = AdamW(bank, 2)
    again.load_state_dict(torchs)  # a state.pt written by torch's AdamW resumes in any slot
    assert again.steps == 1 and all(torch.equal(m, n) for m, n in zip(again.exp_avg, ours.exp_avg))
    fresh = AdamW(bank, 1)
    fresh.load_state_dict(AdamW(bank, 1).state_dict())  # before any step: nothing saved, nothing loaded
    assert fresh.steps == 0
    with pytest.raises(ValueError, match="holds 1 parameters"):
        AdamW(bank, 0).load_state_dict(dict(state={0: mine["state"][0]}, param_groups=[]))
