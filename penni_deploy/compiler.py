"""The compile driver: model file → frontend → graph passes → target lowering → artifact.

``compile_model`` is what ``penni-deploy compile`` calls; ``compile_program`` is the same from an
ExportedProgram in memory (used by ``bench`` and the tests). Each stage reports progress through an
optional callback so long compiles show where they are.
"""

from __future__ import annotations

import datetime
import hashlib
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
from .calibration import annotate_input_ranges, calibrate, check_calibration, load_calibration
from .errors import InputSpecError, PenniError, UnsupportedModelError
from .frontend import export_program, load_model, resolve_input_shape, to_relax
from .frontend.load_model import LoadedModel
from .frontend.rebatch import rebatch_program
from .passes import PipelineOptions, graph_passes, run_passes
from .passes.layer_precision import keep_layers_fp32
from .passes.layer_report import describe_conv_layers
from .plan.micro_batch import choose_micro_batch, layer_footprint_bytes
from .plan.quantize import DEFAULT_PERCENTILE
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
        ``fp32``, ``bf16`` (x86 with AVX512_BF16: the dense layers multiply bf16-rounded operands
        into float32 sums) or ``int8`` (x86 with AVX512_VNNI, needs ``calibration``); see
        ``targets.x86.X86Target``.
    calibration : str or numpy.ndarray, optional
        int8: representative preprocessed inputs (N×C×H×W float32, or a ``.npy`` file of them) whose
        layer inputs set each layer's quantization range (``calibration.py``).
    calibration_method : str
        ``minmax`` or ``percentile`` (clip each range at ``percentile`` of the values seen).
    int8_layers : str
        ``auto`` or ``all``: which PENNI layers an int8 build runs in int8 (``targets.x86.X86Target``).
    micro_batch : int, optional
        Images per pass through the network (a divisor of the batch); by default chosen so that a
        layer's tensors fit the target's cache (``plan.micro_batch``).
    fp32_layers : tuple of int
        bf16: conv layers (their ``#N`` in the reports) kept in float32 (``passes.layer_precision``).
    """

    target: str = "x86"
    mcpu: str | None = None
    gpu_arch: str | None = None
    pipeline: str = "penni"
    passes: PipelineOptions = field(default_factory=PipelineOptions)
    tuning_db: str | None = None
    precision: str = "fp32"
    micro_batch: int | None = None
    calibration: object = field(default=None, compare=False)
    calibration_method: str = "minmax"
    percentile: float = DEFAULT_PERCENTILE
    int8_layers: str = "auto"
    fp32_layers: tuple[int, ...] = ()

    def make_target(self):
        return get_target(self.target, mcpu=self.mcpu, arch=self.gpu_arch, precision=self.precision,
                          int8_layers=self.int8_layers)


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
    micro_batch: int | None = None  # images per pass through the network, when less than the batch
    calibration: dict | None = None  # int8: what the ranges were calibrated on (the manifest's)


def _quiet(_msg: str) -> None:
    pass


def graph_for_build(program: torch.export.ExportedProgram, input_shape: tuple[int, ...], target,
                    options: CompileOptions = CompileOptions(), progress: Progress = _quiet,
                    retrace: Callable[[tuple[int, ...]], torch.export.ExportedProgram] | None = None,
                    ) -> tuple[tvm.IRModule, int, dict[str, float]]:
    """The graph-rewritten module the build lowers, and the micro-batch it is traced for.

    Returns ``(mod, micro_batch, pass_seconds)``: ``mod`` takes ``micro_batch`` images; the build
    repeats it over the batch when that is fewer (``tune`` tunes the same layers this way).
    ``retrace(shape)`` traces the model again at another batch size (the model file's own export;
    by default ``program`` is re-exported, which a graph that fixed its batch size refuses).
    """
    batch = input_shape[0]
    if options.micro_batch is not None and (options.micro_batch < 1 or batch % options.micro_batch):
        raise InputSpecError(f"--micro-batch {options.micro_batch} must divide the batch size {batch}")
    progress("importing into TVM Relax")
    passes = graph_passes(options.pipeline, options.passes)
    progress(f"graph passes ({options.pipeline})")
    mod, seconds = run_passes(to_relax(program), passes)
    images = options.micro_batch or choose_micro_batch(
        batch, layer_footprint_bytes(describe_conv_layers(mod)), target.micro_batch_cache_bytes())
    if images == batch:
        return mod, batch, seconds
    try:
        program = (retrace or (lambda shape: rebatch_program(program, shape)))((images, *input_shape[1:]))
    except Exception as exc:  # the graph fixed its batch size (view(8, -1) and the like)
        if options.micro_batch is not None:
            raise UnsupportedModelError(f"cannot trace the model for --micro-batch {images}: "
                                        f"{str(exc).strip().splitlines()[0]}") from None
        logger.info("cannot trace for micro-batches of %d (%s): running all %d images at once", images, exc, batch)
        return mod, batch, seconds
    progress(f"graph passes ({options.pipeline}) for micro-batches of {images}")
    mod, seconds = run_passes(to_relax(program), passes)
    return mod, images, seconds


def check_fp32_layers(options: CompileOptions) -> None:
    """Refuse ``fp32_layers`` where they mean nothing: only a bf16 build has layers to keep in float32."""
    if options.fp32_layers and options.precision != "bf16":
        raise InputSpecError(f"--fp32-layers is for --precision bf16 (this build is {options.precision}); "
                             "drop it, or add --precision bf16")


def compile_program(program: torch.export.ExportedProgram, input_shape: tuple[int, ...],
                    options: CompileOptions = CompileOptions(), progress: Progress = _quiet,
                    retrace: Callable[[tuple[int, ...]], torch.export.ExportedProgram] | None = None,
                    ) -> CompiledProgram:
    """Compile an ExportedProgram (float32, one NCHW input) for ``options.target`` (``retrace``: see
    ``graph_for_build``)."""
    check_fp32_layers(options)
    target = options.make_target()
    mod, micro_batch, seconds = graph_for_build(program, tuple(input_shape), target, options, progress, retrace)
    if options.fp32_layers:
        mod = keep_layers_fp32(mod, options.fp32_layers)
    calibration = None
    if options.precision == "int8":
        start = time.perf_counter()
        mod, calibration = _calibrated(mod, tuple(input_shape), options, progress)
        seconds["calibration"] = time.perf_counter() - start
    chooser, metaschedule_dir = _choosers(target, options.tuning_db)
    layers = describe_conv_layers(mod, chooser)
    repeats = input_shape[0] // micro_batch
    output_shape = tuple(int(d) for d in mod["main"].ret_ty.shape)
    output_shape = (output_shape[0] * repeats, *output_shape[1:])
    progress(f"generating kernels and building for {target.describe()['tvm_target']}"
             + (f", {repeats} micro-batches of {micro_batch}" if repeats > 1 else ""))
    start = time.perf_counter()
    kernels: list[dict] = []
    executable = target.build(mod, chooser, metaschedule_dir, kernel_table=kernels, micro_batches=repeats)
    seconds["build"] = time.perf_counter() - start
    return CompiledProgram(executable, target, tuple(input_shape), output_shape, layers, seconds, kernels,
                           micro_batch if repeats > 1 else None, calibration)


def _calibrated(mod: tvm.IRModule, input_shape: tuple[int, ...], options: CompileOptions,
                progress: Progress) -> tuple[tvm.IRModule, dict]:
    """``mod`` with every conv layer's calibrated input range, and what the manifest records of it."""
    if options.calibration is None:
        raise InputSpecError("--precision int8 needs --calibration X.npy: a float32 N×C×H×W array of "
                             "representative, preprocessed inputs (a few hundred images) to set each layer's scale")
    if isinstance(options.calibration, str):
        data = load_calibration(options.calibration, input_shape)
    else:
        data = check_calibration(options.calibration, input_shape)
    progress(f"calibrating int8 ranges on {len(data)} images ({options.calibration_method})")
    ranges = calibrate(mod, data, method=options.calibration_method, percentile=options.percentile,
                       progress=progress)
    info = {"images": int(len(data)), "method": options.calibration_method,
            "sha256": hashlib.sha256(data.tobytes()).hexdigest()}
    if options.calibration_method == "percentile":
        info["percentile"] = options.percentile
    return annotate_input_ranges(mod, ranges), info


def _choosers(target, tuning_db: str | None):
    """The layer chooser and MetaSchedule folder of a build: the tuning database's, or the defaults."""
    if options_db := tuning_db:
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
    built = compile_program(program, shape, options, progress, retrace=lambda s: export_program(loaded, s))
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
        micro_batch=built.micro_batch,
        calibration=built.calibration,
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
