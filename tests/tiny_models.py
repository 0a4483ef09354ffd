"""Tiny models that compile in about a second, for CLI and artifact tests."""

import torch
from torch import nn

from penni_deploy.models import PenniConv2d

TINY_SHAPE = (2, 3, 12, 12)


class TinyPenniNet(nn.Module):
    """Stem PENNI conv, one residual PENNI block with stride-2 projection, pool, Linear."""

    def __init__(self):
        super().__init__()
        self.stem = PenniConv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv = PenniConv2d(8, 16, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.shortcut = nn.Conv2d(8, 16, 1, stride=2, bias=False)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        h = torch.relu(self.bn(self.stem(x)))
        h = torch.relu(self.bn2(self.conv(h)) + self.shortcut(h))
        return self.fc(h.mean(dim=(2, 3)))


class WithUnsupportedOp(TinyPenniNet):
    def forward(self, x):
        return torch.lgamma(super().forward(x).abs() + 1)


def tiny_model(cls=TinyPenniNet, seed=0):
    torch.manual_seed(seed)
    model = cls().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, PenniConv2d):
                m.coefs.mul_((torch.rand_like(m.coefs) < 0.3).float())
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.2, 0.2)
    return model


def save_pt2(model, path, shape=TINY_SHAPE):
    torch.export.save(torch.export.export(model, (torch.zeros(shape),)), str(path))
    return path


def assert_matches_tiny_model(artifact, seed: int) -> None:
    """The artifact computes what the tiny PyTorch model does."""
    import numpy as np
    import torch

    from penni_deploy.artifact.runtime import load

    x = np.random.default_rng(seed).standard_normal(TINY_SHAPE).astype(np.float32)
    with torch.inference_mode():
        expected = tiny_model()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(load(str(artifact))(x), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())



def run_in_fresh_process(artifact, x, tmp_path):
    """``artifact`` run on ``x`` in a new Python with an empty compiler cache (so its library must
    carry every micro-kernel it calls); asserts nothing was compiled there. Returns the output."""
    import subprocess
    import sys

    import numpy as np

    np.save(tmp_path / "x.npy", x)
    code = ("import sys, numpy as np, penni_deploy; m = penni_deploy.load(sys.argv[1]); "
            "np.save(sys.argv[3], m(np.load(sys.argv[2])))")
    env = {"XDG_CACHE_HOME": str(tmp_path / "empty-cache"), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code, str(artifact), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                   check=True, env=env, timeout=300)
    assert not (tmp_path / "empty-cache").exists()
    return np.load(tmp_path / "y.npy")
