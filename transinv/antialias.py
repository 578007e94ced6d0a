"""Shift-aware down-sampling and padding: the layers of the anti-aliased and the truly
shift-invariant nets, and the converter that puts them into a built network.

Two ways to down-sample without the aliasing that makes a strided CNN change its output when
its input moves by one pixel (paper.md section 6, stride alignment):

- `blur` (Zhang 2019, "Making convolutional networks shift-invariant again", arXiv:1904.11486):
  a fixed binomial low-pass filter before each sub-sampling (`BlurPool2d`). It reduces the change
  under small shifts; it does not remove it.
- `aps` (Chaman & Dokmanic 2021, "Truly shift-invariant convolutional neural networks",
  arXiv:2011.14214): adaptive polyphase sampling (`PolyphasePool2d`) keeps, per sample, the
  polyphase component of largest norm, so the output for a circularly shifted input is a circular
  shift of the output. With circular padding and a global-average-pool head the whole net is
  exactly invariant to circular shifts of its input (sides divisible by the total stride).

`apply_shift_options(net, antialias, blur_size, padding)` converts a built network in place:
each strided max-pool, average-pool and conv is evaluated at stride 1 and followed by the chosen
down-sampler (`DownsampledPool2d`, `DownsampledConv2d`); `padding="circular"` makes every padded
conv (and the pools it rebuilds) wrap around. Parameters keep their objects and their
state-dict keys, so ImageNet weights and checkpoints load into a converted net unchanged.

Written from the two papers. What is not here: the config keys (`model.antialias`,
`model.padding`, `model.blur_size`) and their choices (`config.py` declares them), building the
nets (`models.build_model` applies this converter), and measuring shift sensitivity
(`metrics.py`, `evaluation.py`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from transinv.config import ANTIALIAS, BLUR_SIZES, PADDINGS, check_choice

Pair = tuple[int, int]


def _pair(v: int | tuple[int, ...]) -> Pair:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def binomial_filter(size: int) -> torch.Tensor:
    """[size, size] outer product of the binomial row (Pascal's triangle) with itself, summing
    to 1: size 3 -> [1, 2, 1] x [1, 2, 1] / 16; size 5 -> [1, 4, 6, 4, 1] x ... / 256."""
    if size < 1:
        raise ValueError(f"binomial filter size must be a positive integer, got {size!r}")
    row = torch.tensor([math.comb(size - 1, i) for i in range(size)], dtype=torch.float64)
    kernel = torch.outer(row, row)
    return (kernel / kernel.sum()).float()


def _pad(x: torch.Tensor, pads: tuple[int, int, int, int], mode: str, value: float = 0.0):
    """F.pad with (left, right, top, bottom); `reflect` and `circular` fall back to `replicate`
    on a side too short for them (AlexNet's maps shrink to 1 x 1 at 64 px)."""
    if not any(pads):
        return x
    too_short = max(pads[:2]) > x.shape[-1] or max(pads[2:]) > x.shape[-2]
    reflect_short = max(pads[:2]) >= x.shape[-1] or max(pads[2:]) >= x.shape[-2]
    if (mode == "circular" and too_short) or (mode == "reflect" and reflect_short):
        mode = "replicate"
    if mode == "constant":
        return F.pad(x, pads, mode="constant", value=value)
    return F.pad(x, pads, mode=mode)


class BlurPool2d(nn.Module):
    """Depthwise binomial low-pass filter, then sub-sampling by `stride` (Zhang 2019).

    x: [B, C, H, W] -> [B, C, ceil(H / sh), ceil(W / sw)]. The input is padded by size // 2 on
    each side (`reflect` as in the paper, or `circular`), so a constant map stays constant. The
    filter is a non-persistent buffer: it follows `.to(device)` but is not in the state dict.
    """

    def __init__(self, size: int = 3, stride: int | Pair = 2, pad_mode: str = "reflect") -> None:
        super().__init__()
        if size < 1 or size % 2 == 0:
            raise ValueError(f"blur filter size must be odd and positive, got {size!r}")
        if pad_mode not in ("reflect", "circular", "replicate", "constant"):
            raise ValueError(f"unknown blur padding {pad_mode!r}; choose reflect or circular")
        self.size = size
        self.stride = _pair(stride)
        self.pad_mode = pad_mode
        self.register_buffer("kernel", binomial_filter(size), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        p = self.size // 2
        x = _pad(x, (p, p, p, p), self.pad_mode)
        weight = self.kernel.to(x.dtype).expand(c, 1, self.size, self.size)
        return F.conv2d(x, weight, stride=self.stride, groups=c)

    def extra_repr(self) -> str:
        return f"size={self.size}, stride={self.stride}, pad_mode={self.pad_mode!r}"


class PolyphasePool2d(nn.Module):
    """Adaptive polyphase sampling (Chaman & Dokmanic 2021): of the sh * sw polyphase components
    x[:, :, i::sh, j::sw], keep per sample the one of largest l2 norm (over channels and space).

    x: [B, C, H, W] -> [B, C, ceil(H / sh), ceil(W / sw)]. Ties go to the first component in
    row-major (i, j) order. A side not divisible by its stride is first padded up to a multiple
    (`circular`: wrapped; `zeros`); exact invariance needs sides divisible by the strides.
    """

    def __init__(self, stride: int | Pair = 2, pad_mode: str = "circular") -> None:
        super().__init__()
        if pad_mode not in PADDINGS:
            raise ValueError(f"unknown polyphase padding {pad_mode!r}; choose one of {PADDINGS}")
        self.stride = _pair(stride)
        self.pad_mode = pad_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sh, sw = self.stride
        b, c, h, w = x.shape
        ph, pw = -h % sh, -w % sw
        x = _pad(x, (0, pw, 0, ph), "circular" if self.pad_mode == "circular" else "constant")
        h, w = (h + ph) // sh, (w + pw) // sw
        # [B, C, h, sh, w, sw] -> [B, sh * sw, C, h, w]; component i * sw + j is x[.., i::sh, j::sw]
        phases = (
            x.reshape(b, c, h, sh, w, sw).permute(0, 3, 5, 1, 2, 4).reshape(b, sh * sw, c, h, w)
        )
        norms = phases.float().pow(2).sum(dim=(2, 3, 4))
        best = norms.argmax(dim=1)  # the first maximum on ties
        return phases[torch.arange(b, device=x.device), best]

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad_mode={self.pad_mode!r}"


def _downsampler(antialias: str, blur_size: int, padding: str, stride: Pair) -> nn.Module:
    if antialias == "blur":
        return BlurPool2d(blur_size, stride, "circular" if padding == "circular" else "reflect")
    return PolyphasePool2d(stride, padding)


class DownsampledConv2d(nn.Conv2d):
    """A conv evaluated at stride 1, then down-sampled by `down` (`BlurPool2d` or
    `PolyphasePool2d`): the strided conv of a converted net.

    A subclass of nn.Conv2d holding the original conv's parameter objects under the same names,
    so the state dict of the net does not change. x: [B, C_in, H, W] ->
    [B, C_out, ceil(H' / s), ceil(W' / s)] with H' the stride-1 output side.
    """

    def __init__(self, conv: nn.Conv2d, down: nn.Module, padding_mode: str) -> None:
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            kernel_size=conv.kernel_size,
            stride=1,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=padding_mode,
            device="meta",  # the parameters are the original conv's, assigned below
        )
        self.weight = conv.weight
        self.bias = conv.bias
        self.down = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(super().forward(x))


def _max_stride1(x: torch.Tensor, kernel_size: Pair) -> torch.Tensor:
    """F.max_pool2d(x, kernel_size, stride=1), as the maximum of kh * kw shifted views:
    [B, C, H, W] -> [B, C, H - kh + 1, W - kw + 1]. On the CPU, max_pool2d at stride 1 took
    ~0.27 s per small-CNN pool on 64 canvases of 64 px, 4x the whole unconverted net; the views
    take a few ms, and the values are the same (a maximum is exact)."""
    kh, kw = kernel_size
    h, w = x.shape[-2] - kh + 1, x.shape[-1] - kw + 1
    x = x.contiguous()  # F.pad's output mixes layouts; views of one layout are fast
    out = x[..., :h, :w]
    for i in range(kh):
        for j in range(kw):
            if i or j:
                out = torch.maximum(out, x[..., i : i + h, j : j + w])
    return out


class DownsampledPool2d(nn.Module):
    """A max- or average-pool evaluated at stride 1, then down-sampled by `down`.

    x: [B, C, H, W] -> [B, C, H', W'] -> down. `same=False` keeps the pool's own padding, so with
    `BlurPool2d` the output has the original pool's shape (Zhang's MaxPool -> BlurPool o
    MaxPool(stride 1)). `same=True` pads k - 1 in all (wrapping when `circular`) so the stride-1
    pool keeps H x W and commutes with circular shifts, as adaptive polyphase sampling needs.
    Padding that does not wrap is -inf for max-pools and 0 for average-pools.
    """

    def __init__(
        self,
        kind: str,
        kernel_size: Pair,
        padding: Pair,
        down: nn.Module,
        circular: bool,
        same: bool,
        count_include_pad: bool = True,
    ) -> None:
        super().__init__()
        if kind not in ("max", "avg"):
            raise ValueError(f"unknown pool kind {kind!r}; choose max or avg")
        self.kind = kind
        self.kernel_size = kernel_size
        self.padding = padding
        self.circular = circular
        self.same = same
        self.count_include_pad = count_include_pad
        self.down = down

    def _pads(self) -> tuple[int, int, int, int]:
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        if self.same:
            return ((kw - 1) // 2, kw // 2, (kh - 1) // 2, kh // 2)
        return (pw, pw, ph, ph)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = self._pads()
        if self.kind == "max":
            fill = "circular" if self.circular else "constant"
            x = _pad(x, pads, fill, value=-math.inf)
            x = _max_stride1(x, self.kernel_size)
        elif self.circular or self.same or self.count_include_pad:
            x = _pad(x, pads, "circular" if self.circular else "constant")
            x = F.avg_pool2d(x, self.kernel_size, stride=1)
        else:  # the original excluded its zero padding from the mean: let avg_pool2d do it
            x = F.avg_pool2d(
                x, self.kernel_size, stride=1, padding=self.padding, count_include_pad=False
            )
        return self.down(x)

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind!r}, kernel_size={self.kernel_size}, padding={self.padding}, "
            f"circular={self.circular}, same={self.same}"
        )


def _strided(stride: int | tuple[int, ...]) -> bool:
    return _pair(stride) != (1, 1)


def _converted(
    name: str, m: nn.Module, antialias: str, blur_size: int, padding: str
) -> nn.Module | None:
    """The replacement of child `m` (qualified `name`), or None to keep it."""
    circular = padding == "circular"
    same = antialias == "aps"
    if isinstance(m, nn.Conv2d) and _strided(m.stride):
        down = _downsampler(antialias, blur_size, padding, _pair(m.stride))
        return DownsampledConv2d(m, down, "circular" if circular else m.padding_mode)
    if isinstance(m, nn.MaxPool2d) and _strided(m.stride):
        if m.ceil_mode or m.return_indices or _pair(m.dilation) != (1, 1):
            raise ValueError(f"{name}: cannot convert {m} (ceil_mode, indices or dilation)")
        down = _downsampler(antialias, blur_size, padding, _pair(m.stride))
        return DownsampledPool2d(
            "max", _pair(m.kernel_size), _pair(m.padding), down, circular, same
        )
    if isinstance(m, nn.AvgPool2d) and _strided(m.stride):
        if m.ceil_mode or m.divisor_override is not None:
            raise ValueError(f"{name}: cannot convert {m} (ceil_mode or divisor_override)")
        down = _downsampler(antialias, blur_size, padding, _pair(m.stride))
        return DownsampledPool2d(
            "avg",
            _pair(m.kernel_size),
            _pair(m.padding),
            down,
            circular,
            same,
            count_include_pad=m.count_include_pad,
        )
    return None


def apply_shift_options(
    module: nn.Module, antialias: str = "none", blur_size: int = 3, padding: str = "zeros"
) -> list[str]:
    """Convert `module` in place for `model.antialias`, `model.blur_size`, `model.padding`;
    return the qualified names of the down-sampling layers it replaced.

    - `padding="circular"`: every padded conv wraps around (`padding_mode="circular"`), and so
      does the padding of the pools rebuilt below.
    - `antialias="blur"`: strided MaxPool2d(k, s) -> MaxPool2d(k, stride 1) then BlurPool2d(s);
      strided AvgPool2d(k, s) -> AvgPool2d(k, stride 1) then BlurPool2d(s) (box * binomial, still
      a low-pass: the 2 x 2 box and [1, 2, 1] give [1, 3, 3, 1]); strided Conv2d -> the conv at
      stride 1 then BlurPool2d(s) (before the net's own BN/ReLU). Every layer keeps its output
      shape. The blur pads by reflection, or wraps when `padding="circular"`.
    - `antialias="aps"`: the same layers at stride 1, pools padded to keep their input's size,
      then PolyphasePool2d(s). Outputs are ceil(H / s): the original shape for "same"-padded
      layers (VGG, ResNet, DenseNet, the small nets on even sides); AlexNet's unpadded pools
      give maps one larger, which its adaptive pool absorbs.
    - `antialias="none"`: only the padding changes.

    The root module itself is not replaced (only its descendants). Parameters keep their objects
    and state-dict keys. Converting twice is harmless: converted layers have stride 1.
    Raises ConfigError for a value outside ANTIALIAS, BLUR_SIZES, PADDINGS.
    """
    check_choice("model.antialias", antialias, ANTIALIAS)
    check_choice("model.blur_size", blur_size, BLUR_SIZES)
    check_choice("model.padding", padding, PADDINGS)
    replaced: list[str] = []
    if antialias != "none":
        # Collect first, then replace: replacing while iterating named_modules would walk into
        # the new modules.
        targets = []
        for parent_name, parent in module.named_modules():
            for child_name, child in parent.named_children():
                name = f"{parent_name}.{child_name}" if parent_name else child_name
                new = _converted(name, child, antialias, blur_size, padding)
                if new is not None:
                    targets.append((parent, child_name, name, new))
        for parent, child_name, name, new in targets:
            setattr(parent, child_name, new)
            replaced.append(name)
    if padding == "circular":
        for m in module.modules():
            # Conv2d pads by F.pad with `_reversed_padding_repeated_twice` (set at construction)
            # whenever padding_mode is not "zeros", so switching the mode here is enough.
            if isinstance(m, nn.Conv2d) and any(_pair(m.padding)):
                m.padding_mode = "circular"
    return replaced


__all__ = [
    "BlurPool2d",
    "DownsampledConv2d",
    "DownsampledPool2d",
    "PolyphasePool2d",
    "apply_shift_options",
    "binomial_filter",
]
