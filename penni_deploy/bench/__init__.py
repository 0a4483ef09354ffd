"""``penni-deploy bench``: the compiled artifact against its baselines, measured in one run.

The names below are imported on first use, so that ``penni_deploy.bench.roofline`` (which ``profile``
and the matmul-peak worker use) can be imported without torch and the compiler.
"""

import importlib

_EXPORTS = {"BenchOptions": ".options", "format_bench_table": ".driver", "run_bench": ".driver"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
