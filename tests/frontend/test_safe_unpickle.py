"""The restricted unpickler: reference-style whole-model pickles load as our classes; anything else is refused.

The reference classes are imitated by small stand-ins written into tmp_path (same module paths and instance
attributes as the reference's pickles), importable only while the test pickles them.
"""

import contextlib
import os
import pickle
import sys
import textwrap

import pytest
import torch

from penni_deploy.errors import ModelLoadError
from penni_deploy.frontend.safe_unpickle import load_pickled_module
from penni_deploy.models import VGG16, BasicBlock, PenniConv2d, ResNet56, build_model

FAKE_MODULES = ("decompose", "decompose.decomConv", "models", "models.vgg16", "models.resnet_s")

FAKE_SOURCES = {
    "decompose/__init__.py": "",
    "decompose/decomConv.py": """
        import torch
        import torch.nn.functional as F
        from torch import nn

        class DecomposedConv2D(nn.Module):
            # Instance attributes as in the reference's pickles: geometry as given, num_basis, device,
            # and a missing bias kept as a plain None attribute.
            def __init__(self, cin, cout, kernel_size, stride, padding, dilation, num_basis, bias=False):
                super().__init__()
                self.in_channels, self.out_channels = cin, cout
                self.kernel_size = [kernel_size, kernel_size] if isinstance(kernel_size, int) else kernel_size
                self.stride, self.padding, self.dilation = stride, padding, dilation
                self.num_basis, self.device = num_basis, "cuda"
                self.bias = nn.Parameter(0.1 * torch.randn(cout)) if bias else None
                self.basis = nn.Parameter(torch.randn(num_basis, 9), requires_grad=False)
                self.coefs = nn.Parameter(torch.randn(cout * cin, num_basis) * (2.0 / (cin * 9)) ** 0.5)

            def forward(self, x):
                w = self.coefs.mm(self.basis).view(self.out_channels, self.in_channels, *self.kernel_size)
                return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation)
    """,
    "models/__init__.py": "",
    "models/vgg16.py": """
        import torch
        from torch import nn
        from decompose.decomConv import DecomposedConv2D

        class VGG16(nn.Module):
            def __init__(self, widths, num_basis):
                super().__init__()
                layers, cin = [], 3
                for i, w in enumerate(widths):
                    if w == "M":
                        layers.append(nn.MaxPool2d(2))
                        continue
                    layers += [DecomposedConv2D(cin, w, 3, (1, 1), (1, 1), (1, 1), num_basis[i], bias=(i == 1)),
                               nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                    cin = w
                self.features = nn.Sequential(*layers)
                self.classifer = nn.Sequential(nn.Linear(cin, 12), nn.BatchNorm1d(12), nn.ReLU(inplace=True),
                                               nn.Linear(12, 12), nn.BatchNorm1d(12), nn.ReLU(inplace=True),
                                               nn.Linear(12, 10))

            def forward(self, x):
                return self.classifer(self.features(x).mean(3).mean(2))
    """,
    "models/resnet_s.py": """
        import functools
        import torch.nn.functional as F
        from torch import nn
        from decompose.decomConv import DecomposedConv2D

        def _pad(planes, x):
            return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))

        class LambdaLayer(nn.Module):
            def __init__(self, fn):
                super().__init__()
                self.lambd = fn  # the reference holds a lambda here (pickled by dill)

            def forward(self, x):
                return self.lambd(x)

        class BasicBlock(nn.Module):
            expansion = 1

            def __init__(self, in_planes, planes, stride, option):
                super().__init__()
                self.conv1 = DecomposedConv2D(in_planes, planes, 3, (stride, stride), (1, 1), (1, 1), 3)
                self.bn1 = nn.BatchNorm2d(planes)
                self.conv2 = DecomposedConv2D(planes, planes, 3, (1, 1), (1, 1), (1, 1), 5)
                self.bn2 = nn.BatchNorm2d(planes)
                self.shortcut = nn.Sequential()
                if stride != 1 or in_planes != planes:
                    if option == "A":
                        self.shortcut = LambdaLayer(functools.partial(_pad, planes))
                    else:
                        self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                                      nn.BatchNorm2d(planes))

            def forward(self, x):
                out = F.relu(self.bn1(self.conv1(x)))
                out = self.bn2(self.conv2(out))
                out += self.shortcut(x)
                return F.relu(out)

        class ResNet(nn.Module):
            def __init__(self, num_blocks, option):
                super().__init__()
                self.in_planes = 16
                self.conv1 = DecomposedConv2D(3, 16, 3, (1, 1), (1, 1), (1, 1), 5)
                self.bn1 = nn.BatchNorm2d(16)
                self.layer1 = self._make_layer(16, num_blocks, 1, option)
                self.layer2 = self._make_layer(32, num_blocks, 2, option)
                self.layer3 = self._make_layer(64, num_blocks, 2, option)
                self.linear = nn.Linear(64, 10)

            def _make_layer(self, planes, n, stride, option):
                layers = []
                for s in [stride] + [1] * (n - 1):
                    layers.append(BasicBlock(self.in_planes, planes, s, option))
                    self.in_planes = planes
                return nn.Sequential(*layers)

            def forward(self, x):
                out = F.relu(self.bn1(self.conv1(x)))
                out = self.layer3(self.layer2(self.layer1(out)))
                out = F.avg_pool2d(out, out.size()[3])
                return self.linear(out.view(out.size(0), -1))
    """,
}


@contextlib.contextmanager
def fake_reference(root):
    """Make the stand-in reference package importable, then remove every trace of it."""
    for rel, source in FAKE_SOURCES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(source))
    assert not any(name in sys.modules for name in FAKE_MODULES)
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        sys.path.remove(str(root))
        for name in FAKE_MODULES:
            sys.modules.pop(name, None)


def _randomize_bn(model, gen):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    return model.eval()


def _save_reference(tmp_path, build, legacy=False):
    """Build a stand-in reference model, return (path of its pickle, input, its output)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 32, 32, generator=gen)
    path = tmp_path / "model.pth"
    with fake_reference(tmp_path / "ref"):
        model = _randomize_bn(build(), gen)
        with torch.no_grad():
            expected = model(x)
        torch.save(model, path, _use_new_zipfile_serialization=not legacy)
    return path, x, expected


def _fake_vgg():
    from models.vgg16 import VGG16 as RefVGG16

    widths = [8, 8, "M", 16, 16, "M", 16, 16, 16, "M", 24, 24, 24, "M", 24, 24, 24, "M"]
    return RefVGG16(widths, num_basis=[5, 5, 0, 3, 5, 0, 5, 2, 5, 0, 5, 5, 5, 0, 4, 5, 5, 0])


def _fake_resnet(option):
    def build():
        from models.resnet_s import ResNet

        return ResNet(num_blocks=2, option=option)

    return build


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_reference_vgg16_loads_as_own_classes(tmp_path, legacy):
    path, x, expected = _save_reference(tmp_path, _fake_vgg, legacy=legacy)
    assert not any(name in sys.modules for name in FAKE_MODULES)
    model = load_pickled_module(path)
    assert not any(name in sys.modules for name in FAKE_MODULES)  # nothing was imported by name
    assert type(model) is VGG16 and not model.training
    convs = [m for m in model.modules() if isinstance(m, PenniConv2d)]
    assert len(convs) == 13 and all(c.form == "dense" for c in convs)
    assert convs[0].kernel_size == (3, 3) and convs[2].num_bases == 3 and convs[1].bias is not None
    assert convs[0].bias is None and "bias" in convs[0]._parameters
    assert not hasattr(convs[0], "num_basis") and not hasattr(convs[0], "device")
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
        for conv in convs:
            conv.form = "two_stage"  # the translated geometry also drives the exact two-stage form
        torch.testing.assert_close(model(x), expected, atol=1e-4, rtol=1e-4)
    # Our own state_dict layout is the reference's: the loaded model's weights rebuild through build_model.
    rebuilt = build_model("vgg16", model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


def test_reference_resnet_with_projection_shortcuts_loads(tmp_path):
    path, x, expected = _save_reference(tmp_path, _fake_resnet("B"))
    model = load_pickled_module(path)
    assert type(model) is ResNet56 and type(model.layer2[0]) is BasicBlock
    assert type(model.layer1[0].conv1) is PenniConv2d
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_reference_resnet56_lambda_shortcut_is_refused_with_advice(tmp_path):
    path, _, _ = _save_reference(tmp_path, _fake_resnet("A"))
    with pytest.raises(ModelLoadError, match=r"models\.resnet_s\.LambdaLayer.*dill.*--arch resnet56"):
        load_pickled_module(path)


def test_own_models_load(tmp_path):
    model = build_model("resnet56")
    torch.save(model, tmp_path / "own.pth")
    loaded = load_pickled_module(tmp_path / "own.pth")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _RunsEval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


WRITERS = {
    "torch_zip": lambda obj, path: torch.save(obj, path),
    "torch_legacy": lambda obj, path: torch.save(obj, path, _use_new_zipfile_serialization=False),
    "plain_pickle": lambda obj, path: path.write_bytes(pickle.dumps(obj, protocol=2)),
}
PAYLOADS = {"os.system": (_RunsShell, r"posix\.system|os\.system"), "builtins.eval": (_RunsEval, r"builtins\.eval")}


@pytest.mark.parametrize("writer", WRITERS.values(), ids=WRITERS.keys())
@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, payload, writer):
    cls, refused_name = payload
    marker = tmp_path / "pwned"
    # The payload comes first: plain pickle refuses the tensors' torch.storage._load_from_bytes too.
    writer({"extra": cls(marker), "model": build_model("resnet56")}, tmp_path / "evil.pth")
    with pytest.raises(ModelLoadError, match=rf"refused global ({refused_name}).*only known PENNI"):
        load_pickled_module(tmp_path / "evil.pth")
    assert not marker.exists()


def test_patching_an_allowed_class_is_refused(tmp_path):
    # GLOBAL Conv2d; state (None, {"forward": None}); BUILD: would run setattr(nn.Conv2d, "forward", None)
    payload = b"\x80\x02ctorch.nn.modules.conv\nConv2d\nN}X\x07\x00\x00\x00forwardNs\x86b."
    (tmp_path / "patch.pkl").write_bytes(payload)
    with pytest.raises(ModelLoadError, match="refused to set attributes on the global Conv2d"):
        load_pickled_module(tmp_path / "patch.pkl")
    assert torch.nn.Conv2d.forward is not None and "forward" in vars(torch.nn.Conv2d)


def test_state_dict_file_is_not_a_module(tmp_path):
    torch.save(build_model("resnet56").state_dict(), tmp_path / "sd.pth")
    with pytest.raises(ModelLoadError, match="not an nn.Module.*--arch"):
        load_pickled_module(tmp_path / "sd.pth")


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ModelLoadError, match="no such model file"):
        load_pickled_module(tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a model at all")
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_pickled_module(tmp_path / "junk.pth")
