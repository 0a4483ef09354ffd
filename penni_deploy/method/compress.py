"""``penni-deploy compress``: dense CNN → trained, pruned, shrunk PENNI model, stage by stage.

Stages: baseline (train dense, or take ``baseline`` weights) → decompose (truncated SVD, d bases)
→ retrain (alternating C / B, L1 on C) → prune (|c| < std of the layer's C) → fine-tune (pruned
entries held at zero) → shrink (exact). Runs on CUDA when present. Every stage writes its checkpoint into the work folder
after each epoch, so ``resume=True`` continues from the last one written; each ends with a one-line
summary (test accuracy, parameters, MACs, coefficient density, wall time), all collected in the
JSON summary written beside the output. Under ``torchrun`` it trains data-parallel (see
``distributed.py``); checkpoints and outputs are written once, by rank 0.

On CUDA it runs fast by default: CIFAR-10 decoded once and held on the GPU as uint8, augmented
there per batch (``data/device_loader.py``, also usable on a CPU with ``fast=True``), training
under bf16 autocast in channels-last format, evaluation in float32 with large batches. Images per
second of training and evaluation are in every stage's summary. Schedules have names
(``presets.py``), and ``time_budget`` fits the epochs to a wall-clock allowance (``budget.py``).
The TorchScript model records its input shape and preprocessing (mean and std of [0, 1] pixels).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from ..data.input_record import INPUT_SHAPE_EXTRA, PREPROCESSING_EXTRA, Preprocessing
from ..errors import PenniError
from ..models.penni_conv import FORMS, PenniConv2d
from ..progress import Progress
from .budget import TimeBudget
from .counting import count_model, format_count
from .decompose import decompose_model
from .distributed import (
    DistContext,
    init_from_env,
    use_global_batchnorm_,
    wrap_for_training,
)
from .plot import plot_stages
from .presets import DEFAULT_PRESET, get_preset
from .prune import prune_coefficients_
from .shrink import shrink_model_
from .train import TrainConfig, evaluate, learning_rate, make_optimizer, train_epoch

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
    preset: str | None = None  # name of the schedule the epochs and rates came from (recorded only)
    fast: bool | None = None  # device-resident CIFAR data path; None: on CUDA
    bf16: bool | None = None  # bf16 autocast while training; None: on CUDA
    channels_last: bool | None = None  # channels-last training; None: on CUDA
    eval_batch_size: int = 1000  # fast path's evaluation batch (the DataLoader path uses 256)
    time_budget: float | None = None  # seconds for the whole run (see budget.py)
    budget_reserve: float = 30.0  # of those, kept for evaluations, shrink and writing the outputs
    min_epochs: int = 1  # fewest epochs per training stage under a time budget
    penni_train_form: str = "two_stage"  # PenniConv2d form while training; the output is always two_stage
    checkpoints: bool = True  # per-epoch checkpoints for --resume (a one-shot GPU run skips their disk time)

    @classmethod
    def from_preset(cls, name: str | None, **values) -> CompressConfig:
        """A config with the epochs and rates of preset ``name`` (``paper`` when None); ``values`` override them."""
        schedule = get_preset(name or DEFAULT_PRESET).as_dict()
        return cls(**{**schedule, **values, "preset": name or DEFAULT_PRESET})

    @property
    def torch_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    @property
    def on_cuda(self) -> bool:
        return self.torch_device.startswith("cuda")

    @property
    def use_fast(self) -> bool:
        """Whether the data live on the device (CIFAR networks only)."""
        return (self.on_cuda and not _is_imagenet(self)) if self.fast is None else self.fast

    @property
    def use_bf16(self) -> bool:
        return (self.on_cuda and not self.float64) if self.bf16 is None else self.bf16

    @property
    def use_channels_last(self) -> bool:
        return self.on_cuda if self.channels_last is None else self.channels_last

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
    epochs: int | None = None  # training stages: epochs run in all (resumed ones included)
    planned_epochs: int | None = None  # the schedule's epochs, before a time budget shortened them
    cut_short: bool = False  # stopped by the clock before its (shortened) schedule was complete
    train_images_per_s: float | None = None  # steady state: epochs after the first, in this process
    eval_images_per_s: float | None = None

    def line(self) -> str:
        density = "-" if self.coef_density is None else f"{self.coef_density:.1%}"
        speed = f"  train {self.train_images_per_s:.0f} img/s" if self.train_images_per_s else ""
        if self.eval_images_per_s:
            speed += f"  eval {self.eval_images_per_s:.0f} img/s"
        epochs = ""
        if self.epochs is not None and self.planned_epochs is not None and self.epochs != self.planned_epochs:
            epochs = f"  {self.epochs} of {self.planned_epochs} epochs{' (cut short)' if self.cut_short else ''}"
        return (f"{self.stage:<9} acc {self.accuracy:.2%}  params {self.effective_params / 1e6:.3f}M "
                f"(stored {self.params / 1e6:.3f}M)  MACs {self.macs / 1e6:.1f}M  coef density {density}  "
                f"{self.seconds:.0f}s{speed}{epochs}")


@dataclass(frozen=True)
class StageRun:
    """How a training stage went: epochs run and planned, whether the clock stopped it, its speed."""

    epochs: int
    planned_epochs: int
    cut_short: bool
    images_per_s: float | None


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
    """(train batches, test batches, number of classes, seconds spent reading the data)."""
    if config.batch_size % ctx.world_size:
        raise PenniError(f"--batch-size {config.batch_size} must divide evenly over {ctx.world_size} processes")
    start = time.perf_counter()
    if config.use_fast:
        train, test = _device_batches(config, ctx)
        return train, test, len(train.classes), time.perf_counter() - start
    gen = torch.Generator().manual_seed(config.seed + ctx.rank)
    train, test = _datasets(config, gen)
    # One shared permutation per epoch; each process reads its interleaved share (see distributed.py).
    sampler = DistributedSampler(train, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=config.seed)
    return (DataLoader(train, batch_size=config.batch_size // ctx.world_size, sampler=sampler),
            DataLoader(test, batch_size=256), len(getattr(train, "classes", None) or range(10)),
            time.perf_counter() - start)


def _device_batches(config: CompressConfig, ctx: DistContext):
    from ..data import load_cifar10
    from ..data.device_loader import DeviceCifarBatches

    dtype = torch.float64 if config.float64 else torch.float32
    device = config.torch_device
    train = DeviceCifarBatches(load_cifar10(config.data, "train", config.subset), config.batch_size // ctx.world_size,
                               device, train=True, augment=config.augment, seed=config.seed, dtype=dtype,
                               channels_last=config.use_channels_last, rank=ctx.rank, world_size=ctx.world_size)
    test = DeviceCifarBatches(load_cifar10(config.data, "test", config.test_subset), config.eval_batch_size, device,
                              train=False, dtype=dtype, channels_last=config.use_channels_last)
    return train, test


def _set_epoch(batches, epoch: int) -> None:
    """Device batches and DataLoaders (through their sampler) both shuffle per epoch."""
    (batches if hasattr(batches, "set_epoch") else batches.sampler).set_epoch(epoch)


def _preprocessing(config: CompressConfig) -> Preprocessing:
    """The normalization the network was trained with, recorded in its TorchScript file."""
    if _is_imagenet(config):
        from ..data import IMAGENET_MEAN, IMAGENET_STD

        return Preprocessing.from_values(IMAGENET_MEAN, IMAGENET_STD)
    from ..data import CIFAR10_MEAN, CIFAR10_STD

    return Preprocessing.from_values(CIFAR10_MEAN, CIFAR10_STD)


def _checkpoint_path(config: CompressConfig, stage: str) -> str:
    return os.path.join(config.folder, f"{stage}.pt")


def _save(config: CompressConfig, ctx: DistContext, stage: str, model: nn.Module, **state) -> None:
    if not ctx.is_main or not config.checkpoints:
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
             input_shape: tuple[int, ...], progress: Progress, run: StageRun | None = None,
             **extra) -> StageSummary:
    count = count_model(copy.deepcopy(model).cpu().float(), input_shape)
    eval_start = time.perf_counter()
    accuracy = evaluate(model, test_loader, device)
    eval_seconds = time.perf_counter() - eval_start
    images = len(test_loader.labels) if hasattr(test_loader, "labels") else len(test_loader.dataset)
    summary = StageSummary(stage, accuracy, count.params, count.effective_params, count.macs, count.coef_density,
                           time.perf_counter() - start, extra,
                           epochs=run.epochs if run else None, planned_epochs=run.planned_epochs if run else None,
                           cut_short=run.cut_short if run else False,
                           train_images_per_s=run.images_per_s if run else None,
                           eval_images_per_s=images / eval_seconds if eval_seconds > 0 else None)
    if ctx.is_main:
        progress.line(f"[{stage}] {summary.line()}  ({format_count(count)})")
    return summary


def _train_stage(config: CompressConfig, ctx: DistContext, stage: str, model: nn.Module, train_loader,
                 train_config: TrainConfig, progress: Progress, masks=None, budget: TimeBudget | None = None,
                 later_planned: int = 0, later_stages: int = 0) -> StageRun:
    """Train one stage, resumably; under a ``budget`` its epochs follow the clock (see budget.py).

    ``later_planned`` is the planned epochs of the training stages after this one and ``later_stages`` their
    number; both size this stage's share of the time left.
    """
    planned = train_config.epochs
    optimizer = make_optimizer(model, train_config)
    first_epoch, cut_short = 0, False
    saved = _load(config, stage)
    if saved is not None:
        model.load_state_dict(saved["model"])
        model.to(config.torch_device)
        optimizer.load_state_dict(saved["optimizer"])
        first_epoch = saved["epoch"] + 1
        # A budget may have shortened the stage: its checkpoint says to how many epochs.
        train_config = dataclasses.replace(train_config, epochs=saved.get("epochs", planned))
        cut_short = saved.get("cut_short", False)
        if ctx.is_main:
            progress.line(f"[{stage}] resuming after epoch {first_epoch}")
    trained = wrap_for_training(model, ctx, config.torch_device)
    # one bar per stage over its epochs; train_epoch's mid-epoch lines become the bar's message
    task = None
    if ctx.is_main and first_epoch < train_config.epochs:
        task = progress.task(train_config.epochs, f"[{stage}]")
        if first_epoch:
            task.update(first_epoch, "resumed")
    results = []
    epoch = first_epoch
    while epoch < train_config.epochs:
        _set_epoch(train_loader, epoch)
        results.append(train_epoch(trained, train_loader, optimizer, train_config, epoch, masks,
                                   task.note if task else None, config.torch_device))
        if budget is not None:
            train_config, cut_short = _follow_budget(config, budget, train_config, planned, epoch, results,
                                                     later_planned, later_stages * config.min_epochs)
            if cut_short and task:
                task.note(f"time budget: stopping after epoch {epoch + 1} of {planned}")
        _save(config, ctx, stage, model, optimizer=optimizer.state_dict(), epoch=epoch,
              done=epoch + 1 == train_config.epochs, epochs=train_config.epochs, cut_short=cut_short)
        epoch += 1
        if task:
            task.update(epoch)
    if task:
        task.close()
    for p in model.parameters():
        p.requires_grad_(True)
    # The first epoch pays for start-up (cuDNN autotuning, caches): the steady state is the epochs after it.
    steady = results[1:] or results
    images_per_s = sum(r.images for r in steady) / sum(r.seconds for r in steady) if steady else None
    return StageRun(train_config.epochs, planned, cut_short, images_per_s)


def _follow_budget(config: CompressConfig, budget: TimeBudget, train_config: TrainConfig, planned: int, epoch: int,
                   results: list, later_planned: int, later_minimum: int) -> tuple[TrainConfig, bool]:
    """After ``epoch``: the stage's epoch count for the time left, and whether the clock stops it now."""
    timed = results[1:] or results  # the first epoch of a process is the slowest
    epoch_seconds = sum(r.seconds for r in timed) / len(timed)
    done = epoch + 1
    fitted = dataclasses.replace(train_config, epochs=budget.stage_epochs(planned, done, config.min_epochs,
                                                                          epoch_seconds, later_planned))
    # Re-plan only while every epoch run so far had the initial rate under both plans, so that the
    # learning-rate steps of the new plan still lie ahead.
    if all(learning_rate(c, e) == c.lr for c in (train_config, fitted) for e in range(done)):
        train_config = fitted
    if done < train_config.epochs and done >= config.min_epochs and budget.must_stop(epoch_seconds, later_minimum):
        return dataclasses.replace(train_config, epochs=done), True
    return train_config, False


def compress(config: CompressConfig, progress: Progress | None = None) -> list[StageSummary]:
    """Run every stage; write the TorchScript model, the reference-layout state_dict and the summary.
    ``progress`` draws the per-stage epoch bars and prints the summaries (default: on stderr)."""
    torch.manual_seed(config.seed)
    previous_dtype = torch.get_default_dtype()
    previous_benchmark = torch.backends.cudnn.benchmark
    if config.float64:
        torch.set_default_dtype(torch.float64)
    if config.on_cuda:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
    try:
        return _run_stages(config, progress or Progress())
    finally:
        torch.set_default_dtype(previous_dtype)
        torch.backends.cudnn.benchmark = previous_benchmark


def _set_form(model: nn.Module, form: str) -> None:
    for module in model.modules():
        if isinstance(module, PenniConv2d):
            module.form = form


def _run_stages(config: CompressConfig, progress: Progress) -> list[StageSummary]:
    device = config.torch_device
    budget = TimeBudget(config.time_budget, config.budget_reserve) if config.time_budget else None
    ctx = init_from_env(device)
    train_loader, test_loader, num_classes, data_seconds = _loaders(config, ctx)
    shape = _input_shape(config)
    info = run_info(config, data_seconds)
    summaries: list[StageSummary] = []

    def record(summary: StageSummary) -> None:
        summaries.append(summary)
        if ctx.is_main:  # so that a run stopped from outside still leaves its numbers so far
            write_summary(config, summaries, {**info, "complete": False})

    start = time.perf_counter()
    from ..models import ARCHITECTURES

    dense = ARCHITECTURES[config.arch](penni=False, num_classes=num_classes).eval().to(device)
    if ctx.distributed:
        use_global_batchnorm_(dense)
    penni_planned = config.retrain_epochs + config.finetune_epochs
    baseline_run = None
    if config.baseline:
        dense.load_state_dict(torch.load(config.baseline, map_location="cpu", weights_only=True))
    else:
        baseline_run = _train_stage(config, ctx, "baseline", dense, train_loader, _train_config(
            config, config.baseline_epochs, config.baseline_lr), progress, budget=budget, later_planned=penni_planned,
            later_stages=2)
    record(_summary("baseline", dense, test_loader, start, device, ctx, shape, progress, baseline_run))

    start = time.perf_counter()
    # Weight surgery (SVD here, slicing in shrink) runs on the CPU: it is cheap, and shrink.py builds
    # its channel masks there.
    model = decompose_model(dense.cpu(), config.num_bases).to(device)
    record(_summary("decompose", model, test_loader, start, device, ctx, shape, progress))

    start = time.perf_counter()
    _set_form(model, config.penni_train_form)
    retrain = dataclasses.replace(_train_config(config, config.retrain_epochs, config.lr), l1=config.l1,
                                  alternate_every=config.interval)
    run = _train_stage(config, ctx, "retrain", model, train_loader, retrain, progress, budget=budget,
                       later_planned=config.finetune_epochs, later_stages=1)
    record(_summary("retrain", model, test_loader, start, device, ctx, shape, progress, run))

    start = time.perf_counter()
    masks = prune_coefficients_(model)
    record(_summary("prune", model, test_loader, start, device, ctx, shape, progress))

    start = time.perf_counter()
    run = _train_stage(config, ctx, "finetune", model, train_loader, _train_config(config, config.finetune_epochs,
                                                                                   config.lr), progress, masks=masks,
                       budget=budget)
    record(_summary("finetune", model, test_loader, start, device, ctx, shape, progress, run))

    start = time.perf_counter()
    _set_form(model, "two_stage")
    stats = shrink_model_(model.cpu())
    model.to(device)
    record(_summary("shrink", model, test_loader, start, device, ctx, shape, progress, bases_removed=stats.bases_removed,
                    channels_removed=stats.channels_removed))
    if ctx.is_main:
        write_outputs(config, model.cpu().float(), summaries, info)
    ctx.barrier()
    return summaries


def _train_config(config: CompressConfig, epochs: int, lr: float) -> TrainConfig:
    return TrainConfig(epochs, lr=lr, bf16=config.use_bf16, channels_last=config.use_channels_last)


def run_info(config: CompressConfig, data_seconds: float | None = None) -> dict:
    """How the run trained, for the summary: data path, precisions, memory format, device, budget."""
    device = config.torch_device
    name = torch.cuda.get_device_name() if config.on_cuda and torch.cuda.is_available() else "cpu"
    precision = "float64" if config.float64 else ("bf16 autocast" if config.use_bf16 else "float32")
    return {
        "device": f"{device} ({name})" if config.on_cuda else "cpu",
        "data_path": "device-resident uint8, augmented per batch on the device" if config.use_fast
        else "DataLoader, per-image transforms",
        "train_precision": precision,
        "eval_precision": "float64" if config.float64 else "float32 (TF32 off)",
        "memory_format": "channels_last" if config.use_channels_last else "contiguous",
        "penni_train_form": config.penni_train_form,
        "time_budget_s": config.time_budget,
        "data_seconds": data_seconds,
        "torch": torch.__version__,
    }


def write_summary(config: CompressConfig, summaries: list[StageSummary], info: dict) -> str:
    """``<output stem>.summary.json``: config, run information and the stages so far (written atomically)."""
    path = os.path.splitext(config.output)[0] + ".summary.json"
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump({"arch": config.arch, "config": asdict(config), "run": info,
                   "stages": [asdict(s) for s in summaries]}, f, indent=2)
    os.replace(path + ".tmp", path)
    return path


def write_outputs(config: CompressConfig, model: nn.Module, summaries: list[StageSummary],
                  info: dict | None = None) -> None:
    """``output`` as TorchScript (or ``.pt2``) with the input shape and preprocessing recorded, plus
    state_dict, summary and plot."""
    _set_form(model, "two_stage")  # the inference form the compiler lowers
    model = model.eval().to(memory_format=torch.contiguous_format)
    shape = _input_shape(config)
    example = torch.zeros(shape, dtype=torch.float32)
    stem = os.path.splitext(config.output)[0]
    records = {INPUT_SHAPE_EXTRA: json.dumps(list(shape)), PREPROCESSING_EXTRA: _preprocessing(config).to_json()}
    partial = config.output + ".partial"  # renamed when complete: never a half-written model file
    if config.output.endswith(".pt2"):
        torch.export.save(torch.export.export(model, (example,)), partial, extra_files=records)
    else:
        torch.jit.save(torch.jit.trace(model, example), partial, _extra_files=records)
    os.replace(partial, config.output)
    torch.save(model.state_dict(), stem + ".state_dict.pt.partial")
    os.replace(stem + ".state_dict.pt.partial", stem + ".state_dict.pt")
    write_summary(config, summaries, {**(info or run_info(config)), "complete": True})
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
    if config.fast and _is_imagenet(config):
        raise PenniError(f"--fast holds CIFAR-10 on the device; {config.arch} reads ImageNet folders through a "
                         "DataLoader: drop --fast")
    if config.bf16 and config.float64:
        raise PenniError("--bf16 and --float64 contradict each other: pick one")
    if config.penni_train_form not in FORMS:
        raise PenniError(f"unknown --penni-train-form {config.penni_train_form!r}; choose one of: {', '.join(FORMS)}")
    if config.time_budget is not None:
        if config.time_budget <= config.budget_reserve:
            raise PenniError(f"--time-budget {config.time_budget:g} s leaves nothing for training after the "
                             f"{config.budget_reserve:g} s kept for the final stages: give more")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise PenniError("--time-budget runs in one process (each process would read its own clock): "
                             "drop torchrun or the budget")
    if config.eval_batch_size < 1 or config.min_epochs < 1:
        raise PenniError("--eval-batch-size and --min-epochs must be at least 1")
