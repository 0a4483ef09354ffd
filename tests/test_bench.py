"""``bench`` measures every engine in one run and reports parity; timings are not asserted here."""

from pathlib import Path

import torch
from model_helpers import random_penni_model

from penni_deploy.bench import BenchOptions, format_bench_table, run_bench
from penni_deploy.bench.peers import DEEPSPARSE_PYTHON_ENV
from penni_deploy.bench.plot import plot_bench


def test_bench_reports_every_engine(tmp_path, monkeypatch):
    path = tmp_path / "resnet56.pt"
    torch.save(random_penni_model("resnet56", 0.03).state_dict(), path)
    # One ONNX peer that runs and one that cannot (tests/bench covers each peer on a tiny model).
    monkeypatch.setenv(DEEPSPARSE_PYTHON_ENV, str(tmp_path / "no-venv" / "python"))
    options = BenchOptions(batches=(1,), threads=1, warmup=1, repeat=3, min_repeat=3, max_seconds=5, peers=True,
                           peer_engines=("onnxruntime-two-stage", "deepsparse-pruned"), matmul_n=256)
    report = run_bench(str(path), arch="resnet56", options=options)

    engines = {r["engine"]: r for r in report["results"]}
    measured = {"torch-dense", "torch-two-stage", "tvm-dense", "penni-deploy", "onnxruntime-two-stage"}
    assert set(engines) == measured | {"deepsparse-pruned"}
    for name in measured:
        result = engines[name]
        assert result["runs"] == 3 and 0 < result["median_ms"] <= result["p90_ms"]
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
