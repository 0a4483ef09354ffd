"""The time budget shares the clock among the training stages and stops a stage that would overrun."""

import dataclasses

import pytest

from penni_deploy.method.budget import TimeBudget
from penni_deploy.method.compress import CompressConfig, _follow_budget
from penni_deploy.method.train import EpochResult, TrainConfig


class FakeClock:
    def __init__(self, now=0.0):
        self.now = now

    def __call__(self):
        return self.now


def budget(seconds, reserve=0.0, now=0.0):
    clock = FakeClock(now)
    return TimeBudget(seconds, reserve, clock=clock, start=0.0), clock


def test_a_stage_keeps_its_share_of_the_time_left():
    b, clock = budget(400, reserve=100)  # 300 s for training
    clock.now = 10  # the first epoch took 10 s: 290 s left
    # 39 epochs to go against 40 of later stages: this stage's share is 290 * 39 / 79 = 143 s -> 14 more
    assert b.stage_epochs(planned=40, done=1, minimum=1, epoch_seconds=10, later_planned=40) == 15
    assert b.stage_epochs(planned=40, done=1, minimum=1, epoch_seconds=10, later_planned=0) == 30
    assert b.stage_epochs(planned=8, done=1, minimum=1, epoch_seconds=10, later_planned=0) == 8  # never more
    clock.now = 500  # past the deadline: the minimum only, and never fewer than were run
    assert b.stage_epochs(planned=40, done=1, minimum=3, epoch_seconds=10, later_planned=40) == 3
    assert b.stage_epochs(planned=40, done=5, minimum=3, epoch_seconds=10, later_planned=40) == 5


def test_must_stop_counts_the_later_stages_minimum():
    b, clock = budget(100)
    clock.now = 70  # 30 s left
    assert not b.must_stop(epoch_seconds=10, later_minimum=2)  # 10 + 2 * 10 fits
    assert b.must_stop(epoch_seconds=10, later_minimum=3)
    assert b.left() == 30


def results(*seconds):
    return [EpochResult(1.0, 100, s) for s in seconds]


def test_follow_budget_replans_while_the_rate_is_still_the_initial_one():
    config = CompressConfig(arch="resnet20", data=".", output="m.pt", min_epochs=1)
    b, clock = budget(1000)
    clock.now = 20  # epochs 0 and 1 took 15 s and 5 s: the steady 5 s is what counts
    plan, stop = _follow_budget(config, b, TrainConfig(100), planned=100, epoch=1, results=results(15, 5),
                                later_planned=0, later_minimum=0)
    assert (plan.epochs, stop) == (100, False)  # 980 s / 5 s fits all 98 left
    clock.now = 900  # 100 s left: 2 + 20 epochs
    plan, stop = _follow_budget(config, b, TrainConfig(100), planned=100, epoch=1, results=results(15, 5),
                                later_planned=0, later_minimum=0)
    assert (plan.epochs, stop) == (22, False)
    # Past the first rate step of a 10-epoch plan (epoch 5), the plan no longer moves, but the clock still stops it.
    clock.now = 996  # 4 s left: no room for another 5 s epoch
    plan, stop = _follow_budget(config, b, TrainConfig(10), planned=10, epoch=5, results=results(5, 5, 5, 5, 5, 5),
                                later_planned=0, later_minimum=0)
    assert (plan.epochs, stop) == (6, True)


def test_follow_budget_runs_the_minimum_whatever_the_clock():
    config = dataclasses.replace(CompressConfig(arch="resnet20", data=".", output="m.pt"), min_epochs=3)
    b, clock = budget(10)
    clock.now = 50
    plan, stop = _follow_budget(config, b, TrainConfig(20), planned=20, epoch=0, results=results(5),
                                later_planned=10, later_minimum=3)
    assert (plan.epochs, stop) == (3, False)
    plan, stop = _follow_budget(config, b, plan, planned=20, epoch=2, results=results(5, 5, 5),
                                later_planned=10, later_minimum=3)
    assert plan.epochs == 3  # done: the loop ends after its third epoch


@pytest.mark.parametrize("seconds", [10.0, 30.0], ids=["below-reserve", "equal-to-reserve"])
def test_a_budget_that_leaves_nothing_for_training_is_refused(seconds):
    from penni_deploy.errors import PenniError
    from penni_deploy.method.compress import check_config

    config = CompressConfig(arch="resnet20", data=".", output="m.pt", time_budget=seconds, budget_reserve=30.0)
    with pytest.raises(PenniError, match="time-budget"):
        check_config(config)
