"""run.cpu_conv: the forward kernel of each convolution on the CPU in fp32 (oneDNN or NNPACK), measured or given."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from deepcluster import load_config
from deepcluster.api import resume, train
from deepcluster.config import ConfigError
from deepcluster.config.run import CONV_KERNELS
from deepcluster.engine.conv_kernels import conv_layers, expand_kernels, measure_kernels, use_kernels
from deepcluster.engine.loop import Trainer
from deepcluster.models import build_backbone
from deepcluster.use.run import load
from synthetic import assert_same_run, small_config, write_pattern_npz


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pattern_npz(tmp_path_factory.mktemp("data") / "patterns.npz")


def small_backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone("alexnet_small", sobel=True, input_size=32).to(memory_format=torch.channels_last)


def batch(n: int = 16) -> torch.Tensor:
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return x.contiguous(memory_format=torch.channels_last)


def onednn_calls(module: torch.nn.Module, x: torch.Tensor) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        module(x).sum().backward()
    forward = [e for e in prof.events() if e.name == "aten::mkldnn_convolution"]
    return len(forward)


def test_nnpack_forward_skips_onednn_and_agrees_with_it() -> None:
    backbone = small_backbone()
    n_convs = len(conv_layers(backbone))
    assert n_convs == 7  # Sobel's two, the five of AlexNet
    x = batch()
    assert onednn_calls(backbone, x) == n_convs
    reference = backbone.eval()(x).detach()

    handles = use_kernels(backbone, ["nnpack"] * n_convs)
    out = backbone(x)
    assert out.is_contiguous() or out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)
    assert onednn_calls(backbone, x) == 0
    assert torch.backends.mkldnn.enabled  # switched off for each hooked call only

    for handle in handles:
        handle.remove()
    assert onednn_calls(backbone, x) == n_convs


def test_one_hooked_layer_keeps_its_input_layout_and_the_flag_survives_an_error() -> None:
    backbone = small_backbone()
    convs = conv_layers(backbone)
    kernels = ["onednn"] * len(convs)
    kernels[3] = "nnpack"
    use_kernels(backbone, kernels)
    seen: list[bool] = []
    convs[4][1].register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    backbone(batch())
    assert seen == [True]  # NNPACK's NCHW output was put back in channels-last for the next layers
    with pytest.raises(RuntimeError):
        convs[3][1](torch.rand(16, 5, 8, 8))  # wrong channel count: the forward raises inside the hooks
    assert torch.backends.mkldnn.enabled


def test_measure_gives_one_kernel_per_layer_and_leaves_the_backbone_and_rng_alone() -> None:
    backbone = small_backbone().train()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    rng = torch.get_rng_state()
    kernels = measure_kernels(backbone, 32, batch=64)
    assert len(kernels) == len(conv_layers(backbone))
    assert set(kernels) <= set(CONV_KERNELS)
    assert torch.equal(torch.get_rng_state(), rng)
    assert backbone.training and all(m.training for m in backbone.modules())
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, before[key]), key  # BN running statistics untouched (eval mode)


def test_bad_values_are_refused_naming_the_option(npz_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cpu.conv.*choose onednn, nnpack, measure"):
        train(small_config(npz_data, tmp_path / "run", run={"cpu_conv": "fastest"}))
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="--cpu-conv onednn,nnpack: 2 kernels .* 7 convolutions"):
        expand_kernels("onednn,nnpack", 7)
    assert expand_kernels("nnpack", 3) == ["nnpack"] * 3


def test_a_measured_run_records_its_kernels_and_a_resume_reuses_them(
    npz_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="deepcluster")
    measured = tmp_path / "measured"
    train(small_config(npz_data, measured, run={"cpu_conv": "measure", "epochs": 1, "precision": "fp32"}))
    recorded = load_config(measured / "config.yaml").run.cpu_conv
    assert "measured on this CPU" in caplog.text
    kernels = expand_kernels(recorded, 7)
    assert set(kernels) <= set(CONV_KERNELS)

    # the recorded list is what a run uses: an unbroken run and one killed mid-epoch then resumed agree
    config = {"cpu_conv": "onednn,onednn,nnpack,nnpack,onednn,nnpack,nnpack", "precision": "fp32"}
    unbroken = tmp_path / "unbroken"
    train(small_config(npz_data, unbroken, run=config))
    killed = tmp_path / "killed"

    def kill(trainer: Trainer) -> None:
        if (trainer.state.epoch, trainer.state.step) == (1, 2):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(small_config(npz_data, killed, run=config), on_step=kill).fit()
    caplog.clear()
    resume(killed)
    assert "measured on this CPU" not in caplog.text
    assert load_config(killed / "config.yaml").run.cpu_conv == config["cpu_conv"]
    assert_same_run(unbroken, killed)

    # a trained run, loaded for use on the CPU in fp32, runs the kernels it recorded
    trained = load(unbroken, device="cpu")
    x = torch.rand(16, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof, torch.no_grad():
        trained.backbone(x)
    assert sum(e.name == "aten::mkldnn_convolution" for e in prof.events()) == config["cpu_conv"].count(
        "onednn"
    )
