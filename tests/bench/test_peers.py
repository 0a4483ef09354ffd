"""bench --peers: the ONNX export, magnitude pruning, the peer workers, missing engines, the roofline, and
the table and plot. Tiny model, 3 timed runs; timings are never asserted, only that they were taken."""

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import relative_error
from tiny_models import TINY_SHAPE, tiny_model

from penni_deploy.bench import BenchOptions, format_bench_table
from penni_deploy.bench.launch import run_worker, worker_spec
from penni_deploy.bench.peer_runs import measure_peers
from penni_deploy.bench.peers import (
    DEEPSPARSE_PYTHON_ENV,
    PEER_ENGINES,
    SavedNetwork,
    deepsparse_python,
    export_onnx,
    magnitude_pruned_model,
    peer_networks,
    select_engines,
)
from penni_deploy.bench.plot import bench_figure, plot_bench
from penni_deploy.bench.roofline import with_roofline
from penni_deploy.errors import PenniError
from penni_deploy.models import PenniConv2d

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = BenchOptions(threads=1, warmup=1, warmup_seconds=0, repeat=3, min_repeat=3, min_seconds=0, max_seconds=5)


@pytest.fixture(scope="module")
def networks():
    return peer_networks(tiny_model())[0]


def _measure(networks, workdir, *names):
    rows = measure_peers(networks, TINY_SHAPE, FAST, str(workdir), engines=select_engines(names))
    assert [r["engine"] for r in rows] == list(names)
    return {r["engine"]: r for r in rows}


def _assert_measured(row):
    assert "error" not in row, row["error"]
    assert row["runs"] == 3 and 0 < row["median_ms"] <= row["p90_ms"]
    assert row["model_mb"] > 0 and row["inference_mb"] >= 0


# --- ONNX export ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["dense", "two-stage", "pruned"])
def test_onnx_export_is_one_opset13_file_that_matches_torch(networks, form, tmp_path):
    import onnx
    import onnxruntime

    path = export_onnx(networks[form], TINY_SHAPE, str(tmp_path / "m.onnx"))
    assert os.listdir(tmp_path) == ["m.onnx"]  # weights inside, no side file
    graph = onnx.load(path)
    assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [13]
    grouped = [n for n in graph.graph.node if n.op_type == "Conv"
               and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert bool(grouped) == (form == "two-stage")  # the basis conv is a grouped conv; the others are dense

    x = np.random.default_rng(0).standard_normal(TINY_SHAPE).astype(np.float32)
    got = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.inference_mode():
        expected = networks[form](torch.from_numpy(x)).numpy()
    assert relative_error(got, expected) < 1e-5


# --- magnitude pruning ----------------------------------------------------------------------------------


def _with_density(density, seed=0):
    model = tiny_model()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, PenniConv2d):
                m.coefs.normal_(generator=gen).mul_((torch.rand(m.coefs.shape, generator=gen) < density).float())
    return model


@pytest.mark.parametrize("density", [0.03, 0.3, 1.0], ids=["3%", "30%", "dense"])
def test_magnitude_pruning_zeros_each_layers_coefficient_sparsity(density):
    from penni_deploy.models.dense_copy import to_dense_model

    model = _with_density(density)
    coefs_before = {n: m.coefs.clone() for n, m in model.named_modules() if isinstance(m, PenniConv2d)}
    pruned, achieved = magnitude_pruned_model(model)
    dense = to_dense_model(model)

    assert set(achieved) == {"stem", "conv"}
    for name, layer in model.named_modules():
        if not isinstance(layer, PenniConv2d):
            continue
        w, w_pruned = dense.get_submodule(name).weight, pruned.get_submodule(name).weight
        k = round((1 - layer.coefficient_density()) * w.numel())
        zero = w_pruned == 0
        assert int(zero.sum()) == k and achieved[name] == pytest.approx(k / w.numel())
        if 0 < k < w.numel():  # what stays is never smaller than what went
            assert w[~zero].abs().min() >= w[zero].abs().max()
        assert torch.equal(w_pruned[~zero], w[~zero])
        assert torch.equal(layer.coefs, coefs_before[name])  # the PENNI model is left alone
    assert torch.equal(pruned.shortcut.weight, model.shortcut.weight)  # 1x1 and Linear layers are kept
    assert torch.equal(pruned.fc.weight, model.fc.weight)


def test_a_model_without_penni_layers_has_only_a_dense_form():
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    networks, sparsity = peer_networks(plain)
    assert networks["dense"] is plain and sparsity == {}
    assert "no PENNI layers" in networks["two-stage"] and "no PENNI layers" in networks["pruned"]
    assert "TorchScript or .pt2" in networks["as-saved"]


def _saved(fmt):
    example = torch.zeros(TINY_SHAPE)
    if fmt == "torchscript":
        return torch.jit.trace(tiny_model(), example)
    return torch.export.export(tiny_model(), (example,))


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_a_saved_file_is_one_network_as_saved(fmt, tmp_path):
    networks, sparsity = peer_networks(_saved(fmt), TINY_SHAPE)
    assert sparsity == {}
    for form in ("dense", "two-stage", "pruned"):  # no PENNI layers to rebuild them from: say what to give
        assert "state_dict" in networks[form] and "as-saved rows" in networks[form]
    network = networks["as-saved"]
    assert isinstance(network, SavedNetwork) and isinstance(network.program, torch.export.ExportedProgram)

    x = np.random.default_rng(0).standard_normal(TINY_SHAPE).astype(np.float32)
    with torch.inference_mode():
        expected = tiny_model()(torch.from_numpy(x)).numpy()
        assert relative_error(network(torch.from_numpy(x)).numpy(), expected) < 1e-6
        assert relative_error(network.program.module()(torch.from_numpy(x)).numpy(), expected) < 1e-5  # torch.compile's

    import onnx
    import onnxruntime

    path = export_onnx(network, TINY_SHAPE, str(tmp_path / "m.onnx"))
    assert os.listdir(tmp_path) == ["m.onnx"]
    assert [o.version for o in onnx.load(path).opset_import if o.domain in ("", "ai.onnx")] == [13]
    got = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert relative_error(got, expected) < 1e-5


def test_a_pt2_file_at_another_batch_size_fails_as_compile_does():
    from penni_deploy.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match=r"input \(1, 3, 12, 12\).*bench it with --batch 2"):
        peer_networks(_saved("pt2"), (1, *TINY_SHAPE[1:]))


def test_the_default_engines_are_those_with_a_network_for_the_format():
    module_engines = [e.name for e in select_engines(None)]
    assert module_engines == [e.name for e in PEER_ENGINES if not e.name.endswith("-as-saved") and "int8" not in e.name]
    assert [e.name for e in select_engines(None, saved=True)] == [
        "torch-compile-as-saved", "onnxruntime-as-saved", "openvino-f32-as-saved", "openvino-bf16-as-saved",
        "deepsparse-as-saved", "deepsparse-pruned"]  # the last one a row saying why there is no pruned network
    # an int8 bench adds onnxruntime quantized with its calibration array
    assert [e.name for e in select_engines(None, saved=True, int8=True)] == [
        "torch-compile-as-saved", "onnxruntime-as-saved", "onnxruntime-int8-as-saved", "openvino-f32-as-saved",
        "openvino-bf16-as-saved", "deepsparse-as-saved", "deepsparse-pruned"]


# --- the engines ----------------------------------------------------------------------------------------


def test_onnxruntime_int8_quantizes_with_the_calibration_array(networks, tmp_path):
    names = ("onnxruntime-int8-dense", "onnxruntime-int8-two-stage")
    calibration = np.random.default_rng(3).standard_normal((6, *TINY_SHAPE[1:])).astype(np.float32)
    rows = {r["engine"]: r for r in measure_peers(networks, TINY_SHAPE, FAST, str(tmp_path),
                                                  engines=select_engines(names), calibration=calibration)}
    for name in names:
        _assert_measured(rows[name])
        assert rows[name]["precision"] == "int8"
        assert 1e-5 < rows[name]["max_rel_error"] < 0.1  # really quantized, and still close
    assert os.path.exists(tmp_path / f"peer-two-stage-b{TINY_SHAPE[0]}-int8.onnx")
    # without a calibration array the row says where it comes from
    (row,) = measure_peers(networks, TINY_SHAPE, FAST, str(tmp_path), engines=select_engines(names[:1]))
    assert "--calibration" in row["error"]


def test_onnx_engines_measure_and_check_their_output(networks, tmp_path):
    rows = _measure(networks, tmp_path, "onnxruntime-dense", "onnxruntime-two-stage", "openvino-f32-dense",
                    "openvino-bf16-two-stage")
    for row in rows.values():
        _assert_measured(row)
    for name in ("onnxruntime-dense", "onnxruntime-two-stage", "openvino-f32-dense"):
        assert rows[name]["precision"] == "fp32" and rows[name]["max_rel_error"] < 1e-5
    bf16 = rows["openvino-bf16-two-stage"]
    assert bf16["precision"] in ("bf16", "fp32")  # what OpenVINO ran: fp32 on CPUs without bf16
    if bf16["precision"] == "bf16":
        assert 1e-5 < bf16["max_rel_error"] < 0.05  # really rounded to bf16, and still close
    else:
        assert bf16["max_rel_error"] < 1e-5


def test_torch_compile_runs_the_two_stage_network(networks, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", TESTS_DIR)  # the worker unpickles the tests' TinyPenniNet
    row = _measure(networks, tmp_path, "torch-compile-two-stage")["torch-compile-two-stage"]
    _assert_measured(row)
    assert row["max_rel_error"] < 1e-5


@pytest.mark.skipif(not os.access(deepsparse_python(), os.X_OK),
                    reason="no DeepSparse venv: bash scripts/setup_deepsparse.sh")
def test_deepsparse_runs_the_pruned_network_in_its_own_venv(networks, tmp_path):
    row = _measure(networks, tmp_path, "deepsparse-pruned")["deepsparse-pruned"]
    _assert_measured(row)
    assert row["max_rel_error"] < 1e-5  # against the pruned PyTorch network


# --- missing engines are rows with the fix --------------------------------------------------------------


def test_a_missing_deepsparse_venv_is_an_error_row(networks, tmp_path, monkeypatch):
    monkeypatch.setenv(DEEPSPARSE_PYTHON_ENV, str(tmp_path / "no-venv" / "bin" / "python"))
    row = _measure(networks, tmp_path, "deepsparse-pruned")["deepsparse-pruned"]
    assert "median_ms" not in row
    assert "no-venv" in row["error"] and "scripts/setup_deepsparse.sh" in row["error"]


def test_a_missing_package_is_an_error_row_and_the_others_still_run(networks, tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else find_spec(name, *a))
    rows = _measure(networks, tmp_path, "onnxruntime-dense", "openvino-f32-dense")
    assert rows["openvino-f32-dense"]["error"] == "openvino is not installed: pip install 'penni-deploy[peers]'"
    _assert_measured(rows["onnxruntime-dense"])


def test_the_worker_names_a_package_it_cannot_import(tmp_path):
    if importlib.util.find_spec("deepsparse") is not None:
        pytest.skip("deepsparse is importable in this venv")
    spec = worker_spec(FAST, "deepsparse", str(tmp_path / "m.onnx"), TINY_SHAPE, "cpu")
    error = run_worker(spec)["error"]
    assert error.startswith("deepsparse cannot be imported") and "setup_deepsparse.sh" in error


def test_unknown_peer_names_list_the_known_ones():
    with pytest.raises(PenniError, match="unknown peer engine.*tensorrt.*choose from.*onnxruntime-dense"):
        select_engines(("onnxruntime-dense", "tensorrt"))


# --- roofline -------------------------------------------------------------------------------------------


def test_matmul_peak_worker_measures_a_positive_rate():
    peak = run_worker({"engine_kind": "matmul-peak", "threads": 1, "n": 128, "repeat": 3})
    assert peak["n"] == 128 and peak["gmacs"] > 0
    assert peak["peak_gflops"] == pytest.approx(2 * peak["gmacs"])
    assert peak["best_ms"] == pytest.approx(128**3 / (peak["gmacs"] * 1e9) * 1e3)


def test_roofline_is_compiled_macs_over_the_measured_rate():
    report = {"conv_macs_compiled": 2_000_000, "results": [{"engine": "a", "batch": 4, "median_ms": 1.0},
                                                           {"engine": "b", "batch": 4, "error": "missing"}]}
    out = with_roofline(report, {"gmacs": 100.0})
    assert out["roofline_ms"] == {4: pytest.approx(0.08)}  # 2e6 MACs x 4 / 1e11 MAC/s = 80 µs
    assert out["results"][0]["roofline_ratio"] == pytest.approx(12.5)
    assert "roofline_ratio" not in out["results"][1]
    failed = with_roofline(report, {"error": "worker failed"})
    assert "roofline_ms" not in failed and failed["peak"] == {"error": "worker failed"}


# --- table and plot -------------------------------------------------------------------------------------

ALL_ENGINES = ["torch-dense", "torch-two-stage", "penni-deploy", "tvm-dense", *(e.name for e in PEER_ENGINES)]
MISSING = "DeepSparse's Python /x/python is missing: run bash scripts/setup_deepsparse.sh"


def _report_with_every_engine():
    results = []
    for batch in (1, 8):
        for i, name in enumerate(ALL_ENGINES):
            row = {"engine": name, "batch": batch, "precision": "bf16" if "bf16" in name else "fp32"}
            if name == "deepsparse-pruned":
                row["error"] = MISSING
            else:
                median = 0.1 * (i + 1) ** 2 * batch  # spans more than 20x: log axis
                row.update(median_ms=median, p90_ms=1.1 * median, model_mb=1.0, inference_mb=2.0, max_rel_error=1e-7)
            results.append(row)
    report = {"model": "tiny.pt", "format": "state_dict", "threads": 2, "device": "cpu", "target": {"mcpu": "znver4"},
              "conv_macs_dense": 10**8, "conv_macs_compiled": 10**7, "parity_max_rel_error": {1: 1e-7, 8: 2e-7},
              "results": results}
    return with_roofline(report, {"n": 256, "best_ms": 1.0, "gmacs": 50.0, "peak_gflops": 100.0})


def test_the_table_shows_every_engine_with_its_roofline_ratio_or_error():
    lines = format_bench_table(_report_with_every_engine()).splitlines()
    assert "100.0 GFLOP/s = 50.0 GMAC/s" in lines[1] and "batch 1: 0.200 ms" in lines[1]
    for batch in (1, 8):
        for name in ALL_ENGINES:
            [line] = [ln for ln in lines if ln.split()[:1] == [name] and ln.split()[2] == str(batch)]
            if name == "deepsparse-pruned":
                assert MISSING in line
            else:
                assert line.split()[1] == ("bf16" if "bf16" in name else "fp32")
    [penni] = [ln for ln in lines if ln.startswith("penni-deploy") and ln.split()[2] == "1"]
    assert penni.split()[6] == "4.5"  # 0.9 ms over the 0.2 ms roofline


def test_the_table_flags_rows_whose_threads_waited_for_a_core():
    report = _report_with_every_engine()
    assert "busy machine" not in format_bench_table(report)
    for row in report["results"]:
        if "median_ms" in row:
            row["cpu_wait"] = 0.01  # an idle machine's scheduling noise
    report["results"][2]["cpu_wait"] = 0.3
    [line] = [ln for ln in format_bench_table(report).splitlines() if ln.startswith("busy machine")]
    assert "(penni-deploy b1 30%)" in line and "medians are inflated" in line


def test_the_table_flags_rows_during_which_the_machine_changed_speed():
    report = _report_with_every_engine()
    assert "changed speed" not in format_bench_table(report)
    rows = {(r["engine"], r["batch"]): r for r in report["results"]}
    rows[("penni-deploy", 1)]["chunk_medians_ms"] = [0.7, 0.7, 1.6, 1.6, 0.8]
    rows[("torch-dense", 8)]["chunk_medians_ms"] = [10.0, 11.0, 12.0]  # within DRIFT
    [line] = [ln for ln in format_bench_table(report).splitlines() if "changed speed" in ln]
    assert "penni-deploy b1 2.3×" in line and "torch-dense" not in line


def test_the_plot_has_a_line_for_every_engine(tmp_path):
    import matplotlib.pyplot as plt

    fig = bench_figure(_report_with_every_engine())
    try:
        assert len(fig.axes) == 2
        for ax in fig.axes:
            assert [t.get_text() for t in ax.get_yticklabels()] == ALL_ENGINES
            assert ax.get_xscale() == "log"
            notes = [t.get_text() for t in ax.texts]
            assert "not run (see report)" in notes and any(n.startswith("roofline") for n in notes)
    finally:
        plt.close(fig)
    png = plot_bench(_report_with_every_engine(), str(tmp_path / "bench.png"))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the driver -----------------------------------------------------------------------------------------


def test_peers_refuse_a_gpu_bench(tmp_path):
    from penni_deploy.bench import run_bench

    options = BenchOptions(device="cuda", peers=True)
    with pytest.raises(PenniError, match="--peers compares CPU engines"):
        run_bench(str(tmp_path / "never-read.pt"), options=options)
