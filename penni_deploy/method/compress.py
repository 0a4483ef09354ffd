"""``penni-deploy compress``: dense CNN → trained, pruned, shrunk PENNI model, stage by stage.

Stages: baseline (train dense, or take ``baseline`` weights) → decompose (truncated SVD, d bases)
→ retrain (alternating C / B, L1 on C) → prune (|c| < std of the layer's C) → fine-tune (pruned
entries held at zero) → shrink (exact). Runs on CUDA when present. Every stage writes its checkpoint into the work folder
after each epoch, so ``resume=True`` continues from the last one written; each ends with a one-line
summary (test accuracy, parameters, MACs, coefficient density, wall time), all collected in the
JSON summary written beside the output. Under ``torchrun`` it trains data-parallel (see
``distributed.py``); checkpoints and outputs are written once, by rank 0.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from ..errors import PenniError
from ..progress import Progress
from .counting import count_model, format_count
from .decompose import decompose_model
from .distributed import (
    DistContext,
    init_from_env,
    use_global_batchnorm_,
    wrap_for_training,
)
from .plot import plot_stages
from .prune import prune_coefficients_
from .shrink import shrink_model_
from .train import TrainConfig, evaluate, make_optimizer, train_epoch

logger = logging.getLogger(__name__)

STAGES = ("baseline", "decompose", "retrain", "prune", "finetune", "shrink")


@dataclass(frozen=True)
class CompressConfig:
    """Hyper-parameters; defaults are the paper's (100 retrain and 30 fine-tune epochs)."""

    arch: str
    data: str
    output: str
    baseline: str | None = None  # dense state_dict to start from instead of training
    baseline_epochs: int = 100
    baseline_lr: float = 0.1  # dense training from scratch; the PENNI stages use ``lr``
    retrain_epochs: int = 100
    finetune_epochs: int = 30
    lr: float = 0.01
    l1: float = 1e-4
    interval: int = 5
    num_bases: int = 5
    batch_size: int = 128
    subset: int | None = None
    test_subset: int | None = None
    seed: int = 0
    resume: bool = False
    work_dir: str | None = None
    device: str = "auto"  # cuda when present, else cpu
    augment: bool = True  # the paper's crop + flip; off only to compare runs exactly
    float64: bool = False  # train in double precision: for exact comparisons (e.g. 1 vs N processes)

    @property
    def torch_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    @property
    def folder(self) -> str:
        return self.work_dir or os.path.splitext(self.output)[0] + ".work"


@dataclass
class StageSummary:
    stage: str
    accuracy: float
    params: int
    effective_params: int
    macs: int
    coef_density: float | None
    seconds: float
    extra: dict = field(default_factory=dict)

    def line(self) -> str:
        density = "-" if self.coef_density is None else f"{self.coef_density:.1%}"
        return (f"{self.stage:<9} acc {self.accuracy:.2%}  params {self.effective_params / 1e6:.3f}M "
                f"(stored {self.params / 1e6:.3f}M)  MACs {self.macs / 1e6:.1f}M  coef density {density}  "
                f"{self.seconds:.0f}s")


def _input_shape(config: CompressConfig) -> tuple[int, ...]:
    from ..models import INPUT_SHAPES

    return INPUT_SHAPES[config.arch]


def _is_imagenet(config: CompressConfig) -> bool:
    return _input_shape(config) != (1, 3, 32, 32)


def _datasets(config: CompressConfig, gen: torch.Generator):
    """(train, test) datasets: CIFAR-10 for the CIFAR networks, ``DATA/train`` and ``DATA/val``
    ImageFolder trees for the ImageNet ones."""
    if _is_imagenet(config):
        from ..data import ImageFolderDataset

        return (ImageFolderDataset(os.path.join(config.data, "train"), train=config.augment, subset=config.subset,
                                   generator=gen),
                ImageFolderDataset(os.path.join(config.data, "val"), train=False, subset=config.test_subset))
    from ..data import CifarDataset, load_cifar10

    return (CifarDataset(load_cifar10(config.data, "train", config.subset), train=config.augment, generator=gen),
            CifarDataset(load_cifar10(config.data, "test", config.test_subset), train=False))


def _loaders(config: CompressConfig, ctx: DistContext):
    if config.batch_size % ctx.world_size:
        raise PenniError(f"--batch-size {config.batch_size} must divide evenly over {ctx.world_size} processes")
    gen = torch.Generator().manual_seed(config.seed + ctx.rank)
    train, test = _datasets(config, gen)
    # One shared permutation per epoch; each process reads its interleaved share (see distributed.py).
    sampler = DistributedSampler(train, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=config.seed)
    return (DataLoader(train, batch_size=config.batch_size // ctx.world_size, sampler=sampler),
            DataLoader(test, batch_size=256), len(getattr(train, "classes", None) or range(10)))


def _checkpoint_path(config: CompressConfig, stage: str) -> str:
    return os.path.join(config.folder, f"{stage}.pt")


def _save(config: CompressConfig, ctx: DistContext, stage: str, model: nn.Module, **state) -> None:
    if not ctx.is_main:
        ctx.barrier()
        return
    os.makedirs(config.folder, exist_ok=True)
    path = _checkpoint_path(config, stage)
    torch.save({"model": model.state_dict(), "penni": stage != "baseline", **state}, path + ".tmp")
    os.replace(path + ".tmp", path)
    ctx.barrier()


def _load(config: CompressConfig, stage: str) -> dict | None:
    path = _checkpoint_path(config, stage)
    if not (config.resume and os.path.exists(path)):
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def _summary(stage: str, model: nn.Module, test_loader, start: float, device: str, ctx: DistContext,
             input_shape: tuple[int, ...], progress: Progress, **extra) -> StageSummary:
    count = count_model(copy.deepcopy(model).cpu().float(), input_shape)
    summary = StageSummary(stage, evaluate(model, test_loader, device), count.params, count.effective_params, count.macs,
                           count.coef_density, time.perf_counter() - start, extra)
    if ctx.is_main:
        progress.line(f"[{stage}] {summary.line()}  ({format_count(count)})")
    return summary


def _train_stage(config: CompressConfig, ctx: DistContext, stage: str, model: nn.Module, train_loader,
                 train_config: TrainConfig, progress: Progress, masks=None) -> nn.Module:
    optimizer = make_optimizer(model, train_config)
    first_epoch = 0
    saved = _load(config, stage)
    if saved is not None:
        model.load_state_dict(saved["model"])
        model.to(config.torch_device)
        optimizer.load_state_dict(saved["optimizer"])
        first_epoch = saved["epoch"] + 1
        if ctx.is_main:
            progress.line(f"[{stage}] resuming after epoch {first_epoch}")
    trained = wrap_for_training(model, ctx, config.torch_device)
    # one bar per stage over its epochs; train_epoch's mid-epoch lines become the bar's message
    task = None
    if ctx.is_main and first_epoch < train_config.epochs:
        task = progress.task(train_config.epochs, f"[{stage}]")
        if first_epoch:
            task.update(first_epoch, "resumed")
    for epoch in range(first_epoch, train_config.epochs):
        train_loader.sampler.set_epoch(epoch)
        train_epoch(trained, train_loader, optimizer, train_config, epoch, masks,
                    task.note if task else None, config.torch_device)
        _save(config, ctx, stage, model, optimizer=optimizer.state_dict(), epoch=epoch,
              done=epoch + 1 == train_config.epochs)
        if task:
            task.update(epoch + 1)
    if task:
        task.close()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def compress(config: CompressConfig, progress: Progress | None = None) -> list[StageSummary]:
    """Run every stage; write the TorchScript model, the reference-layout state_dict and the summary.
    ``progress`` draws the per-stage epoch bars and prints the summaries (default: on stderr)."""
    torch.manual_seed(config.seed)
    previous_dtype = torch.get_default_dtype()
    if config.float64:
        torch.set_default_dtype(torch.float64)
    try:
        return _run_stages(config, progress or Progress())
    finally:
        torch.set_default_dtype(previous_dtype)


def _run_stages(config: CompressConfig, progress: Progress) -> list[StageSummary]:
    device = config.torch_device
    ctx = init_from_env(device)
    train_loader, test_loader, num_classes = _loaders(config, ctx)
    shape = _input_shape(config)
    summaries: list[StageSummary] = []

    start = time.perf_counter()
    from ..models import ARCHITECTURES

    dense = ARCHITECTURES[config.arch](penni=False, num_classes=num_classes).eval().to(device)
    if ctx.distributed:
        use_global_batchnorm_(dense)
    if config.baseline:
        dense.load_state_dict(torch.load(config.baseline, map_location="cpu", weights_only=True))
    else:
        _train_stage(config, ctx, "baseline", dense, train_loader, TrainConfig(config.baseline_epochs, lr=config.baseline_lr),
                     progress)
    summaries.append(_summary("baseline", dense, test_loader, start, device, ctx, shape, progress))

    start = time.perf_counter()
    model = decompose_model(dense, config.num_bases).to(device)
    summaries.append(_summary("decompose", model, test_loader, start, device, ctx, shape, progress))

    start = time.perf_counter()
    retrain = TrainConfig(config.retrain_epochs, lr=config.lr, l1=config.l1, alternate_every=config.interval)
    _train_stage(config, ctx, "retrain", model, train_loader, retrain, progress)
    summaries.append(_summary("retrain", model, test_loader, start, device, ctx, shape, progress))

    start = time.perf_counter()
    masks = prune_coefficients_(model)
    summaries.append(_summary("prune", model, test_loader, start, device, ctx, shape, progress))

    start = time.perf_counter()
    _train_stage(config, ctx, "finetune", model, train_loader, TrainConfig(config.finetune_epochs, lr=config.lr),
                 progress, masks=masks)
    summaries.append(_summary("finetune", model, test_loader, start, device, ctx, shape, progress))

    start = time.perf_counter()
    stats = shrink_model_(model)
    summaries.append(_summary("shrink", model, test_loader, start, device, ctx, shape, progress, bases_removed=stats.bases_removed,
                              channels_removed=stats.channels_removed))
    if ctx.is_main:
        write_outputs(config, model.cpu().float(), summaries)
    ctx.barrier()
    return summaries


def write_outputs(config: CompressConfig, model: nn.Module, summaries: list[StageSummary]) -> None:
    """``output`` as TorchScript (or ``.pt2``) with the input shape recorded, plus state_dict and summary."""
    from ..frontend.load_model import INPUT_SHAPE_EXTRA

    model = model.eval()
    shape = _input_shape(config)
    example = torch.zeros(shape, dtype=torch.float32)
    stem = os.path.splitext(config.output)[0]
    if config.output.endswith(".pt2"):
        torch.export.save(torch.export.export(model, (example,)), config.output)
    else:
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, config.output, _extra_files={INPUT_SHAPE_EXTRA: json.dumps(list(shape))})
    torch.save(model.state_dict(), stem + ".state_dict.pt")
    with open(stem + ".summary.json", "w") as f:
        json.dump({"arch": config.arch, "config": asdict(config), "stages": [asdict(s) for s in summaries]}, f, indent=2)
    plot_stages(summaries, stem + ".summary.png")


def check_config(config: CompressConfig) -> None:
    from ..models import ARCHITECTURES, INPUT_SHAPES

    if config.arch not in ARCHITECTURES:
        raise PenniError(f"unknown --arch {config.arch!r}; choose one of: {', '.join(sorted(ARCHITECTURES))}")
    if INPUT_SHAPES[config.arch] != (1, 3, 32, 32):
        for split in ("train", "val"):
            if not os.path.isdir(os.path.join(config.data, split)):
                raise PenniError(f"{config.arch} trains on ImageNet-style folders: --data must hold {split}/<class>/"
                                 f"*.jpg (missing {os.path.join(config.data, split)})")
    if not os.path.exists(config.data):
        raise PenniError(f"--data {config.data} does not exist: give a cifar-10-batches-py folder or a folder with "
                         "train.tar.gz/test.tar.gz JPEG archives")
