"""The compile driver: model file → frontend → graph passes → target lowering → artifact.

``compile_model`` is what ``penni-deploy compile`` calls; ``compile_program`` is the same from an
ExportedProgram in memory (used by ``bench`` and the tests). Each stage reports progress through an
optional callback so long compiles show where they are.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import tvm

from . import __version__
from .artifact.manifest import FORMAT_VERSION, Manifest, TensorSpec
from .artifact.package import write_artifact
from .frontend import export_program, load_model, resolve_input_shape, to_relax
from .frontend.load_model import LoadedModel
from .passes import PipelineOptions, graph_passes, run_passes
from .passes.layer_report import describe_conv_layers
from .targets import get_target

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]

#: Stage messages ``compile_model`` sends to its progress callback (a terminal shows them as a bar).
COMPILE_STAGES = 6


@dataclass(frozen=True)
class CompileOptions:
    """How to compile.

    Parameters
    ----------
    target : str
        Target name (``x86``).
    mcpu : str, optional
        CPU to build for (LLVM name; x86 only); the host CPU by default.
    gpu_arch : str, optional
        GPU architecture (``sm_80`` or a TVM tag; cuda only); all from sm_75 to sm_90 by default.
    pipeline : str
        Graph pipeline: ``penni`` (the compiler) or ``dense`` (TVM without the PENNI passes).
    passes : PipelineOptions
        Knobs of the graph passes.
    tuning_db : str, optional
        A folder written by ``penni-deploy tune``: each layer then uses its fastest measured
        kernels (the cost model decides for layers the database does not know).
    precision : str
        ``fp32``, or ``bf16`` (x86 with AVX512_BF16): the dense layers multiply bf16-rounded
        operands into float32 sums; see ``targets.x86.X86Target``.
    """

    target: str = "x86"
    mcpu: str | None = None
    gpu_arch: str | None = None
    pipeline: str = "penni"
    passes: PipelineOptions = field(default_factory=PipelineOptions)
    tuning_db: str | None = None
    precision: str = "fp32"

    def make_target(self):
        return get_target(self.target, mcpu=self.mcpu, arch=self.gpu_arch, precision=self.precision)


@dataclass(frozen=True, eq=False)
class CompiledProgram:
    """An in-memory build: the TVM executable plus what the manifest needs."""

    executable: tvm.relax.Executable
    target: object
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    layers: list[dict]
    pass_seconds: dict[str, float]
    kernels: list[dict] = field(default_factory=list)  # the kernel table (``targets/kernel_table.py``)


def _quiet(_msg: str) -> None:
    pass


def compile_program(program: torch.export.ExportedProgram, input_shape: tuple[int, ...],
                    options: CompileOptions = CompileOptions(), progress: Progress = _quiet) -> CompiledProgram:
    """Compile an ExportedProgram (float32, one NCHW input) for ``options.target``."""
    target = options.make_target()
    progress("importing into TVM Relax")
    mod = to_relax(program)
    progress(f"graph passes ({options.pipeline})")
    mod, seconds = run_passes(mod, graph_passes(options.pipeline, options.passes))
    chooser, metaschedule_dir = _choosers(target, options.tuning_db)
    layers = describe_conv_layers(mod, chooser)
    output_shape = tuple(int(d) for d in mod["main"].ret_ty.shape)
    progress(f"generating kernels and building for {target.describe()['tvm_target']}")
    start = time.perf_counter()
    kernels: list[dict] = []
    executable = target.build(mod, chooser, metaschedule_dir, kernel_table=kernels)
    seconds["build"] = time.perf_counter() - start
    return CompiledProgram(executable, target, tuple(input_shape), output_shape, layers, seconds, kernels)


def _choosers(target, tuning_db: str | None):
    """The layer chooser and MetaSchedule folder of a build: the tuning database's, or the defaults."""
    if options_db := tuning_db:
        from .errors import PenniError
        from .tuning.chooser import DatabaseChooser
        from .tuning.database import TuningDatabase

        db = TuningDatabase(options_db, create=False)
        key = target.tuning_key()
        if len(db) and key not in db.targets():
            raise PenniError(f"tuning database {options_db} holds results for {', '.join(sorted(db.targets()))}, "
                             f"not for this target ({key}); tune on this kind of machine, or drop --tuning-db")
        ms_dir = db.metaschedule_dir if os.path.isdir(db.metaschedule_dir) else None
        return DatabaseChooser(db, key, target.kernels.lanes, target.num_threads), ms_dir
    return target.default_chooser(), None


def compile_loaded(loaded: LoadedModel, output: str, *, input_shape: tuple[int, ...] | None = None,
                   batch: int | None = None, options: CompileOptions = CompileOptions(),
                   progress: Progress = _quiet) -> Manifest:
    """Compile a loaded model and write the artifact to ``output`` (atomically)."""
    shape = resolve_input_shape(loaded, input_shape, batch)
    progress(f"tracing with torch.export for input {shape}")
    program = export_program(loaded, shape)
    built = compile_program(program, shape, options, progress)
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        producer=f"penni-deploy {__version__}",
        tvm_version=tvm.__version__,
        target=built.target.describe(),
        inputs=[TensorSpec("input", list(shape), "float32")],
        outputs=[TensorSpec("output", list(built.output_shape), "float32")],
        source={"file": os.path.basename(loaded.source_path or ""), "format": loaded.format,
                "sha256": loaded.source_sha256},
        library={},
        pipeline=options.pipeline,
        layers=built.layers,
        kernels=built.kernels,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        preprocessing=loaded.preprocessing.to_dict() if loaded.preprocessing else None,
    )
    progress(f"writing {output}")
    return write_artifact(output, built.executable, manifest)


def compile_model(path: str, output: str, *, arch: str | None = None, trust_pickle: bool = False,
                  input_shape: tuple[int, ...] | None = None, batch: int | None = None,
                  options: CompileOptions = CompileOptions(), progress: Progress = _quiet) -> Manifest:
    """Load ``path`` (any supported format), compile it, write the artifact to ``output``."""
    progress(f"loading {path}")
    loaded = load_model(path, arch=arch, trust_pickle=trust_pickle)
    return compile_loaded(loaded, output, input_shape=input_shape, batch=batch, options=options, progress=progress)
