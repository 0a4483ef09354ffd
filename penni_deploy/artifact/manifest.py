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

    def to_json(self) -> str:
        raw = asdict(self)
        if raw["preprocessing"] is None:
            del raw["preprocessing"]  # say nothing rather than null: no values were known
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
            return cls(**raw)
        except ArtifactError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ArtifactError(f"artifact manifest is malformed ({type(exc).__name__}: {exc}); recompile") from None
