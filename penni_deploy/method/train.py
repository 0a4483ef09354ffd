"""Training loops of the PENNI method: dense baseline, alternating retraining with L1 on the
coefficients, and fine-tuning with the pruned coefficients held at zero.

Paper defaults: SGD, momentum 0.9 (Nesterov), weight decay 1e-4, lr 0.01 with ×0.1 steps at 50%
and 75% of the epochs, L1 γ = 1e-4 on every PENNI layer's coefficients. Alternation trains the
coefficients with the bases frozen, then the bases with the coefficients frozen, swapping every
``alternate_every`` epochs; everything else (BN, Linear, 1×1 convs) trains throughout.

Speed options (``TrainConfig.bf16``, ``channels_last``): the forward pass and the loss run under
bf16 autocast (weights, gradients, the optimizer and the L1 term stay float32), and the model and
its inputs use the channels-last memory format that tensor-core convolutions want. Evaluation is
always float32, with TF32 off on CUDA, so reported accuracies do not depend on them.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..models.penni_conv import PenniConv2d
from .prune import apply_masks_


@dataclass(frozen=True)
class TrainConfig:
    """One training stage.

    Parameters
    ----------
    epochs : int
        Epochs of this stage.
    lr : float
        Initial learning rate; ×0.1 at ``milestones`` (fractions of ``epochs``).
    l1 : float
        L1 penalty on PENNI coefficients (0 disables it).
    alternate_every : int
        Swap between training coefficients and bases every this many epochs (0: train both).
    bf16 : bool
        Run the forward pass under bf16 autocast.
    channels_last : bool
        Train the model and feed its inputs in channels-last memory format.
    """

    epochs: int
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    l1: float = 0.0
    alternate_every: int = 0
    milestones: tuple[float, float] = (0.5, 0.75)
    bf16: bool = False
    channels_last: bool = False


@dataclass(frozen=True)
class EpochResult:
    """What one training epoch did: mean loss, images seen and wall time (device work included)."""

    loss: float
    images: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def learning_rate(config: TrainConfig, epoch: int) -> float:
    drops = sum(epoch >= math.floor(m * config.epochs) for m in config.milestones if m * config.epochs >= 1)
    return config.lr * (0.1 ** drops)


def trains_coefficients(config: TrainConfig, epoch: int) -> bool:
    """In an alternating stage, whether ``epoch`` trains the coefficients (else the bases)."""
    return config.alternate_every <= 0 or (epoch // config.alternate_every) % 2 == 0


def _set_phase(model: nn.Module, config: TrainConfig, epoch: int) -> None:
    coefs_phase = trains_coefficients(config, epoch)
    for module in model.modules():
        if isinstance(module, PenniConv2d):
            module.coefs.requires_grad_(config.alternate_every <= 0 or coefs_phase)
            module.basis.requires_grad_(config.alternate_every <= 0 or not coefs_phase)


def l1_penalty(model: nn.Module) -> torch.Tensor:
    terms = [m.coefs.abs().sum() for m in model.modules() if isinstance(m, PenniConv2d)]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=True,
                           weight_decay=config.weight_decay)


@contextlib.contextmanager
def _full_precision() -> Iterator[None]:
    """TF32 off inside (CUDA convolutions use it by default): float32 evaluation means float32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, device: str = "cpu") -> float:
    """Top-1 accuracy over ``batches`` of (images, labels), in the model's own precision (no autocast)."""
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    total = 0
    dtype = next(model.parameters()).dtype
    with _full_precision():
        for images, labels in batches:
            images, labels = images.to(device, dtype), labels.to(device)
            correct += (model(images).argmax(dim=1) == labels).sum()  # summed on the device: no sync per batch
            total += len(labels)
    return int(correct) / max(1, total)


def train_epoch(model: nn.Module, batches: Iterable, optimizer: torch.optim.Optimizer, config: TrainConfig,
                epoch: int, masks: dict[str, torch.Tensor] | None = None,
                progress: Callable[[str], None] | None = None, device: str = "cpu") -> EpochResult:
    """One epoch; returns its mean loss and throughput. ``masks`` hold pruned coefficients at zero."""
    model.train()
    _set_phase(model, config, epoch)
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(config, epoch)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)  # no copy when the parameters already are in it
    device_type = torch.device(device).type
    # Summed on the device and read only for progress lines: reading it every step would sync every step.
    total = torch.zeros((), dtype=torch.float64, device=device)
    count, start = 0, time.perf_counter()
    batches = list(batches) if not hasattr(batches, "__len__") else batches
    dtype = next(model.parameters()).dtype
    for step, (images, labels) in enumerate(batches):
        images = images.to(device, dtype, non_blocking=True).contiguous(memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=config.bf16):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
        if config.l1 > 0:
            loss = loss + config.l1 * l1_penalty(model)
        loss.backward()
        optimizer.step()
        if masks:
            apply_masks_(model, masks)  # momentum and weight decay would revive pruned entries
        total += loss.detach() * len(labels)
        count += len(labels)
        if progress is not None and (step + 1) % max(1, len(batches) // 10) == 0:
            progress(f"epoch {epoch + 1}/{config.epochs} [{'#' * ((step + 1) * 20 // len(batches)):<20}] "
                     f"loss {float(total) / count:.3f} lr {learning_rate(config, epoch):.4g} "
                     f"{count / (time.perf_counter() - start):.0f} img/s")
    mean_loss = float(total) / max(1, count)  # waits for the device: the time below includes its work
    return EpochResult(mean_loss, count, time.perf_counter() - start)


def stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
