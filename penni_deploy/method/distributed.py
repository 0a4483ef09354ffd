"""Data-parallel ``compress`` under ``torchrun``: one process per GPU (NCCL) or per CPU slot (gloo).

A run started by ``torchrun --nproc_per_node N`` finds its rank in the environment. Each process
takes its share of every global batch (``DistributedSampler``: process r of N reads positions
r, r+N, ... of one shared permutation, so the N shares of batch k are exactly the single-process
batch k), gradients are averaged by ``DistributedDataParallel``, and BatchNorm statistics are
computed over the global batch. The result then equals a single-process run with the same global
batch. Only rank 0 writes checkpoints and outputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def init_from_env(device: str) -> DistContext:
    """Join the process group ``torchrun`` describes in the environment (or run alone)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return DistContext(dist.get_rank(), dist.get_world_size())


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics span the global batch of all processes.

    PyTorch's ``SyncBatchNorm`` does the same on GPUs only; this one all-reduces the per-channel
    sums on any backend (gloo included), differentiably. Outside distributed training it is a plain
    ``BatchNorm2d``, with the same state_dict.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        channels = x.shape[1]
        count = torch.tensor([x.numel() / channels], dtype=x.dtype, device=x.device)
        # Two passes over the global batch, as single-process BatchNorm does: the mean, then the
        # variance around it (E[x²] - mean² loses digits when the mean is large).
        totals = all_reduce(torch.cat([x.sum(dim=(0, 2, 3)), count]))
        n = totals[-1]
        mean = totals[:channels] / n
        centered = x - mean[None, :, None, None]
        var = all_reduce((centered * centered).sum(dim=(0, 2, 3))) / n  # biased, as used for normalizing
        with torch.no_grad():
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
            self.running_mean.mul_(1 - momentum).add_(momentum * mean)
            self.running_var.mul_(1 - momentum).add_(momentum * var * n / (n - 1))
            self.num_batches_tracked.add_(1)
        # Written out (not F.batch_norm in eval mode) so gradients flow through the batch statistics.
        scale = torch.rsqrt(var + self.eps) * self.weight
        return centered * scale[None, :, None, None] + self.bias[None, :, None, None]


def use_global_batchnorm_(model: nn.Module) -> nn.Module:
    """Swap every ``BatchNorm2d`` for a ``GlobalBatchNorm2d`` with the same parameters and buffers."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.BatchNorm2d:
                replacement = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                                child.track_running_stats)
                replacement.load_state_dict(child.state_dict())
                setattr(module, name, replacement.to(child.weight.device).train(child.training))
    return model


def wrap_for_training(model: nn.Module, ctx: DistContext, device: str) -> nn.Module:
    """The module to train: ``model`` itself, or a DDP wrapper around it sharing its parameters."""
    if not ctx.distributed:
        return model
    # Alternation freezes bases or coefficients for whole epochs: those get no gradient.
    return nn.parallel.DistributedDataParallel(model, device_ids=[torch.cuda.current_device()] if device == "cuda" else None,
                                               find_unused_parameters=True)
