"""TTT-Discover's pieces (arXiv 2601.16175): the entropic advantages and their adaptive beta, its importance-sampling
loss and KL shaping (grpo.py), and the PUCT archive of states (history.Archive), against hand-computed values and
against TTT-Discover's own code (tests/golden/discover.json, made by tests/golden/make_discover.py)."""
import json
import math
from pathlib import Path

import pytest
import torch

from grpo import adaptive_beta, discover_loss, entropic_advantages, group_advantages, grpo_loss, kl_shaped_advantages
from history import ROOT, Archive, archive_data, archive_from_data

GOLDEN = json.loads((Path(__file__).parent / "golden" / "discover.json").read_text())


def _kl_from_uniform(rewards, beta):
    """KL(softmax(beta r) || uniform) in float64, computed apart from grpo.py."""
    r = torch.tensor(rewards, dtype=torch.float64)
    q = torch.softmax(beta * r, 0)
    return float((q * torch.log(q * len(rewards))).sum())


# ------------------------------------------------------------------------------------------- entropic advantages

def test_entropic_advantages_hand_computed():
    """beta = ln 2 on rewards (0, 1, 2): e = (1/4, 1/2, 1); the others' means 3/4, 5/8, 3/8; w = (1/3, 4/5, 8/3)."""
    adv = entropic_advantages([0.0, 1.0, 2.0], math.log(2))
    torch.testing.assert_close(adv, torch.tensor([-2 / 3, -1 / 5, 5 / 3]))


def test_entropic_advantages_vanish_without_contrast():
    assert entropic_advantages([0.4, 0.4, 0.4], 7.0).abs().max() == 0  # equal rewards
    assert entropic_advantages([0.1, 0.9, 0.5], 0.0).abs().max() == 0  # beta 0
    assert entropic_advantages([0.8], 3.0).abs().max() == 0  # a group of one
    with pytest.raises(ValueError):
        entropic_advantages(torch.zeros(2, 2), 1.0)


def test_entropic_advantages_small_beta_is_the_mean_baseline_scaled():
    """A_i ~ beta (r_i - mean_{j != i} r_j) = beta G / (G - 1) (r_i - mean r) as beta -> 0."""
    r = torch.tensor([0.1, 0.7, 0.4, 0.0, 0.9])
    beta = 1e-3
    torch.testing.assert_close(entropic_advantages(r, beta) / beta, group_advantages(r) * 5 / 4, rtol=2e-3,
                               atol=2e-3)


def test_entropic_advantages_ignore_a_shift_and_trade_scale_for_beta():
    r = torch.tensor([0.1, 0.7, 0.4, 0.0])
    torch.testing.assert_close(entropic_advantages(r + 5.0, 2.0), entropic_advantages(r, 2.0))
    torch.testing.assert_close(entropic_advantages(3 * r, 2.0 / 3), entropic_advantages(r, 2.0))


def test_adaptive_beta_solves_kl_log2_hand_derived():
    """One best of eight: q_best = p, the rest (1 - p)/7 each, and KL = log 2 fixes p (solved here by bisection in
    float64); then e^beta = 7p / (1 - p), A_best = e^beta - 1 and A_other = 7 / (e^beta + 6) - 1."""
    def kl(p):
        return p * math.log(8 * p) + (1 - p) * math.log(8 * (1 - p) / 7)

    lo, hi = 1 / 8, 1 - 1e-12
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if kl(mid) < math.log(2) else (lo, mid)
    growth = 7 * lo / (1 - lo)
    rewards = [1.0] + [0.0] * 7
    beta = adaptive_beta(rewards)
    assert beta == pytest.approx(math.log(growth), rel=1e-5)
    assert _kl_from_uniform(rewards, beta) == pytest.approx(math.log(2), abs=1e-5)
    expected = torch.tensor([growth - 1] + [7 / (growth + 6) - 1] * 7, dtype=torch.float32)
    torch.testing.assert_close(entropic_advantages(rewards, beta), expected, rtol=1e-4, atol=1e-5)


def test_adaptive_beta_hits_the_defining_kl_on_a_spread_group():
    rewards = [0.1, 0.5, 0.3, 0.9, 0.2, 0.25, 0.7, 0.0]
    assert _kl_from_uniform(rewards, adaptive_beta(rewards)) == pytest.approx(math.log(2), abs=1e-5)


def test_adaptive_beta_scales_with_the_rewards():
    """Rewards scaled by 10 and shifted by 3: beta / 10, so the entropic advantages do not change."""
    r = torch.tensor([0.1, 0.5, 0.3, 0.9, 0.2])
    assert adaptive_beta(10 * r + 3) == pytest.approx(adaptive_beta(r) / 10, rel=1e-5)
    torch.testing.assert_close(entropic_advantages(10 * r + 3, adaptive_beta(10 * r + 3)),
                               entropic_advantages(r, adaptive_beta(r)), rtol=1e-4, atol=1e-5)


def test_adaptive_beta_where_log2_is_out_of_reach():
    """A group of one: 0. Every reward equal, or half the group or more tied at the top: the KL stays below log 2
    and beta ends at 2^20, the first doubling past 1e6; then the tied best share the weight: A = 3/2 - 1."""
    assert adaptive_beta([0.7]) == 0.0
    assert adaptive_beta([0.3] * 4) == 2.0 ** 20
    assert adaptive_beta([0.9, 0.9, 0.9, 0.1]) == 2.0 ** 20
    torch.testing.assert_close(entropic_advantages([0.9, 0.9, 0.9, 0.1], 2.0 ** 20),
                               torch.tensor([0.5, 0.5, 0.5, -1.0]))


def test_adaptive_beta_degenerates_at_two_members():
    """G = 2: log 2 is reached only when float32 rounds the worse member's weight to 0, and the better member's
    advantage is then 1/1e-12 (why adaptive_beta's docstring asks for G >= 3)."""
    adv = entropic_advantages([0.0, 1.0], adaptive_beta([0.0, 1.0]))
    assert adv[0] == -1.0 and adv[1] > 1e11


@pytest.mark.parametrize("case", GOLDEN["advantages"], ids=lambda c: str(len(c["rewards"])))
def test_entropic_advantages_equal_ttt_discover_own(case):
    r = case["rewards"]
    assert entropic_advantages(r, adaptive_beta(r)).tolist() == case["adaptive"]
    assert entropic_advantages(r, 2.0).tolist() == case["beta_2"]


# ------------------------------------------------------------------------------------------------- the loss

def _two_members():
    """Member 0: A = 0.5, ratios (1, 1.5, 1.2). Member 1: A = -0.5, ratios (0.5, 1), then padding (mask 0)."""
    old = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.7, -3.0]])
    logp = (old + torch.tensor([[0.0, math.log(1.5), math.log(1.2)], [math.log(0.5), 0.0, 5.0]])).requires_grad_()
    return logp, old, torch.tensor([0.5, -0.5]), torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def test_discover_loss_hand_computed():
    """loss = -(0.5 (1 + 1.5 + 1.2) - 0.5 (0.5 + 1)) = -1.1, no clipping (1.5 passes 1.28), no mean; gradient
    -mask r A."""
    logp, old, adv, mask = _two_members()
    loss, stats = discover_loss(logp, old, adv, mask)
    assert float(loss.detach()) == pytest.approx(-1.1)
    assert float(stats["ratio_mean"]) == pytest.approx((1 + 1.5 + 1.2 + 0.5 + 1) / 5)
    (grad,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(grad, torch.tensor([[-0.5, -0.75, -0.6], [0.25, 0.5, 0.0]]))


def test_discover_loss_takes_per_token_advantages_and_adds_up_over_micro_batches():
    logp, old, adv, mask = _two_members()
    per_token = adv[:, None] * mask
    whole, _ = discover_loss(logp, old, per_token, mask)
    parts = sum(discover_loss(logp[i:i + 1], old[i:i + 1], adv[i:i + 1], mask[i:i + 1])[0] for i in range(2))
    assert float(whole.detach()) == pytest.approx(float(parts.detach()))
    with pytest.raises(ValueError):
        discover_loss(logp, old, torch.zeros(3), mask)


def test_discover_loss_against_grpo_loss_at_ratio_one():
    """One step a group (ratio 1): grpo_loss's token gradient -A_i / (n_i G), discover_loss's -A_i; so each
    member's weight differs by its length n_i and G, and zero-reward members are not masked here."""
    old = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.7, -3.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv = torch.tensor([0.6, -0.6])
    logp = old.clone().requires_grad_()
    (g_discover,) = torch.autograd.grad(discover_loss(logp, old, adv, mask)[0], logp)
    (g_grpo,) = torch.autograd.grad(grpo_loss(logp, old, adv, mask)[0], logp)
    lengths = mask.sum(1, keepdim=True)
    torch.testing.assert_close(g_grpo * lengths * 2, g_discover)


def test_kl_shaped_advantages_hand_computed():
    """d = sampled - ref on completion tokens = (0.5, 0 | 0, masked); mean 1/6; A + 0.3 (1/6 - d)."""
    sampled = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]])
    ref = torch.tensor([[-1.5, -2.0], [-0.5, -1.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    shaped = kl_shaped_advantages(torch.tensor([1.0, -1.0]), sampled, ref, mask, kl_coef=0.3)
    torch.testing.assert_close(shaped, torch.tensor([[0.9, 1.05], [-0.95, 0.0]]))
    assert float((shaped - torch.tensor([[1.0, 1.0], [-1.0, 0.0]])).sum()) == pytest.approx(0.0, abs=1e-6)
    unshaped = kl_shaped_advantages(torch.tensor([1.0, -1.0]), sampled, ref, mask, kl_coef=0.0)
    torch.testing.assert_close(unshaped, torch.tensor([[1.0, 1.0], [-1.0, 0.0]]))


# ------------------------------------------------------------------------------------------------ the archive

def _two_children_of_the_root():
    archive = Archive()
    archive.add("a", 0.5)
    archive.add("b", 0.8)
    return archive


def test_puct_hand_computed_first_pick():
    """Root 0, a 0.5, b 0.8, nothing tried (T = 0, n = 0): ranks b, a, root, so P = 3/6, 2/6, 1/6; scale = 0.8 - 0.5
    (the root left out); score = value + 0.3 P."""
    archive = _two_children_of_the_root()
    puct = archive.puct_scores()
    assert puct == pytest.approx({ROOT: 0.3 / 6, "a": 0.5 + 0.3 * 2 / 6, "b": 0.8 + 0.3 * 3 / 6})
    assert archive.pick_parent() == "b"


def test_puct_hand_computed_after_a_group():
    """Four attempts from b find c 0.9 and d 0.6 (two fail): T = 4, n(b) = n(root) = 4, Q(b) = 0.9 (its best
    child), Q(root) = 0 (c and d are not its children); ranks c, b, d, a, root: P = 5, 4, 3, 2, 1 over 15;
    scale = 0.9 - 0.5; sqrt(1 + T) = sqrt 5."""
    archive = _two_children_of_the_root()
    archive.update("b", [("c", 0.9), ("d", 0.6)], attempts=4)
    archive.prune()
    assert archive.attempts == 4 and archive.visits == {"b": 4, ROOT: 4} and archive.best_child == {"b": 0.9}
    u = 0.4 * math.sqrt(5) / 15
    assert archive.puct_scores() == pytest.approx({ROOT: 0 + u * 1 / 5, "a": 0.5 + u * 2, "b": 0.9 + u * 4 / 5,
                                                   "c": 0.9 + u * 5, "d": 0.6 + u * 3})
    assert archive.pick_parent() == "c"


def test_update_backs_visits_up_the_lineage_and_counts_failed_attempts():
    archive = _two_children_of_the_root()
    archive.update("b", [("c", 0.9)], attempts=2)
    archive.update("c", [("e", 0.95)], attempts=3)
    archive.update(None, [], attempts=5)  # five on-policy attempts that found nothing
    assert archive.visits == {"c": 3, "b": 5, ROOT: 10} and archive.attempts == 10
    assert archive.best_child == {"b": 0.9, "c": 0.95}  # only the parent's Q moves, not its ancestors'
    archive.update("c", [("b", 0.8), ("f", 0.1)], attempts=2)  # b is there already: counted, not added twice
    assert list(archive.scores) == [ROOT, "a", "b", "c", "e", "f"] and archive.best_child["c"] == 0.95
    with pytest.raises(ValueError, match="not in the archive"):
        archive.update("zzz", [], attempts=1)


def test_prune_keeps_each_states_two_best_children_and_the_root():
    archive = Archive(max_states=1000)
    for word, score in [("a", 0.2), ("b", 0.9), ("c", 0.5), ("d", 0.5)]:
        archive.add(word, score)  # four children of the root
    archive.update("c", [("e", 0.3), ("f", 0.6), ("g", 0.1)], attempts=3)
    archive.prune()
    # the root's children b, then c before d (a tie: the earlier), and c's children f, e; order: root, by parent
    assert list(archive.scores) == [ROOT, "b", "c", "f", "e"]
    assert "d" not in archive.ids and "g" not in archive.lineage


def test_prune_keeps_a_pruned_states_children_together_and_caps_the_archive():
    archive = Archive(max_states=4)
    archive.add("a", 0.3)
    archive.update("a", [("x", 0.9), ("y", 0.2)], attempts=2)
    archive.add("b", 0.5)
    archive.add("c", 0.4)  # the root now has three children: a (0.3) goes, its children x and y do not
    archive.prune()
    assert list(archive.scores) == [ROOT, "b", "c", "x"]  # then past 4 states: the root and the three best


def test_a_candidate_found_again_after_pruning_starts_afresh():
    archive = Archive()
    for word, score in [("a", 0.7), ("b", 0.8), ("c", 0.9)]:
        archive.add(word, score)
    archive.update("a", [("d", 0.75)], attempts=4)
    archive.prune()  # a (the root's third best) goes, with its counts; d stays
    assert "a" not in archive.scores and "a" not in archive.visits
    archive.update("d", [], attempts=1)  # d's lineage still names the old a: no count for it
    archive.add("a", 0.7, parent="b")
    assert "a" not in archive.visits and archive.ids["a"] > archive.ids["d"]
    archive.update("d", [], attempts=1)
    assert "a" not in archive.visits  # the new a is not d's ancestor


def test_archive_is_plain_data_that_resumes_the_same(tmp_path):
    archive = _two_children_of_the_root()
    archive.update("b", [("c", 0.9), ("d", 0.6)], attempts=4)
    archive.prune()
    torch.save(dict(archive=archive_data(archive)), tmp_path / "state.pt")
    back = archive_from_data(torch.load(tmp_path / "state.pt", weights_only=True)["archive"])
    assert back == archive and back.pick_parent() == archive.pick_parent()


def test_puct_equals_ttt_discover_own_sampler():
    """The recipe's PUCTSampler, scripted: every pick, and at the end every state with its visits and best child."""
    run = GOLDEN["puct"]
    archive = Archive(max_states=run["max_states"])
    for step in run["steps"]:
        assert archive.pick_parent() == step["pick"]
        archive.update(step["pick"], [tuple(c) for c in step["children"]], step["attempts"])
        archive.prune()
    assert archive.attempts == run["attempts"]
    final = {s or ROOT: v for s, v in run["final"].items()}
    assert archive.scores == {s: v["score"] for s, v in final.items()}
    assert {s: archive.visits.get(s, 0) for s in archive.scores} == {s: v["visits"] for s, v in final.items()}
    assert {s: archive.best_child.get(s) for s in archive.scores} == {s: v["best_child"] for s, v in final.items()}
