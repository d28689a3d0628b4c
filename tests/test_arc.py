"""ARC task: parsing, the cell-accuracy score (hand-computed), prompts that hide the test output, the vote.

Tiny hand-made tasks are passed through the arc_data option; the real ARC-AGI-1 file is only read (no model).
"""
import json

import pytest

import tasks
from tasks.arc import COLOURS, ArcTask, PAPER54, RESPONSE_PREFIX, load_arc, pair_score, render_grid, vote

# Outputs equal inputs on the train pairs. The test input holds Brown (9), a colour no train grid has, so two
# programs can agree on every train pair and still disagree on the test output.
IDENTITY = {
    "train": [{"input": [[1, 2], [3, 4]], "output": [[1, 2], [3, 4]]},
              {"input": [[0, 5, 5]], "output": [[0, 5, 5]]}],
    "test": [{"input": [[9, 1], [2, 9]], "output": [[9, 1], [2, 9]]}],
}
# Output = input repeated twice side by side (shape changes).
WIDEN = {
    "train": [{"input": [[1, 2], [3, 4]], "output": [[1, 2, 1, 2], [3, 4, 3, 4]]}],
    "test": [{"input": [[7]], "output": [[7, 7]]}],
}


@pytest.fixture()
def data_dir(tmp_path):
    (tmp_path / "identity.json").write_text(json.dumps(IDENTITY))
    (tmp_path / "widen.json").write_text(json.dumps(WIDEN))
    return str(tmp_path)


def program(body: str) -> str:
    """A completion as the model writes it: the response prefix, a body, a closing fence and some chatter."""
    return f"{RESPONSE_PREFIX}\n{body}\n```\nThis program works."


# -- parsing --------------------------------------------------------------------------------------------------

def test_parse_good_completions():
    task_parse = object.__new__(ArcTask).parse  # parse needs no data
    assert task_parse(program("    return grid")) == ["def transform(grid):\n    return grid"]
    # trailing spaces and tabs are normalised, so equal programs are one candidate
    assert task_parse(program("\treturn grid   \n\n")) == ["def transform(grid):\n    return grid"]
    # a bare def in prose (no fence): prose around it is dropped
    bare = "Sure! Here it is:\nimport numpy as np\ndef transform(grid):\n    return np.array(grid).T\nDone, I hope."
    assert task_parse(bare) == ["import numpy as np\ndef transform(grid):\n    return np.array(grid).T"]
    # a fenced block without a language tag, after a block that does not define transform
    two = "```\nx = 1\n```\ntext\n```\ndef helper(g):\n    return g\ndef transform(grid):\n    return helper(grid)\n```"
    assert task_parse(two) == ["def helper(g):\n    return g\ndef transform(grid):\n    return helper(grid)"]
    # cut off mid-statement (out of tokens, no closing fence): the cut line is dropped
    cut = f"{RESPONSE_PREFIX}\n    out = [row[:] for row in grid]\n    return out\n    if len(out) >"
    assert task_parse(cut) == ["def transform(grid):\n    out = [row[:] for row in grid]\n    return out"]


@pytest.mark.parametrize("text", [
    "", "no code here", "```python\nprint('hello')\n```",  # nothing defines transform
    f"{RESPONSE_PREFIX}\n```",  # an empty body does not compile
    "```python\ndef transform(grid) return grid\n```",  # syntax error that trimming cannot fix
    "def transform_grid(grid):\n    return grid",  # wrong name
    "class transform:\n    pass",  # transform must be a function
    f"{RESPONSE_PREFIX}\n    return grid\x00",  # a NUL byte
    f"{RESPONSE_PREFIX}\n    return " + "(" * 100_000,  # deep nesting that crashes naive parsers
    f"{RESPONSE_PREFIX}\n" + "    x = 1\n" * 50_000,  # runaway length
    None, 42, b"def transform(grid): return grid",  # not text at all
])
def test_parse_malformed_and_adversarial_completions_give_nothing(text):
    task = object.__new__(ArcTask)
    assert task.parse(text) == []


def test_render_round_trips_and_starts_with_the_prefix(data_dir):
    task = ArcTask("identity", arc_data=data_dir)
    for cand in ["def transform(grid):\n    return grid", "import numpy as np\ndef transform(grid):\n    return grid"]:
        text = task.render(cand)
        assert text.startswith(task.prompt().prefix)
        parsed = task.parse(text)
        assert len(parsed) == 1
        if cand.startswith("def transform(grid):"):
            assert parsed == [cand]
    # a foreign candidate is rendered behind a placeholder transform that its own definition overrides
    foreign = "import numpy as np\ndef transform(grid):\n    return np.array(grid) * 0"
    # all-zero outputs: pair 1 has no zero (0/4), pair 2 [[0, 5, 5]] one (1/3): mean 1/6
    assert task.score(task.parse(task.render(foreign))) == task.score([foreign]) == [pytest.approx(1 / 6)]


# -- scores ---------------------------------------------------------------------------------------------------

def test_pair_score_formula_by_hand():
    t = [[1, 2, 3], [4, 5, 6]]  # h=2, w=3: 6 cells
    assert pair_score(t, t) == 1.0
    assert pair_score([[1, 2], [4, 0]], t) == pytest.approx(3 / 6)  # 3 overlap matches, 3 cells missing
    assert pair_score([[1, 2, 3]], t) == pytest.approx(3 / 6)  # one row missing
    assert pair_score([[1, 2, 3, 0], [4, 5, 6, 0]], t) == 0.0  # too wide
    assert pair_score(t + [[1, 2, 3]], t) == 0.0  # too tall
    for junk in [None, [], [[]], [[1, 2], [3]], [[1, 2, 10]], [[1.0, 2, 3]], [[True, 2, 3]], "123", [[1, "2", 3]]]:
        assert pair_score(junk, t) == 0.0


def test_identity_program_solves_an_identity_task(data_dir):
    task = ArcTask("identity", arc_data=data_dir)
    assert task.score(task.parse(program("    return grid"))) == [1.0]


def test_shape_changing_programs_score_as_the_formula_says(data_dir):
    task = ArcTask("widen", arc_data=data_dir)  # truth [[1,2,1,2],[3,4,3,4]]: 8 cells
    cands = ["def transform(grid):\n    return grid",  # 2x2, all 4 overlap cells right: 4/8
             "def transform(grid):\n    return [r + r for r in grid]",  # solved
             "def transform(grid):\n    return [r + r[::-1] for r in grid]",  # 2x4: [1,2,2,1],[3,4,4,3]: 4/8 right
             "def transform(grid):\n    return [r + r + r for r in grid]",  # 2x6: too wide: 0
             "def transform(grid):\n    return [grid[0] + grid[0]]"]  # 1x4, first row right: 4/8
    assert task.score(cands) == pytest.approx([0.5, 1.0, 0.5, 0.0, 0.5])


def test_junk_printing_failing_and_slow_programs_score_zero(data_dir):
    task = ArcTask("identity", arc_data=data_dir)
    cands = ["def transform(grid):\n    print('Red Blue\\n' * 1000)\n    return 'Red Blue'",
             "def transform(grid):\n    return [[str(c) for c in r] for r in grid]",
             "def transform(grid):\n    return [[c + 0.0 for c in r] for r in grid]",
             "def transform(grid):\n    raise ValueError('no idea')",
             "def transform(grid):\n    while True:\n        pass"]
    assert task.score(cands) == [0.0] * len(cands)


# -- prompts --------------------------------------------------------------------------------------------------

def test_prompts_show_train_pairs_and_test_input_but_never_the_test_output(data_dir):
    task = ArcTask("widen", arc_data=data_dir)
    prompts = [task.prompt(), task.neighbourhood_prompt("def transform(grid):\n    return grid"),
               task.opro_prompt([("def transform(grid):\n    return grid", 0.5),
                                 ("def transform(grid):\n    return [r + r for r in grid]", 0.75)])]
    for p in prompts:
        text = "\n".join(m["content"] for m in p.messages)
        assert p.prefix == RESPONSE_PREFIX
        assert render_grid(WIDEN["train"][0]["output"]) in text and "Orange" in text  # test input [[7]]
        assert "Orange Orange" not in text  # the test output [[7, 7]]
    assert "0.50" in "\n".join(m["content"] for m in prompts[2].messages)


def grids_in(text: str) -> list[str]:
    """The grids a prompt shows: in each paragraph, the lines made only of colour words (headers dropped)."""
    blocks = []
    for para in text.split("\n\n"):
        rows = [line for line in para.splitlines() if line and all(w in COLOURS for w in line.split())]
        if rows:
            blocks.append("\n".join(rows))
    return blocks


def test_real_prompts_never_contain_their_test_output():
    for tid in PAPER54:
        task = ArcTask(tid)
        shown = grids_in("\n".join(m["content"] for m in task.prompt().messages))
        assert len(shown) == 2 * len(task.train) + len(task.test), tid
        allowed = [render_grid(g) for p in task.train for g in (p["input"], p["output"])]
        allowed += [render_grid(p["input"]) for p in task.test]
        assert sorted(shown) == sorted(allowed), tid  # exactly the train pairs and test inputs


# -- report ---------------------------------------------------------------------------------------------------

IDENT = "def transform(grid):\n    return grid"
NINE_TO_ZERO = "def transform(grid):\n    return [[0 if c == 9 else c for c in r] for r in grid]"  # wrong on test
NINE_TO_ONE = "def transform(grid):\n    return [[1 if c == 9 else c for c in r] for r in grid]"  # wrong on test


def entries(*pairs):
    return [{"candidate": c, "score": s, "iteration": 1, "origin": "online"} for c, s in pairs]


def test_report_majority_vote_pass_at_1_and_2(data_dir):
    task = ArcTask("identity", arc_data=data_dir)
    truth = IDENTITY["test"][0]["output"]
    zeros = [[0, 1], [2, 0]]
    # two wrong votes against one right vote: pass@2 but not pass@1; a non-solving program does not vote
    r = task.report(entries((NINE_TO_ZERO, 1.0), (IDENT, 1.0), (NINE_TO_ZERO + "\n", 1.0),
                            ("def transform(grid):\n    return grid", 0.5)))
    assert r["attempts"] == [[zeros, truth]] and r["votes"] == [[2, 1]]
    assert (r["pass@1"], r["pass@2"], r["oracle"], r["solved"], r["solving_programs"]) == (False, True, True, True, 3)
    # the right answer third in the vote: oracle only
    r = task.report(entries((NINE_TO_ZERO, 1.0), (NINE_TO_ZERO + " ", 1.0), (NINE_TO_ONE, 1.0), (IDENT, 1.0)))
    assert (r["pass@1"], r["pass@2"], r["oracle"]) == (False, False, True)
    # a tie between two outputs goes to the one the higher-ranked program produced
    r = task.report(entries((IDENT, 1.0), (NINE_TO_ZERO, 1.0)))
    assert (r["pass@1"], r["pass@2"]) == (True, True)
    # nothing solves the train pairs: nothing votes
    r = task.report(entries((IDENT, 0.9)))
    assert (r["solving_programs"], r["pass@1"], r["pass@2"], r["oracle"], r["attempts"]) == (0, False, False, False, [[]])


def test_report_reuses_test_outputs_from_scoring(data_dir):
    task = ArcTask("identity", arc_data=data_dir)
    assert task.score([IDENT]) == [1.0]
    assert task.test_outputs[IDENT] == [IDENTITY["test"][0]["output"]]


def test_vote_ignores_invalid_grids():
    assert vote([None, [[1]], "x", [[1]], [[2]]]) == [([[1]], 2), ([[2]], 1)]


# -- data, targets, defaults ----------------------------------------------------------------------------------

def test_paper54_ids_are_all_in_the_evaluation_split():
    data = load_arc(None)
    assert len(PAPER54) == len(set(PAPER54)) == 54
    assert set(PAPER54) <= set(data["splits"]["eval"])
    assert len(ArcTask.target_sets["eval"]) == 400
    assert ArcTask.target_sets["paper54"] == PAPER54
    assert ArcTask.target_sets.get("nope") is None
    assert ArcTask.default_target in PAPER54


def test_bad_targets_data_and_options_raise_clear_errors(tmp_path, data_dir):
    with pytest.raises(ValueError, match="'zzzzzzzz'"):
        ArcTask("zzzzzzzz")
    with pytest.raises(ValueError, match="unknown ARC task option"):
        ArcTask("identity", arc_data=data_dir, colour="red")
    with pytest.raises(ValueError, match="neither a folder"):
        ArcTask("identity", arc_data=str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"t1": {"train": [{"input": [[1]], "output": [[1, 12]]}], "test": [{"input": [[1]]}]}}))
    with pytest.raises(ValueError, match="t1.*malformed"):
        ArcTask("t1", arc_data=str(bad))


def test_arc_data_as_combined_file_in_both_layouts(tmp_path):
    split_file = tmp_path / "splits.json"
    split_file.write_text(json.dumps({"train": {"aaa": IDENTITY}, "eval": {"bbb": WIDEN}}))
    flat_file = tmp_path / "flat.json"
    flat_file.write_text(json.dumps({"bbb": WIDEN}))
    for path in (split_file, flat_file):
        task = ArcTask("bbb", arc_data=str(path))
        assert task.train == WIDEN["train"] and task.test == WIDEN["test"]
    # a task without a test output only predicts
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"train": IDENTITY["train"], "test": [{"input": [[3]]}]}))
    task = ArcTask("one", arc_data=str(one))
    r = task.report(entries((IDENT, 1.0)))
    assert r["attempts"] == [[[[3]]]] and "pass@2" not in r


def test_paper_defaults():
    task_cls = tasks.TASKS["arc"]
    assert task_cls is ArcTask
    d = task_cls.defaults
    assert set(d.presets) == {"random", "ns", "opro", "grpo", "grpo-greedy", "migrate", "migrate-opro", "migrate-evo",
                              "discover"}
    assert all(p.alpha + p.beta + p.gamma == 16 for name, p in d.presets.items() if name != "discover")
    assert d.presets["discover"].gamma == 8  # TTT-Discover's group of 8 (its recipe), not the paper's 16
    m = d.presets["migrate"]
    assert (m.alpha, m.beta, m.gamma) == (11, 1, 4)
    ns, opro = d.presets["ns"], d.presets["opro"]
    assert (ns.alpha, ns.gamma, opro.alpha, opro.gamma) == (12, 4, 12, 4)  # scripts/arc_full/1_ns.sh, 2_opro.sh
    assert all((p.topk, p.mu) == (1, 1) for p in d.presets.values())  # greedy_topk 1, num_iterations 1
    assert (d.lr, d.lora_r, d.lora_alpha, d.max_new_tokens, d.iterations) == (1e-5, 128, 32, 1024, 64)


# -- programs in the shape of the paper's ARC model (barc0/Llama-3.1-ARC-Potpourri-Induction-8B) --------------

BARC_COMPLETION = '''Let me look at the examples.
```python
from common import *

import numpy as np

# concepts: copying
# description: the output is the input, each grid handled as a numpy array

def main(input_grid):
    output_grid = np.copy(input_grid)
    for obj in find_connected_components(input_grid, background=Color.BLACK, monochromatic=False):
        blit_object(output_grid, obj, background=Color.BLACK)
    return output_grid
```
'''


def test_barc_shaped_program_parses_runs_on_numpy_and_scores(data_dir):
    task = ArcTask("identity", arc_data=data_dir)
    [program] = task.parse(BARC_COMPLETION)
    assert program.startswith("from common import *") and "def main(input_grid):" in program
    assert task.score([program]) == [1.0]  # main got numpy arrays and the common helpers
    # a BARC program that widens the grid with numpy and a helper of ours: WIDEN's rule
    widen = ArcTask("widen", arc_data=data_dir)
    tile = "from common import *\nimport numpy as np\ndef main(input_grid):\n    return np.hstack([input_grid] * 2)"
    assert widen.score([tile]) == [1.0]
    # transform wins over main when a program defines both: transform keeps its list-of-lists contract
    both = "def main(input_grid):\n    return input_grid * 0\ndef transform(grid):\n    return grid"
    assert task.score([both]) == [1.0]


def test_barc_program_renders_behind_the_prefix_and_keeps_its_behaviour(data_dir):
    task = ArcTask("identity", arc_data=data_dir)
    [program] = task.parse(BARC_COMPLETION)
    text = task.render(program)
    assert text.startswith(RESPONSE_PREFIX)
    [again] = task.parse(text)
    assert again != program and task.score([again]) == task.score([program]) == [1.0]


def llama3_byte_tokenizer():
    """A byte-level tokenizer with Llama 3's special-token ids and chat format (the real 128k vocabulary is not
    available offline: ids of ordinary text differ from the real model's, special tokens and layout do not)."""
    from tokenizer import LLAMA3_PATTERN, PreTokenizer, Tokenizer, bytes_to_unicode
    vocab = {ch: b for b, ch in bytes_to_unicode().items()}
    added = {"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|start_header_id|>": 128006,
             "<|end_header_id|>": 128007, "<|eot_id|>": 128009}
    return Tokenizer(vocab, [], added, PreTokenizer(LLAMA3_PATTERN), bos_id=128000, eos_ids=(128001, 128009),
                     chat_format="llama3")


def test_prompt_in_the_llama3_chat_template_golden():
    task = ArcTask("66e6c45b")
    prompt = task.prompt()
    tok = llama3_byte_tokenizer()
    text = tok.chat(prompt.messages, assistant_prefix=prompt.prefix)
    system, user = (m["content"] for m in prompt.messages)
    assert text == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + system.strip()
                    + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n" + user.strip()
                    + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n```python\ndef transform(grid):")
    ids = tok.encode(text)
    assert ids[:2] == [128000, 128006] and ids.count(128006) == 3 and ids.count(128009) == 2
    assert 128001 not in ids and tok.decode(ids) == text  # special tokens only at turn boundaries; lossless
    # the test output never reaches the prompt; the model's own answer, parsed after the prefix, runs
    answer = prompt.prefix + "\n    return grid\n```"
    assert task.parse(answer) == ["def transform(grid):\n    return grid"]
