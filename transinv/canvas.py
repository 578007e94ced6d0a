"""Canvases: items pasted on a black canvas at given centres, batched on tensors, and the endless
stream of training canvases (class, exemplar and centre drawn per sample).

Where centres may fall is `regimes.py`; where items come from is `sources.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from transinv.regimes import Placement, build_sampler

if TYPE_CHECKING:  # sources loads torchvision; pasting does not need it
    from transinv.sources import ItemSet


def paste(
    items: torch.Tensor,
    centres: torch.Tensor,
    size: int,
    channels: int = 1,
    mean: float = 0.0,
    std: float = 1.0,
) -> torch.Tensor:
    """Canvases with each item's centre at its (x, y).

    items: [B, k, k] in [0, 1]; centres: [B, 2] int (x, y), each inside the valid range.
    Returns [B, channels, size, size] float32, normalised as (pixel - mean) / std, channels
    replicated (grey items on RGB canvases).
    """
    batch, k = items.shape[0], items.shape[-1]
    h = k // 2
    offsets = torch.arange(k, device=items.device)
    top_left = centres.to(items.device).long() - h  # (x - h, y - h)
    rows = (top_left[:, 1, None] + offsets)[:, :, None]  # [B, k, 1]
    cols = (top_left[:, 0, None] + offsets)[:, None, :]  # [B, 1, k]
    # Normalise the background by filling and the items before writing them: one pass over the
    # canvases instead of three.
    canvas = torch.full(
        (batch, channels, size, size), -mean / std, dtype=torch.float32, device=items.device
    )
    ink = (items.float() - mean) / std if (mean != 0.0 or std != 1.0) else items.float()
    index = torch.arange(batch, device=items.device)[:, None, None]
    canvas[:, 0][index, rows, cols] = ink
    if channels > 1:  # grey items on RGB canvases
        canvas[:, 1:] = canvas[:, :1]
    return canvas


@dataclass(frozen=True)
class Renderer:
    """Items to canvases for one dataset: canvas size, channels and that dataset's
    normalisation."""

    size: int
    channels: int = 1
    mean: float = 0.0
    std: float = 1.0

    @classmethod
    def for_items(cls, items: ItemSet, size: int, channels: int, normalize: bool) -> Renderer:
        if normalize:
            return cls(size, channels, items.mean, items.std)
        return cls(size, channels)

    def __call__(self, items: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """items: [B, k, k]; centres: [B, 2] (x, y) -> [B, C, S, S]."""
        return paste(items, centres, self.size, self.channels, self.mean, self.std)


@dataclass
class CanvasStream:
    """Endless training batches from an item set under a regime.

    Each sample draws a class uniformly, then an exemplar of that class, then a centre. The
    generator's state is the stream's whole position, so saving it resumes the same sequence.
    """

    items: ItemSet
    train: torch.Tensor
    """The item set's training items on the device canvases are made on."""
    sampler: Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]
    render: Renderer
    generator: torch.Generator

    @classmethod
    def build(
        cls,
        items: ItemSet,
        regime: str,
        placement: Placement,
        render: Renderer,
        seed: int,
        class_regimes: dict[int, str] | None = None,
        device: torch.device | str = "cpu",
    ) -> CanvasStream:
        return cls(
            items=items,
            train=items.train.to(device),
            sampler=build_sampler(regime, placement, class_regimes),
            render=render,
            # The stream's randomness stays on the CPU so its state is portable across devices.
            generator=torch.Generator().manual_seed(seed),
        )

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images [B, C, S, S], labels [B], centres [B, 2])."""
        starts, counts = self.items.class_slices()
        labels = torch.randint(len(starts), (batch_size,), generator=self.generator)
        u = torch.rand(batch_size, generator=self.generator, dtype=torch.float64)
        index = starts[labels] + (u * counts[labels]).floor().long().clamp(max=counts[labels] - 1)
        centres = self.sampler(labels, index, self.generator)
        device = self.train.device
        images = self.render(self.train[index.to(device)], centres.to(device))
        return images, labels.to(device), centres

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def restore(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
