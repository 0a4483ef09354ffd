"""Top-1 of a trained model compiled at each precision, on a labelled CIFAR-10 folder.

The bundled ResNet20 is compiled twice per precision: with the PENNI pipeline (its dense layers are
only the classifier, so bf16 touches little) and with ``--pipeline dense`` (every conv on the dense
GEMM kernel: the whole network's multiplies in bf16). Each artifact is loaded with its defaults and
run over the test split; the table gives top-1, the agreement of its predictions with the fp32
build's, and the largest logit difference relative to the fp32 logits' scale.

    python benchmarks/precision_accuracy.py --data ../shared/data/cifar10-jpeg [--model examples/resnet20-penni.pt]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch

import penni_deploy
from penni_deploy.compiler import CompileOptions
from penni_deploy.data.cifar10 import load_cifar10
from penni_deploy.data.transforms import normalize

BATCH = 100


def _inputs(data: str, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    split = load_cifar10(data, "test")
    images, labels = split.images[:limit], split.labels[:limit]
    x = torch.from_numpy(np.array(images))  # a copy: the cached split is read-only.permute(0, 3, 1, 2).float() / 255.0
    return normalize(x).numpy(), np.asarray(labels)


def _logits(artifact: str, x: np.ndarray) -> np.ndarray:
    model = penni_deploy.load(artifact)
    return np.concatenate([model(np.ascontiguousarray(x[i:i + BATCH])) for i in range(0, len(x), BATCH)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 folder (as compress reads it)")
    parser.add_argument("--model", default="examples/resnet20-penni.pt")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--limit", type=int, default=None, help="first N test images only")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    x, labels = _inputs(args.data, args.limit)
    x = x[: len(x) // BATCH * BATCH]
    labels = labels[: len(x)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="penni-precision-") as tmp:
        for pipeline in ("penni", "dense"):
            reference = None
            for precision in args.precisions.split(","):
                path = os.path.join(tmp, f"{pipeline}-{precision}.penni")
                penni_deploy.compile_model(args.model, path, batch=BATCH,
                                           options=CompileOptions(pipeline=pipeline, precision=precision))
                start = time.perf_counter()
                logits = _logits(path, x)
                seconds = time.perf_counter() - start
                predicted = logits.argmax(1)
                if reference is None:
                    reference = logits
                row = {"pipeline": pipeline, "precision": precision, "images": len(x),
                       "top1": float((predicted == labels).mean()),
                       "agree_with_fp32": float((predicted == reference.argmax(1)).mean()),
                       "max_logit_diff_rel": float(np.abs(logits - reference).max() / np.abs(reference).max()),
                       "seconds": seconds}
                rows.append(row)
                print(f"{pipeline:<6} {precision:<5} top-1 {row['top1']:.2%}  agrees with fp32 on "
                      f"{row['agree_with_fp32']:.2%}  max |logit diff| / scale {row['max_logit_diff_rel']:.1e}  "
                      f"({len(x)} images, {seconds:.1f} s)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "data": args.data, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
