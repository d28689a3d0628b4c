"""Settings are declared once (settings.Settings); the flags, resume and task overrides are derived from it."""
import dataclasses

import pytest

import loop
import settings
from loop import Strategy
from tasks import Preset, TaskDefaults


class Tiny:
    name = "tiny"
    defaults = TaskDefaults({"migrate": Preset(2, 1, 3, topk=4)}, lr=0.5, iterations=7)


def test_settings_come_from_given_then_saved_run_then_preset_then_task_then_defaults():
    s = loop.resolve_settings(Tiny, "migrate", {"mu": 5})
    assert (s.alpha, s.beta, s.gamma, s.topk) == (2, 1, 3, 4)  # the strategy's preset
    assert (s.lr, s.iterations) == (0.5, 7)  # the task's overrides
    assert (s.mu, s.temperature) == (5, 1.0)  # given; a Settings default
    saved = dataclasses.asdict(s) | dict(temperature=0.7, lr=0.25)
    r = loop.resolve_settings(Tiny, "migrate", {"lr": 0.125}, saved)
    assert (r.temperature, r.lr, r.mu) == (0.7, 0.125, 5)  # the saved run's, unless given


def test_a_budget_without_iterations_decides_the_run_length():
    assert loop.resolve_settings(Tiny, "migrate", {"budget": 30}).iterations == 30
    assert loop.resolve_settings(Tiny, "migrate", {"budget": 30, "iterations": 4}).iterations == 4


def test_the_engine_choices_are_resolved_and_named():
    """The sampler runs the model's own weights unless asked; auto becomes the twin that will run, so config.json
    and the start line name it."""
    cpu = loop.resolve_settings(Tiny, "migrate", {"device": "cpu"})
    assert (cpu.dtype, cpu.sample_weights) == ("float32", "model")
    assert loop.resolve_settings(Tiny, "migrate", {"device": "cpu", "sample_weights": "auto"}).sample_weights \
        == "int4"
    bf16 = loop.resolve_settings(Tiny, "migrate", {"device": "cpu", "dtype": "bfloat16", "sample_weights": "auto"})
    assert bf16.sample_weights == "model"
    assert loop.resolve_settings(Tiny, "migrate", {"device": "cpu", "sample_weights": "packed"}).sample_weights \
        == "packed"


def test_a_task_may_override_only_real_settings():
    with pytest.raises(TypeError, match="lrr is not a setting"):
        TaskDefaults({}, lrr=1.0)
    assert Tiny.defaults.lr == 0.5 and Tiny.defaults.mu == settings.DEFAULTS["mu"]


def test_a_new_strategy_is_one_table_entry(monkeypatch):
    """Best-of-n with replay, defined here only: GRPO-Greedy's numbers in every task (on-policy answers plus the
    best past solution replayed), trained. Nothing else changes: the flag, the settings and the group follow."""
    from tests.test_loop import FruitTask
    monkeypatch.setitem(loop.STRATEGIES, "best-of-n-replay", Strategy(numbers_of="grpo-greedy"))
    s = loop.resolve_settings(FruitTask, "best-of-n-replay")
    assert (s.alpha, s.beta, s.gamma, s.update, s.neighbours) == (3, 1, 0, True, "parent")
    task = FruitTask("x")
    state = loop.new_state(s, task)
    plan = loop.plan_group(s, task, state)
    assert [m.origin for m, _ in plan] == ["on-policy"] * 3 + ["greedy"]
    assert plan[-1][0].text in ("[apple]", "[pear]")  # one of the top-2 past solutions, replayed
