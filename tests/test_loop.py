"""Group composition, budget and history of the MiGrATe loop, made exact with a scripted sampler and a fake task.

The sampler is replaced by a script that answers each prompt with a fixed completion, so every count, parent and
score below is known in advance; no model runs here."""
import random
import types
from pathlib import Path

import pytest

import loop
import rundir
from history import History, Islands
from tasks import Preset, Prompt, Task, TaskDefaults, load_task_class

SCORES = {"apple": 0.9, "pear": 0.5, "fig": 0.2, "plum": 0.7, "kiwi": 1.0}


class FruitTask(Task):
    """Candidates are fruit names in a bracketed list; the score is a fixed table (0.1 for unknown words)."""
    name = "fruit"
    defaults = TaskDefaults(presets={
        "random": Preset(4), "ns": Preset(0, 0, 4), "opro": Preset(0, 0, 4),
        "grpo": Preset(4), "grpo-greedy": Preset(3, 1),
        "migrate": Preset(2, 1, 2), "migrate-opro": Preset(2, 1, 2),
        "migrate-evo": Preset(2, 1, 2), "discover": Preset(0, 0, 4)}, topk=2, iterations=3)

    def prompt(self):
        return Prompt([{"role": "user", "content": "policy"}], prefix="[")

    def neighbourhood_prompt(self, parent):
        return Prompt([{"role": "user", "content": f"ns:{parent}"}], prefix="[")

    def opro_prompt(self, ranked):
        return Prompt([{"role": "user", "content": "opro:" + ",".join(f"{c}={s}" for c, s in ranked)}], prefix="[")

    def parse(self, text):
        body = text[1:].split("]")[0]
        return list(dict.fromkeys(w.strip() for w in body.split(",") if w.strip().isalpha()))

    def render(self, c):
        return f"[{c}]"

    def score(self, cands):
        self.scored = getattr(self, "scored", []) + list(cands)
        return [SCORES.get(c, 0.1) for c in cands]

    def warm_start(self, rng):
        return ["fig", "pear", "apple"]


class CharTokenizer:
    """One id per character; 0 is the end-of-turn token."""
    eos_ids = {0}
    end_of_turn = 0

    def chat(self, messages, add_generation_prompt=True, assistant_prefix="", today=None):
        return "|".join(m["content"] for m in messages) + ">" + assistant_prefix

    def encode(self, text):
        return [0] if text == "<|im_end|>" else [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


SAMPLER = [None]  # the scripted sampler of the running test: setup() hands it to the Policy


@pytest.fixture
def scripted():
    """A scripted sampler for the policy: a policy prompt answers 'plum, kiwi]', an NS prompt its parent's mirror."""
    calls = []

    def generate(model, prompts, max_new_tokens, **kw):
        calls.append([CharTokenizer().decode(p) for p in prompts])
        texts = []
        for p in calls[-1]:
            ask = p.split(">")[0]
            texts.append("plum, kiwi]" if ask == "policy" else f"{ask.split(':')[1].split(',')[0].split('=')[0]}]")
        return types.SimpleNamespace(tokens=[[ord(c) for c in t] + [0] for t in texts], text=texts)

    SAMPLER[0] = generate
    yield calls
    SAMPLER[0] = None


def search_one(s, run_dir, policy, task):
    """One search to its end: a sweep of one (loop.search); returns its summary."""
    return loop.search(policy, [loop.Search(s, task, run_dir)], quiet=True)[0]


def one_iteration(state, policy, task):
    """One iteration of one search (loop.run_iteration of a sweep of one); returns its record."""
    return loop.run_iteration(policy, [loop.Search(policy.s, task, Path("unused"), state=state)])[0]


def setup(strategy, budget=1000):
    task = FruitTask("x")
    s = loop.resolve_settings(FruitTask, strategy, {"budget": budget, "device": "cpu"})
    s.update = False  # no model here: the update is tested in test_train.py
    policy = loop.Policy(None, CharTokenizer(), s, generate=SAMPLER[0])
    state = loop.new_state(s, task)
    return s, task, policy, state


def test_warm_start_is_scored_before_iteration_one():
    s, task, policy, state = setup("random")
    rec = loop.warm_start_record(state)
    assert (rec["iteration"], rec["evaluations"], rec["best"], rec["best_score"]) == (0, 3, "apple", 0.9)
    assert [m["candidates"][0]["candidate"] for m in rec["members"]] == ["fig", "pear", "apple"]
    assert state.history.evaluations == 3
    assert [e.candidate for e in state.history.top(3)] == ["apple", "pear", "fig"]
    assert all(e.iteration == 0 and e.origin == "warm" for e in state.history.entries.values())


def test_random_is_on_policy_only(scripted):
    s, task, policy, state = setup("random")
    rec = one_iteration(state, policy, task)
    assert [m["origin"] for m in rec["members"]] == ["on-policy"] * 4
    assert scripted[0] == ["policy>["] * 4  # one sampler call, four copies of the on-policy prompt
    assert [m["reward"] for m in rec["members"]] == [1.0] * 4  # best of plum (0.7) and kiwi (1.0)
    assert rec["evaluations"] == 5  # 3 warm + plum + kiwi; the other three members are repeats
    statuses = [c["status"] for m in rec["members"] for c in m["candidates"]]
    assert statuses == ["new", "new"] + ["repeat"] * 6


def test_greedy_member_is_a_topk_past_solution(scripted):
    """GRPO-Greedy re-inserts one of the top-k past solutions at random (the released code's greedy_topk: 3 for
    words, 1 = the best for molecules and ARC), with its stored score and no new evaluation."""
    s, task, policy, state = setup("grpo-greedy")
    plan = loop.plan_group(s, task, state)
    greedy = [m for m, p in plan if m.origin == "greedy"]
    assert len(plan) == 4 and len(greedy) == 1 and greedy[0].text in ("[apple]", "[pear]")
    picked = set()
    for seed in range(12):
        s2, task2, _, state2 = setup("grpo-greedy")
        state2.rng.seed(seed)
        plan2 = loop.plan_group(s2, task2, state2)
        picked.add(plan2[-1][0].text)
    assert picked == {"[apple]", "[pear]"}  # top-2 of apple .9, pear .5, fig .2: both drawn, fig never
    state.rng.seed(1)
    rec = one_iteration(state, policy, task)
    g = [m for m in rec["members"] if m["origin"] == "greedy"][0]
    stored = {"apple": 0.9, "pear": 0.5}[g["parent"]]
    assert g["reward"] == stored and g["candidates"][0]["status"] == "repeat"  # stored score, no new evaluation
    assert len(scripted[0]) == 3  # greedy members are not sampled


def test_ns_parents_come_from_the_topk(scripted):
    s, task, policy, state = setup("ns")
    plan = loop.plan_group(s, task, state)
    assert [m.origin for m, _ in plan] == ["neighbourhood"] * 4
    for m, p in plan:
        assert m.parent in ("apple", "pear")  # top-2 of apple .9, pear .5, fig .2
        assert p.messages[0]["content"] == f"ns:{m.parent}"
    # the parent choice follows the run's rng: same random seed, same choices
    s2, task2, _, state2 = setup("ns")
    plan2 = loop.plan_group(s2, task2, state2)
    assert [m.parent for m, _ in plan] == [m.parent for m, _ in plan2]


def test_opro_lists_topk_worst_to_best_and_migrate_opro_inserts_the_best(scripted):
    s, task, policy, state = setup("migrate-opro")
    plan = loop.plan_group(s, task, state)
    kinds = [(m.origin, m.prompt_kind) for m, _ in plan]
    assert kinds == [("on-policy", "on-policy")] * 2 + [("neighbourhood", "opro")] * 2 + [("greedy", "greedy")]
    assert plan[2][1].messages[0]["content"] == "opro:pear=0.5,apple=0.9"
    assert plan[4][0].text == "[apple]"  # the best, not the k-th best (a defect of the released code)


def test_migrate_group_counts(scripted):
    s, task, policy, state = setup("migrate")
    rec = one_iteration(state, policy, task)
    origins = [m["origin"] for m in rec["members"]]
    assert origins == ["on-policy"] * 2 + ["neighbourhood"] * 2 + ["greedy"]
    ns = [m for m in rec["members"] if m["origin"] == "neighbourhood"]
    assert all(m["candidates"][0]["candidate"] == m["parent"] for m in ns)  # the script mirrors the parent


def test_evo_follows_the_released_island_database(scripted):
    """Warm-start words are dealt round the 4 islands; each iteration draws its one parent from the current island
    (on-policy prompts while that island is empty), its finds join that island, and the turn passes on."""
    s, task, policy, state = setup("migrate-evo")
    isl = state.islands
    assert [set(p) for p in isl.islands] == [{"fig"}, {"pear"}, {"apple"}, set()] and isl.current == 3
    assert s.migrate_every == 40  # the released database's migration interval
    plan = loop.plan_group(s, task, state)
    kinds = [(m.origin, m.prompt_kind) for m, _ in plan]
    assert kinds == [("on-policy", "on-policy")] * 2 + [("neighbourhood", "on-policy")] * 2
    one_iteration(state, policy, task)  # island 3 empty: no parent, no greedy member
    assert set(isl.islands[3]) == {"plum", "kiwi"} and isl.current == 0
    plan = loop.plan_group(s, task, state)
    parents = {m.parent for m, _ in plan if m.origin in ("neighbourhood", "greedy")}
    assert parents == {"fig"}  # island 0 holds only fig: one parent for the NS members and the greedy member


def test_island_database_archive_explore_exploit_and_ring_migration():
    isl = Islands(n_islands=3, archive_size=2, explore_topk=1, exploit_topk=1)
    isl.add("a", 0.3)  # current island 0
    isl.add("b", 0.9)
    isl.add("z", 0.0)  # score 0 never joins
    isl.add("c", 0.1, island=1)
    isl.add("d", 0.5, island=2)
    assert set(isl.islands[0]) == {"a", "b"} and isl.archive == {"b": 0.9, "d": 0.5}  # a, then c pushed out
    # exploit (p 0.8): an elite living on the island; explore (p 0.2): the island's best non-elite
    rng = random.Random(0)
    draws = [isl.pick_parent(rng) for _ in range(400)]
    assert set(draws) == {"a", "b"} and 0.12 < draws.count("a") / 400 < 0.28
    isl.next_island()
    assert isl.pick_parent(rng) == "c"  # island 1 holds no elite: its top exploit_topk
    isl.migrate()  # each island's best (5 % of it, at least one) goes to both ring neighbours
    assert set(isl.islands[0]) == {"a", "b", "c", "d"}
    assert set(isl.islands[1]) == {"b", "c", "d"} and set(isl.islands[2]) == {"b", "c", "d"}


def test_budget_is_never_exceeded(scripted):
    s, task, policy, state = setup("random", budget=4)
    rec = one_iteration(state, policy, task)
    assert state.history.evaluations == 4 and state.history.exhausted
    first = rec["members"][0]["candidates"]
    assert [c["status"] for c in first] == ["new", "over_budget"]
    assert first[1]["score"] == 0.0 and "kiwi" not in task.scored


def test_history_cache_scores_each_candidate_once():
    h = History(budget=10)
    t = FruitTask("x")
    h.score(t, ["pear", "pear", "apple"], 1, "on-policy")
    recs = h.score(t, ["apple", "plum"], 2, "on-policy")
    assert t.scored == ["pear", "apple", "plum"] and h.evaluations == 3
    assert [r["status"] for r in recs] == ["repeat", "new"]
    assert h.entries["apple"].iteration == 1  # the first find is kept


def test_training_tokens_keep_sampled_ids_or_reencode():
    s, task, policy, state = setup("migrate")
    online = loop.Member("on-policy", "on-policy", text="[plum]", tokens=[1, 2, 3])
    greedy = loop.Member("greedy", "greedy", text="[apple]")
    assert loop.training_tokens(policy, task, online) == [1, 2, 3]
    assert loop.training_tokens(policy, task, greedy) == [ord(c) for c in "apple]"] + [0]


def test_pad_completions_marks_only_real_tokens():
    ids, mask = loop.pad_completions([[1, 2], [3]], "cpu")
    assert ids.tolist() == [[1, 2], [3, 0]]
    assert mask.tolist() == [[1, 1], [1, 0]]


def test_every_strategy_has_a_preset_in_every_builtin_task():
    from tasks import task_class
    for name in ("wordsearch", "molecule", "arc"):
        presets = task_class(name).defaults.presets
        assert set(presets) == {k for k, rule in loop.STRATEGIES.items() if rule.numbers_of is None}, name
        assert not any(loop.STRATEGIES[k].trains for k in ("random", "ns", "opro"))
        assert all(loop.STRATEGIES[k].trains for k in ("grpo", "grpo-greedy", "migrate", "migrate-opro",
                                                          "migrate-evo"))
        assert presets["grpo-greedy"].beta >= 1


def test_bad_settings_are_one_line_errors():
    for given, words in (({"budget": -5}, "--budget must be positive"),
                         ({"alpha": 0, "beta": 0, "gamma": 0}, "group is empty")):
        with pytest.raises(loop.UsageError, match=words):
            loop.resolve_settings(FruitTask, "migrate", given)
    with pytest.raises(loop.UsageError, match="unknown task"):
        load_task_class("nosuchtask")


def test_plot_is_an_svg_with_both_lines():
    recs = [dict(best_score=0.2 * i, mean_reward=0.1 * i) for i in range(5)]
    svg = rundir.plot_svg(recs, "t")
    assert svg.startswith("<svg") and svg.count("<polyline") == 2
    assert "48.0,312.0" in svg  # iteration 1 at score 0: bottom-left corner of the plot area
    assert ">0.25<" in svg and ">0.75<" in svg  # tick labels are not rounded to a wrong value


def test_a_search_that_finds_nothing_new_stops_after_patience(scripted, tmp_path):
    s, task, policy, _ = setup("random")
    s.iterations, s.patience, s.early_stop = 50, 3, False
    summary = search_one(s, tmp_path, policy, task)
    # iteration 1 scores plum and kiwi; every later answer repeats them, so iterations 2-4 find nothing new
    assert summary["iterations"] == 4 and summary["evaluations"] == 5
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) == 5  # warm start + 4 iterations
    # patience as long as the cap (bench/search.py's protocols, as the released code): every iteration runs
    s.iterations = s.patience = 8
    assert search_one(s, tmp_path / "capped", policy, task)["iterations"] == 8


class PairTask(FruitTask):
    """FruitTask whose answers hold two fruits, as word search's hold two words."""
    answer_size = 2

    def prompt(self, n=None):
        return super().prompt()

    def neighbourhood_prompt(self, parent, n=None):
        return super().neighbourhood_prompt(parent)

    def render_answer(self, cands):
        return "[" + ", ".join(cands) + "]"


def scored(*pairs, status="new"):
    return [dict(candidate=c, score=v, status=status) for c, v in pairs]


def test_packing_sorts_the_pool_and_rewards_each_answer_with_its_best():
    """alpha 2 + gamma 2 candidates found, no greedy member, group 4: nothing to pad or cut, so the answers are
    fixed: sorted (apple .9, plum .7, pear .5, fig .2) -> {apple, plum} rewarded .9 and {pear, fig} .5."""
    s = loop.Settings(task="pair", target="x", strategy="migrate", alpha=2, gamma=2, pack=True)
    members = [loop.Member("on-policy", "on-policy", ask=2, candidates=scored(("pear", 0.5), ("apple", 0.9))),
               loop.Member("neighbourhood", "ns", "pear", ask=2, candidates=scored(("fig", 0.2), ("plum", 0.7)))]
    packed = loop.pack_group(s, PairTask("x"), members, random.Random(0))
    assert [m.reward for m in packed] == [0.9, 0.5]
    assert [sorted(c["candidate"] for c in m.candidates) for m in packed] == [["apple", "plum"], ["fig", "pear"]]
    assert all(m.origin == "packed" and m.text in ("[apple, plum]", "[plum, apple]", "[fig, pear]", "[pear, fig]")
               for m in packed)


def test_packing_pads_a_short_answer_and_keeps_the_greedy_member():
    """9 words asked on-policy, 3 found (one over budget, left out): padded with random repeats of the 3 to 9, the
    greedy member added (group 10), packed into 5 answers; their rewards are non-increasing, the best found word
    sits in the first answer and the greedy word is always in the pool."""
    s = loop.Settings(task="pair", target="x", strategy="grpo-greedy", alpha=9, beta=1, pack=True)
    for seed in range(5):
        members = [loop.Member("on-policy", "on-policy", ask=9, candidates=scored(
                       ("plum", 0.7), ("fig", 0.2), ("pear", 0.5)) + scored(("kiwi", 0.0), status="over_budget")),
                   loop.Member("greedy", "greedy", "apple", candidates=scored(("apple", 0.9), status="repeat"))]
        packed = loop.pack_group(s, PairTask("x"), members, random.Random(seed))
        words = [c["candidate"] for m in packed for c in m.candidates]
        assert len(packed) == 5 and len(words) == 10 and words.count("apple") == 1 and "kiwi" not in words
        assert [m.reward for m in packed] == sorted((m.reward for m in packed), reverse=True)
        assert packed[0].reward == 0.9 and all(m.reward == max(c["score"] for c in m.candidates) for m in packed)


def test_packed_iteration_asks_one_call_per_prompt_for_alpha_and_gamma_words(scripted):
    s, task, policy, state = setup("migrate")
    task = PairTask("x")
    s.pack, s.alpha, s.beta, s.gamma = True, 3, 0, 3
    rec = one_iteration(state, policy, task)
    assert len(scripted[0]) == 2  # one on-policy call and one neighbourhood call
    assert [(m["origin"], m["prompt"]) for m in rec["members"]] == [("on-policy", "on-policy"), ("neighbourhood", "ns")]
    assert len(rec["packed"]) == 3 and rec["mean_reward"] == sum(p["reward"] for p in rec["packed"]) / 3


def test_learning_rate_decays_linearly_to_zero_over_the_planned_steps():
    s = loop.Settings(task="t", target="x", strategy="grpo", lr=1e-4, mu=2, iterations=10, budget=10**6)
    assert loop.learning_rate(s, 1, 0) == 1e-4  # no warm-up: the first step takes the full rate
    assert loop.learning_rate(s, 1, 1) == pytest.approx(1e-4 * 19 / 20)
    assert loop.learning_rate(s, 10, 1) == pytest.approx(1e-4 / 20)
    assert loop.learning_rate(s, 11, 0) == 0.0  # past the plan
    # A budget that ends the run first is its clock: 1,000 evaluations (the iteration cap only guards a stuck
    # search); 250 spent after 60 iterations -> a quarter of the way, whatever the iteration count says.
    s.iterations, s.budget = 1000, 1000
    assert loop.learning_rate(s, 61, 0, evaluations=250) == pytest.approx(1e-4 * 0.75)
    assert loop.learning_rate(s, 200, 0, evaluations=1000) == 0.0
    s.lr_schedule = "constant"
    assert loop.learning_rate(s, 10, 1, evaluations=999) == 1e-4


def test_discover_starts_from_the_state_puct_picks_and_backs_its_visits_up(scripted):
    """The warm start's apple (0.9), pear (0.5) and fig (0.2) are the root's unvisited children. PUCT (c = 1,
    scale 0.9 - 0.2 = 0.7, rank priors 4/10, 3/10, 2/10 and 1/10 for the root, T = 0) scores apple 0.9 + 0.7 x 0.4
    = 1.18, pear 0.71, fig 0.34, the root 0.07: all four members start from apple. They find apple again, so the
    archive gains no state and apple takes 4 visits; pruning keeps the root's 2 best children, dropping fig. Then
    (scale 0.4, priors 1/2, 1/3, 1/6) apple 0.9 + 0.2 sqrt(5) / 5 = 0.99 still beats pear 0.5 + 0.13 sqrt(5) =
    0.80."""
    s, task, policy, state = setup("discover")
    assert set(state.archive.scores) == {"", "apple", "pear", "fig"}
    for visits in (4, 8):
        rec = one_iteration(state, policy, task)
        assert [(m["origin"], m["prompt"], m["parent"]) for m in rec["members"]] == \
            [("neighbourhood", "ns", "apple")] * 4
        assert (state.archive.visits["apple"], state.archive.attempts) == (visits, visits)
        assert set(state.archive.scores) == {"", "apple", "pear"}

