"""Known answers for the shift-aware layers and the converter (transinv/antialias.py): exact
invariance of an `aps` + circular + GAP net, its negative control, BlurPool's smaller change
under one-pixel shifts, and conversion of the torchvision nets."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn

from transinv.antialias import (
    BlurPool2d,
    DownsampledConv2d,
    PolyphasePool2d,
    apply_shift_options,
    binomial_filter,
)
from transinv.config import ConfigError

CANVAS = 64


def small_net(head: str = "gap", widths=(16, 32, 64, 64), pooled: int = 3, seed: int = 0):
    """The small_cnn's trunk (conv3x3 pad 1 + ReLU, maxpool2 after the first `pooled`), then a
    GAP or flatten head: [B, 1, 64, 64] -> [B, 10]. Built here, from nn layers, so the test
    depends only on the converter."""
    torch.manual_seed(seed)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    c = 1
    for i, w in enumerate(widths, start=1):
        layers[f"conv{i}"] = nn.Conv2d(c, w, kernel_size=3, padding=1)
        layers[f"relu{i}"] = nn.ReLU()
        if i <= pooled:
            layers[f"pool{i}"] = nn.MaxPool2d(2)
        c = w
    side = CANVAS // 2**pooled
    pool = (
        [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)]
        if head == "gap"
        else [nn.Flatten(), nn.Linear(c * side * side, 10)]
    )
    return nn.Sequential(OrderedDict(features=nn.Sequential(layers))), nn.Sequential(*pool)


def net_with(antialias: str, padding: str = "circular", head: str = "gap", blur_size: int = 3):
    features, pool = small_net(head)
    apply_shift_options(features, antialias, blur_size, padding)
    return nn.Sequential(features, pool).eval()


def images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, CANVAS, CANVAS, generator=torch.Generator().manual_seed(seed))


# --- the layers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size,row", [(3, [1, 2, 1]), (5, [1, 4, 6, 4, 1])])
def test_binomial_filter_sums_to_one_and_is_the_outer_product_of_pascals_row(size, row):
    kernel = binomial_filter(size)
    row = torch.tensor(row, dtype=torch.float32)
    assert kernel.shape == (size, size)
    assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-7)
    assert torch.allclose(kernel, torch.outer(row, row) / row.sum() ** 2)


@pytest.mark.parametrize("pad_mode", ["reflect", "circular"])
@pytest.mark.parametrize("size", [3, 5])
def test_blurpool_keeps_a_constant_map_constant_and_halves_the_sides(pad_mode, size):
    x = torch.full((2, 3, 10, 7), 0.7)
    y = BlurPool2d(size, 2, pad_mode)(x)
    assert y.shape == (2, 3, 5, 4)
    assert torch.allclose(y, torch.full_like(y, 0.7))


def test_blurpool_filter_is_not_in_the_state_dict():
    assert BlurPool2d(5).state_dict() == {}


def test_polyphase_pool_keeps_the_component_of_largest_norm_per_sample():
    x = torch.zeros(2, 1, 4, 4)
    x[0, 0, 1::2, 0::2] = 1.0  # sample 0: component (1, 0) is the only nonzero one
    x[1, 0, 0::2, 1::2] = 2.0  # sample 1: component (0, 1)
    x[1, 0, 1::2, 1::2] = 1.0  # smaller norm than (0, 1)
    y = PolyphasePool2d(2)(x)
    assert torch.equal(y[0], torch.ones(1, 2, 2))
    assert torch.equal(y[1], torch.full((1, 2, 2), 2.0))


def test_polyphase_pool_breaks_ties_at_the_first_component():
    checker = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(3, 3)[None, None]  # equal norms
    assert torch.equal(PolyphasePool2d(2)(checker), torch.ones(1, 1, 3, 3))


@pytest.mark.parametrize("shift", [(1, 0), (0, 1), (1, 1), (3, 6), (-5, 7)])
def test_polyphase_pool_of_a_circularly_shifted_map_is_a_circular_shift_of_its_output(shift):
    x = torch.randn(3, 4, 12, 12, generator=torch.Generator().manual_seed(3))
    pool = PolyphasePool2d(2)
    y, ys = pool(x), pool(torch.roll(x, shift, dims=(2, 3)))
    for k in range(len(x)):  # each sample keeps its own component, so its own shift
        rolls = [torch.roll(y[k], (a, b), dims=(1, 2)) for a in range(6) for b in range(6)]
        assert any(torch.equal(ys[k], r) for r in rolls)


# --- exact invariance with aps, circular padding and a GAP head ----------------------------------


@pytest.mark.parametrize("shift", [(1, 0), (0, 1), (1, 1), (3, 5), (7, -2), (-13, 9), (31, 17)])
def test_aps_circular_gap_net_is_invariant_to_circular_shifts(shift):
    net = net_with("aps")
    x = images()
    with torch.no_grad():
        y, ys = net(x), net(torch.roll(x, shift, dims=(2, 3)))
    assert y.abs().max() > 1e-2  # a net that outputs ~0 would pass vacuously
    torch.testing.assert_close(ys, y, atol=1e-5, rtol=0)


def paste(item: torch.Tensor, x: int, y: int, background: float) -> torch.Tensor:
    """item [1, k, k] with its top-left corner at (x, y) on a [1, 1, 64, 64] constant canvas."""
    canvas = torch.full((1, 1, CANVAS, CANVAS), background)
    k = item.shape[-1]
    canvas[0, :, y : y + k, x : x + k] = item
    return canvas


@pytest.mark.parametrize("background", [0.0, 0.3])
def test_aps_net_is_invariant_to_moving_an_item_on_a_constant_background(background):
    net = net_with("aps")
    item = torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(4))
    places = [(8, 24), (9, 24), (8, 25), (0, 0), (48, 48), (33, 7), (21, 40)]
    with torch.no_grad():
        logits = [net(paste(item, x, y, background)) for x, y in places]
    for other in logits[1:]:
        torch.testing.assert_close(other, logits[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("shift", [(1, 0), (0, 1), (3, 5)])
def test_without_antialiasing_the_same_net_is_not_invariant_to_odd_shifts(shift):
    # The negative control: the same weights and padding, no converter down-sampling.
    net = net_with("none")
    x = images()
    with torch.no_grad():
        change = (net(torch.roll(x, shift, dims=(2, 3))) - net(x)).abs().max()
    assert change > 1e-4


def test_without_antialiasing_shifts_by_the_total_stride_are_invariant():
    # Instrument check for the control above: the change it finds comes from sub-sampling
    # phases, so shifts by multiples of the total stride (8) leave a circular net unchanged.
    net = net_with("none")
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(
            net(torch.roll(x, (8, -16), dims=(2, 3))), net(x), atol=1e-5, rtol=0
        )


# --- BlurPool reduces the change under a one-pixel shift -----------------------------------------


def feature_change(antialias: str, blur_size: int = 3) -> float:
    """Mean over random images of ||f(x shifted 1 px) - f(x)|| / ||f(x)||, f the seeded random
    trunk's last (stride-8) map, zero padding."""
    features, _ = small_net(seed=5)
    apply_shift_options(features, antialias, blur_size, "zeros")
    features.eval()
    x = images(16, seed=6)
    with torch.no_grad():
        f = features(x).flatten(1)
        fs = features(torch.roll(x, 1, dims=3)).flatten(1)
    return float(((fs - f).norm(dim=1) / f.norm(dim=1)).mean())


@pytest.mark.parametrize("blur_size", [3, 5])
def test_blur_reduces_the_change_of_the_feature_map_under_a_one_pixel_shift(blur_size):
    # Measured: none 0.12, blur 3 0.017, blur 5 0.007; half leaves a wide margin.
    assert feature_change("blur", blur_size) < 0.5 * feature_change("none")


# --- the converter ------------------------------------------------------------------------------


@pytest.mark.parametrize("antialias", ["blur", "aps"])
@pytest.mark.parametrize("head", ["gap", "flatten"])
def test_converted_small_net_keeps_its_shapes_state_dict_and_parameters(antialias, head):
    features, pool = small_net(head)
    before = {k: v.clone() for k, v in features.state_dict().items()}
    params = list(features.parameters())
    replaced = apply_shift_options(features, antialias, 5, "circular")
    assert replaced == ["features.pool1", "features.pool2", "features.pool3"]
    assert [id(p) for p in features.parameters()] == [id(p) for p in params]
    assert features.state_dict().keys() == before.keys()
    assert features(images(2)).shape == (2, 64, 8, 8)
    assert nn.Sequential(features, pool)(images(2)).shape == (2, 10)


def test_converted_net_trains():
    features, pool = small_net()
    apply_shift_options(features, "aps", 3, "circular")
    net = nn.Sequential(features, pool)
    nn.functional.cross_entropy(net(images(4)), torch.tensor([0, 1, 2, 3])).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_circular_padding_wraps_every_padded_conv_and_none_keeps_the_pools():
    features, _ = small_net()
    assert apply_shift_options(features, "none", 3, "circular") == []
    convs = [m for m in features.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.padding_mode == "circular" for m in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in features.modules()) == 3


def test_converting_twice_changes_nothing_more():
    net = net_with("aps")
    again = copy.deepcopy(net)
    assert apply_shift_options(again, "aps", 3, "circular") == []
    x = images(2)
    with torch.no_grad():
        assert torch.equal(again(x), net(x))


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"antialias": "blurpool"}, "model.antialias"),
        ({"blur_size": 4}, "model.blur_size"),
        ({"padding": "reflect"}, "model.padding"),
    ],
)
def test_bad_values_raise_config_error_naming_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        apply_shift_options(nn.Sequential(nn.Conv2d(1, 1, 3)), **kwargs)


TORCHVISION_REPLACED = {
    "vgg11": ["features.2", "features.5", "features.10", "features.15", "features.20"],
    "resnet18": [
        "conv1",
        "maxpool",
        *[f"layer{i}.0.{part}" for i in (2, 3, 4) for part in ("conv1", "downsample.0")],
    ],
    "alexnet": ["features.0", "features.2", "features.5", "features.12"],
    "densenet121": [
        "features.conv0",
        "features.pool0",
        *[f"features.transition{i}.pool" for i in (1, 2, 3)],
    ],
}


def trunk_output(net: nn.Module, arch: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
    """(logits, shape of the last conv map): the input of the adaptive pool (densenet: the
    output of `features`)."""
    seen: list[torch.Size] = []
    if arch == "densenet121":
        hook = net.features.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    else:
        hook = net.avgpool.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    with torch.no_grad():
        logits = net(x)
    hook.remove()
    return logits, seen[0]


@pytest.mark.parametrize("antialias", ["blur", "aps"])
@pytest.mark.parametrize("arch", list(TORCHVISION_REPLACED))
def test_torchvision_nets_convert_and_run_with_their_output_shape(arch, antialias):
    torch.manual_seed(0)
    net = torchvision.models.get_model(arch, weights=None, num_classes=7).eval()
    original = copy.deepcopy(net)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    logits, trunk = trunk_output(original, arch, x)

    replaced = apply_shift_options(net, antialias, 3, "circular")
    assert replaced == TORCHVISION_REPLACED[arch]
    assert any(isinstance(m, DownsampledConv2d) for m in net.modules()) == (arch != "vgg11")
    # ImageNet weights and checkpoints of the unconverted net load strictly.
    net.load_state_dict(original.state_dict(), strict=True)
    new_logits, new_trunk = trunk_output(net, arch, x)
    assert new_logits.shape == logits.shape == (1, 7)
    assert torch.isfinite(new_logits).all()
    if antialias == "blur" or arch != "alexnet":
        assert new_trunk == trunk
    else:  # AlexNet's unpadded pools: aps keeps each pool's input size before halving it
        assert new_trunk[:2] == trunk[:2] and new_trunk[2] > trunk[2]
