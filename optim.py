"""One search's optimiser when many searches share a LoRA bank (model.py): the search owns one slot of every bank
parameter, (S, ...) tensors, and steps it alone.

1. `clip_grad_norm`: torch.nn.utils.clip_grad_norm_ over the search's slot of each gradient: its own norm, its own
   clip coefficient, nothing read from another search's slot.
2. `AdamW`: torch.optim.AdamW's update (its defaults: betas 0.9 / 0.999, eps 1e-8, decoupled weight decay, bias
   correction), op for op as torch's single-tensor loop runs it, over the search's slot, with the search's own
   moments and step count; state_dict / load_state_dict speak torch.optim.AdamW's format, so a run folder's
   state.pt is the same whether one search ran or many.
Both equal torch's on a search run alone (tests/test_optim.py: float32, exactly).

Left out: amsgrad, maximize, foreach/fused kernels, parameter groups.
"""
import torch

BETAS, EPS = (0.9, 0.999), 1e-8


def clip_grad_norm(params: list[torch.Tensor], slot: int, max_norm: float) -> torch.Tensor:
    """Scale the slot's gradients so that their joint 2-norm is at most max_norm; return the norm before."""
    grads = [p.grad[slot] for p in params]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef)
    return total


class AdamW:
    def __init__(self, params: list[torch.Tensor], slot: int, weight_decay: float = 0.0):
        self.params, self.slot, self.weight_decay = params, slot, weight_decay
        self.steps = 0
        self.exp_avg = [torch.zeros_like(p[slot]) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p[slot]) for p in params]

    @torch.no_grad()
    def step(self, lr: float) -> None:
        (beta1, beta2), self.steps = BETAS, self.steps + 1
        bias1, bias2 = 1 - beta1 ** self.steps, 1 - beta2 ** self.steps
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            w, g = p[self.slot], p.grad[self.slot]
            if self.weight_decay:
                w.mul_(1 - lr * self.weight_decay)
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (v.sqrt() / bias2 ** 0.5).add_(EPS)
            w.addcdiv_(m, denom, value=-lr / bias1)

    def state_dict(self) -> dict:
        """torch.optim.AdamW's format: per parameter index its step, exp_avg and exp_avg_sq."""
        state = {i: dict(step=torch.tensor(float(self.steps)), exp_avg=m.clone(), exp_avg_sq=v.clone())
                 for i, (m, v) in enumerate(zip(self.exp_avg, self.exp_avg_sq)) if self.steps}
        group = dict(lr=0.0, betas=BETAS, eps=EPS, weight_decay=self.weight_decay, amsgrad=False,
                     params=list(range(len(self.params))))
        return dict(state=state, param_groups=[group])

    def load_state_dict(self, saved: dict) -> None:
        state = saved["state"]
        if state and len(state) != len(self.params):
            raise ValueError(f"optimiser state holds {len(state)} parameters, the adapter has {len(self.params)}")
        self.steps = int(state[0]["step"]) if state else 0
        for i, (m, v) in enumerate(zip(self.exp_avg, self.exp_avg_sq)):
            if state:
                m.copy_(state[i]["exp_avg"])
                v.copy_(state[i]["exp_avg_sq"])
            else:
                m.zero_()
                v.zero_()
