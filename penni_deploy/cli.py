"""The ``penni-deploy`` command line: thin typer commands over the Python API.

Each command checks and converts its arguments, then calls one library function. Every
``PenniError`` becomes a one-line ``error: ...`` on stderr and a non-zero exit, without traceback.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import InputSpecError, OutputPathError, PenniError
from .machine import available_cores
from .paths import check_output_file, check_output_folder
from .progress import Progress

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Compile PENNI-compressed CNNs into fast, deployable TVM artifacts.")


def _shape(text: Optional[str]) -> Optional[tuple[int, ...]]:
    if not text:
        return None
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise InputSpecError(f"--input-shape {text!r} is not a comma-separated list of sizes like 1,3,32,32") from None
    return shape


def _int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise InputSpecError(f"{option} {text!r} must be comma-separated integers like 1,8") from None
    if not values or min(values) < 1:
        raise InputSpecError(f"{option} {text!r} must list positive integers")
    return values


Arch = Annotated[Optional[list[str]], typer.Option(
    help="Model architecture of a state_dict checkpoint (resnet18, resnet20, resnet56, vgg16, alexnet, resnet50), "
         "and/or the GPU architecture "
         "for --target cuda (sm_80, or a TVM tag such as nvidia/nvidia-a100). May be given twice.")]
Device = Annotated[Optional[str], typer.Option(help="cpu or cuda; default: the device the artifact was built for.")]

_GPU_ARCH = re.compile(r"^(sm_\d+[af]?|compute_\d+[af]?|nvidia/.+)$")


def _split_arch(values: Optional[list[str]]) -> tuple[Optional[str], Optional[str]]:
    """``--arch`` carries both meanings of the issue tracker's spelling: a model architecture for
    state_dicts and a GPU architecture for CUDA builds. They never look alike, so sort them."""
    model, gpu = [], []
    for value in values or []:
        (gpu if _GPU_ARCH.match(value) else model).append(value)
    if len(model) > 1 or len(gpu) > 1:
        raise InputSpecError(f"--arch given twice for the same thing: {', '.join(model if len(model) > 1 else gpu)}")
    return (model[0] if model else None), (gpu[0] if gpu else None)
TrustPickle = Annotated[bool, typer.Option(
    "--trust-pickle", help="Allow a whole pickled nn.Module (pickles can run code; loaded through an allow-list).")]
InputShape = Annotated[Optional[str], typer.Option(help="Input shape N,C,H,W when the file records none.")]
Target = Annotated[str, typer.Option(help="Compilation target.")]
Mcpu = Annotated[Optional[str], typer.Option(help="CPU to build for (LLVM name, e.g. skylake-avx512); default: this host.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
Precision = Annotated[str, typer.Option(
    help="fp32; bf16 (x86 with AVX512_BF16): dense convs and Linear multiply bf16-rounded weights and "
         "activations, summing in float32, PENNI layers stay float32; or int8 (x86 with AVX512_VNNI, needs "
         "--calibration): convs in int8 where that is faster. Input and output stay float32.")]
Calibration = Annotated[Optional[Path], typer.Option(
    help="int8: a .npy float32 N×C×H×W array of representative, preprocessed inputs (a few hundred images); "
         "each layer's input range is measured on it.")]
CalibrationMethod = Annotated[str, typer.Option(
    help="int8: minmax (the extremes seen), or percentile (clip at --percentile of the values seen).")]
Percentile = Annotated[float, typer.Option(help="int8 with --calibration-method percentile: the percentile kept.")]


def _check_calibration_options(options) -> None:
    """Refuse calibration options that would be ignored or cannot work, before any compiling."""
    from .plan.quantize import CALIBRATION_METHODS, INT8_LAYERS

    if options.calibration_method not in CALIBRATION_METHODS:
        raise InputSpecError(f"--calibration-method must be one of {', '.join(CALIBRATION_METHODS)}, "
                             f"not {options.calibration_method!r}")
    if options.int8_layers not in INT8_LAYERS:
        raise InputSpecError(f"--int8-layers must be one of {', '.join(INT8_LAYERS)}, not {options.int8_layers!r}")
    if not 50.0 < options.percentile <= 100.0:
        raise InputSpecError(f"--percentile {options.percentile} must be in (50, 100]")
    if options.precision == "int8" and options.calibration is None:
        raise InputSpecError("--precision int8 needs --calibration X.npy: a float32 N×C×H×W array of "
                             "representative, preprocessed inputs (a few hundred images)")
    if options.precision != "int8" and options.calibration is not None:
        raise InputSpecError("--calibration is for --precision int8; drop it, or add --precision int8")
    if options.calibration is not None and not os.path.isfile(options.calibration):
        raise InputSpecError(f"--calibration {options.calibration}: no such file")


@app.command()
def compile(  # noqa: A001 - the command is called compile
    model: Annotated[Path, typer.Argument(help="TorchScript, .pt2, state_dict (+--arch) or pickled model file.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Artifact to write.")] = Path("model.penni"),
    target: Target = "x86",
    mcpu: Mcpu = None,
    precision: Precision = "fp32",
    calibration: Calibration = None,
    calibration_method: CalibrationMethod = "minmax",
    percentile: Percentile = 99.99,
    int8_layers: Annotated[str, typer.Option(
        help="int8: auto (each PENNI layer in int8 where that is estimated faster than float32), or all.")] = "auto",
    fp32_layers: Annotated[Optional[str], typer.Option(
        help="bf16: keep these conv layers in float32, by their #N in --report and `profile` (e.g. 0-10,43): "
             "the few early layers that make most of a network's bf16 error "
             "(benchmarks/bf16_error_sources.py finds them).")] = None,
    eval_data: Annotated[Optional[Path], typer.Option(
        help="A labelled CIFAR-10 folder (as `compress` reads): print the top-1 on its test split of this build "
             "and of the float32 build side by side.")] = None,
    eval_images: Annotated[Optional[int], typer.Option(help="--eval-data: the first N test images only.")] = None,
    arch: Arch = None,
    trust_pickle: TrustPickle = False,
    input_shape: InputShape = None,
    batch: Annotated[Optional[int], typer.Option(help="Compile for this batch size.")] = None,
    micro_batch: Annotated[Optional[int], typer.Option(
        help="Images per pass through the network, a divisor of the batch (default: chosen so that a layer's "
             "tensors fit the last-level cache; the whole batch for small images).")] = None,
    pipeline: Annotated[str, typer.Option(help="Graph pipeline: penni, or dense (no PENNI passes).")] = "penni",
    tuning_db: Annotated[Optional[Path], typer.Option(help="Use the fastest kernels found by `penni-deploy tune` "
                                                           "in this folder.")] = None,
    report: Annotated[bool, typer.Option("--report", help="Print the per-layer table.")] = False,
    quiet: Quiet = False,
) -> None:
    """Compile MODEL into one deployable artifact file."""
    from .compiler import COMPILE_STAGES, CompileOptions, check_fp32_layers, compile_model
    from .passes.layer_precision import parse_layer_numbers
    from .passes.layer_report import format_layer_table

    check_output_file(output, "-o", create_folders=True)  # before minutes of compiling, not after
    model_arch, gpu_arch = _split_arch(arch)
    options = CompileOptions(target=target, mcpu=mcpu, gpu_arch=gpu_arch, pipeline=pipeline,
                             tuning_db=str(tuning_db) if tuning_db else None, precision=precision,
                             micro_batch=micro_batch, calibration=str(calibration) if calibration else None,
                             calibration_method=calibration_method, percentile=percentile,
                             int8_layers=int8_layers,
                             fp32_layers=parse_layer_numbers(fp32_layers) if fp32_layers is not None else ())
    _check_calibration_options(options)
    check_fp32_layers(options)
    options.make_target()  # an unsupported --precision or --mcpu fails here, before loading the model
    progress = Progress(quiet, stages=COMPILE_STAGES, label="compile")
    with progress.activate():
        manifest = compile_model(str(model), str(output), arch=model_arch, trust_pickle=trust_pickle,
                                 input_shape=_shape(input_shape), batch=batch, options=options, progress=progress)
    if report:
        typer.echo(format_layer_table(manifest.layers))
    progress.line(f"wrote {output} ({manifest.library['bytes'] / 1e6:.1f} MB library)")
    if eval_data is not None:
        _print_top1_against_fp32(str(model), str(output), str(eval_data), eval_images, options, model_arch,
                                 trust_pickle, _shape(input_shape), batch, quiet)


def _print_top1_against_fp32(model, artifact, data, limit, options, model_arch, trust_pickle, input_shape, batch,
                             quiet) -> None:
    """``--eval-data``: top-1 of the artifact just written and of the same model built in float32."""
    import dataclasses
    import tempfile

    from .artifact.runtime import load
    from .compiler import compile_model
    from .evaluate import top1

    with tempfile.TemporaryDirectory(prefix="penni-eval-") as tmp:
        builds = [("fp32", artifact)]
        if options.precision != "fp32":
            builds = [("fp32", os.path.join(tmp, "fp32.penni")), (options.precision, artifact)]
            fp32 = dataclasses.replace(options, precision="fp32", calibration=None, int8_layers="auto",
                                       fp32_layers=())
            progress = Progress(quiet, label="fp32 build")
            with progress.activate():
                compile_model(model, builds[0][1], arch=model_arch, trust_pickle=trust_pickle,
                              input_shape=input_shape, batch=batch, options=fp32, progress=progress)
        rows = [(name, top1(load(path), data, limit)) for name, path in builds]
    base = rows[0][1]
    line = f"top-1 on {data} (test split, {base.images} images): " + "   ".join(
        f"{name} {result.top1:.2%}" for name, result in rows)
    if len(rows) == 2:
        other = rows[1][1]
        agree = float((other.predictions == base.predictions).mean())
        line += f"   ({(other.top1 - base.top1) * 100:+.2f} points; the same prediction on {agree:.2%} of images)"
    typer.echo(line)


@app.command("calibration-set")
def calibration_set_command(
    data: Annotated[Path, typer.Argument(help="A CIFAR-10 folder (as `compress` reads it).")],
    output: Annotated[Path, typer.Option("-o", "--output", help=".npy file to write.")] = Path("calibration.npy"),
    images: Annotated[int, typer.Option(help="Training images to draw at random.")] = 256,
    seed: Annotated[int, typer.Option(help="Seed of the draw.")] = 0,
    mean: Annotated[Optional[str], typer.Option(help="Per-channel mean of [0, 1] pixels (default: CIFAR-10's).")] = None,
    std: Annotated[Optional[str], typer.Option(help="Per-channel std (default: CIFAR-10's).")] = None,
) -> None:
    """Write a --calibration array for `compile --precision int8`: IMAGES preprocessed training images of DATA."""
    import numpy as np

    from .evaluate import calibration_set

    if images < 1:
        raise InputSpecError(f"--images {images} must be at least 1")
    check_output_file(output, "-o", create_folders=True)
    pre = {}
    for key, value in (("mean", mean), ("std", std)):
        if value is not None:
            try:
                pre[key] = [float(v) for v in value.split(",")]
            except ValueError:
                raise InputSpecError(f"--{key} {value!r} must be comma-separated numbers, e.g. 0.5,0.5,0.5") from None
    x = calibration_set(str(data), images, pre or None, seed)
    tmp = f"{output}.partial.npy"
    np.save(tmp, x)
    os.replace(tmp, output)
    typer.echo(f"wrote {output}: {x.shape[0]} images, {'×'.join(map(str, x.shape[1:]))}, float32")


@app.command()
def tune(
    model: Annotated[Path, typer.Argument(help="Model file, as for compile.")],
    db: Annotated[Path, typer.Option("--db", help="Tuning database folder (created; reused and resumed if it "
                                                  "exists).")],
    target: Target = "x86",
    mcpu: Mcpu = None,
    precision: Precision = "fp32",
    arch: Arch = None,
    trust_pickle: TrustPickle = False,
    input_shape: InputShape = None,
    batch: Annotated[Optional[int], typer.Option(help="Tune for this batch size.")] = None,
    trials: Annotated[int, typer.Option(help="Kernel-config measurements for the PENNI layers, in all.")] = 200,
    dense_trials: Annotated[int, typer.Option(help="MetaSchedule trials for the dense parts (0: skip).")] = 64,
    rpc_tracker: Annotated[Optional[str], typer.Option(help="Measure on devices of this TVM RPC tracker, HOST:PORT.")]
    = None,
    rpc_key: Annotated[Optional[str], typer.Option(help="Device key registered with the RPC tracker.")] = None,
    quiet: Quiet = False,
) -> None:
    """Measure each layer's kernel options on this machine (or over RPC) and store the fastest in --db.

    Then: penni-deploy compile MODEL --tuning-db DB.
    """
    from .compiler import CompileOptions
    from .frontend import load_model
    from .tuning import TuneOptions, tune_loaded

    if trials < 1 or dense_trials < 0:
        raise InputSpecError("--trials must be >= 1 and --dense-trials >= 0")
    if precision == "int8":
        raise InputSpecError("tune measures float32 kernels, which an int8 build keeps for the layers it does not "
                             "quantize (its int8 tile has no knobs): tune without --precision int8, then "
                             "compile --precision int8 --tuning-db DB")
    check_output_folder(db, "--db")
    model_arch, gpu_arch = _split_arch(arch)
    target_obj = CompileOptions(target=target, mcpu=mcpu, gpu_arch=gpu_arch, precision=precision).make_target()
    progress = Progress(quiet)
    with progress.activate():
        progress(f"loading {model}")
        loaded = load_model(str(model), arch=model_arch, trust_pickle=trust_pickle)
        summary = tune_loaded(loaded, str(db), target_obj, input_shape=_shape(input_shape), batch=batch,
                              options=TuneOptions(trials=trials, dense_trials=dense_trials, rpc_tracker=rpc_tracker,
                                                  rpc_key=rpc_key), progress=progress)
    for layer in summary["layers"]:
        best, untuned = layer["best_ms"], layer["cost_model_ms"]
        gain = f"{untuned / best:.2f}× over the cost model's pick" if best and untuned else ""
        typer.echo(f"{layer['layer']:<44} best {best or float('nan'):.4f} ms  {gain}")
    typer.echo(f"{summary['measured']} measured, {summary['reused']} reused from {db}, {summary['failed']} failed; "
               f"conv layers est. {summary['model_estimate_ms']:.3f} ms. "
               f"Next: penni-deploy compile {model} --tuning-db {db}")


@app.command()
def run(
    artifact: Annotated[Path, typer.Argument(help="A .penni artifact.")],
    input: Annotated[Path, typer.Option("--input", "-i", help="Input array (.npy).")],  # noqa: A002
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the output (.npy).")],
    device: Device = None,
    threads: Annotated[Optional[int], typer.Option(min=1, help="CPU threads (default: TVM_NUM_THREADS if set, "
                                                               "else every core this process may use).")] = None,
    trusted_key: Annotated[Optional[Path], typer.Option(
        help="Refuse ARTIFACT unless signed with this EC P-256 public key (PEM); default $PENNI_TRUSTED_KEY.")]
    = None,
) -> None:
    """Run ARTIFACT on an input .npy file with the TVM runtime."""
    import numpy as np

    from .artifact.runtime import load

    check_output_file(output, "--output")
    try:
        x = np.load(input, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputSpecError(f"cannot read {input} as a .npy array: {exc}") from None
    y = load(str(artifact), device, threads, trusted_key=trusted_key)(x)
    tmp = output.with_name(output.name + ".partial.npy")
    try:
        np.save(tmp, y)
        os.replace(tmp, output)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputPathError(f"cannot write --output {output}: {exc}") from None
    typer.echo(f"wrote {output}: shape {tuple(y.shape)}, dtype {y.dtype}", err=True)


@app.command()
def sign(
    artifact: Annotated[Path, typer.Argument(help="A .penni artifact, signed in place.")],
    key: Annotated[Path, typer.Option("--key", help="EC P-256 private key (PEM), e.g. from "
                                                    "`openssl ecparam -name prime256v1 -genkey -noout -out key.pem`.")],
) -> None:
    """Sign ARTIFACT's manifest and library with KEY (replacing any earlier signature)."""
    from .artifact.signing import sign_artifact

    signer = sign_artifact(artifact, key)
    typer.echo(f"signed {artifact} with key {signer[:16]}…", err=True)


@app.command()
def verify(
    artifact: Annotated[Path, typer.Argument(help="A .penni artifact.")],
    key: Annotated[Optional[Path], typer.Option("--key", help="The trusted EC P-256 public key (PEM); default "
                                                              "$PENNI_TRUSTED_KEY.")] = None,
) -> None:
    """Check ARTIFACT's integrity and its signature by KEY, without loading its native code."""
    from .artifact.signing import resolve_trusted_key, verify_artifact

    trusted = resolve_trusted_key(key)
    if trusted is None:
        raise PenniError("verify needs the trusted public key: --key PUB.pem (or set PENNI_TRUSTED_KEY)")
    signer = verify_artifact(artifact, trusted)
    typer.echo(f"ok: {artifact} is intact and signed by {trusted} (key {signer[:16]}…)")


@app.command()
def inspect(
    artifact: Annotated[Path, typer.Argument(help="A .penni artifact.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw manifest.")] = False,
) -> None:
    """Show what an artifact holds: target, shapes, source, per-layer statistics.

    The file is checked as `run` checks it (a damaged one is refused); what this machine lacks to
    run it (another TVM version, no such device or CPU feature) is reported, not refused.
    """
    from .artifact.runtime import verify_artifact
    from .passes.layer_report import format_layer_table

    report = verify_artifact(str(artifact))
    manifest = report.manifest
    if as_json:
        typer.echo(manifest.to_json())
        for problem in report.problems:
            typer.echo(f"warning: cannot run here: {problem}", err=True)
        return
    t = manifest.target
    typer.echo(f"artifact     {artifact} (format {manifest.format_version}, {manifest.producer}, {manifest.created})")
    typer.echo(f"target       {t.get('name')} {t.get('mcpu', '')} {t.get('isa', '')}  TVM {manifest.tvm_version}")
    typer.echo(f"precision    {t.get('precision', 'fp32')}")
    if manifest.micro_batch:
        typer.echo(f"micro-batch  {manifest.micro_batch} image(s) per pass through the network")
    if manifest.calibration:
        c = manifest.calibration
        typer.echo(f"calibration  {c['images']} images, {c['method']}"
                   + (f" {c['percentile']}" if "percentile" in c else "") + f", sha256 {c['sha256'][:16]}…"
                   + f"; int8 layers: {t.get('int8_layers', 'auto')}")
    for spec in manifest.inputs:
        typer.echo(f"input        {spec.name} {spec.dtype}{spec.shape}")
    for spec in manifest.outputs:
        typer.echo(f"output       {spec.name} {spec.dtype}{spec.shape}")
    typer.echo(f"source       {manifest.source.get('file')} ({manifest.source.get('format')}), "
               f"sha256 {manifest.source.get('sha256', '')[:16]}…")
    typer.echo(f"library      {manifest.library.get('bytes', 0) / 1e6:.2f} MB, sha256 "
               f"{manifest.library.get('sha256', '')[:16]}…  pipeline {manifest.pipeline}")
    if manifest.preprocessing:
        values = {k: ", ".join(f"{v:.4g}" for v in manifest.preprocessing[k]) for k in ("mean", "std")}
        typer.echo(f"preprocess   (pixel / 255 - mean) / std per channel, mean [{values['mean']}], std [{values['std']}]")
    for problem in report.problems or [None]:
        typer.echo(f"runs here    {'no: ' + problem if problem else 'yes'}")
    if manifest.layers:
        typer.echo(format_layer_table(manifest.layers))


@app.command()
def profile(
    artifact: Annotated[Path, typer.Argument(help="A .penni artifact (CPU).")],
    input: Annotated[Optional[Path], typer.Option("--input", "-i", help="Input array (.npy); default: random "  # noqa: A002
                                                                         "values of the compiled shape.")] = None,
    repeat: Annotated[int, typer.Option(help="Timed calls per kernel and runs of the whole model (medians).")] = 50,
    threads: Annotated[Optional[int], typer.Option(help="TVM threads, and the matmul peak's (default: all "
                                                        "cores).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the report as JSON.")] = None,
    peak_size: Annotated[int, typer.Option(help="Matrix size of the fp32 matmul that measures the peak.")] = 2048,
    bandwidth_mb: Annotated[int, typer.Option(help="MiB read to measure the memory bandwidth.")] = 256,
) -> None:
    """Time each kernel of ARTIFACT: per layer and per op between the layers, with MACs, GMAC/s and the
    share of the total, against this machine's measured fp32 matmul peak, and for layers with large
    weights their GB/s against its measured memory bandwidth; slowest first."""
    import numpy as np

    from .artifact.profile import format_profile_table, profile_artifact

    x = None
    if input is not None:
        try:
            x = np.load(input, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputSpecError(f"cannot read {input} as a .npy array: {exc}") from None
    if bandwidth_mb < 1:
        raise InputSpecError(f"--bandwidth-mb must be at least 1, not {bandwidth_mb}")
    report = profile_artifact(str(artifact), x, repeat=repeat, threads=threads, peak_size=peak_size,
                              bandwidth_mb=bandwidth_mb)
    typer.echo(format_profile_table(report))
    if json_out:
        tmp = json_out.with_name(json_out.name + ".partial")
        tmp.write_text(json.dumps(report, indent=2))
        os.replace(tmp, json_out)


@app.command()
def bench(
    model: Annotated[Path, typer.Argument(help="Model file, as for compile.")],
    target: Target = "x86",
    mcpu: Mcpu = None,
    precision: Precision = "fp32",
    calibration: Calibration = None,
    calibration_method: CalibrationMethod = "minmax",
    int8_layers: Annotated[str, typer.Option(help="int8: auto or all (as for compile).")] = "auto",
    arch: Arch = None,
    trust_pickle: TrustPickle = False,
    input_shape: InputShape = None,
    batch: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = "1,8",
    threads: Annotated[Optional[int], typer.Option(help="Threads for every engine (default: all cores).")] = None,
    repeat: Annotated[int, typer.Option(help="Timed runs per engine, at least (median and p90 reported).")] = 100,
    seconds: Annotated[float, typer.Option(help="Time each engine for at least this long, too.")] = 3.0,
    device: Annotated[str, typer.Option(help="cpu, or cuda (needs a GPU; compile with --target cuda).")] = "cpu",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the report as JSON.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Also draw the latencies as a PNG (needs matplotlib).")] = None,
    tuning_db: Annotated[Optional[Path], typer.Option(help="Compile penni-deploy with this `tune` database.")]
    = None,
    peers: Annotated[bool, typer.Option("--peers", help="Also measure torch.compile, onnxruntime, OpenVINO (f32, bf16) "
                                                        "and DeepSparse (pip install 'penni-deploy[peers]'; "
                                                        "bash scripts/setup_deepsparse.sh).")] = False,
) -> None:
    """Compile MODEL and measure it against PyTorch eager (dense and two-stage) and plain TVM, and with
    --peers against other inference engines; every engine in its own process, same threads."""
    from .bench import BenchOptions, format_bench_table, run_bench
    from .compiler import CompileOptions

    model_arch, gpu_arch = _split_arch(arch)
    options = BenchOptions(batches=_int_list(batch, "--batch"), threads=threads or available_cores(),
                           repeat=repeat, min_repeat=min(20, repeat), min_seconds=seconds, device=device,
                           compile=CompileOptions(target=target, mcpu=mcpu, gpu_arch=gpu_arch,
                                                  tuning_db=str(tuning_db) if tuning_db else None,
                                                  precision=precision,
                                                  calibration=str(calibration) if calibration else None,
                                                  calibration_method=calibration_method, int8_layers=int8_layers),
                           peers=peers)
    _check_calibration_options(options.compile)
    options.compile.make_target()
    report = run_bench(str(model), arch=model_arch, trust_pickle=trust_pickle, input_shape=_shape(input_shape),
                       options=options, progress=Progress())
    typer.echo(format_bench_table(report))
    if json_out:
        json_out.write_text(json.dumps(report, indent=2))
    if plot:
        from .bench.plot import plot_bench

        typer.echo(f"wrote {plot_bench(report, str(plot))}", err=True)


@app.command()
def example(
    name: Annotated[str, typer.Argument(help="resnet18-random97, resnet56-random97, vgg16-random97, "
                                             "resnet50-random95 or alexnet-random95.")] = "resnet18-random97",
    output: Annotated[Path, typer.Option("-o", "--output", help="Model file to write.")] = Path("model.pt"),
    format: Annotated[str, typer.Option(help="torchscript (input shape recorded), pt2, or state_dict "  # noqa: A002
                                              "(compile it with --arch).")] = "torchscript",
    sample_input: Annotated[Optional[Path], typer.Option(help="Also write a random input (.npy) for it.")] = None,
) -> None:
    """Write a generated example PENNI model (RANDOM weights, labelled as such)."""
    import numpy as np
    import torch

    from .frontend.load_model import INPUT_SHAPE_EXTRA, ZOO_INPUT_SHAPE
    from .models.examples import EXAMPLES, make_example

    check_output_file(output, "-o")
    if sample_input:
        check_output_file(sample_input, "--sample-input")
    model = make_example(name)
    example_input = torch.zeros(ZOO_INPUT_SHAPE)
    if format == "torchscript":
        traced = torch.jit.trace(model, example_input)
        torch.jit.save(traced, str(output), _extra_files={INPUT_SHAPE_EXTRA: json.dumps(list(ZOO_INPUT_SHAPE))})
    elif format == "pt2":
        torch.export.save(torch.export.export(model, (example_input,)), str(output))
    elif format == "state_dict":
        torch.save(model.state_dict(), output)
    else:
        raise PenniError(f"unknown --format {format!r}; choose torchscript, pt2 or state_dict")
    typer.echo(f"wrote {output} ({format}, arch {EXAMPLES[name].arch}): {EXAMPLES[name].description}", err=True)
    if sample_input:
        np.save(sample_input, np.random.default_rng(0).standard_normal(ZOO_INPUT_SHAPE).astype(np.float32))
        typer.echo(f"wrote {sample_input}: input {ZOO_INPUT_SHAPE} float32", err=True)


@app.command()
def compress(
    arch: Annotated[str, typer.Option(help="Network: resnet18, resnet20, resnet56, vgg16 (CIFAR-10); alexnet, "
                                            "resnet50 (ImageNet folders).")],
    data: Annotated[Path, typer.Option(help="cifar-10-batches-py folder, a folder with train.tar.gz/test.tar.gz, or "
                                            "(ImageNet) a folder with train/ and val/ class folders.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Model to write: TorchScript (.pt) or .pt2.")],
    preset: Annotated[Optional[str], typer.Option(help="Named schedule: paper (default; 100 + 100 + 30 epochs) or "
                                                       "paper-fast (40 + 40 + 12, about 10 GPU minutes for "
                                                       "ResNet18). The flags below override it.")] = None,
    baseline: Annotated[Optional[Path], typer.Option(help="Dense state_dict to start from (skips baseline training).")] = None,
    baseline_epochs: Annotated[Optional[int], typer.Option(help="Dense training epochs [preset].")] = None,
    baseline_lr: Annotated[Optional[float], typer.Option(help="Learning rate of dense baseline training [preset].")]
    = None,
    retrain_epochs: Annotated[Optional[int], typer.Option(help="Alternating retraining epochs [preset].")] = None,
    finetune_epochs: Annotated[Optional[int], typer.Option(help="Masked fine-tuning epochs [preset].")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate of retraining and fine-tuning [preset].")] = None,
    l1: float = 1e-4,
    interval: Annotated[Optional[int], typer.Option(help="Alternate coefficients/bases every N epochs [preset].")]
    = None,
    d: Annotated[int, typer.Option("--d", help="Bases per layer.")] = 5,
    batch_size: Annotated[Optional[int], typer.Option(help="Global batch [preset].")] = None,
    subset: Annotated[Optional[int], typer.Option(help="Train on N images (balanced) for quick runs.")] = None,
    test_subset: Annotated[Optional[int], typer.Option(help="Evaluate on N test images.")] = None,
    seed: int = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the work folder's checkpoints.")] = False,
    augment: Annotated[bool, typer.Option(help="Random crop + flip while training (the paper's).")] = True,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda.")] = "auto",
    float64: Annotated[bool, typer.Option("--float64", help="Train in double precision (exact comparisons).")] = False,
    fast: Annotated[Optional[bool], typer.Option("--fast/--no-fast", help="Hold CIFAR-10 on the device as uint8 "
                                                 "and augment it there per batch (default: on CUDA).")] = None,
    bf16: Annotated[Optional[bool], typer.Option("--bf16/--no-bf16", help="Train under bf16 autocast; evaluation "
                                                 "stays float32 (default: on CUDA).")] = None,
    channels_last: Annotated[Optional[bool], typer.Option("--channels-last/--no-channels-last",
                                                          help="Channels-last training (default: on CUDA).")] = None,
    eval_batch_size: Annotated[int, typer.Option(help="Evaluation batch of the --fast data path.")] = 1000,
    time_budget: Annotated[Optional[float], typer.Option(help="Seconds for the whole run: each stage keeps the "
                                                              "epochs its share of the clock affords.")] = None,
    budget_reserve: Annotated[float, typer.Option(help="Of --time-budget, seconds kept for the final evaluations, "
                                                       "shrink and writing the outputs.")] = 30.0,
    min_epochs: Annotated[int, typer.Option(help="Fewest epochs per training stage under --time-budget.")] = 1,
    penni_train_form: Annotated[str, typer.Option(help="PENNI layers while training: two_stage (basis conv + 1x1) or "
                                                       "dense (W = C·B rebuilt, as the reference trains).")]
    = "two_stage",
    quiet: Quiet = False,
) -> None:
    """Train, decompose, retrain, prune, fine-tune and shrink a network with the PENNI method.

    Data-parallel: torchrun --nproc_per_node N -m penni_deploy.cli compress ... (gloo on CPUs, NCCL on GPUs).
    """
    from .method.compress import CompressConfig, check_config
    from .method.compress import compress as run_compress

    schedule = {name: value for name, value in dict(
        baseline_epochs=baseline_epochs, baseline_lr=baseline_lr, retrain_epochs=retrain_epochs,
        finetune_epochs=finetune_epochs, lr=lr, interval=interval, batch_size=batch_size).items() if value is not None}
    config = CompressConfig.from_preset(
        preset, arch=arch, data=str(data), output=str(output), baseline=str(baseline) if baseline else None, l1=l1,
        num_bases=d, subset=subset, test_subset=test_subset, seed=seed, resume=resume, augment=augment,
        device=device, float64=float64, fast=fast, bf16=bf16, channels_last=channels_last,
        eval_batch_size=eval_batch_size, time_budget=time_budget, budget_reserve=budget_reserve, min_epochs=min_epochs,
        penni_train_form=penni_train_form, **schedule)
    check_config(config)
    summaries = run_compress(config, Progress(quiet))
    if int(os.environ.get("RANK", "0")) == 0:
        for summary in summaries:
            typer.echo(summary.line())


def main(argv: Optional[list[str]] = None) -> int:
    """Console entry point: run the app, turning PenniError into a one-line message and exit code."""
    logging.basicConfig(level=os.environ.get("PENNI_LOG", "WARNING").upper(), format="%(levelname)s %(name)s: %(message)s")
    # torch 2.13 warns about its own internals while exporting and about TorchScript itself, which
    # users of TorchScript files can do nothing about here.
    warnings.filterwarnings("ignore", category=FutureWarning, message=r"`isinstance\(treespec, LeafSpec\)`")
    warnings.filterwarnings("ignore", category=DeprecationWarning, message=r"`torch\.jit\.")
    try:
        app(args=argv, standalone_mode=False)
    except PenniError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (typer.Exit, SystemExit) as exc:
        return getattr(exc, "exit_code", getattr(exc, "code", 0)) or 0
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except typer.TyperException as exc:  # usage errors: missing or malformed options
        if hasattr(exc, "show"):
            exc.show()
        return getattr(exc, "exit_code", 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
