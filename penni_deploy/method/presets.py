"""Named training schedules for ``compress --preset``: every epoch count and rate, in one place.

``paper`` is the PENNI paper's schedule (retrain 100 epochs at lr 0.01 alternating every 5, fine-tune
30), with a dense baseline of 100 epochs at lr 0.1 since the paper starts from pretrained networks.

``paper-fast`` is the longest schedule of the same shape that fits about 10 minutes of one H100/H200
(with the fast data path, bf16 autocast and channels-last, ResNet18 on the 50,000 CIFAR-10 images).
What it keeps from the paper: SGD with Nesterov momentum 0.9, weight decay 1e-4, batch 128, lr 0.01
for the PENNI stages with ×0.1 at 50% and 75% of each stage, L1 1e-4 on the coefficients, d = 5,
alternating coefficients and bases, pruning at one std per layer, masked fine-tuning, shrink.
How it is shortened, exactly:

- baseline: 40 epochs at lr 0.1 (instead of a pretrained network or 100 epochs);
- retrain: 40 epochs instead of 100 (×0.4), alternating every 2 epochs instead of 5, so the run
  still has the paper's 20 alternation phases (10 of coefficients, 10 of bases);
- fine-tune: 12 epochs instead of 30 (×0.4).

With a time budget (``--time-budget``, see ``budget.py``) each stage keeps fewer epochs still when
the measured speed does not afford them; the summary records planned and run epochs per stage.
Command-line flags override any value of a preset.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import PenniError


@dataclass(frozen=True)
class Schedule:
    """Epochs and rates of the three training stages.

    Attributes
    ----------
    baseline_epochs, retrain_epochs, finetune_epochs : int
        Epochs of dense training, alternating retraining, and masked fine-tuning.
    baseline_lr, lr : float
        Initial learning rates of the dense baseline and of the two PENNI stages.
    interval : int
        Alternate coefficients and bases every this many epochs.
    batch_size : int
        Global batch.
    """

    baseline_epochs: int
    retrain_epochs: int
    finetune_epochs: int
    baseline_lr: float
    lr: float
    interval: int
    batch_size: int

    def as_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, Schedule] = {
    "paper": Schedule(baseline_epochs=100, retrain_epochs=100, finetune_epochs=30, baseline_lr=0.1, lr=0.01,
                      interval=5, batch_size=128),
    "paper-fast": Schedule(baseline_epochs=40, retrain_epochs=40, finetune_epochs=12, baseline_lr=0.1, lr=0.01,
                           interval=2, batch_size=128),
}

#: The schedule ``compress`` uses when no preset is named.
DEFAULT_PRESET = "paper"


def get_preset(name: str) -> Schedule:
    """The schedule called ``name``; a ``PenniError`` listing the known ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise PenniError(f"unknown --preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
