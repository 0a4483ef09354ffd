"""The artifact manifest: what was compiled, for what, from what, and how to check it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ArtifactError

#: Bumped whenever the file layout or the manifest's meaning changes.
FORMAT_VERSION = 1

MANIFEST_NAME = "manifest.json"
LIBRARY_NAME = "model.so"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: list[int]
    dtype: str


@dataclass(frozen=True)
class Manifest:
    """Everything ``penni-deploy inspect`` shows and ``load`` checks."""

    format_version: int
    producer: str
    tvm_version: str
    target: dict[str, Any]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    source: dict[str, Any]  # file name, format, sha256
    library: dict[str, Any]  # file name, sha256, bytes
    pipeline: str
    layers: list[dict[str, Any]] = field(default_factory=list)
    created: str = ""
    # {"mean": [...], "std": [...]} of [0, 1] pixels, as the model file recorded it; absent when it recorded none.
    preprocessing: dict[str, list[float]] | None = None
    #: Every kernel call of ``main`` in run order, with its layer (``targets/kernel_table.py``);
    #: empty in artifacts from before ``penni-deploy profile``.
    kernels: list[dict[str, Any]] = field(default_factory=list)
    #: Images per pass through the network when the build runs a batch in micro-batches
    #: (``plan.micro_batch``); None when it runs the whole batch at once. ``layers`` are per pass.
    micro_batch: int | None = None
    #: int8 builds: how the layers' input ranges were calibrated (images, method, percentile, the
    #: array's sha256); None otherwise.
    calibration: dict[str, Any] | None = None

    def to_json(self) -> str:
        raw = asdict(self)
        if raw["calibration"] is None:
            del raw["calibration"]
        if raw["preprocessing"] is None:
            del raw["preprocessing"]  # say nothing rather than null: no values were known
        if raw["micro_batch"] is None:
            del raw["micro_batch"]
        return json.dumps(raw, indent=2)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            raw = json.loads(text)
            version = raw.get("format_version")
            if version != FORMAT_VERSION:
                raise ArtifactError(f"artifact format version {version} is not supported by this penni-deploy "
                                    f"(it reads version {FORMAT_VERSION}); recompile the model")
            raw["inputs"] = [TensorSpec(**t) for t in raw["inputs"]]
            raw["outputs"] = [TensorSpec(**t) for t in raw["outputs"]]
            manifest = cls(**raw)
        except ArtifactError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ArtifactError(f"artifact manifest is malformed ({type(exc).__name__}: {exc}); recompile") from None
        problem = _malformed(manifest)
        if problem:
            raise ArtifactError(f"artifact manifest is malformed: {problem}; recompile")
        return manifest


def _malformed(manifest: Manifest) -> str | None:
    """What in a parsed manifest the loader could not use (``None`` when nothing): checked on
    reading, so ``inspect`` refuses what ``load`` would trip over later."""
    import numpy as np

    if not manifest.inputs or not manifest.outputs:
        return "it lists no inputs or no outputs"
    for kind, specs in (("input", manifest.inputs), ("output", manifest.outputs)):
        for spec in specs:
            shape = spec.shape
            if not isinstance(shape, list) or not all(type(d) is int and d > 0 for d in shape):
                return f"{kind} {spec.name!r} has shape {shape!r} (sizes must be positive integers)"
            try:
                if not isinstance(spec.dtype, str):
                    raise TypeError(spec.dtype)
                np.dtype(spec.dtype)
            except TypeError:
                return f"{kind} {spec.name!r} has dtype {spec.dtype!r}, which is not a NumPy dtype"
    library = manifest.library
    if not isinstance(library, dict) or not isinstance(library.get("file"), str) or \
            not isinstance(library.get("sha256"), str):
        return "its library entry lacks a file name or sha256"
    return None
