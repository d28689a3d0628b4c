"""The GRPO objective of MiGrATe and the per-token log-probs it needs, as pure functions of tensors.

What is here:
1. `group_advantages`: reward minus the group mean, no division by the std (as in the paper).
2. `grpo_loss`: the token-level clipped surrogate with asymmetric clipping (DAPO's "clip-higher"), members with
   reward 0 masked out of the loss (they still count in the group mean that made the advantages), a mean over a
   sequence's tokens and then over all G sequences of the group (TRL's "grpo" loss, as in the paper's code:
   masked members add 0 but count in G), and an optional k3 KL penalty to the base model.
   TTT-Discover's objective (arXiv 2601.16175; its recipe's compute_advantages and Tinker's "importance_sampling"
   loss) sits beside each: `entropic_advantages` with `adaptive_beta` beside group_advantages, and
   `discover_loss` with `kl_shaped_advantages` beside grpo_loss.
3. `token_logprobs`: log p(target) from final hidden states and the output matrix, chunk of rows by chunk, so
   that neither forward nor backward holds a float32 (tokens, vocab) tensor; `naive_token_logprobs` is its slow
   twin (full logits, `log_softmax`, `gather`) that the tests hold it equal to.
4. `completion_logprobs`: those log-probs for G completions of one prompt, the prompt run once for the group
   (`model.SharedPrefix`) or, its slow twin, once per row; `share_prompt_pays` says which is cheaper.

Left out on purpose: a value model, reward normalisation by the std, entropy bonuses, sequence-level ratios
(GSPO), importance weights against a behaviour policy other than `old_logp`, and hand-written kernels (the
chunk functions are plain torch; `compiled=True` hands them to torch.compile).
"""
import math

import torch


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """rewards (G,) -> advantages (G,) float32: reward - mean(rewards). No std division (the paper's choice)."""
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    if rewards.dim() != 1 or rewards.numel() == 0:
        raise ValueError(f"rewards must be a non-empty 1-D tensor, got shape {tuple(rewards.shape)}")
    return rewards - rewards.mean()


def _rewards_1d(rewards) -> torch.Tensor:
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    if rewards.dim() != 1 or rewards.numel() == 0:
        raise ValueError(f"rewards must be a non-empty 1-D tensor, got shape {tuple(rewards.shape)}")
    return rewards


def entropic_advantages(rewards, beta: float) -> torch.Tensor:
    """rewards (G,) -> advantages (G,) float32: TTT-Discover's entropic advantages, which weigh each member by
    exp(beta * reward) against the others, so the best samples pull the policy rather than the average one.

        e_i = exp(beta (r_i - max_j r_j))            (the shift cancels in w_i; it keeps exp finite)
        w_i = e_i / (mean_{j != i} e_j + 1e-12)       (leave-one-out; the member itself when G = 1)
        A_i = w_i - 1

    beta = 0 gives A = 0; as beta -> 0, A_i / beta -> G / (G - 1) (r_i - mean r), group_advantages scaled. Equal
    rewards give A = 0 at any beta. Unchanged by adding a constant to every reward; scaling the rewards by s is
    dividing beta by s. Float32 throughout, as the recipe computes it; its 1e-12 only counts when the others'
    weights round to 0 (adaptive_beta at G = 2)."""
    r = _rewards_1d(rewards)
    e = torch.exp(beta * (r - r.max()))
    G = r.numel()
    others = (e.sum() - e) / (G - 1) if G > 1 else e
    return e / (others + 1e-12) - 1.0


ADAPTIVE_KL = math.log(2.0)  # the KL(q_beta || uniform) that adaptive_beta solves for


def adaptive_beta(rewards, kl_target: float = ADAPTIVE_KL, beta_max: float = 1e6, iterations: int = 60) -> float:
    """The beta of TTT-Discover's `entropic_adaptive_beta` for one group: the one whose tilted distribution over
    the group, q_i = softmax(beta r)_i, sits kl_target = log 2 away from uniform:

        KL(q_beta || uniform) = sum_i q_i log(G q_i) = log 2

    (q as concentrated as a uniform choice among half the group). The KL grows with beta from 0, so: if beta = 1
    falls short, beta doubles until it does not (at most to beta_max, and that doubled beta is returned when even
    it falls short); then `iterations` halvings of [0, beta] keep the smallest beta found to reach log 2.
    G < 2: 0. When half the group or more ties at the top, or every reward is equal, the KL never reaches log 2
    and beta ends at 2^20 (the first doubling past 1e6). At G = 2 it reaches log 2 only when float32 rounds the
    worse member's q to 0 (beta ~ 100 / spread), and the better member's advantage is then about 1e12: use G >= 3.
    Float32, as the recipe computes it, so that the same rewards give the same beta."""
    r = _rewards_1d(rewards)
    G = r.numel()
    if G < 2:
        return 0.0
    shifted = r - r.max()
    log_g = math.log(G)

    def kl(beta: float) -> float:
        logits = torch.tensor(beta, dtype=torch.float32) * shifted
        log_q = logits - torch.logsumexp(logits, dim=0)
        return float((log_q.exp() * (log_q + log_g)).sum())

    lo, hi = 0.0, 1.0
    if kl(hi) < kl_target:
        while hi < beta_max and kl(hi) < kl_target:
            hi *= 2.0
        if kl(hi) < kl_target:
            return hi
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if kl(mid) < kl_target:
            lo = mid
        else:
            hi = mid
    return hi


def grpo_loss(logp, old_logp, advantages, mask, member_mask=None, eps_low=0.2, eps_high=0.28,
              ref_logp=None, kl_coef=0.0, group_size=None):
    """Clipped GRPO loss (a scalar to minimise) and detached scalar statistics.

    logp, old_logp (B, T): log-probs of the sampled tokens under the current policy (with grad) and under the
        policy that produced the group (no grad). advantages (B,). mask (B, T): 1 on completion tokens.
    member_mask (B,) bool or None: members that enter the loss (MiGrATe: reward > 0); None keeps all.
    ref_logp (B, T) or None: base-model log-probs for the KL penalty, weighted by kl_coef.

    Math, per token t of member i (A_i its advantage):
        r_it   = exp(logp_it - old_logp_it)
        s_it   = min(r_it * A_i, clip(r_it, 1 - eps_low, 1 + eps_high) * A_i)
        kl_it  = exp(ref_it - logp_it) - (ref_it - logp_it) - 1            (k3 estimator, >= 0)
        l_i    = sum_t mask_it * (-s_it + kl_coef * kl_it) / sum_t mask_it
        loss   = sum_i keep_i * l_i / G                                    (G = all members, kept or not)
    Gradient wrt logp_it is -r_it A_i / (n_i G) where the unclipped branch is the minimum, 0 where the clip is
    active (r > 1 + eps_high with A > 0, or r < 1 - eps_low with A < 0). `group_size` overrides G when the
    rows given are one micro-batch of a larger group, so that micro-batch losses add up to the group's loss.
    """
    if logp.shape != old_logp.shape or logp.shape != mask.shape or logp.dim() != 2:
        raise ValueError(f"logp, old_logp and mask must share one (B, T) shape, got {tuple(logp.shape)}, "
                         f"{tuple(old_logp.shape)}, {tuple(mask.shape)}")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must have shape ({logp.shape[0]},), got {tuple(advantages.shape)}")
    mask = mask.to(logp.dtype)
    keep = torch.ones_like(advantages, dtype=logp.dtype) if member_mask is None else member_mask.to(logp.dtype)
    A = advantages.to(logp.dtype)[:, None]  # (B, 1)

    ratio = torch.exp(logp - old_logp)  # (B, T)
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    per_token = -torch.minimum(ratio * A, clipped * A)  # (B, T)
    kl = None
    if ref_logp is not None:
        d = ref_logp - logp
        kl = torch.exp(d) - d - 1.0  # (B, T)
        if kl_coef:
            per_token = per_token + kl_coef * kl

    G = group_size or logp.shape[0]

    def seq_then_batch_mean(x):  # mean over a sequence's tokens, then over all G sequences (masked ones add 0)
        per_seq = (x * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B,)
        return (per_seq * keep).sum() / G

    loss = seq_then_batch_mean(per_token)
    with torch.no_grad():
        tok = mask * keep[:, None]  # the tokens that enter the loss
        n = tok.sum().clamp(min=1.0)
        low = ((ratio < 1.0 - eps_low) & (A < 0)).to(tok.dtype)
        high = ((ratio > 1.0 + eps_high) & (A > 0)).to(tok.dtype)
        stats = dict(clip_low=(low * tok).sum() / n, clip_high=(high * tok).sum() / n,
                     ratio_mean=(ratio * tok).sum() / n,
                     kl=seq_then_batch_mean(kl) if kl is not None else torch.zeros((), device=logp.device))
        stats["clip_fraction"] = stats["clip_low"] + stats["clip_high"]
    return loss, stats


def discover_loss(logp, old_logp, advantages, mask):
    """TTT-Discover's loss (Tinker's "importance_sampling", which its recipe trains with), a scalar to minimise,
    and detached statistics.

    logp, old_logp (B, T): log-probs of the sampled tokens under the current policy (with grad) and under the
    policy that sampled them. advantages: (B,), one per member, or (B, T), one per token (kl_shaped_advantages).
    mask (B, T): 1 on completion tokens.

        r_it = exp(logp_it - old_logp_it)
        loss = - sum_i sum_t mask_it r_it A_it
    Gradient wrt logp_it: -mask_it r_it A_it. Where it differs from grpo_loss: no clipping (with one step a
    group the ratio is 1 and no clip would act anyway), every member enters (none is masked for a reward of 0:
    its advantage is about -1), and a sum rather than means: each completion token weighs the same, so a member
    counts in proportion to its length (grpo_loss: each member 1/G whatever its length) and the loss grows with
    the group (the optimiser's normalisation and the gradient-norm clip absorb the scale). Micro-batch losses
    add up to the group's as they are.
    """
    if logp.shape != old_logp.shape or logp.shape != mask.shape or logp.dim() != 2:
        raise ValueError(f"logp, old_logp and mask must share one (B, T) shape, got {tuple(logp.shape)}, "
                         f"{tuple(old_logp.shape)}, {tuple(mask.shape)}")
    if advantages.shape not in (logp.shape[:1], logp.shape):
        raise ValueError(f"advantages must have shape ({logp.shape[0]},) or {tuple(logp.shape)}, got "
                         f"{tuple(advantages.shape)}")
    mask = mask.to(logp.dtype)
    A = advantages.to(logp.dtype)
    A = A[:, None] if A.dim() == 1 else A
    ratio = torch.exp(logp - old_logp)
    loss = -(ratio * A * mask).sum()
    with torch.no_grad():
        stats = dict(ratio_mean=(ratio * mask).sum() / mask.sum().clamp(min=1.0))
    return loss, stats


def kl_shaped_advantages(advantages, sampled_logp, ref_logp, mask, kl_coef: float):
    """TTT-Discover's KL penalty, folded into per-token advantages (its recipe's incorporate_kl_penalty) rather
    than added to the loss as grpo_loss's k3 term. advantages (B,); sampled_logp, ref_logp, mask (B, T): the
    sampled tokens' log-probs under the sampling policy and under the base model. Returns (B, T):

        d_it  = sampled_logp_it - ref_logp_it                 (on completion tokens)
        dbar  = sum_it mask_it d_it / sum_it mask_it           (over the whole group: shape it before micro-batches)
        A_it  = mask_it (A_i + kl_coef (dbar - d_it))
    so a token the policy made likelier than the base model did loses advantage, one it made less likely gains,
    and the penalty adds nothing on average. kl_coef = 0: A_i on each completion token."""
    mask = mask.to(sampled_logp.dtype)
    d = (sampled_logp - ref_logp) * mask
    dbar = d.sum() / mask.sum().clamp(min=1.0)
    return mask * (advantages.to(sampled_logp.dtype)[:, None] + kl_coef * (dbar - d))


# ------------------------------------------------------------------------------------------ per-token log-probs

def naive_token_logprobs(hidden, weight, targets):
    """The slow twin: full (B, T, V) float32 logits, log_softmax, gather. hidden (B, T, D), weight (V, D)."""
    logits = (hidden @ weight.T).float()  # (B, T, V)
    return logits.log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)


def _chunk_forward(h, w, y, want_dh: bool):
    """Rows h (C, D), targets y (C,) -> log p(y) (C,), logsumexp (C,), and d log p(y) / d h (C, D) or None.

    d log p(y) / d h = w[y] - softmax(h w^T) @ w, computed here while the chunk's probabilities are at hand,
    so that backward needs no second pass over the vocabulary unless w itself needs a gradient.
    """
    logits = (h @ w.T).float()  # (C, V), the model dtype's matmul, float32 softmax
    lse = torch.logsumexp(logits, dim=-1)  # (C,)
    logp = logits.gather(-1, y[:, None]).squeeze(-1) - lse
    dh = None
    if want_dh:
        probs = logits.sub_(lse[:, None]).exp_()  # (C, V), in place: logits are not needed any more
        dh = w[y].float() - (probs.to(w.dtype) @ w).float()  # (C, D)
    return logp, lse, dh


def _chunk_weight_grad(h, w, y, lse, g):
    """d/dw of sum_c g_c log p(y_c) for one chunk: (onehot(y) - softmax)^T (g * h), recomputing the logits."""
    logits = (h @ w.T).float()  # (C, V)
    coef = logits.sub_(lse[:, None]).exp_().mul_(-g[:, None])  # -g * softmax, in place
    coef.scatter_add_(1, y[:, None], g[:, None])  # + g * onehot(y)
    return coef.to(w.dtype).T @ h  # (V, D)


_COMPILED = {}


def _chunk_fns(compiled: bool):
    """The two chunk functions, plain or wrapped once per process in torch.compile."""
    if not compiled:
        return _chunk_forward, _chunk_weight_grad
    if not _COMPILED:
        _COMPILED["fwd"] = torch.compile(_chunk_forward, dynamic=False)
        _COMPILED["wgrad"] = torch.compile(_chunk_weight_grad, dynamic=False)
    return _COMPILED["fwd"], _COMPILED["wgrad"]


class _ChunkedLogprobs(torch.autograd.Function):
    """Chunked log p(target) with a chunked backward; peak extra memory is a few (chunk, V) float32 tensors.

    Saved for backward: d log p / d hidden (N, D) float32 when hidden needs a gradient (no vocabulary pass in
    backward then: grad_hidden = g * dh), and the logsumexp (N,) when the weight needs one (then backward
    recomputes each chunk's logits once). LoRA training freezes the output matrix, so the common case is the
    first: two vocabulary matmuls in all, as many as the naive path.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk, compiled):
        fwd, _ = _chunk_fns(compiled)
        want_dh, want_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        N = hidden.shape[0]
        logp = torch.empty(N, dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(logp)
        dh = torch.empty(N, hidden.shape[1], dtype=torch.float32, device=hidden.device) if want_dh else None
        for s in range(0, N, chunk):
            lp, ls, d = fwd(hidden[s:s + chunk], weight, targets[s:s + chunk], want_dh)
            logp[s:s + chunk], lse[s:s + chunk] = lp, ls
            if want_dh:
                dh[s:s + chunk] = d
        ctx.chunk, ctx.compiled, ctx.hidden_dtype = chunk, compiled, hidden.dtype
        ctx.save_for_backward(hidden if want_dw else None, weight if want_dw else None, targets, lse, dh)
        return logp

    @staticmethod
    def backward(ctx, g):  # g (N,) float32: upstream gradient of each token's log-prob
        hidden, weight, targets, lse, dh = ctx.saved_tensors
        grad_h = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_h = (g[:, None] * dh).to(ctx.hidden_dtype)
        if ctx.needs_input_grad[1]:
            _, wgrad = _chunk_fns(ctx.compiled)
            acc = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            for s in range(0, hidden.shape[0], ctx.chunk):
                sl = slice(s, s + ctx.chunk)
                acc += wgrad(hidden[sl], weight, targets[sl], lse[sl], g[sl].float())
            grad_w = acc.to(weight.dtype)
        return grad_h, grad_w, None, None, None


def token_logprobs(hidden, weight, targets, chunk_tokens=512, compiled=False):
    """hidden (B, T, D), weight (V, D), targets (B, T) long -> log p(targets) (B, T) float32.

    Chunk of `chunk_tokens` rows by chunk: logits = hidden @ weight^T in the model dtype, log-softmax in
    float32, gather. Equal to naive_token_logprobs (values and gradients) without its (B*T, V) tensors.
    """
    if hidden.dim() != 3 or targets.shape != hidden.shape[:2] or weight.dim() != 2 or \
            weight.shape[1] != hidden.shape[2]:
        raise ValueError(f"expected hidden (B, T, D), weight (V, D), targets (B, T); got {tuple(hidden.shape)}, "
                         f"{tuple(weight.shape)}, {tuple(targets.shape)}")
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    B, T, D = hidden.shape
    h = hidden.reshape(B * T, D)  # (N, D)
    y = targets.reshape(B * T)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        out = _ChunkedLogprobs.apply(h, weight, y, chunk_tokens, compiled)
    else:
        fwd, _ = _chunk_fns(compiled)
        out = torch.cat([fwd(h[s:s + chunk_tokens], weight, y[s:s + chunk_tokens], False)[0]
                         for s in range(0, B * T, chunk_tokens)]) if B * T else h.new_zeros(0, dtype=torch.float32)
    return out.reshape(B, T)


SHARE_PROMPT_MIN_TOKENS = 4096  # on a GPU, fewer saved prompt tokens than this cost less than the extra launches


def share_prompt_pays(prompt, G: int) -> bool:
    """Whether running one prompt once for a group of G completions (model.SharedPrefix) beats G full rows.

    It saves G - 1 prompts of compute and memory, at the price of a second, smaller pass (twice the kernel
    launches). On CPU compute is the cost: always. On a GPU, only when the prompt tokens it saves reach
    SHARE_PROMPT_MIN_TOKENS (ARC: 15 x 2,000); below that a GPU waits on launches (profiled on an H100: word
    search's update launched 6,687 kernels against transformers' 3,533, 0.27 s against 0.21 s)."""
    return prompt.device.type == "cpu" or (G - 1) * prompt.numel() >= SHARE_PROMPT_MIN_TOKENS


def completion_logprobs(model, prompts, completions, rows, shared: bool, compiled=False, chunk_tokens=512):
    """Log-prob of each completion token given its prompt and the completion's earlier tokens.

    prompts: one (P_s,) prompt per adapter s of the model's LoRA bank (None where rows[s] is 0); completions
    (B, L) long, right-padded, rows[s] of them continuing prompts[s], in adapter order -> (B, L) float32.
    One search is one adapter: prompts [prompt], rows [G].

    shared: run each prompt's layers once and let its rows attend to its keys and values (model.SharedPrefix);
    else its slow twin, full rows of prompt + completion, one adapter at a time. Equal values and gradients
    (tests/test_grpo.py). The log-probs are token_logprobs' fused chunks; its slow twin is naive_token_logprobs."""
    from model import SharedPrefix, adapter_rows
    one = len(rows) == 1  # a single adapter: no row layout to set
    if not shared:
        parts = []
        for s, block in enumerate(completions.split(rows)):
            if rows[s]:
                with adapter_rows(model, None if one else [n if i == s else 0 for i, n in enumerate(rows)]):
                    parts.append(_full_rows_logprobs(model, prompts[s], block, compiled, chunk_tokens))
        return torch.cat(parts)
    used = [s for s, n in enumerate(rows) if n]
    lengths = torch.tensor([prompts[s].numel() for s in used], device=completions.device)
    P = int(lengths.max())
    tokens = torch.zeros(len(used), P, dtype=torch.long, device=completions.device)  # (U, P), left-padded
    for i, s in enumerate(used):
        tokens[i, P - lengths[i]:] = prompts[s]
    prefix = SharedPrefix(rows=None if one else [rows[s] for s in used], pad=None if one else P - lengths)
    with adapter_rows(model, None if one else [1 if n else 0 for n in rows]):
        last = model(tokens, prefix=prefix, return_hidden=True)[:, -1:]  # (U, 1, D): predicts each token 0
    B, L = completions.shape
    hidden = last.expand(B, 1, last.shape[-1]) if one else prefix.per_row(last)  # (B, 1, D)
    if L > 1:
        with adapter_rows(model, None if one else rows):
            rest = model(completions[:, :-1], prefix=prefix, return_hidden=True)  # (B, L-1, D)
        hidden = torch.cat([hidden, rest], dim=1)  # (B, L, D)
    return token_logprobs(hidden, model.lm_head.weight, completions, chunk_tokens, compiled)


def _full_rows_logprobs(model, prompt, completions, compiled, chunk_tokens):
    """The slow twin for one prompt: G full rows of prompt + completion through the model."""
    G, P = completions.shape[0], prompt.numel()
    full = torch.cat([prompt[None].expand(G, P), completions[:, :-1]], dim=1)  # (G, P + L - 1)
    hidden = model(full, return_hidden=True)[:, P - 1:]  # (G, L, D): the states that predict each token
    return token_logprobs(hidden, model.lm_head.weight, completions, chunk_tokens, compiled)
