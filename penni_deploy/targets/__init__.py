"""Compilation targets: one folder per target, each exposing a ``Target`` with the same interface.

The generic driver looks a target up here by name and never tests for a target's name itself.
"""

from __future__ import annotations

from ..errors import TargetError
from .base import Target


def _x86(**options) -> Target:
    from .x86 import X86Target

    return X86Target(**options)


def _cuda(**options) -> Target:
    from .cuda import CudaTarget

    return CudaTarget(**options)


# Name -> (factory, the options it takes). Factories import lazily so that e.g. GPU tooling is only
# loaded when asked for.
TARGET_FACTORIES = {
    "x86": (_x86, ("mcpu", "precision", "int8_layers")),
    "cuda": (_cuda, ("arch",)),
}

# How each option is spelled on the command line, for error messages.
_FLAGS = {"mcpu": "--mcpu", "arch": "--arch sm_XX", "precision": "--precision", "int8_layers": "--int8-layers"}


def get_target(name: str, **options) -> Target:
    """The target called ``name`` (``x86``, ``cuda``), with target-specific ``options`` (``mcpu``,
    ``precision``, ``arch``)."""
    if name not in TARGET_FACTORIES:
        raise TargetError(f"unknown target {name!r}; choose one of: {', '.join(TARGET_FACTORIES)}")
    factory, accepted = TARGET_FACTORIES[name]
    defaults = {"precision": "fp32", "int8_layers": "auto"}  # every target's
    options = {k: v for k, v in options.items() if defaults.get(k, object()) != v}
    for option, value in options.items():
        if value is not None and option not in accepted:
            users = [t for t, (_, opts) in TARGET_FACTORIES.items() if option in opts]
            raise TargetError(f"{_FLAGS.get(option, option)} ({value}) applies to --target {' or '.join(users)}, "
                              f"not to --target {name}")
    return factory(**{k: v for k, v in options.items() if v is not None})


__all__ = ["Target", "TARGET_FACTORIES", "get_target"]
