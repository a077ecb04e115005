import argparse

import pytest
import torch

from deepcluster.models import build_backbone
from deepcluster.models.checkpoint_import import (
    convert_state_dict,
    import_deepcluster_checkpoint,
    rename_key,
)

N_CLUSTERS = 10


pytestmark = pytest.mark.usefixtures("one_thread")


def _original_layout(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict as the released DeepCluster code saved it: DataParallel features, no BN counters, top_layer."""
    out = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.startswith("features."):
            key = "features.module." + key[len("features.") :]
        out[key] = value.clone()
    generator = torch.Generator().manual_seed(5)
    out["top_layer.weight"] = torch.randn(N_CLUSTERS, model.feature_dim, generator=generator)
    out["top_layer.bias"] = torch.randn(N_CLUSTERS, generator=generator)
    return out


@pytest.fixture
def source_model():
    torch.manual_seed(0)
    model = build_backbone("alexnet_small", sobel=True, input_size=16)
    with torch.no_grad():  # non-default BN statistics, so buffers are checked too
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    return model.eval()


def test_original_alexnet_keys_line_up_with_ours():
    model = build_backbone("alexnet_small", sobel=True, input_size=16)
    keys = set(model.state_dict())
    # conv / BN of the original cfg [conv, bn, relu, pool, conv, bn, relu, pool, conv, ..., pool]
    for index in (0, 4, 8, 11, 14):
        assert f"features.{index}.weight" in keys and f"features.{index + 1}.running_mean" in keys
    # classifier [Dropout, Linear, ReLU, Dropout, Linear(, ReLU)]; Sobel = 1x1 grayscale conv then 3x3, 2 outputs
    assert {"classifier.1.weight", "classifier.4.weight"} <= keys
    assert model.state_dict()["sobel.0.weight"].shape == (1, 3, 1, 1)
    assert torch.all(model.state_dict()["sobel.0.weight"] == 1 / 3)
    assert model.state_dict()["sobel.1.weight"].shape == (2, 1, 3, 3)


def test_rename_and_split():
    assert rename_key("features.module.0.weight") == "features.0.weight"
    assert rename_key("module.features.3.bias") == "features.3.bias"
    assert rename_key("classifier.1.weight") == "classifier.1.weight"
    tensors, head, renamed = convert_state_dict(
        {"features.module.0.weight": torch.ones(1), "top_layer.bias": torch.zeros(2)}
    )
    assert list(tensors) == ["features.0.weight"] and list(head) == ["bias"]
    assert renamed == {"features.module.0.weight": "features.0.weight"}


def test_round_trip_loads_every_tensor_and_reproduces_outputs(tmp_path, source_model):
    state = _original_layout(source_model)
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 3, "arch": "alexnet_small", "state_dict": state}, path)

    torch.manual_seed(1)
    target = build_backbone("alexnet_small", sobel=True, input_size=16)
    imported = import_deepcluster_checkpoint(path, model=target)
    report = imported.report
    assert report.ok, report.message()
    assert (report.arch, report.epoch) == ("alexnet_small", 3)
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert len(report.defaulted) == 5  # five BatchNorm counters absent from the old layout
    assert report.head == {"weight": (N_CLUSTERS, 4096), "bias": (N_CLUSTERS,)}
    assert torch.equal(imported.head["weight"], state["top_layer.weight"])

    ours = source_model.state_dict()
    loaded = imported.model.state_dict()
    assert set(ours) == set(loaded)
    for key in ours:
        assert torch.equal(ours[key], loaded[key]), key
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(source_model(x), imported.model.eval()(x))


def test_model_built_from_checkpoint_arch_and_sobel_flag(tmp_path, source_model):
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"arch": "alexnet_small", "state_dict": _original_layout(source_model)}, path)
    rebuilt = import_deepcluster_checkpoint(path, input_size=16)
    assert rebuilt.report.ok and rebuilt.model.sobel is not None
    assert "all model keys matched" in str(rebuilt.report)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(source_model(x), rebuilt.model.eval()(x))


def test_missing_extra_and_misshapen_keys_are_reported(tmp_path, source_model):
    state = _original_layout(source_model)
    del state["features.module.4.weight"]
    state["features.module.99.weight"] = torch.zeros(3)
    state["classifier.1.weight"] = torch.zeros(4096, 7)
    path = tmp_path / "broken.pth.tar"
    torch.save({"arch": "alexnet_small", "state_dict": state}, path)

    torch.manual_seed(1)
    target = build_backbone("alexnet_small", sobel=True, input_size=16)
    before = target.state_dict()["features.4.weight"].clone()
    imported = import_deepcluster_checkpoint(path, model=target)
    report = imported.report
    assert not report.ok
    assert report.missing == ["features.4.weight"]
    assert report.unexpected == ["features.99.weight"]
    assert report.mismatched == [("classifier.1.weight", (4096, 7), (4096, 1024))]
    message = report.message()
    for name in ("features.4.weight", "features.99.weight", "classifier.1.weight", "[4096, 7]"):
        assert name in message
    # the rest was loaded; the unmatched tensors kept the model's values
    assert torch.equal(
        target.state_dict()["features.0.weight"], source_model.state_dict()["features.0.weight"]
    )
    assert torch.equal(target.state_dict()["features.4.weight"], before)
    assert report.to_dict()["mismatched"][0] == {
        "key": "classifier.1.weight",
        "checkpoint": [4096, 7],
        "model": [4096, 1024],
    }

    with pytest.raises(ValueError, match="features.99.weight"):
        import_deepcluster_checkpoint(path, model=build_backbone("alexnet_small", input_size=16), strict=True)


def test_untrusted_pickles_are_refused_unless_trusted(tmp_path, source_model):
    path = tmp_path / "with_args.pth.tar"
    state = _original_layout(source_model)
    torch.save({"arch": "alexnet_small", "state_dict": state, "args": argparse.Namespace(lr=0.05)}, path)
    with pytest.raises(ValueError, match="trusted=True"):
        import_deepcluster_checkpoint(path, input_size=16)
    assert import_deepcluster_checkpoint(path, input_size=16, trusted=True).report.ok


def test_unknown_arch_and_missing_file(tmp_path, source_model):
    path = tmp_path / "resnet.pth.tar"
    torch.save({"arch": "alexnet_v9", "state_dict": _original_layout(source_model)}, path)
    with pytest.raises(ValueError, match="'alexnet_v9' is not one of"):
        import_deepcluster_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="nope.pth.tar"):
        import_deepcluster_checkpoint(tmp_path / "nope.pth.tar")
