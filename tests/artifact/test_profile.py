"""penni-deploy profile: every kernel call timed and attributed to its layer, shares, MACs, the JSON report,
and one-line errors. Timings are only checked to be real (positive, and summing to about the model's time)."""

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

import penni_deploy
from penni_deploy.artifact.profile import format_profile_table, profile_artifact
from penni_deploy.cli import main
from penni_deploy.models import PenniConv2d
from penni_deploy.targets.kernel_table import op_kind

SHAPE = (2, 3, 12, 12)
FAST = {"repeat": 5, "threads": 1, "peak_size": 128, "bandwidth_mb": 8}


class ProfileNet(nn.Module):
    """A PENNI stem, max pooling, two dense 1×1 convs of one shape (so one shared kernel), a strided
    PENNI conv, adaptive average pooling, flatten and a Linear: every kind of op the profile names."""

    def __init__(self):
        super().__init__()
        self.stem = PenniConv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.mix1 = nn.Conv2d(8, 8, 1)
        self.mix2 = nn.Conv2d(8, 8, 1)
        self.down = PenniConv2d(8, 16, 3, stride=2, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))

    def forward(self, x):
        h = self.pool(torch.relu(self.stem(x)))
        h = torch.relu(self.mix2(torch.relu(self.mix1(h))))
        return self.head(torch.relu(self.down(h)))


def profile_net(seed=0):
    torch.manual_seed(seed)
    model = ProfileNet().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, PenniConv2d):
                m.coefs.mul_((torch.rand_like(m.coefs) < 0.3).float())
    return model


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    folder = tmp_path_factory.mktemp("profile")
    path = folder / "net.pt2"
    torch.export.save(torch.export.export(profile_net(), (torch.zeros(SHAPE),)), str(path))
    out = folder / "net.penni"
    penni_deploy.compile_model(str(path), str(out))
    return out


@pytest.fixture(scope="module")
def report(artifact):
    return profile_artifact(str(artifact), **FAST)


def vm_calls(artifact):
    """(symbol, argument shapes) of every non-builtin call of one inference, seen by our own instrument."""
    model = penni_deploy.load(artifact)
    calls = []

    def instrument(func, symbol, before, ret, *args):
        if before and not symbol.startswith("vm.builtin."):
            calls.append((symbol, [tuple(a.shape) for a in args]))
        return 0

    model._vm.set_instrument(instrument)
    model(np.zeros(SHAPE, np.float32))
    return calls


def test_every_kernel_call_is_timed_in_run_order(artifact, report):
    calls = vm_calls(artifact)
    assert [k["kernel"] for k in report["kernels"]] == [symbol for symbol, _ in calls]
    assert len(calls) >= 8  # 5 conv layers, max pool, adaptive pool, Linear
    assert all(k["median_ms"] > 0 and k["alone_ms"] > 0 for k in report["kernels"])
    # what was timed is the model's work: the kernels add up to about the whole model, not to nothing
    assert 0.05 < report["kernels_ms"] / report["model_median_ms"] < 10
    assert 0.05 < report["kernels_alone_ms"] / report["model_median_ms"] < 10
    assert sum(r["calls"] for r in report["rows"]) == len(calls)


def test_each_layer_gets_the_kernels_that_compute_it(artifact, report):
    layers = penni_deploy.load(artifact).manifest.layers
    calls = vm_calls(artifact)
    assert [layer["kind"] for layer in layers] == ["penni", "dense", "dense", "penni"]
    for layer in layers:
        positions = [k["position"] for k in report["kernels"] if k["layer"] == layer["index"]]
        assert positions, f"layer {layer['index']} has no kernel"
        n, cout, ho, wo = layer["output"]
        # the layer's last kernel writes its output, flat: (N, Cout, Ho·Wo), its last argument
        assert calls[positions[-1]][1][-1] == (n, cout, ho * wo)
        assert all(report["kernels"][p]["op"] == layer["kind"] for p in positions)
    mixes = [k for k in report["kernels"] if k["layer"] in (1, 2)]
    assert [k["layer"] for k in mixes] == [1, 2] and mixes[0]["kernel"] == mixes[1]["kernel"]  # one shared kernel
    between = {k["op"] for k in report["kernels"] if k["layer"] is None}
    assert {"max_pool2d", "mean"} <= between  # AdaptiveAvgPool2d(1) exports as mean and any("matmul" in op for op in between)


def test_shares_add_up_and_rows_are_sorted(report):
    assert sum(r["share"] for r in report["rows"]) == pytest.approx(1.0)
    assert sum(report["by_op"].values()) == pytest.approx(1.0)
    assert sum(r["median_ms"] for r in report["rows"]) == pytest.approx(report["kernels_ms"])
    times = [r["median_ms"] for r in report["rows"]]
    assert times == sorted(times, reverse=True)


def test_layer_macs_are_the_manifests(artifact, report):
    layers = penni_deploy.load(artifact).manifest.layers
    rows = {r["layer"]: r for r in report["rows"] if r["layer"] is not None}
    assert sorted(rows) == [layer["index"] for layer in layers]
    for layer in layers:
        row = rows[layer["index"]]
        assert row["macs"] == layer["macs_compiled"] * SHAPE[0]  # the manifest's are per image
        assert row["gmacs"] == pytest.approx(row["macs"] / (row["median_ms"] * 1e6))
        assert row["peak_fraction"] == pytest.approx(row["gmacs"] / report["peak"]["gmacs"])
    (linear,) = [r for r in report["rows"] if r["layer"] is None and r["op"] in ("linear", "matmul", "matmul_add")]
    assert linear["macs"] == SHAPE[0] * 16 * 5


def test_weight_bytes_are_the_constants_each_kernel_reads(artifact, report):
    """The Linear's row carries exactly its weight and bias bytes; a weight-bound row is rated against the
    measured bandwidth (here every row is under 1 MiB, so none is)."""
    (linear,) = [r for r in report["rows"] if r["layer"] is None and r["op"] in ("linear", "matmul", "matmul_add")]
    assert linear["weight_bytes"] >= (16 * 5 + 5) * 4 - 5 * 4  # weights (bias may be fused elsewhere)
    assert all(r["weight_bytes"] is not None for r in report["rows"])
    assert all(r["weight_gbps"] is None and r["bandwidth_fraction"] is None for r in report["rows"])
    assert report["bandwidth"]["gbps"] > 0 and report["bandwidth"]["threads"] == 1
    from penni_deploy.artifact.profile import _rows

    kernels = [{"kernel": "linear", "layer": None, "op": "linear", "macs": 2 << 20, "weight_bytes": 8 << 20,
                "median_ms": 1.0, "alone_ms": 1.0}]
    (row,) = _rows(kernels, [], 1, peak_gmacs=100.0, bandwidth_gbps=20.0)
    assert row["weight_gbps"] == pytest.approx((8 << 20) / 1e6)  # bytes per ms → GB/s
    assert row["bandwidth_fraction"] == pytest.approx(row["weight_gbps"] / 20.0)


def test_cli_table_and_json_round_trip(artifact, tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert main(["profile", str(artifact), "--repeat", "3", "--threads", "1", "--peak-size", "64",
                 "--bandwidth-mb", "4", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    loaded = json.loads(out.read_text())
    assert json.loads(json.dumps(loaded)) == loaded and loaded["repeat"] == 3 and loaded["threads"] == 1
    assert len(loaded["kernels"]) == len(vm_calls(artifact))
    for row in loaded["rows"]:
        assert row["name"][:40] in table
    assert "fp32 peak" in table and "memory bandwidth" in table and "by op:" in table
    assert format_profile_table(loaded).splitlines()[4:] == table.strip().splitlines()[4:]  # same rows from JSON


def test_profile_takes_the_input_file(artifact, tmp_path):
    np.save(tmp_path / "x.npy", np.ones(SHAPE, np.float32))
    assert main(["profile", str(artifact), "-i", str(tmp_path / "x.npy"), "--repeat", "2", "--threads", "1",
                 "--peak-size", "32", "--bandwidth-mb", "4"]) == 0


def one_line_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _without_kernel_table(src, dst):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.namelist():
            data = zin.read(item)
            if item == "manifest.json":
                manifest = json.loads(data)
                del manifest["kernels"]
                data = json.dumps(manifest).encode()
            zout.writestr(item, data)


BAD = {
    "missing-artifact": (lambda art, tmp: (tmp / "none.penni", None), "no such artifact"),
    "truncated": (lambda art, tmp: (tmp / "cut.penni", None), "corrupt or truncated"),
    "no-kernel-table": (lambda art, tmp: (tmp / "old.penni", None), "no kernel table"),
    "wrong-shape": (lambda art, tmp: (art, np.zeros((1, 3, 12, 12), np.float32)), "recompile with --input-shape"),
    "wrong-dtype": (lambda art, tmp: (art, np.zeros(SHAPE, np.float64)), "input dtype is float64"),
    "not-npy": (lambda art, tmp: (art, b"not an array"), "cannot read"),
}


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_bad_artifact_or_input_is_a_one_line_error(case, artifact, tmp_path, capsys):
    make, message = case
    path, x = make(artifact, tmp_path)
    if path.name == "cut.penni":
        path.write_bytes(artifact.read_bytes()[:-5000])
    elif path.name == "old.penni":
        _without_kernel_table(artifact, path)
    args = ["profile", str(path), "--repeat", "1", "--threads", "1", "--peak-size", "16", "--bandwidth-mb", "4",
            "--json", str(tmp_path / "p.json")]
    if x is not None:
        (tmp_path / "x.npy").write_bytes(x) if isinstance(x, bytes) else np.save(tmp_path / "x.npy", x)
        args += ["--input", str(tmp_path / "x.npy")]
    assert main(args) == 2
    assert message in one_line_error(capsys)
    assert not list(tmp_path.glob("p.json*"))  # no report, not even a partial one


def test_profile_needs_neither_torch_nor_the_compiler(artifact):
    code = (
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is blocked in this test')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "from penni_deploy.artifact.profile import profile_artifact\n"
        f"r = profile_artifact({str(artifact)!r}, repeat=2, threads=1, peak_size=32)\n"
        "assert r['kernels'] and r['peak']['gmacs'] > 0\n"
        "ours = [n for n in sys.modules if n.startswith(('penni_deploy.compiler', 'penni_deploy.frontend', "
        "'penni_deploy.passes', 'penni_deploy.targets', 'penni_deploy.kernels', 'penni_deploy.bench.driver'))]\n"
        "assert not ours, ours\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("name, kind", [("fused_reshape1_reshape2", "reshape_reshape"), ("max_pool2d1", "max_pool2d"),
                                        ("fused_matmul_add3", "matmul_add"), ("adaptive_avg_pool2d", "adaptive_avg_pool2d"),
                                        ("mean", "mean")])
def test_op_kind_names_the_fused_ops(name, kind):
    assert op_kind(name) == kind
