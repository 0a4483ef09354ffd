"""Frontend: model files → ExportedProgram → Relax IRModule."""

from .load_model import LoadedModel, load_model
from .to_relax import export_program, resolve_input_shape, to_relax, unsupported_ops

__all__ = ["LoadedModel", "load_model", "export_program", "resolve_input_shape", "to_relax", "unsupported_ops"]
