#!/usr/bin/env python3
"""The one command for a lent GPU: measure training speed, then ``compress --preset paper-fast`` within a
hard time budget, everything written under one output folder.

Run from the repository root (the package is imported from the checkout; TVM is neither needed nor
importable here, which the script enforces, so a torch-only machine runs it)::

    python3 scripts/gpu_compress.py --data shared/data/cifar10-jpeg --out "$OUT" --budget 540

Steps:

1. Throughput probe (``--probe-steps``, 0 skips it): timed training steps on random batches of the
   network, dense and PENNI (both training forms: ``two_stage`` and ``dense``), at the preset's batch
   and at 4x it, under the run's precision and memory format. Written to ``throughput.json``; the
   faster PENNI form trains the PENNI stages unless ``--penni-train-form`` names one.
2. ``compress`` with the preset, the fast data path, bf16 autocast and channels-last (on CUDA), and
   ``time_budget`` = what is left of ``--budget`` (counted from this script's start). The summary JSON
   is rewritten after every stage, so a run killed from outside still returns its numbers so far.
3. The model files are gzip-compressed (pruned coefficients are mostly zeros, and the GPU machine
   returns files of at most 16 MiB); a file still larger is split into ``.partN`` pieces.

Outputs under ``--out``: ``<arch>-penni.pt.gz`` (TorchScript, input shape and preprocessing recorded),
``<arch>-penni.state_dict.pt.gz``, ``<arch>-penni.summary.json``, ``<arch>-penni.summary.png``,
``throughput.json`` and ``gpu_compress.log``. Restore with ``gunzip`` (``cat`` the parts first if split).
"""

from __future__ import annotations

import time

STARTED = time.monotonic()  # the budget counts from here, before the heavy imports

import argparse  # noqa: E402 - after the clock starts
import dataclasses  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

# Files the GPU machine sends back are at most 16 MiB each.
MAX_RETURNED_BYTES = 15 * 1024 * 1024


class _Tee:
    """Writes to the console and to the log file, so the log survives a run stopped from outside."""

    def __init__(self, stream, log):
        self.stream, self.log = stream, log

    def write(self, text):
        self.stream.write(text)
        self.log.write(text)
        self.log.flush()
        return len(text)

    def flush(self):
        self.stream.flush()
        self.log.flush()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="shared/data/cifar10-jpeg", help="CIFAR-10 folder (JPEG archives)")
    parser.add_argument("--out", default=os.environ.get("OUT", "out/gpu"), help="output folder (default: $OUT)")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--preset", default="paper-fast")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for everything, from the start")
    parser.add_argument("--reserve", type=float, default=30.0, help="of those, kept for the stages after training")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--subset", type=int, default=None, help="train on N images (tests)")
    parser.add_argument("--test-subset", type=int, default=None, help="evaluate on N images (tests)")
    parser.add_argument("--baseline-epochs", type=int, default=None, help="override the preset")
    parser.add_argument("--retrain-epochs", type=int, default=None, help="override the preset")
    parser.add_argument("--finetune-epochs", type=int, default=None, help="override the preset")
    parser.add_argument("--batch-size", type=int, default=None, help="override the preset")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast training (default: on CUDA)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="channels-last training (default: on CUDA)")
    parser.add_argument("--penni-train-form", default=None, help="two_stage or dense (default: the probe's faster)")
    parser.add_argument("--probe-steps", type=int, default=20, help="timed steps per probe (0: no probe)")
    parser.add_argument("--probe-batches", default=None,
                        help="comma-separated batch sizes of the probe (default: the preset's batch and 4x it)")
    parser.add_argument("--work-dir", default=None, help="checkpoints (default: a temporary folder, not --out)")
    parser.add_argument("--checkpoints", action=argparse.BooleanOptionalAction, default=False,
                        help="write per-epoch checkpoints to --work-dir (off: a lent machine is not resumed)")
    return parser.parse_args(argv)


def probe_throughput(make_dense, input_shape: tuple[int, ...], batch_sizes: list[int], steps: int, device: str,
                     bf16: bool, channels_last: bool, log) -> dict:
    """Training images/s of the network ``make_dense()`` builds, dense and PENNI (each form), on random batches.

    Parameters
    ----------
    make_dense : callable
        Returns a fresh dense network with 10 outputs.
    input_shape : tuple of int
        One image, (C, H, W).
    batch_sizes : list of int
        One measurement per batch size and variant.
    steps : int
        Timed training steps per measurement, after ``min(3, steps)`` untimed ones (autotuning, caches).
    device : str
        Where to train.
    bf16, channels_last : bool
        Training options, as the run will use them.
    log : callable
        Receives one line per measurement.

    Returns
    -------
    dict
        The settings and ``results``: one ``{"model", "batch", "images_per_s", "steps"}`` per measurement.
    """
    import torch

    from penni_deploy.method.decompose import decompose_model
    from penni_deploy.method.train import TrainConfig, make_optimizer, train_epoch
    from penni_deploy.models.penni_conv import PenniConv2d

    results = []
    torch.manual_seed(0)
    for batch in batch_sizes:
        images = torch.randn(batch, *input_shape, device=device)
        labels = torch.randint(0, 10, (batch,), device=device)
        for variant in ("dense", "penni two_stage", "penni dense"):
            model = make_dense()
            if variant != "dense":
                model = decompose_model(model)  # on the CPU, as compress does
            model.to(device)
            for module in model.modules():
                if isinstance(module, PenniConv2d):
                    module.form = variant.split()[1]
            config = TrainConfig(1, lr=0.01, l1=1e-4 if variant != "dense" else 0.0, bf16=bf16,
                                 channels_last=channels_last)
            optimizer = make_optimizer(model, config)
            warm_up = [(images, labels)] * min(3, steps)  # cuDNN autotuning and caches
            train_epoch(model, warm_up, optimizer, config, 0, device=device)
            timed = train_epoch(model, [(images, labels)] * steps, optimizer, config, 0, device=device)
            results.append({"model": variant, "batch": batch, "images_per_s": round(timed.images_per_second, 1),
                            "steps": steps})
            log(f"[probe] {variant:<15} batch {batch:<5} {timed.images_per_second:10.0f} train img/s")
            del model, optimizer
    return {"device": device, "bf16": bf16, "channels_last": channels_last, "results": results}


def pack(path: str) -> list[str]:
    """gzip ``path`` (then delete it); split the result into ``.partN`` files if it is still too large."""
    packed = path + ".gz"
    with open(path, "rb") as src, gzip.open(packed + ".partial", "wb", compresslevel=6) as dst:
        shutil.copyfileobj(src, dst)
    os.replace(packed + ".partial", packed)
    os.remove(path)
    if os.path.getsize(packed) <= MAX_RETURNED_BYTES:
        return [packed]
    parts = []
    with open(packed, "rb") as src:
        while chunk := src.read(MAX_RETURNED_BYTES):
            parts.append(f"{packed}.part{len(parts)}")
            with open(parts[-1], "wb") as dst:
                dst.write(chunk)
    os.remove(packed)
    return parts


def main(argv=None) -> int:
    sys.modules["tvm"] = None  # type: ignore[assignment]  # any import of TVM now fails: the GPU machine has none
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    log_file = open(os.path.join(args.out, "gpu_compress.log"), "a")
    sys.stderr = _Tee(sys.stderr, log_file)

    def log(message: str) -> None:
        print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)

    import tempfile

    import torch

    from penni_deploy.errors import PenniError
    from penni_deploy.method.compress import CompressConfig, check_config, compress
    from penni_deploy.models import ARCHITECTURES, INPUT_SHAPES

    overrides = {k: v for k, v in dict(baseline_epochs=args.baseline_epochs, retrain_epochs=args.retrain_epochs,
                                       finetune_epochs=args.finetune_epochs, batch_size=args.batch_size).items()
                 if v is not None}
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="penni-compress-")
    output = os.path.join(args.out, f"{args.arch}-penni.pt")
    config = CompressConfig.from_preset(args.preset, arch=args.arch, data=args.data, output=output,
                                        device=args.device, subset=args.subset, test_subset=args.test_subset,
                                        work_dir=work_dir, budget_reserve=args.reserve, fast=True, bf16=args.bf16,
                                        channels_last=args.channels_last, checkpoints=args.checkpoints, **overrides)
    try:
        check_config(config)
    except PenniError as exc:
        log(f"error: {exc}")
        return 2
    device = config.torch_device
    log(f"torch {torch.__version__}, device {device}"
        + (f" ({torch.cuda.get_device_name()})" if config.on_cuda else "")
        + f"; preset {config.preset}: baseline {config.baseline_epochs}, retrain {config.retrain_epochs}, "
        f"fine-tune {config.finetune_epochs} epochs, batch {config.batch_size}; budget {args.budget:.0f}s")

    form = args.penni_train_form
    if args.probe_steps > 0:
        batches = ([int(b) for b in args.probe_batches.split(",")] if args.probe_batches
                   else [config.batch_size, 4 * config.batch_size])
        probe = probe_throughput(lambda: ARCHITECTURES[args.arch](penni=False, num_classes=10),
                                 INPUT_SHAPES[args.arch][1:], batches, args.probe_steps, device, config.use_bf16,
                                 config.use_channels_last, log)
        probe["arch"] = args.arch
        with open(os.path.join(args.out, "throughput.json"), "w") as f:
            json.dump(probe, f, indent=2)
        if form is None:
            at_batch = {r["model"]: r["images_per_s"] for r in probe["results"] if r["batch"] == batches[0]}
            form = max(("two_stage", "dense"), key=lambda name: at_batch[f"penni {name}"])
            log(f"PENNI stages train in the {form} form (faster in the probe at batch {batches[0]})")
    config = dataclasses.replace(config, penni_train_form=form or "two_stage",
                                 time_budget=args.budget - (time.monotonic() - STARTED))
    try:
        check_config(config)  # the probe may have used up the budget
        summaries = compress(config)
    except PenniError as exc:
        log(f"error: {exc}")
        return 2
    for summary in summaries:
        log(summary.line())
    stem = os.path.splitext(output)[0]
    returned = pack(output) + pack(stem + ".state_dict.pt")
    log(f"wrote {', '.join(os.path.basename(p) for p in returned)} and the summary; "
        f"{time.monotonic() - STARTED:.0f}s in all; TVM imported: {sys.modules.get('tvm') is not None}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
