"""Compilation targets: one folder per target, each exposing a ``Target`` with the same interface.

The generic driver looks a target up here by name and never tests for a target's name itself.
"""

from __future__ import annotations

from ..errors import TargetError
from .base import Target


def _x86(**options) -> Target:
    from .x86 import X86Target

    return X86Target(**options)


# Name -> factory. Factories import lazily so that e.g. GPU tooling is only loaded when asked for.
TARGET_FACTORIES = {
    "x86": _x86,
}


def get_target(name: str, **options) -> Target:
    """The target called ``name`` (``x86``), built with target-specific ``options`` (e.g. ``mcpu``)."""
    try:
        factory = TARGET_FACTORIES[name]
    except KeyError:
        raise TargetError(f"unknown target {name!r}; choose one of: {', '.join(TARGET_FACTORIES)}") from None
    return factory(**options)


__all__ = ["Target", "TARGET_FACTORIES", "get_target"]
