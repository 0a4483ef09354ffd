"""``penni-deploy bench``: the compiled artifact against its baselines, measured in one run."""

from .driver import format_bench_table, run_bench
from .options import BenchOptions

__all__ = ["BenchOptions", "format_bench_table", "run_bench"]
