"""``compress`` under torchrun with 2 gloo processes on loopback equals a single-process run with
the same global batch (same data order, gradients averaged, BatchNorm over the global batch).

Compared in float64: in float32 the two runs differ by rounding (different summation orders),
which a freshly initialized network's ill-conditioned BatchNorms amplify to ~1% within a few steps;
in float64 a DDP gradient matches the single-process one to ~1e-14."""

import os
import socket
import subprocess
import sys

import pytest
import torch

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "cifar10-jpeg")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not os.path.isdir(DATA), reason="the CIFAR-10 JPEG copy is not beside the checkout")
def test_two_gloo_processes_equal_one_process(tmp_path):
    common = ["compress", "--arch", "resnet20", "--data", DATA, "--subset", "40", "--test-subset", "20",
              "--baseline-epochs", "2", "--retrain-epochs", "2", "--finetune-epochs", "1", "--interval", "1",
              "--batch-size", "20", "--no-augment", "--device", "cpu", "--float64"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    single = subprocess.run([sys.executable, "-m", "penni_deploy.cli", *common, "-o", str(tmp_path / "one.pt")],
                            capture_output=True, text=True, env=env, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(free_port()), "-m", "penni_deploy.cli"]
    double = subprocess.run([*launcher, *common, "-o", str(tmp_path / "two.pt")], capture_output=True, text=True,
                            env=env, timeout=600)
    assert double.returncode == 0, double.stderr[-3000:]
    assert (tmp_path / "two.pt").exists() and (tmp_path / "two.summary.json").exists()

    # Checkpoints of the training stages (before pruning, whose threshold would turn rounding-level
    # differences into different masks).
    for stage in ("baseline", "retrain"):
        one = torch.load(tmp_path / "one.work" / f"{stage}.pt", weights_only=True)["model"]
        two = torch.load(tmp_path / "two.work" / f"{stage}.pt", weights_only=True)["model"]
        assert one.keys() == two.keys()
        for key in one:
            if one[key].is_floating_point():
                scale = max(float(one[key].abs().max()), 1e-3)
                assert (one[key] - two[key]).abs().max() <= 1e-9 * scale, (stage, key)
