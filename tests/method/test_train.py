"""Decompose, alternation, L1 and masked fine-tuning update exactly what they should."""

import torch
from torch import nn

from penni_deploy.method.decompose import decompose_model
from penni_deploy.method.prune import prune_coefficients_
from penni_deploy.method.train import (
    TrainConfig,
    learning_rate,
    make_optimizer,
    train_epoch,
    trains_coefficients,
)
from penni_deploy.models import PenniConv2d


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.point = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.point(torch.relu(self.bn(self.conv(x)))).mean(dim=(2, 3)))


def batches(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(6, 3, 8, 8, generator=g), torch.randint(0, 4, (6,), generator=g)) for _ in range(n)]


def test_decompose_replaces_kxk_convs_exactly_for_low_rank_kernels():
    net = Net().eval()
    with torch.no_grad():  # a rank-3 kernel matrix
        net.conv.weight.copy_((torch.randn(24, 3) @ torch.randn(3, 9)).reshape(8, 3, 3, 3))
    decomposed = decompose_model(net, num_bases=5).eval()
    assert isinstance(decomposed.conv, PenniConv2d) and isinstance(decomposed.point, nn.Conv2d)
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(decomposed(x), net(x), atol=1e-5)


def test_alternation_trains_coefficients_then_bases():
    model = decompose_model(Net())
    config = TrainConfig(epochs=4, alternate_every=1)
    optimizer = make_optimizer(model, config)
    for epoch, coefs_phase in [(0, True), (1, False)]:
        assert trains_coefficients(config, epoch) is coefs_phase
        basis, coefs = model.conv.basis.clone(), model.conv.coefs.clone()
        fc = model.fc.weight.clone()
        train_epoch(model, batches(), optimizer, config, epoch)
        assert torch.equal(model.conv.basis, basis) is coefs_phase
        assert torch.equal(model.conv.coefs, coefs) is not coefs_phase
        assert not torch.equal(model.fc.weight, fc)  # everything else trains in both phases


def test_l1_shrinks_coefficients():
    def total_abs(l1):
        torch.manual_seed(0)
        model = decompose_model(Net())
        config = TrainConfig(epochs=1, l1=l1, lr=0.05, weight_decay=0.0)
        train_epoch(model, batches(4), make_optimizer(model, config), config, 0)
        return float(model.conv.coefs.abs().sum())

    assert total_abs(0.5) < total_abs(0.0)


def test_prune_and_masked_finetune_keep_zeros():
    model = decompose_model(Net())
    masks = prune_coefficients_(model)
    coefs = model.conv.coefs
    assert (coefs[~masks["conv.coefs"]] == 0).all() and (coefs.abs()[masks["conv.coefs"]] >= coefs.std() * 0.999).all()
    config = TrainConfig(epochs=1, lr=0.1)
    train_epoch(model, batches(3), make_optimizer(model, config), config, 0, masks=masks)
    assert (model.conv.coefs[~masks["conv.coefs"]] == 0).all()
    assert (model.conv.coefs[masks["conv.coefs"]] != 0).all()


def test_learning_rate_steps_at_half_and_three_quarters():
    config = TrainConfig(epochs=8, lr=0.01)
    assert [round(learning_rate(config, e), 6) for e in range(8)] == [0.01] * 4 + [0.001] * 2 + [0.0001] * 2
