"""``bench`` measures every engine in one run and reports parity; timings are not asserted here."""

import json
from functools import partial
from pathlib import Path

import pytest
import torch
from model_helpers import random_penni_model
from tiny_models import TINY_SHAPE, save_pt2, tiny_model

from penni_deploy.machine import cpu_flags
from penni_deploy.bench import BenchOptions, format_bench_table, run_bench
from penni_deploy.bench.peers import DEEPSPARSE_PYTHON_ENV
from penni_deploy.bench.plot import plot_bench
from penni_deploy.cli import main
from penni_deploy.errors import PenniError
from penni_deploy.frontend.load_model import INPUT_SHAPE_EXTRA


def test_bench_reports_every_engine(tmp_path, monkeypatch):
    path = tmp_path / "resnet56.pt"
    torch.save(random_penni_model("resnet56", 0.03).state_dict(), path)
    # One ONNX peer that runs and one that cannot (tests/bench covers each peer on a tiny model).
    monkeypatch.setenv(DEEPSPARSE_PYTHON_ENV, str(tmp_path / "no-venv" / "python"))
    options = BenchOptions(batches=(1,), threads=1, warmup=1, warmup_seconds=0, repeat=3, min_repeat=3, min_seconds=0,
                           max_seconds=5, peers=True, peer_engines=("onnxruntime-two-stage", "deepsparse-pruned"),
                           matmul_n=256)
    report = run_bench(str(path), arch="resnet56", options=options)

    engines = {r["engine"]: r for r in report["results"]}
    measured = {"torch-dense", "torch-two-stage", "tvm-dense", "penni-deploy", "onnxruntime-two-stage"}
    assert set(engines) == measured | {"deepsparse-pruned"}
    for name in measured:
        result = engines[name]
        assert result["runs"] == 3 and 0 < result["median_ms"] <= result["p90_ms"]
        assert result["chunk_medians_ms"] == [result["median_ms"]]  # 3 runs: one chunk
        assert result["inference_mb"] >= 0 and result["model_mb"] > 0
        assert result["max_rel_error"] <= 1e-4 and result["precision"] == "fp32"
        assert result["roofline_ratio"] == result["median_ms"] / report["roofline_ms"][1]
    assert "setup_deepsparse.sh" in engines["deepsparse-pruned"]["error"]
    assert report["parity_max_rel_error"][1] <= 1e-4
    assert report["conv_macs_compiled"] < report["conv_macs_dense"] / 5
    assert report["peak"]["gmacs"] > 0 and report["roofline_ms"][1] > 0
    assert 0.96 < min(report["pruned_conv_sparsity"].values()) <= max(report["pruned_conv_sparsity"].values()) < 1
    table = format_bench_table(report)
    assert "penni-deploy" in table and "speedup" in table and "GFLOP/s" in table
    png = plot_bench(report, str(tmp_path / "bench.png"))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the bench command, in-process through main, on the saved formats -------------------------------------

AS_SAVED_PEERS = ("torch-compile-as-saved", "onnxruntime-as-saved", "openvino-f32-as-saved", "openvino-bf16-as-saved")


@pytest.fixture(scope="module")
def saved_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    torchscript = folder / "tiny-ts.pt"
    torch.jit.save(torch.jit.trace(tiny_model(), torch.zeros(TINY_SHAPE)), str(torchscript),
                   _extra_files={INPUT_SHAPE_EXTRA: json.dumps(list(TINY_SHAPE))})
    return {"torchscript": torchscript, "pt2": save_pt2(tiny_model(), folder / "tiny.pt2")}


@pytest.fixture
def quick_bench_options(monkeypatch):
    """The options the CLI builds, with a small roofline matmul and no warm-up time (CI time)."""
    import penni_deploy.bench

    monkeypatch.setattr(penni_deploy.bench, "BenchOptions", partial(BenchOptions, matmul_n=256, warmup_seconds=0))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_bench_peers_runs_every_peer_on_a_saved_file_as_saved(fmt, saved_files, quick_bench_options, tmp_path,
                                                                monkeypatch, capsys):
    monkeypatch.setenv(DEEPSPARSE_PYTHON_ENV, str(tmp_path / "no-venv" / "python"))
    report_file, png = tmp_path / "bench.json", tmp_path / "bench.png"
    assert main(["bench", str(saved_files[fmt]), "--batch", "2", "--threads", "1", "--repeat", "3", "--seconds", "0",
                 "--peers", "--json", str(report_file), "--plot", str(png)]) == 0

    report = json.loads(report_file.read_text())
    assert report["format"] == fmt
    rows = {r["engine"]: r for r in report["results"]}
    assert list(rows) == ["torch-as-saved", "torch-dense", "torch-two-stage", "penni-deploy", "tvm-dense",
                          *AS_SAVED_PEERS, "deepsparse-as-saved", "deepsparse-pruned"]
    for name in ("torch-as-saved", "penni-deploy", "tvm-dense", *AS_SAVED_PEERS):
        row = rows[name]
        assert "error" not in row, f"{name}: {row['error']}"
        assert row["runs"] == 3 and 0 < row["median_ms"] <= row["p90_ms"] and row["batch"] == 2
        bf16 = row["precision"] == "bf16"  # what OpenVINO ran: fp32 on CPUs without bf16
        assert row["max_rel_error"] < (0.05 if bf16 else 1e-5), name
    assert "unavailable for this model format" in rows["torch-dense"]["error"]
    assert "setup_deepsparse.sh" in rows["deepsparse-as-saved"]["error"]
    assert "PENNI layers" in rows["deepsparse-pruned"]["error"]  # the model's reason, not the missing venv
    assert report["parity_max_rel_error"]["2"] < 1e-5
    table = capsys.readouterr().out
    assert all(name in table for name in AS_SAVED_PEERS)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_parses_its_batch_sizes_and_time_budget(saved_files, monkeypatch, capsys):
    import penni_deploy.bench

    seen = {}

    def capture(path, **kwargs):
        seen.update(kwargs["options"].__dict__)
        raise PenniError("captured")

    monkeypatch.setattr(penni_deploy.bench, "run_bench", capture)
    assert main(["bench", str(saved_files["torchscript"]), "--batch", "1,2", "--repeat", "7", "--seconds", "0.25"]) == 2
    assert seen["batches"] == (1, 2) and seen["repeat"] == 7 and seen["min_seconds"] == 0.25
    assert one_line_error(capsys) == "error: captured"


@pytest.mark.parametrize(("batch", "message"), [("1,x", "must be comma-separated integers like 1,8"),
                                                 ("0", "must list positive integers")])
def test_a_bad_batch_is_a_one_line_error_and_writes_nothing(batch, message, saved_files, tmp_path, capsys):
    report_file = tmp_path / "bench.json"
    assert main(["bench", str(saved_files["pt2"]), "--batch", batch, "--json", str(report_file)]) == 2
    assert f"--batch {batch!r} {message}" in one_line_error(capsys)
    assert not report_file.exists()


def test_a_pt2_file_benched_at_a_batch_size_it_fixed_fails_before_measuring(saved_files, tmp_path, capsys):
    report_file = tmp_path / "bench.json"
    assert main(["bench", str(saved_files["pt2"]), "--batch", "1", "--json", str(report_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: cannot trace the model for input (1, 3, 12, 12)")
    assert not any("measuring" in line for line in err)  # no matmul peak, no compile: it fails first
    assert not report_file.exists()


@pytest.mark.skipif("avx512_bf16" not in (cpu_flags() or []), reason="this CPU has no AVX512_BF16")
def test_bench_at_bf16_labels_its_rows_and_adds_our_fp32_build(saved_files, tmp_path):
    from dataclasses import replace

    from penni_deploy.compiler import CompileOptions

    options = BenchOptions(batches=(2,), threads=1, warmup=1, warmup_seconds=0, repeat=3, min_repeat=3, min_seconds=0,
                           max_seconds=5, matmul_n=256)
    options = replace(options, compile=CompileOptions(precision="bf16"))
    report = run_bench(str(saved_files["pt2"]), options=options)
    engines = {r["engine"]: r for r in report["results"]}
    assert engines["penni-deploy"]["precision"] == "bf16" and engines["tvm-dense"]["precision"] == "bf16"
    assert engines["penni-deploy-fp32"]["precision"] == "fp32"
    assert engines["penni-deploy-fp32"]["max_rel_error"] <= 1e-4
    assert 1e-6 < engines["penni-deploy"]["max_rel_error"] < 2e-2  # rounded, yet close
    assert report["target"]["precision"] == "bf16"
    assert "bf16" in format_bench_table(report)
