"""bf16 autocast and channels-last training (evaluation stays float32), the defaults on CUDA and CPU,
what the summary records, and the named presets with flags overriding them."""

import pytest
import torch
from torch import nn

from penni_deploy.cli import main
from penni_deploy.errors import PenniError
from penni_deploy.method.compress import CompressConfig, check_config, run_info
from penni_deploy.method.presets import PRESETS
from penni_deploy.method.train import TrainConfig, evaluate, make_optimizer, train_epoch


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)
        self.seen = []  # (output dtype, whether the input was channels-last) per conv call
        self.conv.register_forward_hook(lambda m, args, out: self.seen.append(
            (out.dtype, args[0].is_contiguous(memory_format=torch.channels_last))))

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def batches(n=2):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(6, 3, 8, 8, generator=g), torch.randint(0, 4, (6,), generator=g)) for _ in range(n)]


@pytest.mark.parametrize("bf16,channels_last", [(True, True), (False, False)], ids=["bf16-channels-last", "fp32"])
def test_training_step_precision_and_memory_format(bf16, channels_last):
    torch.manual_seed(0)
    net = Net()
    before = net.conv.weight.detach().clone()
    config = TrainConfig(epochs=1, lr=0.1, bf16=bf16, channels_last=channels_last)
    result = train_epoch(net, batches(), make_optimizer(net, config), config, 0)
    assert net.seen == [(torch.bfloat16 if bf16 else torch.float32, channels_last)] * 2
    assert net.conv.weight.dtype == torch.float32 and net.conv.weight.grad.dtype == torch.float32
    assert net.conv.weight.is_contiguous(memory_format=torch.channels_last) is channels_last
    assert not torch.equal(net.conv.weight, before)
    assert result.images == 12 and result.loss > 0 and result.images_per_second > 0
    net.seen.clear()
    accuracy = evaluate(net, batches(1))
    assert net.seen[0][0] == torch.float32 and 0.0 <= accuracy <= 1.0  # evaluation never autocasts


def test_fast_defaults_follow_the_device():
    cpu = CompressConfig(arch="resnet18", data=".", output="m.pt", device="cpu")
    cuda = CompressConfig(arch="resnet18", data=".", output="m.pt", device="cuda")
    assert (cpu.use_fast, cpu.use_bf16, cpu.use_channels_last) == (False, False, False)
    assert (cuda.use_fast, cuda.use_bf16, cuda.use_channels_last) == (True, True, True)
    assert not CompressConfig(arch="alexnet", data=".", output="m.pt", device="cuda").use_fast  # ImageNet folders
    assert not CompressConfig(arch="resnet18", data=".", output="m.pt", device="cuda", float64=True).use_bf16
    forced = CompressConfig(arch="resnet18", data=".", output="m.pt", device="cpu", fast=True, bf16=True,
                            channels_last=True)
    assert (forced.use_fast, forced.use_bf16, forced.use_channels_last) == (True, True, True)


def test_the_summary_states_precision_memory_format_and_data_path():
    info = run_info(CompressConfig(arch="resnet20", data=".", output="m.pt", device="cpu", fast=True, bf16=True,
                                   channels_last=True, time_budget=100.0), data_seconds=1.5)
    assert info["train_precision"] == "bf16 autocast" and info["eval_precision"].startswith("float32")
    assert info["memory_format"] == "channels_last" and info["data_path"].startswith("device-resident")
    assert info["time_budget_s"] == 100.0 and info["data_seconds"] == 1.5
    plain = run_info(CompressConfig(arch="resnet20", data=".", output="m.pt", device="cpu"))
    assert (plain["train_precision"], plain["memory_format"]) == ("float32", "contiguous")
    assert plain["data_path"].startswith("DataLoader")


@pytest.mark.parametrize("config,message", [
    (dict(arch="alexnet", fast=True), "--fast"),
    (dict(arch="resnet20", bf16=True, float64=True), "--bf16"),
    (dict(arch="resnet20", penni_train_form="sparse"), "penni-train-form"),
], ids=["fast-imagenet", "bf16-float64", "unknown-form"])
def test_contradictory_settings_are_refused(tmp_path, config, message):
    data = tmp_path / "train"
    (data / "a").mkdir(parents=True)
    (tmp_path / "val" / "a").mkdir(parents=True)
    with pytest.raises(PenniError, match=message):
        check_config(CompressConfig(data=str(tmp_path), output="m.pt", **config))


def test_paper_fast_keeps_the_paper_rates_and_its_alternation_phases():
    paper, fast = PRESETS["paper"], PRESETS["paper-fast"]
    assert (paper.retrain_epochs, paper.finetune_epochs, paper.interval) == (100, 30, 5)
    assert (fast.lr, fast.batch_size) == (paper.lr, paper.batch_size)
    assert fast.retrain_epochs // fast.interval == paper.retrain_epochs // paper.interval == 20
    assert fast.retrain_epochs + fast.finetune_epochs < paper.retrain_epochs + paper.finetune_epochs


@pytest.fixture
def captured(monkeypatch):
    """Run the compress command up to the library call and keep the config it would train with."""
    seen = []
    monkeypatch.setattr("penni_deploy.method.compress.compress", lambda config, progress=None: seen.append(config) or [])
    return seen


def test_cli_preset_with_a_flag_overriding_it(tmp_path, captured):
    argv = ["compress", "--arch", "resnet20", "--data", str(tmp_path), "-o", str(tmp_path / "m.pt")]
    assert main(argv + ["--preset", "paper-fast", "--retrain-epochs", "3", "--time-budget", "300"]) == 0
    assert main(argv) == 0
    fast, default = captured
    assert (fast.preset, fast.baseline_epochs, fast.retrain_epochs, fast.finetune_epochs, fast.interval) == \
        ("paper-fast", 40, 3, 12, 2)
    assert fast.time_budget == 300.0
    assert (default.preset, default.baseline_epochs, default.retrain_epochs, default.finetune_epochs) == \
        ("paper", 100, 100, 30)


def test_cli_unknown_preset_is_one_clear_line(tmp_path, capsys, captured):
    argv = ["compress", "--arch", "resnet20", "--data", str(tmp_path), "-o", str(tmp_path / "m.pt"), "--preset", "x"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown --preset 'x'") and "paper-fast" in err and "\n" not in err
    assert not captured
