"""Settings are declared once (settings.Settings); the flags, resume and task overrides are derived from it."""
import dataclasses

import pytest

import cli
import migrate
import settings
from migrate import Strategy
from tasks import Preset, TaskDefaults


class Tiny:
    name = "tiny"
    defaults = TaskDefaults({"migrate": Preset(2, 1, 3, topk=4)}, lr=0.5, iterations=7)


def test_every_knob_is_a_flag_whose_default_is_none():
    args = cli.build_parser().parse_args([])
    for f in settings.KNOBS:
        assert getattr(args, f.name) is None, f.name  # so a flag left out can be told from one given
    assert "micro_batch" in settings.SETTING_FLAGS and "neighbours" not in settings.SETTING_FLAGS
    assert cli.build_parser().parse_args(["--no-early-stop", "--compile"]).early_stop is False


def test_settings_come_from_flags_then_saved_run_then_preset_then_task_then_defaults():
    parse = cli.build_parser().parse_args
    s = migrate.resolve_settings(parse(["--mu", "5"]), Tiny)
    assert (s.alpha, s.beta, s.gamma, s.topk) == (2, 1, 3, 4)  # the strategy's preset
    assert (s.lr, s.iterations) == (0.5, 7)  # the task's overrides
    assert (s.mu, s.temperature) == (5, 1.0)  # a flag; a Settings default
    saved = dataclasses.asdict(s) | dict(temperature=0.7, lr=0.25)
    r = migrate.resolve_settings(parse(["--lr", "0.125"]), Tiny, saved)
    assert (r.temperature, r.lr, r.mu) == (0.7, 0.125, 5)  # the saved run's, unless a flag is given


def test_a_task_may_override_only_real_settings():
    with pytest.raises(TypeError, match="lrr is not a setting"):
        TaskDefaults({}, lrr=1.0)
    assert Tiny.defaults.lr == 0.5 and Tiny.defaults.mu == settings.DEFAULTS["mu"]


def test_a_new_strategy_is_one_table_entry(monkeypatch):
    """Best-of-n with replay, defined here only: GRPO-Greedy's numbers in every task (on-policy answers plus the
    best past solution replayed), trained. Nothing else changes: the flag, the settings and the group follow."""
    from tests.test_loop import FruitTask
    monkeypatch.setitem(migrate.STRATEGIES, "best-of-n-replay", Strategy(numbers_of="grpo-greedy"))
    args = cli.build_parser().parse_args(["--strategy", "best-of-n-replay"])
    args.task = "fruit"
    s = migrate.resolve_settings(args, FruitTask)
    assert (s.alpha, s.beta, s.gamma, s.update, s.neighbours) == (3, 1, 0, True, "seed")
    task = FruitTask("x")
    state = migrate.new_state(s, task)
    plan = migrate.plan_group(s, task, state.history, state.islands, state.rng)
    assert [m.origin for m, _ in plan] == ["online"] * 3 + ["greedy"]
    assert plan[-1][0].text in ("[apple]", "[pear]")  # one of the top-2 past solutions, replayed
