"""Tests of transinv.models: every registered architecture builds, runs, probes and splits into
parts as the trainer and metrics expect; ImageNet weights load from the hub cache or are refused.

Run: .venv/bin/pytest tests/test_models.py -q   (about 30 s on 2 CPU cores, most of it building
the four VGGs twice; nothing is downloaded).
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torchvision
from torch import nn

from transinv.config import ConfigError
from transinv.models import (
    MODELS,
    Net,
    WeightsUnavailableError,
    build_model,
    imagenet_weights_path,
    load_imagenet_weights,
    parameter_groups,
    reinitialize,
    replace_head,
)

CANVAS = 64
CLASSES = 5


@pytest.fixture(
    scope="module",
    params=[(arch, c) for arch in MODELS for c in (1, 3)],
    ids=lambda p: f"{p[0]}-{p[1]}ch",
)
def built(request) -> tuple[str, int, Net]:
    """(arch, in_channels, net) at 64 px; module-scoped so pytest builds each VGG once per
    channel count and runs all tests on it before building the next."""
    arch, channels = request.param
    torch.manual_seed(0)
    return arch, channels, build_model(arch, CLASSES, channels, CANVAS)


def batch(channels: int, size: int = CANVAS) -> torch.Tensor:
    return torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(1))


def test_forward_gives_one_logit_per_class(built):
    arch, channels, net = built
    assert isinstance(net, Net)
    assert net(batch(channels)).shape == (2, CLASSES)


def test_forward_is_head_of_classifier_of_pool_of_features(built):
    _, channels, net = built
    net.eval()
    try:
        with torch.no_grad():
            x = batch(channels)
            composed = net.head(net.classifier(net.pool(net.features(x))))
            torch.testing.assert_close(net(x), composed)
    finally:
        net.train()


def test_every_probe_layer_fires_once_on_forward(built):
    _, channels, net = built
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in net.probe_layers}
    handles = [
        module.register_forward_hook(lambda m, i, out, name=name: seen[name].append(out))
        for name, module in net.probe_layers.items()
    ]
    try:
        logits = net(batch(channels))
    finally:
        for h in handles:
            h.remove()
    for name, outputs in seen.items():
        assert len(outputs) == 1, f"{name} fired {len(outputs)} times"
        assert isinstance(outputs[0], torch.Tensor) and outputs[0].shape[0] == 2
    assert torch.equal(seen["logits"][0], logits)


def test_probe_names_are_convs_then_fcs_then_logits(built):
    _, _, net = built
    names = list(net.probe_layers)
    assert len(names) == len(set(names)) and 4 <= len(names) <= 8
    assert names[-1] == "logits" and net.probe_layers["logits"] is net.head
    body = names[:-1]
    convs = [n for n in body if n.startswith("conv")]
    fcs = [n for n in body if n.startswith("fc")]
    assert body == convs + fcs
    assert convs == [f"conv{i}" for i in range(1, len(convs) + 1)] and convs
    assert fcs == [f"fc{i}" for i in range(1, len(fcs) + 1)]
    members = set(map(id, net.modules()))
    assert all(id(m) in members for m in net.probe_layers.values())


def test_conv_and_fc_probes_are_post_relu(built):
    _, channels, net = built
    seen: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(lambda m, i, out, name=name: seen.__setitem__(name, out))
        for name, module in net.probe_layers.items()
        if name != "logits"
    ]
    try:
        with torch.no_grad():
            net(batch(channels))
    finally:
        for h in handles:
            h.remove()
    for name, out in seen.items():
        assert out.min() >= 0, name


def test_replace_head_changes_output_width_and_leaves_the_rest(built):
    _, channels, net = built
    before = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("head.")}
    old = replace_head(net, 7)
    try:
        assert isinstance(old, nn.Linear) and old.out_features == CLASSES
        assert net.head is not old and net.head.out_features == 7
        assert net.head.in_features == old.in_features
        assert net.probe_layers["logits"] is net.head and list(net.probe_layers)[-1] == "logits"
        after = net.state_dict()
        assert set(after) == set(before) | {"head.weight", "head.bias"}
        assert all(torch.equal(v, after[k]) for k, v in before.items())
        with torch.no_grad():
            assert net(batch(channels)).shape == (2, 7)
    finally:
        # The fixture's net is shared with the other tests (building a VGG twice is slow).
        net.head = net.probe_layers["logits"] = old


def test_parameter_groups_partition_the_parameters(built):
    _, _, net = built
    groups = parameter_groups(net)
    assert set(groups) == {"conv", "fc", "head"}
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in net.parameters()}
    assert [id(p) for p in groups["head"]] == [id(p) for p in net.head.parameters()]
    assert {id(p) for p in groups["conv"]} == {id(p) for p in net.features.parameters()}
    assert groups["conv"]


def test_channels_last_gives_the_same_logits(built):
    _, channels, net = built
    x = batch(channels)
    net.eval()
    try:
        with torch.no_grad():
            expected = net(x)
            net.to(memory_format=torch.channels_last)
            got = net(x.contiguous(memory_format=torch.channels_last))
    finally:
        net.to(memory_format=torch.contiguous_format)
        net.train()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_total_stride_is_the_registered_fact_and_matches_feature_map_side(built):
    arch, channels, net = built
    assert net.total_stride == MODELS.facts(arch)["stride"]
    side = net.features(batch(channels)).shape[-1]
    if arch == "alexnet":
        # Its unpadded 3x3/2 pools floor each halving: 64 px ends at 1 x 1, not 64 / 32.
        assert side == 1
    else:
        assert side == CANVAS // net.total_stride


@pytest.mark.parametrize("size", [32, 96])
@pytest.mark.parametrize("arch", ["small_cnn", "small_cnn_gap", "tiny_cnn"])
def test_small_nets_take_any_canvas_that_is_a_multiple_of_the_stride(arch, size):
    net = build_model(arch, CLASSES, 1, size)
    assert net(batch(1, size)).shape == (2, CLASSES)
    assert net.features(batch(1, size)).shape[-1] == size // net.total_stride


@pytest.mark.parametrize("arch,size", [("small_cnn", 60), ("tiny_cnn", 30), ("alexnet", 48)])
def test_unusable_canvas_size_is_a_config_error_naming_canvas_size(arch, size):
    with pytest.raises(ConfigError, match=rf"{size}.*canvas\.size.*{arch}"):
        build_model(arch, CLASSES, 1, size)


def test_unknown_arch_is_a_config_error_listing_the_choices():
    with pytest.raises(ConfigError) as info:
        build_model("vgg17", CLASSES, 1, CANVAS)
    message = str(info.value)
    assert "'vgg17'" in message and "model.arch" in message
    assert all(arch in message for arch in MODELS)


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="small_cnn"):
        MODELS.register(head="flatten", stride=8, torchvision=False)(MODELS["small_cnn"])


def test_head_fact_says_whether_pooling_keeps_positions(built):
    """`gap`: the pool maps a shuffled feature map to the same vector; `flatten`: it does not.
    Checked on a 4 x 4 map, where AlexNet's own 64 px trunk would leave 1 x 1."""
    arch, channels, net = built
    width = net.features(batch(channels)).shape[1]
    maps = torch.randn(1, width, 4, 4, generator=torch.Generator().manual_seed(2))
    rolled = maps.roll(1, dims=-1)
    with torch.no_grad():
        same = torch.allclose(net.pool(maps), net.pool(rolled), atol=1e-6)
    assert same == (MODELS.facts(arch)["head"] == "gap")


def test_torchvision_fact_is_true_exactly_for_nets_with_torchvision_keys(built):
    arch, _, net = built
    assert MODELS.facts(arch)["torchvision"] == bool(net.torchvision_keys)


def test_reinitialize_redraws_only_the_given_part():
    torch.manual_seed(0)
    net = build_model("small_cnn", CLASSES, 1, CANVAS)
    conv = {k: v.clone() for k, v in net.features.state_dict().items()}
    fc = {k: v.clone() for k, v in net.classifier.state_dict().items()}
    reinitialize(net.classifier)
    assert all(torch.equal(v, net.features.state_dict()[k]) for k, v in conv.items())
    assert all(not torch.equal(v, net.classifier.state_dict()[k]) for k, v in fc.items())


def test_reinitialize_resets_batchnorm_statistics():
    net = build_model("resnet18", CLASSES, 3, CANVAS)
    net(batch(3))  # train mode: running statistics move
    bn = net.features.bn1
    assert not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    reinitialize(net.features)
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))


def test_deepcopy_keeps_probes_pointing_into_the_copy():
    net = build_model("tiny_cnn", CLASSES, 1, CANVAS)
    clone = copy.deepcopy(net)
    members = set(map(id, clone.modules()))
    assert all(id(m) in members for m in clone.probe_layers.values())
    assert clone.probe_layers["logits"] is clone.head


def test_tiny_cnn_learns_a_fixed_batch_in_a_few_cpu_steps():
    torch.manual_seed(0)
    net = build_model("tiny_cnn", 4, 1, 32)
    x, y = torch.randn(16, 1, 32, 32), torch.arange(16) % 4
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(30):
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (net(x).argmax(1) == y).float().mean() == 1.0


# --- ImageNet weights: only ever read from $TORCH_HOME/hub/checkpoints ---------------------------


def test_missing_imagenet_weights_error_names_weights_file_and_url(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    net = build_model("resnet18", CLASSES, 3, CANVAS)
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(WeightsUnavailableError) as info:
        load_imagenet_weights(net, "resnet18")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(expected) in message
    assert "resnet18" in message and "ResNet18_Weights.IMAGENET1K_V1" in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert not expected.exists()


def test_small_net_has_no_imagenet_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    net = build_model("small_cnn", CLASSES, 3, CANVAS)
    with pytest.raises(ConfigError, match="small_cnn") as info:
        load_imagenet_weights(net, "small_cnn")
    with_weights = MODELS.names(torchvision=True)
    assert "resnet18" in with_weights and "small_cnn" not in with_weights
    assert all(arch in str(info.value).split("them: ")[1] for arch in with_weights)


def _cache(tmp_path, monkeypatch, arch: str, state: dict[str, torch.Tensor]) -> None:
    """Put `state` where torchvision's default weights for `arch` would be cached."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path, _, _ = imagenet_weights_path(arch)
    assert path.parent == tmp_path / "hub" / "checkpoints"
    path.parent.mkdir(parents=True)
    torch.save(state, path)


def test_cached_weights_load_into_a_grey_net_with_summed_rgb_filters(tmp_path, monkeypatch):
    torch.manual_seed(1)
    source = torchvision.models.get_model("resnet18", weights=None)  # 1000 classes, RGB
    source(torch.randn(2, 3, 32, 32))  # move the BN statistics off their defaults
    _cache(tmp_path, monkeypatch, "resnet18", source.state_dict())
    net = build_model("resnet18", CLASSES, 1, CANVAS)
    head = copy.deepcopy(net.head.state_dict())
    load_imagenet_weights(net, "resnet18")
    torch.testing.assert_close(
        net.features.conv1.weight, source.conv1.weight.sum(dim=1, keepdim=True)
    )
    assert torch.equal(net.features.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert torch.equal(net.features.bn1.running_mean, source.bn1.running_mean)
    assert all(torch.equal(v, net.head.state_dict()[k]) for k, v in head.items())
    # A grey image through the grey net = the same image replicated to RGB through ImageNet's.
    source.eval()
    net.eval()
    grey = batch(1)
    with torch.no_grad():
        torch.testing.assert_close(
            net.pool(net.features(grey)),
            torch.flatten(source.avgpool(_resnet_trunk(source, grey.expand(-1, 3, -1, -1))), 1),
            rtol=1e-4,
            atol=1e-4,
        )


def _resnet_trunk(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    return m.layer4(m.layer3(m.layer2(m.layer1(x))))


def test_cached_densenet_weights_with_old_style_keys_load(tmp_path, monkeypatch):
    torch.manual_seed(2)
    source = torchvision.models.get_model("densenet121", weights=None)
    # Like the published file: dense-layer parts spelled `norm.1` (torchvision renames them on
    # load) and no BatchNorm `num_batches_tracked` (it predates them).
    old = {
        re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v
        for k, v in source.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    _cache(tmp_path, monkeypatch, "densenet121", old)
    net = build_model("densenet121", CLASSES, 3, CANVAS)
    load_imagenet_weights(net, "densenet121")
    assert torch.equal(net.features.conv0.weight, source.features.conv0.weight)
    layer = net.features.denseblock3.denselayer5
    assert torch.equal(layer.norm1.weight, source.features.denseblock3.denselayer5.norm1.weight)
    assert torch.equal(net.features.norm5.running_var, source.features.norm5.running_var)
    assert net.head.out_features == CLASSES


@pytest.mark.parametrize("antialias", ["blur", "aps"])
@pytest.mark.parametrize(
    "arch", ["small_cnn", "small_cnn_gap", "tiny_cnn", "vgg11", "resnet18", "densenet121"]
)
def test_build_model_applies_antialias_and_padding_keeping_parameters_probes_and_stride(
    arch, antialias
):
    from transinv.antialias import DownsampledConv2d, DownsampledPool2d

    torch.manual_seed(0)
    plain = build_model(arch, CLASSES, 1, CANVAS)
    torch.manual_seed(0)
    net = build_model(arch, CLASSES, 1, CANVAS, antialias, 5, "circular")
    converted = [m for m in net.modules() if isinstance(m, DownsampledPool2d | DownsampledConv2d)]
    assert converted, "no strided layer was converted"
    padded = [m for m in net.modules() if isinstance(m, nn.Conv2d) and any(m.padding)]
    assert padded and all(m.padding_mode == "circular" for m in padded)
    # Same draw, same keys: ImageNet weights and checkpoints of the plain net load into it.
    assert net.state_dict().keys() == plain.state_dict().keys()
    net.load_state_dict(plain.state_dict())
    assert (
        net.total_stride == plain.total_stride
        and net.probe_layers.keys() == plain.probe_layers.keys()
    )
    assert net.torchvision_keys == plain.torchvision_keys
    fired = []
    hooks = [m.register_forward_hook(lambda *a: fired.append(1)) for m in net.probe_layers.values()]
    with torch.no_grad():
        assert net.eval()(batch(1)).shape == (2, CLASSES)
    for h in hooks:
        h.remove()
    assert len(fired) >= len(net.probe_layers)


def test_antialias_none_with_zeros_padding_builds_the_plain_net():
    torch.manual_seed(0)
    plain = build_model("small_cnn", CLASSES, 1, CANVAS)
    torch.manual_seed(0)
    same = build_model("small_cnn", CLASSES, 1, CANVAS, "none", 3, "zeros")
    x = batch(1)
    with torch.no_grad():
        assert torch.equal(plain(x), same(x))


@pytest.mark.parametrize(
    "options,key",
    [
        (("blurpool", 3, "zeros"), "model.antialias"),
        (("blur", 4, "zeros"), "model.blur_size"),
        (("none", 3, "reflect"), "model.padding"),
    ],
)
def test_unknown_antialias_or_padding_is_a_config_error_naming_the_key(options, key):
    with pytest.raises(ConfigError, match=key):
        build_model("small_cnn", CLASSES, 1, CANVAS, *options)
