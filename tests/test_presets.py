"""Every strategy x task preset pinned to the flags of the paper's released scripts (dhdhagar/migrate at 5b56298).

Columns: alpha, beta, gamma (alpha and gamma count words in word search, whose groups are packed), top-k (NS
seeds are drawn among it; OPRO lists it; the released flag is --greedy_topk), mu (--num_iterations, default 1),
lr (--learning_rate), LoRA r / alpha, new tokens (--online_max_completion_length), completions trained per
iteration (--batch_size / --num_generations) and candidates per completion (word search: 2 per packed answer;
molecules: --num_guesses 1). Rows with no script name have no released script: inference-only baselines come
from semantle_inference.py / dockstring_inference.py, and molecules and ARC have no Evo script (we keep the Evo
script's mu = 1).
"""
import pytest

import cli
import migrate
from tasks import task_class

#          task         strategy        a  b  g topk mu  lr     r   la  tokens G  cand  released script
PAPER = [("wordsearch", "random",      10, 0, 0, 3, 2, 5e-5, 64, 16, 64, 5, 2, "semantle_inference.py random_sample"),
         ("wordsearch", "ns",           0, 0, 10, 3, 2, 5e-5, 64, 16, 64, 5, 2, "semantle_inference.py random_top3_ns"),
         ("wordsearch", "opro",         0, 0, 10, 10, 2, 5e-5, 64, 16, 64, 5, 2, "semantle_inference.py opro_10k"),
         ("wordsearch", "grpo",        10, 0, 0, 3, 2, 5e-5, 64, 16, 64, 5, 2, "scripts/semantle/1_grpo.sh"),
         ("wordsearch", "grpo-greedy",  9, 1, 0, 3, 2, 5e-5, 64, 16, 64, 5, 2, "scripts/semantle/2_grpo_greedy.sh"),
         ("wordsearch", "migrate",      0, 0, 10, 3, 2, 5e-5, 64, 16, 64, 5, 2, "scripts/semantle/3_migrate.sh"),
         ("wordsearch", "migrate-opro", 0, 0, 10, 5, 2, 5e-5, 64, 16, 64, 5, 2, "scripts/semantle/4_migrate_opro.sh"),
         ("wordsearch", "migrate-evo",  0, 0, 10, 3, 1, 5e-5, 64, 16, 64, 5, 2, "scripts/semantle/6_migrate_evo.sh"),
         ("molecule", "random",         5, 0, 0, 1, 2, 5e-5, 64, 16, 256, 5, 1, "dockstring_inference.py random_sample"),
         ("molecule", "ns",             0, 0, 5, 1, 2, 5e-5, 64, 16, 256, 5, 1, "dockstring_inference.py ns_1k"),
         ("molecule", "opro",           0, 0, 5, 5, 2, 5e-5, 64, 16, 256, 5, 1, "dockstring_inference.py opro_5k"),
         ("molecule", "grpo",           5, 0, 0, 1, 2, 5e-5, 64, 16, 256, 5, 1, "scripts/dockstring/1_grpo.sh"),
         ("molecule", "grpo-greedy",    4, 1, 0, 1, 2, 5e-5, 64, 16, 256, 5, 1, "scripts/dockstring/2_grpo_greedy.sh"),
         ("molecule", "migrate",        2, 1, 2, 1, 2, 5e-5, 64, 16, 256, 5, 1, "scripts/dockstring/3_migrate.sh"),
         ("molecule", "migrate-opro",   2, 1, 2, 5, 2, 5e-5, 64, 16, 256, 5, 1, "scripts/dockstring/4_migrate_opro.sh"),
         ("molecule", "migrate-evo",    2, 1, 2, 1, 1, 5e-5, 64, 16, 256, 5, 1, ""),
         ("arc", "random",             16, 0, 0, 1, 1, 1e-5, 128, 32, 1024, 16, 1, "scripts/arc_full/0_random.sh"),
         ("arc", "ns",                 12, 0, 4, 1, 1, 1e-5, 128, 32, 1024, 16, 1, "scripts/arc_full/1_ns.sh"),
         ("arc", "opro",               12, 0, 4, 1, 1, 1e-5, 128, 32, 1024, 16, 1, "scripts/arc_full/2_opro.sh"),
         ("arc", "grpo",               16, 0, 0, 1, 1, 1e-5, 128, 32, 1024, 16, 1, "scripts/arc_full/3_grpo.sh"),
         ("arc", "grpo-greedy",        15, 1, 0, 1, 1, 1e-5, 128, 32, 1024, 16, 1, "scripts/arc_full/4_grpo_greedy.sh"),
         ("arc", "migrate",            11, 1, 4, 1, 1, 1e-5, 128, 32, 1024, 16, 1, "scripts/arc_full/5_migrate.sh"),
         ("arc", "migrate-opro",       11, 1, 4, 1, 1, 1e-5, 128, 32, 1024, 16, 1, "scripts/arc_full/6_migrate_opro.sh"),
         ("arc", "migrate-evo",        11, 1, 4, 1, 1, 1e-5, 128, 32, 1024, 16, 1, "")]

ITERATIONS = {"wordsearch": 100, "molecule": 40, "arc": 64}  # --min/max_training_size


@pytest.mark.parametrize("row", PAPER, ids=[f"{r[0]}-{r[1]}" for r in PAPER])
def test_preset_matches_the_released_script(row):
    task, strategy, a, b, g, topk, mu, lr, r, la, tokens, group, cands, _script = row
    cls = task_class(task)
    args = cli.build_parser().parse_args(["--strategy", strategy])
    s = migrate.resolve_settings(args, cls)
    assert (s.alpha, s.beta, s.gamma, s.topk, s.mu) == (a, b, g, topk, mu)
    assert (s.lr, s.lora_r, s.lora_alpha, s.max_new_tokens, s.iterations) == (lr, r, la, tokens, ITERATIONS[task])
    assert s.update == (strategy not in ("random", "ns", "opro"))
    # the Hugging Face Trainer defaults that train.py left in place
    assert (s.weight_decay, s.max_grad_norm, s.lr_schedule) == (0.0, 1.0, "linear")
    answer = cls.answer_size if task != "molecule" else cls().n
    if s.pack:  # words pooled and packed into answers of answer_size
        assert (s.alpha + s.beta + s.gamma) // answer == group and answer == cands
    else:
        assert s.alpha + s.beta + s.gamma == group and answer == cands


def test_every_strategy_is_pinned_for_every_task():
    assert {(r[0], r[1]) for r in PAPER} == {(t, st) for t in ITERATIONS for st in migrate.STRATEGIES}


def test_evo_database_has_the_released_settings():
    from history import Islands
    s = migrate.resolve_settings(cli.build_parser().parse_args(["--strategy", "migrate-evo"]),
                                 task_class("wordsearch"))
    isl = Islands(s.islands, migrate_every=s.migrate_every)
    # utils/evolution_database.py defaults in arguments.py: --evo_num_islands 4, --evo_migration_interval 40,
    # --evo_migration_rate 0.05, --evo_archive_size 5, exploration 0.2 / exploitation 0.8, both top-3
    assert (isl.n_islands, isl.migrate_every, isl.migration_rate, isl.archive_size) == (4, 40, 0.05, 5)
    assert (isl.explore_p, isl.explore_topk, isl.exploit_topk) == (0.2, 3, 3)
