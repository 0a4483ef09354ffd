"""``penni-deploy bench``: the compiled artifact against its baselines, measured in one run."""

from .driver import BenchOptions, format_bench_table, run_bench

__all__ = ["BenchOptions", "format_bench_table", "run_bench"]
