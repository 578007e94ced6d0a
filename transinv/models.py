"""The networks: a registry of architectures, each wrapped into one `Net` shape, and the surgery
the protocol does on them (new head, freezing groups, re-initialising, ImageNet weights).

Every architecture, small or torchvision's, becomes a `Net` with the same four parts, so the
trainer freezes and scrambles by part and the metrics probe by layer name without knowing the
architecture:

    logits = head(classifier(pool(features(x))))

`MODELS` (the registry of `transinv/choices.py`) maps an architecture name (`small_cnn`,
`vgg16_bn`, ...) to a builder `(num_classes, in_channels, canvas_size) -> Net`, with its facts:
head kind (`flatten` or `gap`), total stride, whether torchvision builds it (and so has ImageNet
weights); `@MODELS.register(...)` fills it. What is not here:
which parts are frozen or scrambled in a phase (the trainer decides; it uses `parameter_groups`
and `reinitialize`), and what is done with the probed activations (`evaluation.py`,
`metrics.py`). Nothing here downloads: ImageNet weights are read from the torch hub cache or
refused with `WeightsUnavailableError`.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

from transinv.antialias import apply_shift_options
from transinv.choices import MODELS
from transinv.config import ConfigError, check_choice


class WeightsUnavailableError(FileNotFoundError):
    """ImageNet weights are not in the torch hub cache (this project never downloads them)."""


class Net(nn.Module):
    """A classifier split into the parts the protocol acts on.

    features:   conv trunk, [B, C, S, S] -> [B, C', S / total_stride, S / total_stride]
                (AlexNet's unpadded pools floor the sides further).
    pool:       maps -> vectors, [B, C', h, w] -> [B, D] (flatten, or global average + flatten).
    classifier: hidden FC layers, [B, D] -> [B, F]; `nn.Identity()` when the net has none.
    head:       the output layer, [B, F] -> [B, num_classes]; replaced for a new task.
    total_stride: product of the strides down the trunk (pooling makes a net nearly invariant
                to shifts by multiples of it; see paper.md section 6).
    probe_layers: ordered name -> module whose forward output is the activation to probe
                (post-ReLU for conv and FC layers): conv1.., fc1.., then `logits` (the head).
    torchvision_keys: torchvision state-dict key -> key in this net, for loading torchvision
                checkpoints; empty for the nets defined here.
    """

    def __init__(
        self,
        features: nn.Module,
        pool: nn.Module,
        classifier: nn.Module,
        head: nn.Linear,
        total_stride: int,
        probes: dict[str, nn.Module],
    ) -> None:
        super().__init__()
        self.features = features
        self.pool = pool
        self.classifier = classifier
        self.head = head
        self.total_stride = total_stride
        # A plain dict, not an nn.ModuleDict: the modules are already registered under their
        # parts, and registering them twice would duplicate their keys in the state dict.
        self.probe_layers: dict[str, nn.Module] = {**probes, "logits": head}
        self.torchvision_keys: dict[str, str] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, S, S] -> logits [B, num_classes]."""
        return self.head(self.classifier(self.pool(self.features(x))))


Builder = Callable[[int, int, int], Net]
"""What `MODELS` holds: `(num_classes, in_channels, canvas_size) -> Net`."""


def build_model(
    arch: str,
    num_classes: int,
    in_channels: int,
    canvas_size: int,
    antialias: str = "none",
    blur_size: int = 3,
    padding: str = "zeros",
) -> Net:
    """A freshly initialised `arch` for [B, in_channels, canvas_size, canvas_size] inputs, with
    the shift options `model.antialias`, `model.blur_size`, `model.padding` applied
    (`antialias.apply_shift_options`: parameters, state-dict keys, probes and the total stride
    stay what they are, so ImageNet weights and checkpoints load as before).

    Raises ConfigError for an unknown architecture, option or a canvas it cannot take.
    """
    check_choice("model.arch", arch, MODELS)
    net = MODELS[arch](num_classes, in_channels, canvas_size)
    apply_shift_options(net, antialias, blur_size, padding)
    return net


def replace_head(net: Net, num_classes: int) -> nn.Linear:
    """Give `net` a freshly initialised output layer for `num_classes`; return the old one."""
    old = net.head
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    net.head = new.to(device=old.weight.device, dtype=old.weight.dtype)
    net.probe_layers["logits"] = net.head
    return old


def parameter_groups(net: Net) -> dict[str, list[nn.Parameter]]:
    """The net's parameters by part: `conv` (features), `fc` (classifier), `head`.

    Every parameter is in exactly one group, so freezing a group freezes exactly that part.
    """
    groups = {
        "conv": list(net.features.parameters()),
        "fc": list(net.classifier.parameters()),
        "head": list(net.head.parameters()),
    }
    grouped = {id(p) for ps in groups.values() for p in ps}
    if len(grouped) != sum(len(ps) for ps in groups.values()) or grouped != {
        id(p) for p in net.parameters()
    }:
        raise ValueError("the parts of this net do not partition its parameters")
    return groups


def reinitialize(module: nn.Module) -> None:
    """Re-draw every parameter (and reset BatchNorm statistics) in `module`, in place.

    Uses each layer's own `reset_parameters`, i.e. PyTorch's default init, not torchvision's
    per-family init: the point of `scramble_*` is to destroy what was learned, not to replay
    the original draw.
    """
    for m in module.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()


# --- the small nets of the `small` preset (paper.md section 3) ----------------------------------


def _require_canvas(arch: str, canvas_size: int, multiple: int, minimum: int) -> None:
    if canvas_size % multiple or canvas_size < minimum:
        raise ConfigError(
            f"bad value {canvas_size!r} for 'canvas.size': {arch} needs a multiple of {multiple}"
            f" (its total stride) of at least {minimum} pixels"
        )


def _conv_trunk(
    in_channels: int, widths: list[int], pooled: int
) -> tuple[nn.Sequential, dict[str, nn.Module]]:
    """conv3x3 (pad 1) + ReLU per width, maxpool2 after the first `pooled`; with its probes."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    probes: dict[str, nn.Module] = {}
    for i, width in enumerate(widths, start=1):
        layers[f"conv{i}"] = nn.Conv2d(in_channels, width, kernel_size=3, padding=1)
        layers[f"relu{i}"] = probes[f"conv{i}"] = nn.ReLU()
        if i <= pooled:
            layers[f"pool{i}"] = nn.MaxPool2d(2)
        in_channels = width
    return nn.Sequential(layers), probes


def _hidden_fc(in_features: int, width: int) -> tuple[nn.Sequential, dict[str, nn.Module]]:
    classifier = nn.Sequential(OrderedDict(fc1=nn.Linear(in_features, width), relu1=nn.ReLU()))
    return classifier, {"fc1": classifier.relu1}


@MODELS.register(head="flatten", stride=8, torchvision=False)
def small_cnn(num_classes: int, in_channels: int, canvas_size: int) -> Net:
    """4 x (conv3x3 + ReLU), 16/32/64/64 channels, maxpool2 after the first three, flatten,
    FC 128 + ReLU, head. Stride 8: the flatten head sees 64 * (S/8)^2 features."""
    _require_canvas("small_cnn", canvas_size, 8, 8)
    features, probes = _conv_trunk(in_channels, [16, 32, 64, 64], pooled=3)
    classifier, fc_probes = _hidden_fc(64 * (canvas_size // 8) ** 2, 128)
    return Net(
        features, nn.Flatten(), classifier, nn.Linear(128, num_classes), 8, probes | fc_probes
    )


@MODELS.register(head="gap", stride=8, torchvision=False)
def small_cnn_gap(num_classes: int, in_channels: int, canvas_size: int) -> Net:
    """`small_cnn` with a spatial mean of the last conv map instead of flatten (64 features)."""
    _require_canvas("small_cnn_gap", canvas_size, 8, 8)
    features, probes = _conv_trunk(in_channels, [16, 32, 64, 64], pooled=3)
    classifier, fc_probes = _hidden_fc(64, 128)
    pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Net(features, pool, classifier, nn.Linear(128, num_classes), 8, probes | fc_probes)


@MODELS.register(head="flatten", stride=4, torchvision=False)
def tiny_cnn(num_classes: int, in_channels: int, canvas_size: int) -> Net:
    """For tests and smoke studies: 2 x (conv3x3 + ReLU + maxpool2), 8/16 channels, flatten,
    FC 32 + ReLU, head. Stride 4."""
    _require_canvas("tiny_cnn", canvas_size, 4, 4)
    features, probes = _conv_trunk(in_channels, [8, 16], pooled=2)
    classifier, fc_probes = _hidden_fc(16 * (canvas_size // 4) ** 2, 32)
    return Net(
        features, nn.Flatten(), classifier, nn.Linear(32, num_classes), 4, probes | fc_probes
    )


# --- torchvision architectures -------------------------------------------------------------------


def _torchvision_model(arch: str, num_classes: int, canvas_size: int) -> nn.Module:
    # torchvision records the smallest input each family's trunk can take (AlexNet's unpadded
    # pools need 63 px); below it the forward pass fails deep inside the net.
    minimum = torchvision.models.get_model_weights(arch).DEFAULT.meta["min_size"][0]
    if canvas_size < minimum:
        raise ConfigError(
            f"bad value {canvas_size!r} for 'canvas.size': {arch} needs at least {minimum} pixels"
        )
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def _input_conv(conv: nn.Conv2d, in_channels: int, init: Callable[[nn.Conv2d], None]) -> nn.Conv2d:
    """`conv` for `in_channels` inputs (itself when it already takes them), initialised by
    `init` the way its family initialises convs."""
    if conv.in_channels == in_channels:
        return conv
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=conv.bias is not None,
    )
    init(new)
    return new


def _kaiming(mode: str) -> Callable[[nn.Conv2d], None]:
    """The family's conv init: fan_out for VGG and ResNet, fan_in for DenseNet (torchvision's
    vgg.py, resnet.py, densenet.py)."""

    def init(conv: nn.Conv2d) -> None:
        nn.init.kaiming_normal_(conv.weight, mode=mode, nonlinearity="relu")
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)

    return init


def _wrap(source: nn.Module, net: Net) -> Net:
    """Record where each of `source`'s state-dict entries lives in `net`, which shares its
    modules, so torchvision checkpoints load by tensor identity rather than by a hand-kept table
    of renamed keys."""
    where = {id(t): key for key, t in net.state_dict(keep_vars=True).items()}
    net.torchvision_keys = {
        key: where[id(t)] for key, t in source.state_dict(keep_vars=True).items() if id(t) in where
    }
    return net


def _fc_probes(classifier: nn.Sequential) -> dict[str, nn.Module]:
    relus = [m for m in classifier if isinstance(m, nn.ReLU)]
    return {f"fc{i}": m for i, m in enumerate(relus, start=1)}


def _vgg_like(arch: str, num_classes: int, in_channels: int, canvas_size: int) -> Net:
    """VGG and AlexNet: a plain Sequential trunk, torchvision's adaptive average pool + flatten,
    and the classifier's last Linear as the head."""
    tv = _torchvision_model(arch, num_classes, canvas_size)
    # AlexNet keeps PyTorch's default init, which a new conv already has.
    init = (lambda conv: None) if arch == "alexnet" else _kaiming("fan_out")
    tv.features[0] = _input_conv(tv.features[0], in_channels, init)
    layers = list(tv.features)
    if arch == "alexnet":
        # Each of its 5 convs is a layer of its own: 11x11/4, 5x5, then three 3x3.
        probes = [m for m in layers if isinstance(m, nn.ReLU)]
    else:
        # One probe per block: the ReLU just before each of the 5 max-pools.
        probes = [layers[i - 1] for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)]
    stride = 1
    for m in layers:
        if isinstance(m, nn.Conv2d | nn.MaxPool2d):
            s = m.stride
            stride *= s[0] if isinstance(s, tuple) else s
    classifier = nn.Sequential(*list(tv.classifier)[:-1])
    net = Net(
        tv.features,
        nn.Sequential(tv.avgpool, nn.Flatten()),
        classifier,
        tv.classifier[-1],
        stride,
        {f"conv{i}": m for i, m in enumerate(probes, start=1)} | _fc_probes(classifier),
    )
    return _wrap(tv, net)


@MODELS.register(head="flatten", stride=32, torchvision=True)
def vgg11(num_classes: int, in_channels: int, canvas_size: int) -> Net:
    """VGG-11: 8 convs in 5 blocks, each closed by maxpool/2 (stride 32), 3 FC layers."""
    return _vgg_like("vgg11", num_classes, in_channels, canvas_size)


@MODELS.register(head="flatten", stride=32, torchvision=True)
def vgg11_bn(num_classes: int, in_channels: int, canvas_size: int) -> Net:
    """VGG-11 with BatchNorm after every conv."""
    return _vgg_like("vgg11_bn", num_classes, in_channels, canvas_size)


@MODELS.register(head="flatten", stride=32, torchvision=True)
def vgg16(num_classes: int, in_channels: int, canvas_size: int) -> Net:
    """VGG-16: 13 convs in 5 blocks, each closed by maxpool/2 (stride 32), 3 FC layers."""
    return _vgg_like("vgg16", num_classes, in_channels, canvas_size)


@MODELS.register(head="flatten", stride=32, torchvision=True)
def vgg16_bn(num_classes: int, in_channels: int, canvas_size: int) -> Net:
    """VGG-16 with BatchNorm after every conv."""
    return _vgg_like("vgg16_bn", num_classes, in_channels, canvas_size)


@MODELS.register(head="flatten", stride=32, torchvision=True)
def alexnet(num_classes: int, in_channels: int, canvas_size: int) -> Net:
    """Total stride 32 (4 x 2 x 2 x 2), but its unpadded 3x3 pools floor the map below S / 32
    (64 px -> 1 x 1), which its adaptive pool then spreads back to 6 x 6."""
    return _vgg_like("alexnet", num_classes, in_channels, canvas_size)


@MODELS.register(head="gap", stride=32, torchvision=True)
def resnet18(num_classes: int, in_channels: int, canvas_size: int) -> Net:
    """Stem (conv 7x7/2, maxpool/2) and 4 stages (/1, /2, /2, /2): stride 32; global average
    pool straight into the head, no hidden FC layers."""
    tv = _torchvision_model("resnet18", num_classes, canvas_size)
    tv.conv1 = _input_conv(tv.conv1, in_channels, _kaiming("fan_out"))
    stages = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    features = nn.Sequential(OrderedDict((name, getattr(tv, name)) for name in stages))
    probes = {"conv1": tv.relu} | {f"conv{i + 1}": getattr(tv, f"layer{i}") for i in range(1, 5)}
    net = Net(features, nn.Sequential(tv.avgpool, nn.Flatten()), nn.Identity(), tv.fc, 32, probes)
    return _wrap(tv, net)


@MODELS.register(head="gap", stride=32, torchvision=True)
def densenet121(num_classes: int, in_channels: int, canvas_size: int) -> Net:
    """Stem (conv 7x7/2, maxpool/2) and 3 transitions (avgpool/2): stride 32. Probes are the
    post-BN-ReLU views of the stem and of each dense block's output (the transitions' ReLUs and
    the final norm + ReLU)."""
    tv = _torchvision_model("densenet121", num_classes, canvas_size)
    tv.features.conv0 = _input_conv(tv.features.conv0, in_channels, _kaiming("fan_in"))
    # torchvision applies this ReLU functionally in DenseNet.forward; as a module it can be probed.
    tv.features.add_module("relu5", nn.ReLU(inplace=True))
    f = tv.features
    probes = {
        "conv1": f.relu0,
        "conv2": f.transition1.relu,
        "conv3": f.transition2.relu,
        "conv4": f.transition3.relu,
        "conv5": f.relu5,
    }
    pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net = Net(f, pool, nn.Identity(), tv.classifier, 32, probes)
    return _wrap(tv, net)


# --- ImageNet weights ----------------------------------------------------------------------------

# Old DenseNet checkpoints (the ImageNet ones included) name dense-layer parts `norm.1`, `conv.2`;
# torchvision renames them when loading (densenet.py, `_load_state_dict`), and so do we.
_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def imagenet_weights_path(arch: str) -> tuple[Path, str, str]:
    """(file, weights name, url) of `arch`'s default ImageNet weights in the torch hub cache."""
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    return path, str(weights), weights.url


def load_imagenet_weights(net: Net, arch: str) -> None:
    """Load torchvision's default ImageNet weights for `arch` into `net`, except its head.

    Reads only the torch hub cache, never the network. A 1-channel net gets the RGB filters of
    the first conv summed, which gives exactly the RGB net's response to a grey image replicated
    to three channels.

    Raises ConfigError for an architecture without ImageNet weights, WeightsUnavailableError
    when the file is not cached.
    """
    check_choice("model.arch", arch, MODELS)
    if not MODELS.facts(arch)["torchvision"] or not net.torchvision_keys:
        raise ConfigError(
            f"architecture {arch!r} has no ImageNet weights (pretrain.dataset=imagenet); "
            f"architectures with them: {', '.join(MODELS.names(torchvision=True))}"
        )
    path, name, url = imagenet_weights_path(arch)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"ImageNet weights for {arch} ({name}) are not cached and this project never "
            f"downloads them: place the file {path} (fetch it from {url} on a machine with "
            f"internet, or set TORCH_HOME to a folder whose hub/checkpoints/ holds it)"
        )
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    target = net.state_dict()
    loaded: set[str] = set()
    for key, value in checkpoint.items():
        match = _OLD_DENSENET_KEY.match(key)
        key = match.group(1) + match.group(2) if match else key
        if key not in net.torchvision_keys:
            raise ValueError(f"{path}: key {key!r} is not part of torchvision's {arch}")
        dest = net.torchvision_keys[key]
        if dest.startswith("head."):
            continue  # ImageNet's 1000-way output layer; this net has its own head
        if value.ndim == 4 and value.shape[1] == 3 and target[dest].shape[1] == 1:
            value = value.sum(dim=1, keepdim=True)
        target[dest] = value
        loaded.add(dest)
    # Checkpoints older than PyTorch 0.4.1 (DenseNet's, ResNet's) have no BatchNorm
    # `num_batches_tracked`; it only matters for momentum=None BN, so the net's own count stays.
    missing = [
        k
        for k in target
        if k not in loaded and not k.startswith("head.") and not k.endswith(".num_batches_tracked")
    ]
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} entries of {arch}, e.g. {missing[:3]}")
    net.load_state_dict(target)


__all__ = [
    "MODELS",
    "Net",
    "WeightsUnavailableError",
    "build_model",
    "imagenet_weights_path",
    "load_imagenet_weights",
    "parameter_groups",
    "reinitialize",
    "replace_head",
]
