"""Artifacts: one file with the compiled library (weights embedded) and its manifest.

Loading (``runtime.load``) needs only NumPy and the TVM runtime: no torch, no compiler.
"""

from .manifest import FORMAT_VERSION, Manifest
from .runtime import CompiledModel, load

__all__ = ["FORMAT_VERSION", "Manifest", "CompiledModel", "load"]
