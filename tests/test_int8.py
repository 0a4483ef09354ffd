"""``--precision int8`` end to end: calibration, the option checks, the manifest, an artifact that runs
in a fresh process with nothing compiled, and accuracy on the bundled trained ResNet20."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from tiny_models import TINY_SHAPE, run_in_fresh_process, save_pt2, tiny_model

from penni_deploy.artifact.runtime import _missing_cpu_features
from penni_deploy.calibration import calibrate, with_layer_inputs
from penni_deploy.cli import main
from penni_deploy.compiler import CompileOptions, compile_program
from penni_deploy.errors import InputSpecError, TargetError
from penni_deploy.frontend import export_program, to_relax
from penni_deploy.frontend.load_model import LoadedModel
from penni_deploy.machine import cpu_flags
from penni_deploy.passes import PipelineOptions, graph_passes, run_passes
from penni_deploy.targets import get_target

HAS_VNNI = "avx512_vnni" in (cpu_flags() or [])
needs_vnni = pytest.mark.skipif(not HAS_VNNI, reason="this CPU has no AVX512_VNNI")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR = os.path.join(REPO, "..", "shared", "data", "cifar10-jpeg")
BUNDLED = os.path.join(REPO, "examples", "resnet20-penni.pt")


@pytest.fixture(scope="module")
def tiny_pt2(tmp_path_factory):
    return save_pt2(tiny_model(), tmp_path_factory.mktemp("tiny-int8") / "tiny.pt2")


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    x = np.random.default_rng(1).standard_normal((10, *TINY_SHAPE[1:])).astype(np.float32)
    path = tmp_path_factory.mktemp("calib") / "calib.npy"
    np.save(path, x)
    return path, x


def _tiny_program():
    return export_program(LoadedModel(tiny_model(), "module", None, ""), TINY_SHAPE)


def _tiny_graph():
    program = _tiny_program()
    mod, _ = run_passes(to_relax(program), graph_passes("penni", PipelineOptions()))
    return program, mod


def test_int8_needs_vnni_and_x86():
    with pytest.raises(TargetError, match="AVX512_VNNI.*--mcpu"):
        get_target("x86", mcpu="haswell", precision="int8")
    with pytest.raises(TargetError, match="--precision .int8. applies to --target x86"):
        get_target("cuda", precision="int8")
    with pytest.raises(TargetError, match="--int8-layers applies to --precision int8"):
        get_target("x86", mcpu="znver4", int8_layers="all")
    # the layers an int8 build leaves in float32 use the fp32 tuning results
    fp32_key = get_target("x86", mcpu="znver4").tuning_key()
    assert get_target("x86", mcpu="znver4", precision="int8").tuning_key() == fp32_key


def test_tune_refuses_int8_with_the_way_to_tune(tmp_path, capsys):
    assert main(["tune", "model.pt", "--precision", "int8", "--db", str(tmp_path / "db")]) != 0
    assert "compile --precision int8 --tuning-db" in capsys.readouterr().err


def test_loader_refuses_int8_on_a_cpu_without_vnni():
    target = {"isa": "avx512", "precision": "int8"}
    assert _missing_cpu_features(target, flags=["avx512f", "avx512bw", "avx512vl"]) == ["avx512_vnni"]


def test_calibration_probe_returns_every_layer_input():
    program, mod = _tiny_graph()
    probe, names = with_layer_inputs(mod)
    assert len(names) == 3  # stem, the block's conv, the shortcut
    x = np.random.default_rng(2).standard_normal((5, *TINY_SHAPE[1:])).astype(np.float32)
    ranges = calibrate(mod, x)
    # the stem reads the model input itself; the two others read the stem's ReLU output
    stem = ranges[names[0]]
    assert (stem.low, stem.high) == (pytest.approx(float(x.min())), pytest.approx(float(x.max())))
    with torch.inference_mode():
        model = tiny_model()
        hidden = torch.relu(model.bn(model.stem(torch.from_numpy(x)))).numpy()
    for name in names[1:]:
        assert ranges[name].low == 0.0
        assert ranges[name].high == pytest.approx(float(hidden.max()), rel=1e-5)
    clipped = calibrate(mod, x, method="percentile", percentile=99.0)
    assert clipped[names[0]].high < stem.high and clipped[names[0]].low > stem.low


def test_int8_options_are_checked_before_compiling(tiny_pt2, calibration, tmp_path, capsys):
    """On any CPU: the option errors come before the target's feature check and any compiling."""
    out = tmp_path / "x.penni"
    cases = [
        (["--precision", "int8"], "needs --calibration"),
        (["--calibration", str(calibration[0])], "--calibration is for --precision int8"),
        (["--precision", "int8", "--calibration", str(tmp_path / "none.npy")], "no such file"),
        (["--precision", "int8", "--calibration", str(calibration[0]), "--calibration-method", "mse"],
         "--calibration-method must be one of"),
        (["--precision", "int8", "--calibration", str(calibration[0]), "--int8-layers", "most"],
         "--int8-layers must be one of"),
    ]
    for flags, message in cases:
        assert main(["compile", str(tiny_pt2), "-o", str(out), *flags]) != 0
        assert message in capsys.readouterr().err
        assert not out.exists()
    if not HAS_VNNI:
        return  # the rest compiles up to the calibration
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((4, 3, 8, 8), np.float32))
    assert main(["compile", str(tiny_pt2), "-o", str(out), "--precision", "int8", "--calibration", str(wrong)]) != 0
    assert "must be N×3×12×12" in capsys.readouterr().err and not out.exists()


@needs_vnni
@pytest.mark.parametrize("layers", ["auto", "all"])
def test_int8_build_is_close_to_pytorch(calibration, layers):
    program = _tiny_program()
    built = compile_program(program, TINY_SHAPE, CompileOptions(precision="int8", calibration=calibration[1],
                                                                int8_layers=layers))
    kernels = {k["kernel"].rstrip("0123456789") for k in built.kernels}
    if layers == "all":
        assert "penni_int8_conv" in kernels
    assert built.calibration["images"] == 10 and built.calibration["method"] == "minmax"
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    x = calibration[1][:2]
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    with torch.inference_mode():
        expected = tiny_model()(torch.from_numpy(x)).numpy()
    error = np.abs(got - expected).max() / np.abs(expected).max()
    assert error < 5e-2 and (layers == "auto" or error > 1e-6)


@needs_vnni
def test_int8_artifact_runs_in_a_fresh_process(tiny_pt2, calibration, tmp_path, capsys):
    artifact = tmp_path / "tiny-int8.penni"
    assert main(["compile", str(tiny_pt2), "-o", str(artifact), "--precision", "int8", "--calibration",
                 str(calibration[0]), "--int8-layers", "all", "--quiet"]) == 0
    assert main(["inspect", str(artifact), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["target"]["precision"] == "int8" and manifest["target"]["int8_layers"] == "all"
    assert manifest["calibration"]["images"] == 10
    assert main(["inspect", str(artifact)]) == 0
    assert "calibration  10 images, minmax" in capsys.readouterr().out
    assert main(["profile", str(artifact), "--repeat", "3", "--peak-size", "256", "--bandwidth-mb", "8"]) == 0
    report = capsys.readouterr().out
    assert "int8, TVM threads" in report and "int8 convs (vpdpbusd)" in report

    x = calibration[1][:2]
    got = run_in_fresh_process(artifact, x, tmp_path)  # the library must carry the int8 tile itself
    with torch.inference_mode():
        expected = tiny_model()(torch.from_numpy(x)).numpy()
    error = np.abs(got - expected).max() / np.abs(expected).max()
    assert 1e-6 < error < 5e-2


@needs_vnni
@pytest.mark.skipif(not os.path.isdir(CIFAR), reason="needs ../shared/data/cifar10-jpeg")
def test_trained_resnet20_keeps_its_accuracy_in_int8(tmp_path, capsys):
    """The accuracy smoke test: the bundled trained ResNet20, 256 calibration images, int8 vs fp32 top-1."""
    calib = tmp_path / "calib.npy"
    assert main(["calibration-set", CIFAR, "-o", str(calib), "--images", "256"]) == 0
    assert np.load(calib).shape == (256, 3, 32, 32)
    artifact = tmp_path / "r20-int8.penni"
    assert main(["compile", BUNDLED, "-o", str(artifact), "--precision", "int8", "--calibration", str(calib),
                 "--eval-data", CIFAR, "--eval-images", "1000", "--quiet", "--batch", "50"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    # "top-1 on ... (test split, 1000 images): fp32 66.80%   int8 66.70%   (-0.10 points; ...)"
    assert "1000 images" in line
    fp32 = float(line.split("fp32 ")[1].split("%")[0])
    int8 = float(line.split("int8 ")[1].split("%")[0])
    assert fp32 > 55 and abs(int8 - fp32) <= 1.5, line


def test_calibration_array_is_validated(tmp_path):
    from penni_deploy.calibration import load_calibration

    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((2, 3, 12, 12), np.nan, np.float32))
    with pytest.raises(InputSpecError, match="NaN"):
        load_calibration(str(bad), TINY_SHAPE)
    np.save(bad, np.zeros((2, 3, 12, 12), np.int64))
    with pytest.raises(InputSpecError, match="float32"):
        load_calibration(str(bad), TINY_SHAPE)
    if HAS_VNNI:  # an array passed in memory is checked alike (the build gets that far only with VNNI)
        in_memory = CompileOptions(precision="int8", calibration=np.zeros((2, 3, 8, 8), np.float32))
        with pytest.raises(InputSpecError, match="must be N×3×12×12"):
            compile_program(_tiny_program(), TINY_SHAPE, in_memory)
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(InputSpecError, match="cannot read"):
        load_calibration(str(tmp_path / "junk.npy"), TINY_SHAPE)


def _penni_plan(cin, cout, size, density, seed=0, d=5):
    from penni_deploy.plan import PENNI_COMPOSITE, ConvChain, ConvGeometry, Epilogue, plan_penni_layer
    from penni_deploy.plan.quantize import ActivationRange

    rng = np.random.default_rng(seed)
    basis = np.tile(rng.standard_normal((d, 3, 3)).astype(np.float32), (cin, 1, 1)).reshape(cin * d, 1, 3, 3)
    coefs = rng.standard_normal((cout, cin * d)).astype(np.float32) * (rng.random((cout, cin * d)) < density)
    g = ConvGeometry(1, cin, size, size, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1))
    chain = ConvChain(PENNI_COMPOSITE, g, (1, cout, size, size), coefs, basis, None, Epilogue(), 0, None,
                      ActivationRange(0.0, 4.0))
    return plan_penni_layer(chain)


def test_auto_keeps_sparse_penni_layers_in_fp32():
    """What the measurements behind the cost model showed: the bundled ResNet20's 16-channel 32×32
    layers (24% dense) win as int8 convs; ResNet18's 3%-dense layers stay two-stage float32."""
    from penni_deploy.kernels.cpu import CpuKernels

    auto = CpuKernels(lanes=16, threads=2, precision="int8")
    assert auto.int8_penni(_penni_plan(16, 16, 32, 0.24)) is not None
    assert auto.int8_penni(_penni_plan(64, 64, 32, 0.03)) is None
    assert auto.int8_penni(_penni_plan(512, 512, 4, 0.03)) is None
    forced = CpuKernels(lanes=16, threads=2, precision="int8", int8_layers="all")
    assert forced.int8_penni(_penni_plan(512, 512, 4, 0.03)) is not None
    assert CpuKernels(lanes=16, threads=2).int8_penni(_penni_plan(16, 16, 32, 0.24)) is None  # fp32 build
