"""``--precision bf16`` end to end: the target refuses CPUs without AVX512_BF16, the artifact records
its precision, carries its micro-kernel (a fresh process runs it with nothing compiled), and the
loader refuses it on a CPU without the feature."""

import json

import numpy as np
import pytest
import torch
from tiny_models import TINY_SHAPE, run_in_fresh_process, save_pt2, tiny_model

from penni_deploy.artifact.runtime import _missing_cpu_features
from penni_deploy.machine import cpu_flags
from penni_deploy.cli import main
from penni_deploy.errors import TargetError
from penni_deploy.targets import get_target

HAS_BF16 = "avx512_bf16" in (cpu_flags() or [])


@pytest.fixture(scope="module")
def tiny_pt2(tmp_path_factory):
    return save_pt2(tiny_model(), tmp_path_factory.mktemp("tiny-bf16") / "tiny.pt2")


def test_bf16_needs_avx512_bf16():
    with pytest.raises(TargetError, match="AVX512_BF16.*skylake-avx512"):
        get_target("x86", mcpu="skylake-avx512", precision="bf16")
    with pytest.raises(TargetError, match="AVX512_BF16"):
        get_target("x86", mcpu="haswell", precision="bf16")


def test_precision_is_checked_per_target():
    with pytest.raises(TargetError, match="unknown --precision 'fp16'"):
        get_target("x86", precision="fp16")
    with pytest.raises(TargetError, match="--precision .bf16. applies to --target x86"):
        get_target("cuda", precision="bf16")
    assert get_target("cuda", precision="fp32").name == "cuda"  # the default is every target's


def test_tuning_results_are_kept_apart_per_precision():
    fp32 = get_target("x86", mcpu="znver4").tuning_key()
    assert get_target("x86", mcpu="znver4", precision="bf16").tuning_key() == fp32 + "-bf16"


def test_loader_refuses_bf16_on_a_cpu_without_it():
    target = {"isa": "avx512", "precision": "bf16", "mcpu": "znver4"}
    assert _missing_cpu_features(target, flags=["avx512f", "avx2", "fma"]) == ["avx512_bf16"]
    assert _missing_cpu_features(target, flags=["avx512f", "avx512_bf16"]) == []
    assert _missing_cpu_features({"isa": "avx512", "precision": "fp32"}, flags=["avx512f"]) == []


def test_cross_build_for_a_bf16_cpu(tiny_pt2, tmp_path, capsys):
    out = tmp_path / "cooperlake.penni"
    assert main(["compile", str(tiny_pt2), "-o", str(out), "--mcpu", "cooperlake", "--precision", "bf16",
                 "--quiet"]) == 0
    assert main(["inspect", str(out), "--json"]) == 0
    target = json.loads(capsys.readouterr().out)["target"]
    assert (target["mcpu"], target["precision"]) == ("cooperlake", "bf16")


def test_compile_refuses_bf16_for_a_cpu_without_it_before_loading(tmp_path, capsys):
    out = tmp_path / "x.penni"
    assert main(["compile", str(tmp_path / "missing.pt2"), "-o", str(out), "--mcpu", "haswell",
                 "--precision", "bf16"]) != 0
    err = capsys.readouterr().err
    assert "AVX512_BF16" in err and "no such model file" not in err and not out.exists()


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no AVX512_BF16")
def test_bf16_artifact_runs_in_a_fresh_process(tiny_pt2, tmp_path, capsys):
    artifact = tmp_path / "tiny-bf16.penni"
    assert main(["compile", str(tiny_pt2), "-o", str(artifact), "--precision", "bf16", "--quiet"]) == 0
    assert main(["inspect", str(artifact)]) == 0
    assert "precision    bf16" in capsys.readouterr().out

    x = np.random.default_rng(0).standard_normal(TINY_SHAPE).astype(np.float32)
    got = run_in_fresh_process(artifact, x, tmp_path)  # the library must carry the micro-kernel itself
    with torch.inference_mode():
        expected = torch.export.load(str(tiny_pt2)).module()(torch.from_numpy(x)).numpy()
    error = np.abs(got - expected).max() / np.abs(expected).max()
    assert 1e-6 < error < 2e-2  # rounded (not fp32-exact), yet close


def test_fp32_layers_options_are_checked_before_loading(tmp_path, capsys):
    missing = str(tmp_path / "missing.pt2")
    for args, words in [(["--fp32-layers", "0-2"], "is for --precision bf16"),
                        (["--precision", "bf16", "--mcpu", "cooperlake", "--fp32-layers", "3-1"], "ascending"),
                        (["--precision", "bf16", "--mcpu", "cooperlake", "--fp32-layers", "first"], "not a layer number"),
                        (["--precision", "bf16", "--mcpu", "cooperlake", "--fp32-layers", ""], "not a layer number")]:
        assert main(["compile", missing, "-o", str(tmp_path / "x.penni"), *args]) != 0
        err = capsys.readouterr().err
        assert words in err and "no such model file" not in err


def test_parse_layer_numbers():
    from penni_deploy.passes.layer_precision import parse_layer_numbers

    assert parse_layer_numbers("0-3, 7,2") == (0, 1, 2, 3, 7)
    assert parse_layer_numbers("5") == (5,)


def _layers_of(artifact, capsys):
    assert main(["inspect", str(artifact), "--json"]) == 0
    return json.loads(capsys.readouterr().out)["layers"]


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no AVX512_BF16")
def test_fp32_layers_keep_those_layers_out_of_bf16(tiny_pt2, tmp_path, capsys):
    import penni_deploy

    x = np.random.default_rng(1).standard_normal(TINY_SHAPE).astype(np.float32)
    # What the build computes with every conv kept in float32: only the Linear classifier in bf16
    # (--fp32-layers names conv layers), its input and weights rounded, sums in float32.
    model = tiny_model()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.inference_mode():
        for m in linears:
            m.weight.copy_(m.weight.bfloat16().float())
            m.register_forward_pre_hook(lambda _m, inp: (inp[0].bfloat16().float(),))
        expected = model(torch.from_numpy(x)).numpy()

    def build(name, *args):
        path = tmp_path / name
        assert main(["compile", str(tiny_pt2), "-o", str(path), "--quiet", *args]) == 0
        error = np.abs(penni_deploy.load(str(path))(x) - expected).max() / np.abs(expected).max()
        return path, error

    bf16_path, bf16_error = build("bf16.penni", "--precision", "bf16")
    layers = _layers_of(bf16_path, capsys)
    last = len(layers) - 1
    dense = [layer["index"] for layer in layers if layer["kind"] == "dense"]
    assert dense and all("precision" not in layer for layer in layers)

    kept, kept_error = build("kept.penni", "--precision", "bf16", "--fp32-layers", f"0-{last}")
    assert kept_error < 1e-5 < bf16_error  # every conv in float32, and only they
    marked = _layers_of(kept, capsys)
    assert all(layer["precision"] == "fp32" and layer["kernels"].endswith("[fp32]") for layer in marked)

    one, _ = build("one.penni", "--precision", "bf16", "--fp32-layers", str(dense[0]))
    assert [layer["index"] for layer in _layers_of(one, capsys) if "precision" in layer] == [dense[0]]

    assert main(["compile", str(tiny_pt2), "-o", str(tmp_path / "x.penni"), "--precision", "bf16",
                 "--fp32-layers", str(last + 1)]) != 0
    assert f"has {last + 1} conv layers" in capsys.readouterr().err and not (tmp_path / "x.penni").exists()
