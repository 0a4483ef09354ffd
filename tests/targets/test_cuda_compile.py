"""CUDA builds on a machine without a GPU: real fatbinaries for every supported architecture,
clear refusals for unsupported ones, and the GPU kernels' arithmetic checked on the CPU."""

import json
import shutil
import zipfile

import numpy as np
import pytest
import torch
import tvm
from model_helpers import random_penni_model, relative_error
from tiny_models import TINY_SHAPE, save_pt2, tiny_model
from tvm.runtime.vm import VirtualMachine

import penni_deploy
from penni_deploy.artifact.fatbin import embedded_architectures, find_fatbins
from penni_deploy.artifact.runtime import gpu_code_runs_on
from penni_deploy.cli import main
from penni_deploy.compiler import CompileOptions
from penni_deploy.errors import ArtifactError, TargetError
from penni_deploy.frontend import export_program, to_relax
from penni_deploy.frontend.load_model import LoadedModel
from penni_deploy.kernels.gpu import GpuKernels
from penni_deploy.passes import graph_passes, run_passes
from penni_deploy.passes.layer_report import describe_conv_layers
from penni_deploy.targets import get_target
from penni_deploy.targets.cuda.arch import DEFAULT_SASS
from penni_deploy.targets.x86 import X86Target

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="CUDA builds need nvcc (CUDA 13)")


@pytest.fixture(scope="module")
def tiny_pt2(tmp_path_factory):
    return save_pt2(tiny_model(), tmp_path_factory.mktemp("cuda") / "tiny.pt2")


def library_of(artifact):
    return zipfile.ZipFile(artifact).read("model.so")


@pytest.fixture(scope="module")
def default_cuda_artifact(tiny_pt2):
    out = tiny_pt2.with_name("all.penni")
    penni_deploy.compile_model(str(tiny_pt2), str(out), options=CompileOptions(target="cuda"))
    return out


def test_default_build_embeds_sm75_to_sm90_and_ptx(default_cuda_artifact):
    expected = list(DEFAULT_SASS) + ["compute_90"]
    assert embedded_architectures(library_of(default_cuda_artifact)) == expected
    manifest = json.loads(zipfile.ZipFile(default_cuda_artifact).read("manifest.json"))
    assert manifest["library"]["gpu_code"] == expected
    assert manifest["target"]["sass"] == list(DEFAULT_SASS) and manifest["target"]["device"] == "cuda"
    # One fatbinary, with a SASS entry per architecture and one PTX entry.
    (entries,) = find_fatbins(library_of(default_cuda_artifact))
    assert sorted(e.kind for e in entries) == ["ptx"] + ["sass"] * len(DEFAULT_SASS)


@pytest.mark.parametrize("arch", DEFAULT_SASS)
def test_single_architecture_build(arch, tiny_pt2, tmp_path):
    out = tmp_path / f"{arch}.penni"
    penni_deploy.compile_model(str(tiny_pt2), str(out), options=CompileOptions(target="cuda", gpu_arch=arch))
    assert embedded_architectures(library_of(out)) == [arch, "compute_" + arch[3:]]


@pytest.mark.parametrize("tag, sass", [("nvidia/nvidia-a100", "sm_80"), ("nvidia/nvidia-t4", "sm_75")])
def test_tvm_tags_name_the_architecture(tag, sass):
    assert get_target("cuda", arch=tag).sass == (sass,)


@pytest.mark.parametrize("arch", ["sm_61", "nvidia/nvidia-titan-x", "sm_70"])
def test_architectures_cuda13_cannot_build_are_refused(arch):
    with pytest.raises(TargetError, match="CUDA 13's nvcc supports compute capability 7.5"):
        get_target("cuda", arch=arch)


def test_cuda_artifact_needs_a_gpu_to_run(default_cuda_artifact):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ArtifactError, match="no CUDA device is available"):
        penni_deploy.load(default_cuda_artifact)


def test_cli_cuda_errors(default_cuda_artifact, tiny_pt2, tmp_path, capsys):
    assert main(["compile", str(tiny_pt2), "--target", "x86", "--arch", "sm_80", "-o", str(tmp_path / "a.penni")]) != 0
    assert "applies to --target cuda" in capsys.readouterr().err
    assert main(["compile", str(tiny_pt2), "--target", "cuda", "--arch", "sm_61", "-o", str(tmp_path / "b.penni")]) != 0
    assert "sm_61" in capsys.readouterr().err and not (tmp_path / "b.penni").exists()
    np.save(tmp_path / "x.npy", np.zeros(TINY_SHAPE, np.float32))
    assert main(["run", str(default_cuda_artifact), "-i", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy"),
                 "--device", "cpu"]) != 0
    assert "compiled for target cuda" in capsys.readouterr().err


def test_build_without_device_code_is_caught():
    from tvm import relax

    x86_build = get_target("x86").build  # any executable without a CUDA module
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 2), "float32"))
    with bb.function("main", [x]):
        bb.emit_func_output(bb.emit(relax.op.add(x, x)))
    with pytest.raises(TargetError, match="no CUDA module"):
        get_target("cuda").check_build(x86_build(bb.get()))


@pytest.mark.parametrize("code, capability, ok", [
    (["sm_80"], 80, True), (["sm_80"], 86, True), (["sm_86"], 80, False), (["sm_80"], 90, False),
    (["sm_75", "compute_90"], 100, True), (["compute_90"], 89, False),
])
def test_which_gpus_embedded_code_runs_on(code, capability, ok):
    assert gpu_code_runs_on(code, capability) is ok


class _X86WithGpuKernelMath(X86Target):
    """The x86 build, but with the GPU kernels' arithmetic (emitted as loops)."""

    @property
    def kernels(self):
        return GpuKernels(on_gpu=False)


@pytest.mark.parametrize("density", [0.03, 1.0], ids=["3pct", "dense"])
def test_gpu_kernels_compute_the_network(density):
    """A whole ResNet56 lowered with the GPU kernels (as loops) equals PyTorch."""
    model = random_penni_model("resnet56", density, seed=2)
    shape = (2, 3, 32, 32)
    mod, _ = run_passes(to_relax(export_program(LoadedModel(model, "module", None, ""), shape)), graph_passes("penni"))
    assert sum(layer["kind"] == "penni" for layer in describe_conv_layers(mod)) == 55
    vm = VirtualMachine(_X86WithGpuKernelMath().build(mod), tvm.cpu())
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    assert relative_error(vm["main"](tvm.runtime.tensor(x)).numpy(), expected) <= 1e-4
