"""Group composition, budget and history of the MiGrATe loop, made exact with a scripted sampler and a fake task.

The sampler is replaced by a script that answers each prompt with a fixed completion, so every count, seed and
score below is known in advance; no model runs here."""
import sys
import types

import pytest

import migrate
import rundir
from history import History, Islands
from tasks import Preset, Prompt, Task, TaskDefaults

SCORES = {"apple": 0.9, "pear": 0.5, "fig": 0.2, "plum": 0.7, "kiwi": 1.0}


class FruitTask(Task):
    """Candidates are fruit names in a bracketed list; the score is a fixed table (0.1 for unknown words)."""
    name = "fruit"
    defaults = TaskDefaults(presets={
        "random": Preset(4), "ns": Preset(0, 0, 4), "opro": Preset(0, 0, 4, "opro"),
        "grpo": Preset(4, update=True), "grpo-greedy": Preset(3, 1, update=True),
        "migrate": Preset(2, 1, 2, update=True), "migrate-opro": Preset(2, 1, 2, "opro", True),
        "migrate-evo": Preset(2, 1, 2, "evo", True)}, topk=2, iterations=3)

    def prompt(self):
        return Prompt([{"role": "user", "content": "policy"}], prefix="[")

    def neighbourhood_prompt(self, seed):
        return Prompt([{"role": "user", "content": f"ns:{seed}"}], prefix="[")

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
    chat_format = "chatml"
    eos_ids = {0}

    def chat(self, messages, add_generation_prompt=True, assistant_prefix=""):
        return "|".join(m["content"] for m in messages) + ">" + assistant_prefix

    def encode(self, text):
        return [0] if text == "<|im_end|>" else [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


@pytest.fixture
def scripted(monkeypatch):
    """Replace sampler.generate: a policy prompt answers 'plum, kiwi]', an NS prompt the seed's mirror."""
    calls = []

    def generate(model, prompts, max_new_tokens, **kw):
        calls.append([CharTokenizer().decode(p) for p in prompts])
        texts = []
        for p in calls[-1]:
            ask = p.split(">")[0]
            texts.append("plum, kiwi]" if ask == "policy" else f"{ask.split(':')[1].split(',')[0].split('=')[0]}]")
        return types.SimpleNamespace(tokens=[[ord(c) for c in t] + [0] for t in texts])

    monkeypatch.setitem(sys.modules, "sampler", types.SimpleNamespace(generate=generate))
    return calls


def setup(strategy, budget=1000):
    task = FruitTask("x")
    args = migrate.build_parser().parse_args(["--strategy", strategy, "--budget", str(budget)])
    args.task = "fruit"
    s = migrate.resolve_settings(args, FruitTask)
    s.update = False  # no model here: the update is tested in test_train.py
    policy = migrate.Policy(None, CharTokenizer(), s)
    state = migrate.new_state(s, task)
    return s, task, policy, state


def test_warm_start_is_scored_before_iteration_one():
    s, task, policy, state = setup("random")
    rec = migrate.warm_start_record(state)
    assert (rec["iteration"], rec["evaluations"], rec["best"], rec["best_score"]) == (0, 3, "apple", 0.9)
    assert [m["candidates"][0]["candidate"] for m in rec["members"]] == ["fig", "pear", "apple"]
    assert state.history.evaluations == 3
    assert [e.candidate for e in state.history.top(3)] == ["apple", "pear", "fig"]
    assert all(e.iteration == 0 and e.origin == "warm" for e in state.history.entries.values())


def test_random_is_on_policy_only(scripted):
    s, task, policy, state = setup("random")
    rec = migrate.run_iteration(state, policy, task)
    assert [m["origin"] for m in rec["members"]] == ["online"] * 4
    assert scripted[0] == ["policy>["] * 4  # one sampler call, four copies of the on-policy prompt
    assert [m["reward"] for m in rec["members"]] == [1.0] * 4  # best of plum (0.7) and kiwi (1.0)
    assert rec["evaluations"] == 5  # 3 warm + plum + kiwi; the other three members are repeats
    statuses = [c["status"] for m in rec["members"] for c in m["candidates"]]
    assert statuses == ["new", "new"] + ["repeat"] * 6


def test_greedy_member_is_the_best_past_solution(scripted):
    s, task, policy, state = setup("grpo-greedy")
    plan = migrate.plan_group(s, task, state.history, state.islands, state.rng)
    greedy = [m for m, p in plan if m.origin == "greedy"]
    assert len(plan) == 4 and len(greedy) == 1 and greedy[0].text == "[apple]"
    rec = migrate.run_iteration(state, policy, task)
    g = [m for m in rec["members"] if m["origin"] == "greedy"][0]
    assert g["reward"] == 0.9 and g["candidates"][0]["status"] == "repeat"  # stored score, no new evaluation
    assert len(scripted[0]) == 3  # greedy members are not sampled


def test_ns_seeds_come_from_the_topk(scripted):
    s, task, policy, state = setup("ns")
    plan = migrate.plan_group(s, task, state.history, state.islands, state.rng)
    assert [m.origin for m, _ in plan] == ["neighbourhood"] * 4
    for m, p in plan:
        assert m.seed in ("apple", "pear")  # top-2 of apple .9, pear .5, fig .2
        assert p.messages[0]["content"] == f"ns:{m.seed}"
    # the seed choice follows the run's rng: same seed, same choices
    s2, task2, _, state2 = setup("ns")
    plan2 = migrate.plan_group(s2, task2, state2.history, state2.islands, state2.rng)
    assert [m.seed for m, _ in plan] == [m.seed for m, _ in plan2]


def test_opro_lists_topk_worst_to_best_and_migrate_opro_inserts_the_best(scripted):
    s, task, policy, state = setup("migrate-opro")
    plan = migrate.plan_group(s, task, state.history, state.islands, state.rng)
    kinds = [(m.origin, m.prompt_kind) for m, _ in plan]
    assert kinds == [("online", "policy")] * 2 + [("neighbourhood", "opro")] * 2 + [("greedy", "greedy")]
    assert plan[2][1].messages[0]["content"] == "opro:pear=0.5,apple=0.9"
    assert plan[4][0].text == "[apple]"  # the best, not the k-th best (a defect of the released code)


def test_migrate_group_counts(scripted):
    s, task, policy, state = setup("migrate")
    rec = migrate.run_iteration(state, policy, task)
    origins = [m["origin"] for m in rec["members"]]
    assert origins == ["online"] * 2 + ["neighbourhood"] * 2 + ["greedy"]
    ns = [m for m in rec["members"] if m["origin"] == "neighbourhood"]
    assert all(m["candidates"][0]["candidate"] == m["seed"] for m in ns)  # the script mirrors the seed


def test_evo_seeds_come_from_islands_round_robin(scripted):
    s, task, policy, state = setup("migrate-evo")
    isl = state.islands
    assert sum(len(p) for p in isl.islands) == 3  # the warm start was spread over the islands
    plan = migrate.plan_group(s, task, state.history, state.islands, state.rng)
    seeds = [m.seed for m, _ in plan if m.origin == "neighbourhood"]
    homes = [next(i for i, p in enumerate(isl.islands) if sd in p) for sd in seeds]
    assert len(set(homes)) == 2  # two NS members, two different islands in turn


def test_islands_migrate_best_to_the_next_island():
    isl = Islands(n_islands=3, island_size=2, archive_size=2)
    isl.add("a", 0.3, 0)
    isl.add("b", 0.9, 0)
    isl.add("c", 0.1, 0)  # island 0 is full: the worst ("c") is dropped
    isl.add("d", 0.5, 1)
    assert set(isl.islands[0]) == {"a", "b"} and set(isl.archive) == {"b", "d"}
    isl.migrate()
    assert "b" in isl.islands[1] and "d" in isl.islands[2]
    isl.migrate()  # island 2's best (d) comes to island 0, which is full (a, b): its worst (a) must go
    assert all(len(pool) <= 2 for pool in isl.islands) and set(isl.islands[0]) == {"b", "d"}


def test_budget_is_never_exceeded(scripted):
    s, task, policy, state = setup("random", budget=4)
    rec = migrate.run_iteration(state, policy, task)
    assert state.history.evaluations == 4 and state.history.exhausted
    first = rec["members"][0]["candidates"]
    assert [c["status"] for c in first] == ["new", "over_budget"]
    assert first[1]["score"] == 0.0 and "kiwi" not in task.scored


def test_history_cache_scores_each_candidate_once():
    h = History(budget=10)
    t = FruitTask("x")
    h.score(t, ["pear", "pear", "apple"], 1, "online")
    recs = h.score(t, ["apple", "plum"], 2, "online")
    assert t.scored == ["pear", "apple", "plum"] and h.evaluations == 3
    assert [r["status"] for r in recs] == ["repeat", "new"]
    assert h.entries["apple"].iteration == 1  # the first find is kept


def test_training_tokens_keep_sampled_ids_or_reencode():
    s, task, policy, state = setup("migrate")
    online = migrate.Member("online", "policy", text="[plum]", tokens=[1, 2, 3])
    greedy = migrate.Member("greedy", "greedy", text="[apple]")
    assert migrate.training_tokens(policy, task, online) == [1, 2, 3]
    assert migrate.training_tokens(policy, task, greedy) == [ord(c) for c in "apple]"] + [0]


def test_pad_completions_marks_only_real_tokens():
    ids, mask = migrate.pad_completions([[1, 2], [3]], "cpu")
    assert ids.tolist() == [[1, 2], [3, 0]]
    assert mask.tolist() == [[1, 1], [1, 0]]


def test_every_strategy_has_a_preset_in_every_builtin_task():
    from tasks import task_class
    for name in ("wordsearch", "molecule", "arc"):
        presets = task_class(name).defaults.presets
        assert set(presets) == set(migrate.STRATEGIES), name
        assert not any(presets[k].update for k in ("random", "ns", "opro"))
        assert all(presets[k].update for k in ("grpo", "grpo-greedy", "migrate", "migrate-opro", "migrate-evo"))
        assert presets["grpo-greedy"].beta >= 1


def test_bad_settings_are_one_line_errors():
    for flags, words in ((["--budget", "-5"], "--budget must be positive"),
                         (["--alpha", "0", "--beta", "0", "--gamma", "0"], "group is empty")):
        args = migrate.build_parser().parse_args(flags)
        with pytest.raises(migrate.UsageError, match=words):
            migrate.resolve_settings(args, FruitTask)
    with pytest.raises(migrate.UsageError, match="unknown task"):
        migrate.load_task_class("nosuchtask")


def test_plot_is_an_svg_with_both_lines():
    recs = [dict(best_score=0.2 * i, mean_reward=0.1 * i) for i in range(5)]
    svg = rundir.plot_svg(recs, "t")
    assert svg.startswith("<svg") and svg.count("<polyline") == 2
    assert "48.0,312.0" in svg  # iteration 1 at score 0: bottom-left corner of the plot area
    assert ">0.25<" in svg and ">0.75<" in svg  # tick labels are not rounded to a wrong value


def test_a_search_that_finds_nothing_new_stops_after_patience(scripted, tmp_path):
    s, task, policy, _ = setup("random")
    s.iterations, s.patience, s.early_stop = 50, 3, False
    summary = migrate.search(s, tmp_path, policy, task, quiet=True)
    # iteration 1 scores plum and kiwi; every later answer repeats them, so iterations 2-4 find nothing new
    assert summary["iterations"] == 4 and summary["evaluations"] == 5
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) == 5  # warm start + 4 iterations
