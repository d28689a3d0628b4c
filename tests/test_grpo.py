"""GRPO loss against hand-computed values and gradients; fused log-probs against their naive twin."""
import math

import pytest
import torch

from grpo import (completion_logprobs, group_advantages, grpo_loss, naive_token_logprobs,
                  token_logprobs)
from tiny_model import tiny_model


def _grad(loss, x):
    (g,) = torch.autograd.grad(loss, x)
    return g


# ------------------------------------------------------------------------------------------------ advantages

def test_group_advantages_subtract_mean_without_std():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.5, 0.5]))
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, 0.0, 0.0]))
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(2, 2))


# ------------------------------------------------------------------------------------------------ the loss

def _two_member_example():
    """Member 0: A = +0.5, ratios (1, 1.5, 1.2), three tokens. Member 1: A = -0.5, ratios (0.5, 1.0), then a
    padding token (mask 0) whose log-prob is arbitrary."""
    old = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.7, -3.0]])
    delta = torch.tensor([[0.0, math.log(1.5), math.log(1.2)], [math.log(0.5), 0.0, 5.0]])
    logp = (old + delta).requires_grad_()
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    return logp, old, torch.tensor([0.5, -0.5]), mask


def test_loss_two_member_hand_computed():
    """eps_low 0.2, eps_high 0.28, so clip range [0.8, 1.28]; per-token surrogate s = min(rA, clip(r)A):
    member 0 (A = 0.5): r=1 -> 0.5; r=1.5 -> min(0.75, 1.28*0.5=0.64) = 0.64 (clipped); r=1.2 -> 0.6.
        l_0 = -(0.5 + 0.64 + 0.6) / 3 = -0.58
    member 1 (A = -0.5): r=0.5 -> min(-0.25, 0.8*-0.5=-0.4) = -0.4 (clipped); r=1 -> -0.5; pad ignored.
        l_1 = -(-0.4 - 0.5) / 2 = 0.45
    loss = (-0.58 + 0.45) / 2 = -0.065
    d loss / d logp = -r A / (n_i * 2) where unclipped, else 0:
        member 0: (-1*0.5/6, 0, -1.2*0.5/6) = (-1/12, 0, -0.1); member 1: (0, +1*0.5/4, 0) = (0, 0.125, 0)
    """
    logp, old, adv, mask = _two_member_example()
    loss, stats = grpo_loss(logp, old, adv, mask)
    assert loss.item() == pytest.approx(-0.065, abs=1e-6)
    torch.testing.assert_close(_grad(loss, logp), torch.tensor([[-1 / 12, 0.0, -0.1], [0.0, 0.125, 0.0]]))
    # Counted over the 5 real tokens: one high clip (r=1.5, A>0), one low clip (r=0.5, A<0).
    assert stats["clip_high"].item() == pytest.approx(0.2)
    assert stats["clip_low"].item() == pytest.approx(0.2)
    assert stats["clip_fraction"].item() == pytest.approx(0.4)
    assert stats["ratio_mean"].item() == pytest.approx((1 + 1.5 + 1.2 + 0.5 + 1.0) / 5)
    assert stats["kl"].item() == 0.0


def test_clipping_both_sides():
    """The clip stops the gradient only on the side where it binds: r > 1 + eps_high with A > 0 and
    r < 1 - eps_low with A < 0. On the other sides the unclipped (pessimistic) term stays: grad = -r A / n."""
    old = torch.zeros(4, 1)
    logp = torch.log(torch.tensor([[1.5], [0.5], [1.5], [0.5]])).requires_grad_()
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0])
    loss, stats = grpo_loss(logp, old, adv, torch.ones(4, 1))
    torch.testing.assert_close(_grad(loss, logp), torch.tensor([[0.0], [0.0], [1.5 / 4], [-0.5 / 4]]))
    # value: -(1.28*1 + 0.8*-1 + 1.5*-1 + 0.5*1) / 4 = 0.13
    assert loss.item() == pytest.approx(0.13, abs=1e-6)
    assert stats["clip_high"].item() == pytest.approx(0.25) and stats["clip_low"].item() == pytest.approx(0.25)


def test_zero_reward_members_masked_but_counted_in_mean():
    """TRL's "grpo" normalisation, as in the paper's code: a masked member adds 0 to the sum and still counts in
    the division by G. Kept members: 0 (A = 0.5, ratios e^0.1, e^-0.1) and 2 (A = 0, adds 0); G = 3:
        loss = -(0.5 e^0.1 + 0.5 e^-0.1) / 2 / 3 = -0.167500
    (dividing by the 2 kept members instead would give -0.251250, 3/2 times more, and so a 3/2 times larger
    gradient.)"""
    rewards = torch.tensor([1.0, 0.0, 0.5])
    adv = group_advantages(rewards)  # the zero reward pulls the mean down to 0.5: (0.5, -0.5, 0)
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, 0.0]))
    old = torch.full((3, 2), -1.0)
    logp = (old + torch.tensor([[0.1, -0.1], [0.2, 0.0], [0.05, 0.3]])).requires_grad_()
    mask = torch.ones(3, 2)
    loss, _ = grpo_loss(logp, old, adv, mask, member_mask=rewards > 0)
    g = _grad(loss, logp)
    assert torch.all(g[1] == 0)
    assert torch.all(g[0] != 0)
    assert loss.item() == pytest.approx(-0.1675004, abs=1e-6)
    assert loss.item() == pytest.approx(-(0.5 * math.exp(0.1) + 0.5 * math.exp(-0.1)) / 2 / 3, abs=1e-7)
    # d loss / d logp_0t = -r A / (n_0 G) = -e^{+-0.1} * 0.5 / (2 * 3)
    torch.testing.assert_close(g[0], torch.tensor([-math.exp(0.1), -math.exp(-0.1)]) * 0.5 / 6)
    # Two kept members given alone as a micro-batch of the 3-member group: the same loss.
    kept = torch.tensor([0, 2])
    part, _ = grpo_loss(logp[kept], old[kept], adv[kept], mask[kept], group_size=3)
    assert part.item() == pytest.approx(loss.item(), abs=1e-7)


def test_no_kept_member_gives_zero_loss_with_a_graph():
    logp, old, adv, mask = _two_member_example()
    loss, _ = grpo_loss(logp, old, adv, mask, member_mask=torch.tensor([False, False]))
    assert loss.item() == 0.0
    assert torch.all(_grad(loss, logp) == 0)


def test_kl_term_hand_computed():
    """ratio 1 and A = 0, so only the KL term is left. k3 with d = ref - logp: exp(d) - d - 1.
    d = ln 2 -> 2 - ln 2 - 1 = 0.306853; d = 0 -> 0. One member, two tokens: kl = 0.306853 / 2.
    d k3 / d logp = 1 - exp(d) = -1 at d = ln 2, 0 at d = 0; times beta / 2 with beta = 0.1."""
    logp = torch.tensor([[-2.0, -1.0]], requires_grad=True)
    ref = torch.tensor([[-2.0 + math.log(2.0), -1.0]])
    loss, stats = grpo_loss(logp, logp.detach(), torch.zeros(1), torch.ones(1, 2), ref_logp=ref, kl_coef=0.1)
    expected_kl = (1.0 - math.log(2.0)) / 2
    assert stats["kl"].item() == pytest.approx(expected_kl, abs=1e-6)
    assert loss.item() == pytest.approx(0.1 * expected_kl, abs=1e-7)
    torch.testing.assert_close(_grad(loss, logp), torch.tensor([[-0.05, 0.0]]))
    # Reported but not added when kl_coef = 0; exactly zero when logp == ref.
    loss0, stats0 = grpo_loss(logp, logp.detach(), torch.zeros(1), torch.ones(1, 2), ref_logp=ref)
    assert loss0.item() == 0.0 and stats0["kl"].item() == pytest.approx(expected_kl, abs=1e-6)
    _, same = grpo_loss(logp, logp.detach(), torch.zeros(1), torch.ones(1, 2), ref_logp=logp.detach(), kl_coef=1.0)
    assert same["kl"].item() == 0.0


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="share one"):
        grpo_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2), torch.ones(2, 3))


# ------------------------------------------------------------------------------------- fused log-probs

def _inputs(dtype, B=2, T=37, D=16, V=101, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, D, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(V, D, generator=g) * 0.5).to(dtype).requires_grad_()
    y = torch.randint(0, V, (B, T), generator=g)
    up = torch.randn(B, T, generator=g)  # an arbitrary upstream gradient, so every token's weight differs
    return h, w, y, up


def _value_and_grads(fn, h, w, y, up, **kw):
    out = fn(h, w, y, **kw)
    gh, gw = torch.autograd.grad((out * up).sum(), (h, w))
    return out.detach(), gh.float(), gw.float()


# float32: 1e-5. bf16: both paths do the same bf16 matmul for the logits, so values agree to 1e-5 too, but the
# gradients are rounded at different places (the naive path in bf16 after log_softmax's backward, the fused one
# in float32 before the final cast): 1 bf16 ulp of values up to ~8 is 0.03, so atol 1e-1 (as in Liger's tests).
TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (1e-5, 1e-1)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [8, 1024])  # a ragged last chunk (74 = 9*8 + 2) and a single chunk
def test_fused_equals_naive(dtype, chunk):
    h, w, y, up = _inputs(dtype)
    want = _value_and_grads(naive_token_logprobs, h, w, y, up)
    got = _value_and_grads(token_logprobs, h, w, y, up, chunk_tokens=chunk)
    assert got[0].dtype == torch.float32
    value_tol, grad_tol = TOLERANCES[dtype]
    torch.testing.assert_close(got[0], want[0], atol=value_tol, rtol=value_tol)
    torch.testing.assert_close(got[1], want[1], atol=grad_tol, rtol=grad_tol)
    torch.testing.assert_close(got[2], want[2], atol=grad_tol, rtol=grad_tol)


def test_fused_grad_wrt_hidden_only_and_no_grad():
    """The LoRA case (frozen output matrix) and the no-grad case take other code paths: same numbers."""
    h, w, y, up = _inputs(torch.float32)
    w = w.detach()
    out = token_logprobs(h, w, y, chunk_tokens=8)
    (gh,) = torch.autograd.grad((out * up).sum(), h)
    ref = naive_token_logprobs(h, w, y)
    (gh_ref,) = torch.autograd.grad((ref * up).sum(), h)
    torch.testing.assert_close(gh, gh_ref, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(token_logprobs(h, w, y, chunk_tokens=8), ref.detach(), atol=1e-5, rtol=1e-5)


def test_fused_logprobs_are_normalised():
    """exp(log p) summed over every possible target is 1 at each position (a check that needs no reference)."""
    h, w, _, _ = _inputs(torch.float32, B=1, T=3, V=11)
    with torch.no_grad():
        total = sum(token_logprobs(h, w, torch.full((1, 3), v), chunk_tokens=2).exp() for v in range(11))
    torch.testing.assert_close(total, torch.ones(1, 3))


def test_fused_compiled_equals_naive():
    h, w, y, up = _inputs(torch.float32, T=13)
    want = _value_and_grads(naive_token_logprobs, h, w, y, up)
    got = _value_and_grads(token_logprobs, h, w, y, up, chunk_tokens=8, compiled=True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_token_logprobs_bad_shapes():
    with pytest.raises(ValueError, match="expected hidden"):
        token_logprobs(torch.zeros(2, 3, 4), torch.zeros(5, 6), torch.zeros(2, 3, dtype=torch.long))


# --------------------------------------------------------------------------------------- policy log-probs

def fused_logprobs(model, ids, chunk_tokens=512):
    """ids (B, T) -> (B, T-1): log-prob of token t+1 given tokens 0..t, through the fused chunks."""
    hidden = model(ids, return_hidden=True)[:, :-1]
    return token_logprobs(hidden, model.lm_head.weight, ids[:, 1:], chunk_tokens)


def test_fused_logprobs_through_the_model_match_full_logits():
    model = tiny_model()
    ids = torch.randint(0, model.cfg.vocab_size, (3, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids)  # (3, 11, V)
        want = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        got = fused_logprobs(model, ids)
    assert got.shape == (3, 10)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_fused_logprobs_gradients_match_full_logits():
    model = tiny_model().train()
    ids = torch.randint(0, model.cfg.vocab_size, (2, 9), generator=torch.Generator().manual_seed(2))
    params = [p for p in model.parameters()]
    fused = torch.autograd.grad(fused_logprobs(model, ids, chunk_tokens=5).sum(), params)
    logits = model(ids)
    naive = torch.autograd.grad(logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).sum(), params)
    for a, b in zip(fused, naive):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_fused_logprobs_lora_gradients_match_full_logits():
    """With LoRA the output matrix is frozen, so only d/d hidden flows through the fused path."""
    from model import add_lora
    model = tiny_model()
    params = add_lora(model, r=4, alpha=8)
    with torch.no_grad():
        for p in params:
            p.normal_(0.0, 0.1)  # B starts at zero; make the adapter do something
    ids = torch.randint(0, model.cfg.vocab_size, (2, 9), generator=torch.Generator().manual_seed(3))
    up = torch.randn(2, 8, generator=torch.Generator().manual_seed(4))
    fused = torch.autograd.grad((fused_logprobs(model, ids, chunk_tokens=3) * up).sum(), params)
    logits = model(ids)
    want = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    naive = torch.autograd.grad((want * up).sum(), params)
    assert not model.lm_head.weight.requires_grad
    for a, b in zip(fused, naive):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def _lora_model_with_signal():
    from model import add_lora
    model = tiny_model(qk_norm=True, qkv_bias=True)  # every attention feature the prefix path must carry
    params = add_lora(model, r=4, alpha=8)
    with torch.no_grad():
        for p in params:
            p.normal_(0.0, 0.1)
    return model.train(), params


@pytest.mark.parametrize("shared", [True, False])
def test_completion_logprobs_equal_full_rows_values_and_lora_gradients(shared):
    """The shared prompt and its slow twin, G full rows, give the log-probs and adapter gradients of running the
    prompt + completion rows through the model in full (ragged completions, right-padded). float32: 1e-5."""
    model, params = _lora_model_with_signal()
    g = torch.Generator().manual_seed(5)
    prompt = torch.randint(0, 97, (7,), generator=g)
    completions = torch.randint(1, 97, (3, 5), generator=g)
    completions[1, 3:] = 0  # padding, as pad_completions leaves it
    up = torch.randn(3, 5, generator=g)
    got = completion_logprobs(model, [prompt], completions, [3], shared, chunk_tokens=4)
    got_grads = torch.autograd.grad((got * up).sum(), params)
    rows = torch.cat([prompt.expand(3, -1), completions], dim=1)  # (3, 12)
    want = fused_logprobs(model, rows)[:, 6:]  # index j predicts token j + 1: completions start at 7
    want_grads = torch.autograd.grad((want * up).sum(), params)
    assert got.shape == (3, 5)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_completion_logprobs_of_one_token_completions():
    model, _ = _lora_model_with_signal()
    prompt, completions = torch.tensor([3, 1, 4]), torch.tensor([[1], [5]])
    with torch.no_grad():
        want = fused_logprobs(model, torch.cat([prompt.expand(2, -1), completions], 1))[:, 2:]
        for shared in (True, False):
            torch.testing.assert_close(completion_logprobs(model, [prompt], completions, [2], shared), want,
                                       atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shared,checkpointing", [(True, False), (True, True), (False, False)])
def test_a_bank_of_searches_gets_each_search_its_own_logprobs_and_gradient(shared, checkpointing):
    """Three searches in one call (prompts of 7, 4 and 5 tokens, so two are left-padded; 2, 3 and 1 completion
    rows; adapter 1 given no rows at all in a bank of 4): each search's log-probs and the gradient of its own
    loss equal those of the same search run alone on a model holding only its adapter. float32: 1e-5."""
    from model import add_lora, load_lora_state_dict, lora_state_dict
    model = tiny_model(qk_norm=True, qkv_bias=True).train()
    params = add_lora(model, r=4, alpha=8, adapters=4)
    with torch.no_grad():
        for p in params:
            p.normal_(0.0, 0.1)
    model.checkpointing = checkpointing
    g = torch.Generator().manual_seed(6)
    prompts = [torch.randint(0, 97, (n,), generator=g) for n in (7, 1, 4, 5)]
    rows = [2, 0, 3, 1]
    completions = torch.randint(1, 97, (6, 5), generator=g)
    completions[3, 2:] = 0
    got = completion_logprobs(model, prompts, completions, rows, shared, chunk_tokens=4)
    start = 0
    for s, n in enumerate(rows):
        if not n:
            continue
        block = completions[start:start + n]
        alone = tiny_model(qk_norm=True, qkv_bias=True).train()
        alone_params = add_lora(alone, r=4, alpha=8)
        load_lora_state_dict(alone, lora_state_dict(model, s))
        want = completion_logprobs(alone, [prompts[s]], block, [n], True, chunk_tokens=4)
        torch.testing.assert_close(got[start:start + n], want, atol=1e-5, rtol=1e-5)
        mine = torch.autograd.grad(got[start:start + n].sum(), params, retain_graph=True)
        theirs = torch.autograd.grad(want.sum(), alone_params)
        for a, b in zip(mine, theirs):
            torch.testing.assert_close(a[s], b[0], atol=1e-5, rtol=1e-4)
            assert all(a[o].abs().sum() == 0 for o in range(4) if o != s)  # no other adapter moves
        start += n


def test_sharing_the_prompt_pays_on_cpu_always_and_on_a_gpu_past_a_size():
    from grpo import SHARE_PROMPT_MIN_TOKENS, share_prompt_pays
    assert share_prompt_pays(torch.zeros(3), 2)
    meta = torch.zeros(SHARE_PROMPT_MIN_TOKENS, device="meta")  # a device that is not the CPU
    assert share_prompt_pays(meta, 2) and not share_prompt_pays(meta[:-1], 2)
