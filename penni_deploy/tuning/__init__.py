"""Autotuning: per-layer kernel search on the real sparse arrays, MetaSchedule for the dense parts,
a plain-file database, and the cost model untuned builds use."""

from .chooser import CostModelChooser, DatabaseChooser, FixedChooser
from .database import TuningDatabase
from .tuner import TuneOptions, tune_loaded

__all__ = ["CostModelChooser", "DatabaseChooser", "FixedChooser", "TuneOptions", "TuningDatabase", "tune_loaded"]
