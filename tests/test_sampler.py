"""Tests for sampler.py against a slow twin that re-runs the full forward pass for every token."""
import math

import pytest
import torch

from sampler import generate, sample_logits
from tests.tiny_model import tiny_model

# Ragged on purpose, with duplicates (prefilled once, copied into several rows).
PROMPTS = [[5, 17, 42, 3, 88], [7, 8], [5, 17, 42, 3, 88], [9, 10, 11, 60, 61, 62, 63, 2], [7, 8]]


def slow_generate(model, prompts, n, temperature=1.0, top_p=1.0, generator=None):
    """Every row prefilled on its own, no cache: full forward over the whole sequence for each new token."""
    seqs = [list(p) for p in prompts]
    toks, lps = [[] for _ in prompts], [[] for _ in prompts]
    with torch.no_grad():
        for _ in range(n):
            logits = torch.stack([model(torch.tensor([s]))[0, -1] for s in seqs])  # (B, V)
            tok, lp = sample_logits(logits, temperature, top_p, generator)
            for i in range(len(seqs)):
                seqs[i].append(int(tok[i]))
                toks[i].append(int(tok[i]))
                lps[i].append(float(lp[i]))
    return toks, lps


def decode(ids):
    return "".join(chr(ord("a") + i % 26) for i in ids)


@pytest.mark.parametrize("over", [{}, dict(qkv_bias=True, tie_embeddings=False), dict(qk_norm=True)])
def test_sampling_matches_slow_twin(over):
    # Same generator seed -> the same noise draws, so the cached sampler must pick the same tokens; log-probs
    # agree to 1e-5 (float32). Covers ragged prompts, left padding and prefill-once-then-copy.
    model = tiny_model(4, **over)
    fast = generate(model, PROMPTS, 10, generator=torch.Generator().manual_seed(7), check_every=3)
    toks, lps = slow_generate(model, PROMPTS, 10, generator=torch.Generator().manual_seed(7))
    assert fast.tokens == toks
    for a, b in zip(fast.logprobs, lps):
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5
    assert fast.finish == ["length"] * len(PROMPTS) and fast.text is None
    # Duplicated prompts got different samples (independent noise per row), not copies of one row.
    assert fast.tokens[0] != fast.tokens[2]


def test_logprobs_equal_full_forward_log_softmax():
    model = tiny_model(5)
    out = generate(model, PROMPTS, 9, temperature=1.0, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for p, t, lp in zip(PROMPTS, out.tokens, out.logprobs):
            logp = torch.log_softmax(model(torch.tensor([p + t]))[0], -1)  # (T, V)
            ref = logp[len(p) - 1 + torch.arange(len(t)), torch.tensor(t)]
            torch.testing.assert_close(torch.tensor(lp), ref, atol=1e-5, rtol=0)


def test_greedy_equals_argmax_and_a_tiny_nucleus():
    # Untied heads here: tiny tied models tend to repeat one token greedily, which would make the tests weak.
    model = tiny_model(6, tie_embeddings=False)
    greedy = generate(model, PROMPTS, 12, temperature=0)
    toks, lps = slow_generate(model, PROMPTS, 12, temperature=0)
    assert greedy.tokens == toks
    for a, b in zip(greedy.logprobs, lps):  # untempered model log-probs at temperature 0
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5
    top1 = generate(model, PROMPTS, 12, temperature=0.7, top_p=1e-6, generator=torch.Generator().manual_seed(3))
    assert top1.tokens == greedy.tokens
    assert all(abs(x) < 1e-6 for row in top1.logprobs for x in row)  # a one-token distribution


def test_same_seed_same_samples_and_seed_matters():
    model = tiny_model(7)
    a = generate(model, PROMPTS, 8, generator=torch.Generator().manual_seed(11))
    b = generate(model, PROMPTS, 8, generator=torch.Generator().manual_seed(11))
    c = generate(model, PROMPTS, 8, generator=torch.Generator().manual_seed(12))
    assert a.tokens == b.tokens and a.logprobs == b.logprobs
    assert a.tokens != c.tokens


def test_eos_ends_a_row_and_others_continue():
    model = tiny_model(8, tie_embeddings=False)
    full = generate(model, PROMPTS, 16, temperature=0)
    # As EOS pick a token that some rows emit (not as their first token) and others never do.
    emitted = [set(t) for t in full.tokens]
    eos = min(x for x in set().union(*emitted) if 0 < sum(x in e for e in emitted) < len(emitted)
              and all(t.index(x) > 0 for t in full.tokens if x in t))
    out = generate(model, PROMPTS, 16, temperature=0, eos_ids=[eos], check_every=3)
    for ref, got, fin in zip(full.tokens, out.tokens, out.finish):
        cut = ref.index(eos) + 1 if eos in ref else len(ref)
        assert got == ref[:cut]
        assert fin == ("eos" if eos in ref else "length")
    assert "eos" in out.finish and "length" in out.finish
    assert [len(t) for t in out.tokens] == [len(lp) for lp in out.logprobs]


def test_stop_string_ends_a_row():
    model = tiny_model(9, tie_embeddings=False)
    full = generate(model, PROMPTS, 16, temperature=0, decode=decode)
    assert full.text == [decode(t) for t in full.tokens]
    stop = full.text[3][6:8]  # completed by row 3's 8th token (or earlier)
    out = generate(model, PROMPTS, 16, temperature=0, decode=decode, stop=[stop], check_every=5)
    for ref, got, text, fin in zip(full.tokens, out.tokens, out.text, out.finish):
        hits = [n for n in range(1, len(ref) + 1) if stop in decode(ref[:n])]
        if hits:
            assert got == ref[:hits[0]] and fin == "stop" and text.endswith(stop)
        else:
            assert got == ref and fin == "length"
    assert out.finish[3] == "stop" and len(out.tokens[3]) <= 8


def test_all_rows_finishing_early_and_zero_tokens():
    model = tiny_model(10, tie_embeddings=False)
    full = generate(model, [[1, 2, 3]] * 3, 12, temperature=0)
    eos = full.tokens[0][2]
    out = generate(model, [[1, 2, 3]] * 3, 12, temperature=0, eos_ids={eos})
    assert out.tokens == [full.tokens[0][:full.tokens[0].index(eos) + 1]] * 3 and out.finish == ["eos"] * 3
    empty = generate(model, PROMPTS, 0)
    assert empty.tokens == [[]] * len(PROMPTS) and empty.finish == ["length"] * len(PROMPTS)


def test_sample_logits_filters_hand_computed():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log().repeat(4000, 1)
    g = torch.Generator().manual_seed(0)
    # top_p 0.7: 0.5 < 0.7 so token 1 stays; the mass before token 2 is 0.8 >= 0.7, so 2 and 3 go.
    tok, lp = sample_logits(logits, top_p=0.7, generator=g)
    assert set(tok.tolist()) == {0, 1}
    expected = torch.where(tok == 0, math.log(0.5 / 0.8), math.log(0.3 / 0.8))
    torch.testing.assert_close(lp, expected.float(), atol=1e-6, rtol=0)
    tok, lp = sample_logits(logits, top_p=0.9, generator=g)  # the mass before token 3 is 0.95 >= 0.9
    assert set(tok.tolist()) == {0, 1, 2}
    tok, lp = sample_logits(logits, temperature=0.5, generator=g)  # p^2 renormalised: 25/39, 9/39, ...
    sharp = probs[0] ** 2 / (probs[0] ** 2).sum()
    torch.testing.assert_close(lp, sharp.log()[tok], atol=1e-6, rtol=0)
    # Inverse-CDF sampling gives the right frequencies (4000 draws, 4 sigma ~ 0.03).
    freq = torch.bincount(tok, minlength=4).float() / len(tok)
    assert (freq - sharp).abs().max() < 0.03


def test_bad_arguments():
    model = tiny_model(0)
    with pytest.raises(ValueError, match="decode"):
        generate(model, PROMPTS, 4, stop=["x"])
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[1], []], 4)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, PROMPTS, 4, temperature=-1)


@pytest.mark.heavy
def test_compiled_decode_step_matches_eager():
    model = tiny_model(4)
    eager = generate(model, PROMPTS, 10, temperature=0)
    compiled = generate(model, PROMPTS, 10, temperature=0, compile=True)
    assert compiled.tokens == eager.tokens
    for a, b in zip(compiled.logprobs, eager.logprobs):
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5


def int4_twin(model):
    """A copy of the model whose every int4-served linear holds, in float32, the weight the kernel stands for."""
    import copy
    import quant
    twin = copy.deepcopy(model)
    for name, fast in quant._build(model, "int4").items():
        if isinstance(fast.fast, quant.Int4Weight):
            w = twin.get_submodule(name).weight
            with torch.no_grad():
                w.copy_(fast.fast.dequantised(quant.quantise_int4(w)[0]))
    return twin


def test_packed_weights_sample_the_same_tokens():
    # float32 in a different summation order: same tokens, log-probs within 1e-4.
    model = tiny_model(8)
    ref = generate(model, PROMPTS, 10, generator=torch.Generator().manual_seed(3))
    fast = generate(model, PROMPTS, 10, generator=torch.Generator().manual_seed(3), weights="packed")
    assert fast.tokens == ref.tokens
    for a, b in zip(fast.logprobs, ref.logprobs):
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4


def test_int4_weights_equal_float32_model_of_the_same_codes():
    # Slow twin: the float32 model holding the dequantised codes. The kernel rounds activations and outputs to
    # bfloat16, so log-probs agree to 0.05 (tiny model, vocabulary 97) and the same noise picks the same tokens.
    # Short prompts: a prefill of at most FAST_ROWS rows runs on the int4 weights too (a longer one would run on
    # the model's own weights, which these random weights are not).
    short = [[5, 17, 42, 3], [7, 8], [5, 17, 42, 3], [9, 10]]
    model = tiny_model(9)
    twin = int4_twin(model)
    ref = generate(twin, short, 10, generator=torch.Generator().manual_seed(4))
    fast = generate(model, short, 10, generator=torch.Generator().manual_seed(4), weights="int4")
    assert fast.tokens == ref.tokens
    for a, b in zip(fast.logprobs, ref.logprobs):
        assert max(abs(x - y) for x, y in zip(a, b)) < 0.05


def test_a_static_batch_keeps_finished_rows_out_of_the_output(monkeypatch):
    """On a GPU the compiled step is a CUDA graph of fixed shape, so finished rows stay in the batch. Forced here
    on CPU (compile replaced by the plain step): greedy rows, some ended by EOS and one by a stop string, must
    equal those of the shrinking batch exactly."""
    import sampler
    model = tiny_model(8, tie_embeddings=False)
    full = generate(model, PROMPTS, 16, temperature=0, decode=decode)
    eos = full.tokens[1][3]
    kw = dict(temperature=0, eos_ids=[eos], decode=decode, stop=[full.text[3][6:8]], check_every=3)
    shrinking = generate(model, PROMPTS, 16, **kw)
    monkeypatch.setattr(sampler, "_cuda_graphs", lambda compile, device: True)
    monkeypatch.setattr(torch, "compile", lambda fn, **_: fn)
    monkeypatch.setattr(torch._dynamo, "mark_static_address", lambda t: None)
    shapes = []
    real_step = sampler._decode_step
    monkeypatch.setattr(sampler, "_decode_step", lambda m, tok, pos, cache: shapes.append(cache.k.shape) or
                        real_step(m, tok, pos, cache))
    static = generate(model, PROMPTS, 16, compile=True, **kw)
    assert static.tokens == shrinking.tokens and static.finish == shrinking.finish
    assert {s[3] for s in shapes} == {sampler.STATIC_BUCKET + 16}  # prompts of 2-8 tokens padded to one bucket
    assert {s[1] for s in shapes} == {len(PROMPTS)}  # the batch never shrinks
    assert {"eos", "stop"} <= set(static.finish)
    assert [len(t) for t in static.logprobs] == [len(t) for t in static.tokens]


def test_on_cpu_a_finished_batch_stops_at_once():
    # Default check_every on CPU is every step: when every row has hit EOS no further decode step runs (with
    # check_every=8 the loop would run to the end of its window first). Counted by the forwards of one token.
    model = tiny_model(10, tie_embeddings=False)
    full = generate(model, [[1, 2, 3]] * 3, 12, temperature=0)
    eos = full.tokens[0][2]
    n = full.tokens[0].index(eos) + 1  # tokens up to and including the first EOS
    steps = []
    hook = model.model.embed_tokens.register_forward_hook(lambda m, i, o: steps.append(i[0].shape[1]))
    for check_every, decode_steps in ((None, n - 1), (8, 7)):
        steps.clear()
        out = generate(model, [[1, 2, 3]] * 3, 12, temperature=0, eos_ids={eos}, check_every=check_every)
        assert out.tokens == [full.tokens[0][:n]] * 3
        assert steps.count(1) == decode_steps  # the first token comes from the prefill
    hook.remove()
