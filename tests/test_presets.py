"""Every task's strategy table (PRESETS in tasks/*.py) against the flags of the paper's released scripts
(dhdhagar/migrate at 5b56298, scripts/*/*.sh, copied here verbatim for the flags that set a run's numbers).

The released train.py reads: --migrate_alpha/--migrate_beta/--migrate_gamma (the group; word search counts words,
pooled and packed into --batch_size answers of --num_guesses / 5 words), --greedy_topk (parents' top-k; OPRO
lists it), --num_iterations (mu, default 1), --learning_rate, --lora_rank, --lora_alpha,
--online_max_completion_length and --min_training_size (iterations). The inference-only baselines have no script
(semantle_inference.py and dockstring_inference.py, by their strategy names), so their rows are written out below
with where they come from; molecules and ARC have no Evo script either, and Evo keeps MiGrATe's group there with the
Evo word search's mu of 1.
"""
import shlex

import pytest

import loop
from history import Islands
from tasks import task_class

COMMON = {
    "wordsearch": "--min_training_size 100 --num_guesses 10 --batch_size 5 --num_generations 5 "
                  "--online_max_completion_length 64 --learning_rate 5e-5 --lora_alpha 16 --lora_rank 64",
    "molecule": "--min_training_size 40 --num_guesses 1 --batch_size 5 --num_generations 5 "
                "--online_max_completion_length 256 --learning_rate 5e-5 --lora_alpha 16 --lora_rank 64",
    "arc": "--min_training_size 64 --batch_size 16 --num_generations 16 --online_max_completion_length 1024 "
           "--learning_rate 1e-5 --lora_alpha 32 --lora_rank 128",
}
SCRIPTS = {  # (task, strategy): the script's own flags (COMMON[task] is added)
    ("wordsearch", "grpo"): "semantle/1_grpo.sh: --num_iterations 2 --migrate_gamma 0 --migrate_alpha 10 "
                            "--migrate_beta 0",
    ("wordsearch", "grpo-greedy"): "semantle/2_grpo_greedy.sh: --num_iterations 2 --greedy_topk 3 --migrate_gamma 0 "
                                   "--migrate_alpha 9 --migrate_beta 1",
    ("wordsearch", "migrate"): "semantle/3_migrate.sh: --num_iterations 2 --greedy_topk 3 --migrate_gamma 10 "
                               "--migrate_alpha 0 --migrate_beta 0",
    ("wordsearch", "migrate-opro"): "semantle/4_migrate_opro.sh: --num_iterations 2 --greedy_topk 5 "
                                    "--migrate_gamma 10 --migrate_alpha 0 --migrate_beta 0",
    ("wordsearch", "migrate-evo"): "semantle/6_migrate_evo.sh: --greedy_topk 3 --migrate_gamma 10 --migrate_alpha 0 "
                                   "--migrate_beta 0",
    ("molecule", "grpo"): "dockstring/1_grpo.sh: --num_iterations 2 --greedy_topk 1 --migrate_gamma 0 "
                          "--migrate_alpha 5 --migrate_beta 0",
    ("molecule", "grpo-greedy"): "dockstring/2_grpo_greedy.sh: --num_iterations 2 --greedy_topk 1 --migrate_gamma 0 "
                                 "--migrate_alpha 4 --migrate_beta 1",
    ("molecule", "migrate"): "dockstring/3_migrate.sh: --num_iterations 2 --greedy_topk 1 --migrate_gamma 2 "
                             "--migrate_alpha 2 --migrate_beta 1",
    ("molecule", "migrate-opro"): "dockstring/4_migrate_opro.sh: --num_iterations 2 --greedy_topk 5 --migrate_gamma 2 "
                                  "--migrate_alpha 2 --migrate_beta 1",
    ("arc", "random"): "arc_full/0_random.sh: --greedy_topk 1 --migrate_gamma 0 --migrate_alpha 16 --migrate_beta 0",
    ("arc", "ns"): "arc_full/1_ns.sh: --greedy_topk 1 --migrate_gamma 4 --migrate_alpha 12 --migrate_beta 0",
    ("arc", "opro"): "arc_full/2_opro.sh: --greedy_topk 1 --migrate_gamma 4 --migrate_alpha 12 --migrate_beta 0",
    ("arc", "grpo"): "arc_full/3_grpo.sh: --num_iterations 1 --greedy_topk 1 --migrate_gamma 0 --migrate_alpha 16 "
                     "--migrate_beta 0",
    ("arc", "grpo-greedy"): "arc_full/4_grpo_greedy.sh: --num_iterations 1 --greedy_topk 1 --migrate_gamma 0 "
                            "--migrate_alpha 15 --migrate_beta 1",
    ("arc", "migrate"): "arc_full/5_migrate.sh: --num_iterations 1 --greedy_topk 1 --migrate_gamma 4 "
                        "--migrate_alpha 11 --migrate_beta 1",
    ("arc", "migrate-opro"): "arc_full/6_migrate_opro.sh: --num_iterations 1 --greedy_topk 1 --migrate_gamma 4 "
                             "--migrate_alpha 11 --migrate_beta 1",
}
#   (task, strategy): (alpha, beta, gamma, topk, mu) and where the numbers come from, for rows with no script
NO_SCRIPT = {
    ("wordsearch", "random"): ((10, 0, 0, 3, 2), "semantle_inference.py random_sample: 10 words from the prompt"),
    ("wordsearch", "ns"): ((0, 0, 10, 3, 2), "semantle_inference.py random_top3_ns: 10 words from one top-3 word"),
    ("wordsearch", "opro"): ((0, 0, 10, 10, 2), "semantle_inference.py opro_10k: the top-10 words listed"),
    ("molecule", "random"): ((5, 0, 0, 1, 2), "dockstring_inference.py random_sample"),
    ("molecule", "ns"): ((0, 0, 5, 1, 2), "dockstring_inference.py ns_1k"),
    ("molecule", "opro"): ((0, 0, 5, 5, 2), "dockstring_inference.py opro_5k"),
    ("molecule", "migrate-evo"): ((2, 1, 2, 1, 1), "MiGrATe's group, the Evo word search's mu"),
    ("arc", "migrate-evo"): ((11, 1, 4, 1, 1), "MiGrATe's group and mu"),
}
# TTT-Discover (GitHub test-time-training/discover, tinker_cookbook/recipes/ttt/train.py): group_size 8 rollouts
# of one state (l. 36), one optimiser step a batch (l. 49); its two ideas crossed with MiGrATe's group keep
# MiGrATe's numbers (numbers_of="migrate").
DISCOVER = {task: (0, 0, 8, topk, 1) for task, topk in (("wordsearch", 3), ("molecule", 1), ("arc", 1))}
MIGRATE = {task: row for (task, strategy), (row, _) in NO_SCRIPT.items() if strategy == "migrate"} | {
    "wordsearch": (0, 0, 10, 3, 2), "molecule": (2, 1, 2, 1, 2), "arc": (11, 1, 4, 1, 1)}
NO_SCRIPT |= {(task, "discover"): (row, "recipes/ttt/train.py: group_size 8, one step") for task, row in
              DISCOVER.items()}
NO_SCRIPT |= {(task, crossing): (MIGRATE[task], "MiGrATe's group") for task in MIGRATE
              for crossing in ("migrate-entropic", "migrate-puct")}
TRAINS = {"grpo", "grpo-greedy", "migrate", "migrate-opro", "migrate-evo", "discover", "migrate-entropic",
          "migrate-puct"}


def script_flags(task: str, strategy: str) -> dict[str, str]:
    words = shlex.split(COMMON[task] + " " + SCRIPTS[task, strategy].split(": ", 1)[1])
    return dict(zip(words[::2], words[1::2]))


def numbers(task: str, strategy: str) -> tuple:
    """(alpha, beta, gamma, topk, mu) the code's table gives a strategy, as the run resolves them."""
    s = loop.resolve_settings(task_class(task), strategy)
    return s.alpha, s.beta, s.gamma, s.topk, s.mu


@pytest.mark.parametrize("task,strategy", sorted(SCRIPTS), ids=lambda v: str(v))
def test_the_table_matches_the_released_script(task, strategy):
    f = script_flags(task, strategy)
    alpha, beta, gamma, topk, mu = numbers(task, strategy)
    assert (alpha, beta, gamma) == (int(f["--migrate_alpha"]), int(f["--migrate_beta"]), int(f["--migrate_gamma"]))
    assert mu == int(f.get("--num_iterations", 1))
    if "--greedy_topk" in f:  # only strategies that read a parent use it
        assert topk == int(f["--greedy_topk"])
    s = loop.resolve_settings(task_class(task), strategy)
    assert (s.lr, s.lora_r, s.lora_alpha) == (float(f["--learning_rate"]), int(f["--lora_rank"]),
                                             int(f["--lora_alpha"]))
    assert (s.max_new_tokens, s.iterations) == (int(f["--online_max_completion_length"]),
                                                int(f["--min_training_size"]))
    # the group trained is --batch_size completions. Word search: --num_guesses words an iteration, pooled and packed
    # into those answers (2 words each); molecules: --num_guesses molecules per completion; ARC: one program.
    answer = task_class(task).answer_size
    if task == "wordsearch":
        assert s.pack and answer == int(f["--num_guesses"]) // int(f["--batch_size"])
    elif task == "molecule":
        assert answer == int(f["--num_guesses"])
    assert s.group_size // answer == int(f["--batch_size"])


@pytest.mark.parametrize("task,strategy", sorted(NO_SCRIPT), ids=lambda v: str(v))
def test_the_table_matches_the_baselines_without_a_script(task, strategy):
    assert numbers(task, strategy) == NO_SCRIPT[task, strategy][0]


@pytest.mark.parametrize("task", sorted(COMMON))
def test_every_strategy_has_a_row_and_a_source(task):
    own = {name for name, rule in loop.STRATEGIES.items() if rule.numbers_of is None}
    assert set(task_class(task).defaults.presets) == own
    assert {st for t, st in SCRIPTS | NO_SCRIPT if t == task} == set(loop.STRATEGIES)


@pytest.mark.parametrize("task", sorted(COMMON))
def test_the_strategies_that_train_are_the_scripts_that_train(task):
    for strategy in loop.STRATEGIES:
        assert loop.resolve_settings(task_class(task), strategy).update == (strategy in TRAINS)
        if strategy == "discover":
            continue
        # the Hugging Face Trainer defaults that train.py left in place
        s = loop.resolve_settings(task_class(task), strategy)
        assert (s.weight_decay, s.max_grad_norm, s.lr_schedule) == (0.0, 1.0, "linear")


@pytest.mark.parametrize("task", sorted(COMMON))
def test_discover_takes_the_settings_its_recipe_fixes(task):
    """TTT-Discover's recipe (and its docs/launching.md): Adam at a constant lr 4e-5, LoRA rank 32 with alpha =
    rank, no gradient clipping, no KL; the entropic objective and PUCT parents; each rollout trained on the prompt
    that produced it, so word search's answers are not packed. Its two halves crossed with MiGrATe's group change
    only their own idea."""
    s = loop.resolve_settings(task_class(task), "discover")
    assert (s.lr, s.lr_schedule, s.lora_r, s.lora_alpha, s.max_grad_norm, s.kl_coef) == \
        (4e-5, "constant", 32, 32, 0.0, 0.0)
    assert (s.objective, s.neighbours, s.on_own_prompt, s.pack) == ("entropic", "puct", True, False)
    migrate = loop.resolve_settings(task_class(task), "migrate")
    for crossing, changed in (("migrate-entropic", {"objective": "entropic"}), ("migrate-puct", {"neighbours": "puct"})):
        s = loop.resolve_settings(task_class(task), crossing)
        differs = {f: getattr(s, f) for f in ("objective", "neighbours", "on_own_prompt", "pack", "lr", "lora_r", "mu")
                   if getattr(s, f) != getattr(migrate, f)}
        assert differs == changed, crossing


def test_evo_database_has_the_released_settings():
    s = loop.resolve_settings(task_class("wordsearch"), "migrate-evo")
    isl = Islands(s.islands, migrate_every=s.migrate_every)
    # utils/evolution_database.py defaults in arguments.py: --evo_num_islands 4, --evo_migration_interval 40,
    # --evo_migration_rate 0.05, --evo_archive_size 5, exploration 0.2 / exploitation 0.8, both top-3
    assert (isl.n_islands, isl.migrate_every, isl.migration_rate, isl.archive_size) == (4, 40, 0.05, 5)
    assert (isl.explore_p, isl.explore_topk, isl.exploit_topk) == (0.2, 3, 3)
