"""How many images pass through the network at a time when a model is compiled for a batch.

A batch of N runs layer after layer over all N images: every layer writes its whole output before
the next one reads it. On ImageNet shapes that output is many megabytes per image, so at batch 8
each layer's input, output and residual (58 MB for a 56×56×256 ResNet50 layer) spill from the
last-level cache to DRAM between layers. Run as micro-batches of m images, one after another
through the whole network, a layer's tensors stay in cache for the next layer; the weights are
then read once per micro-batch instead of once per batch, which costs little where the layers are
compute-bound (measured on ResNet50 at batch 8, 2 cores, 32 MiB L3: micro-batches of 2 took 0.89×
the time in fp32, 0.83× in bf16). Small CIFAR maps never need it.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Fraction of the last-level cache one layer's tensors (input, output, residual) may fill: the
#: weights, the next layer's output and other processes need the rest.
CACHE_SHARE = 0.5


def layer_footprint_bytes(layers: Iterable[dict]) -> int:
    """The largest bytes per image one conv layer reads and writes at once: its float32 input,
    output and, with a residual epilogue, the residual (``layers`` as ``describe_conv_layers`` gives)."""
    largest = 0
    for layer in layers:
        n = max(1, layer["input"][0])
        elements = _count(layer["input"]) + _count(layer["output"]) * (2 if "res" in layer["epilogue"] else 1)
        largest = max(largest, 4 * elements // n)
    return largest


def choose_micro_batch(batch: int, footprint_bytes: int, cache_bytes: int | None) -> int:
    """Images per pass for a batch of ``batch``: the whole batch when its largest layer fits
    ``CACHE_SHARE`` of the cache (or the cache is unknown), else the largest divisor of ``batch``
    whose layers fit (at least 1)."""
    if cache_bytes is None or footprint_bytes <= 0 or batch * footprint_bytes <= CACHE_SHARE * cache_bytes:
        return batch
    for images in range(batch - 1, 0, -1):
        if batch % images == 0 and images * footprint_bytes <= CACHE_SHARE * cache_bytes:
            return images
    return 1


def _count(shape) -> int:
    total = 1
    for d in shape:
        total *= int(d)
    return total
