"""``bench`` measures every engine in one run and reports parity; timings are not asserted here."""

import torch
from model_helpers import random_penni_model

from penni_deploy.bench import BenchOptions, format_bench_table, run_bench
from penni_deploy.bench.plot import plot_bench


def test_bench_reports_every_engine(tmp_path):
    path = tmp_path / "resnet56.pt"
    torch.save(random_penni_model("resnet56", 0.03).state_dict(), path)
    options = BenchOptions(batches=(1,), threads=1, warmup=1, repeat=3, min_repeat=3, max_seconds=5)
    report = run_bench(str(path), arch="resnet56", options=options)

    engines = {r["engine"]: r for r in report["results"]}
    assert set(engines) == {"torch-dense", "torch-two-stage", "tvm-dense", "penni-deploy"}
    for result in engines.values():
        assert result["runs"] == 3 and 0 < result["median_ms"] <= result["p90_ms"]
        assert result["inference_mb"] >= 0 and result["model_mb"] > 0
    assert report["parity_max_rel_error"][1] <= 1e-4
    assert report["conv_macs_compiled"] < report["conv_macs_dense"] / 5
    table = format_bench_table(report)
    assert "penni-deploy" in table and "speedup" in table
    png = plot_bench(report, str(tmp_path / "bench.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
