"""History.score holds a task to the protocol: one finite score in [0, 1] per candidate, or one line naming the task.

A score outside [0, 1] used to be clamped (2.5 read as solved), and a short list left candidates unscored, so they
were counted as new again every time they came up.
"""
import math

import numpy as np
import pytest

import tasks
from history import History, TaskProtocolError


class StubTask(tasks.Task):
    """A task whose score() returns whatever `answer(candidates)` gives (or raises what it raises)."""
    name = "stub"

    def __init__(self, answer):
        super().__init__("the-target")
        self.answer = answer

    def score(self, candidates):
        return self.answer(candidates)


def protocol_error(answer, candidates=("a", "b")) -> tuple[str, History]:
    """The message History.score raises for a task answering `answer`, and the history it left."""
    history = History(budget=10)
    with pytest.raises(TaskProtocolError) as err:
        history.score(StubTask(answer), list(candidates), 1, "on-policy")
    return str(err.value), history


def test_a_valid_answer_is_recorded_as_floats():
    history = History(budget=10)
    records = history.score(StubTask(lambda c: [np.float32(0.25), 1]), ["a", "b"], 1, "on-policy")
    assert [r["score"] for r in records] == [0.25, 1.0]
    assert all(type(e.score) is float for e in history.entries.values())


@pytest.mark.parametrize("bad", [2.5, -0.1, math.nan, math.inf, -math.inf, None, "0.5", True, [0.5]])
def test_a_score_that_is_not_a_number_in_the_unit_interval_is_refused(bad):
    message, history = protocol_error(lambda c: [0.5, bad])
    assert "\n" not in message
    assert message.startswith("task 'stub' (target 'the-target'): score() gave ")
    assert repr(bad)[:3] in message and "for 'b'" in message and "[0, 1]" in message
    assert history.entries == {} and history.evaluations == 0  # nothing half-recorded


@pytest.mark.parametrize("answer, said", [
    (lambda c: [], "returned 0 scores for 2 candidates"),
    (lambda c: [0.1, 0.2, 0.3], "returned 3 scores for 2 candidates"),
    (lambda c: 0.5, "returned 0.5, not a list of scores"),
    (lambda c: None, "returned None, not a list of scores"),
])
def test_the_wrong_number_of_scores_is_refused(answer, said):
    message, history = protocol_error(answer)
    assert "\n" not in message and message.startswith("task 'stub'") and said in message
    assert history.evaluations == 0


def test_a_score_that_raises_becomes_one_line_naming_the_task():
    def broken(candidates):
        raise ValueError("oracle exploded\nwith a second line")

    history = History(budget=10)
    with pytest.raises(TaskProtocolError) as err:
        history.score(StubTask(broken), ["a"], 1, "on-policy")
    assert str(err.value) == "task 'stub' (target 'the-target'): score() raised ValueError: oracle exploded"
    assert isinstance(err.value.__cause__, ValueError)  # the original stays attached for a traceback


def test_an_interrupt_inside_score_is_not_wrapped():
    def interrupted(candidates):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        History(budget=10).score(StubTask(interrupted), ["a"], 1, "on-policy")


def test_a_huge_answer_is_shortened_in_the_message():
    message, _ = protocol_error(lambda c: ["x" * 10_000] * 2)
    assert len(message) < 300
