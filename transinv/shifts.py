"""Shift measurements at a few chosen centres, beside the test grid: jaggedness (Azulay & Weiss
2019) at a centre against its one-pixel neighbours, N-way matching (Biscione & Bowers' later
protocol) of items at the trained centre against candidates at untrained ones, and the authors'
early measure, the pre-ReLU cosine of an item with its copies along the horizontal line through
the trained centre. Each runs the net on a few extra passes (its cost in canvases is in its
docstring) and returns plain numbers.

The arithmetic (`jaggedness`, `nway_accuracy`, cosines) and the metric keys live in `metrics.py`;
the test grid, eval mode and the probes in `grid.py`; assembling the record in `evaluation.py`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transinv import metrics
from transinv.canvas import Renderer
from transinv.grid import (
    TestGrid,
    eval_batch,
    eval_mode,
    forward,
    other_class_partner,
    preactivations,
    probed,
)
from transinv.regimes import valid_range


def _outputs(
    net: nn.Module,
    items: torch.Tensor,
    centres: torch.Tensor,
    render: Renderer,
    device: torch.device | str,
    captured: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits [B, C] of items [B, k, k] at centres [B, 2], in passes of `eval_batch` canvases;
    with `captured` (filled by `probed` or `preactivations` hooks), the activations [B, D] of
    each layer it holds. Call inside `eval_mode`."""
    logits: list[torch.Tensor] = []
    acts: dict[str, list[torch.Tensor]] = {}
    batch = eval_batch(render.size)
    for start in range(0, len(items), batch):
        x = render(items[start : start + batch].to(device), centres[start : start + batch])
        logits.append(forward(net, x))
        for name, a in (captured or {}).items():
            acts.setdefault(name, []).append(a)
    return torch.cat(logits), {name: torch.cat(parts) for name, parts in acts.items()}


def one_pixel_neighbours(centre: Sequence[int], size: int, item_size: int) -> torch.Tensor:
    """[K, 2]: the moves of `metrics.ONE_PIXEL_SHIFTS` from `centre` that keep the item inside."""
    lo, hi = valid_range(size, item_size)
    moved = torch.tensor(centre) + torch.tensor(metrics.ONE_PIXEL_SHIFTS)
    return moved[((moved >= lo) & (moved < hi)).all(1)]


def nway_candidates(labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """[N, n_way - 1] item indices: for item i, one item of each of the n_way - 1 classes after
    its own (cyclically, in sorted class order), the one at i's rank within its class (modulo
    that class's count). Fixed, so every evaluation compares the same candidates."""
    classes = labels.unique()
    if n_way > len(classes):
        raise ValueError(f"eval.nway={n_way} needs as many classes; the items have {len(classes)}")
    members = [torch.nonzero(labels == c).flatten() for c in classes]
    position = torch.searchsorted(classes, labels)
    out = torch.empty(len(labels), n_way - 1, dtype=torch.long)
    for i, pos in enumerate(position.tolist()):
        rank = int((members[pos] < i).sum())
        for j in range(1, n_way):
            pool = members[(pos + j) % len(classes)]
            out[i, j - 1] = pool[rank % len(pool)]
    return out


def jaggedness_at(
    net: nn.Module,
    items: torch.Tensor,
    centres: np.ndarray,
    render: Renderer,
    device: torch.device | str,
) -> tuple[float, float]:
    """`metrics.jaggedness` of the items at each centre against its one-pixel neighbours,
    averaged over the centres (NaN for none). centres: [M, 2]. Costs 5 * M * N canvases."""
    n, k = len(items), items.shape[-1]
    scores = []
    with eval_mode(net):
        for centre in centres.tolist():
            places = torch.cat(
                [torch.tensor([centre]), one_pixel_neighbours(centre, render.size, k)]
            )
            logits, _ = _outputs(
                net, items.repeat(len(places), 1, 1), places.repeat_interleave(n, 0), render, device
            )
            logits = logits.view(len(places), n, -1)
            scores.append(metrics.jaggedness(logits[0], logits[1:]))
    if not scores:
        return math.nan, math.nan
    flips, probs = zip(*scores, strict=True)
    return float(np.mean(flips)), float(np.mean(probs))


def nway_at(
    net: nn.Module,
    items: torch.Tensor,
    labels: torch.Tensor,
    grid: TestGrid,
    centres: np.ndarray,
    render: Renderer,
    layers: Sequence[str],
    n_way: int,
    device: torch.device | str,
) -> dict[str, float]:
    """Per layer, `metrics.nway_accuracy` of the items at the trained centre against N
    candidates at each of `centres` ([M, 2]), averaged over them (NaN for none). Post-ReLU
    probes, like G. Costs (1 + M) * N canvases and an [N, N] cosine matrix per layer and centre."""
    n = len(items)
    if len(centres) == 0:
        return {name: math.nan for name in layers}
    candidates = nway_candidates(labels.cpu(), n_way).to(device)
    sums = dict.fromkeys(layers, 0.0)
    with eval_mode(net), probed(net, layers) as captured:
        trained = torch.tensor(grid.trained).repeat(n, 1)
        _, anchors = _outputs(net, items, trained, render, device, captured)
        units = {name: F.normalize(a.float(), dim=1) for name, a in anchors.items()}
        for centre in centres.tolist():
            _, acts = _outputs(
                net, items, torch.tensor([centre]).repeat(n, 1), render, device, captured
            )
            for name in layers:
                sim = units[name] @ F.normalize(acts[name].float(), dim=1).T  # [anchor, candidate]
                same = sim.diagonal()
                sums[name] += metrics.nway_accuracy(same, sim.gather(1, candidates))
    return {name: total / len(centres) for name, total in sums.items()}


def hline_cosine(
    net: nn.Module,
    items: torch.Tensor,
    labels: torch.Tensor,
    grid: TestGrid,
    render: Renderer,
    layers: Sequence[str],
    device: torch.device | str,
) -> tuple[dict[str, float], dict[str, float]]:
    """The authors' measure: per layer, BEFORE the ReLU (`grid.preactivations`), the raw cosine
    of each item at the trained centre with its copies along the horizontal line through it
    (`TestGrid.hline`: shifts of at least one item width), averaged over items and shifts; and
    its baseline, the same with an item of another class at the shifted place. NaN when the
    line holds no such shift. Costs (1 + P) * N canvases."""
    n = len(items)
    places = grid.hline()
    if len(places) == 0:
        nan = {name: math.nan for name in layers}
        return nan, dict(nan)
    unpartner = torch.argsort(other_class_partner(labels.cpu())).to(device)
    same = dict.fromkeys(layers, 0.0)
    other = dict.fromkeys(layers, 0.0)
    with eval_mode(net), preactivations(net, layers) as captured:
        trained = torch.tensor(grid.trained).repeat(n, 1)
        _, anchors = _outputs(net, items, trained, render, device, captured)
        refs = {name: metrics.unit_references((a, a[unpartner])) for name, a in anchors.items()}
        # Whole places per pass, as the grid does: one forward of p * n canvases, not p of n.
        per_pass = max(1, eval_batch(render.size) // n)
        for start in range(0, len(places), per_pass):
            chunk = torch.from_numpy(places[start : start + per_pass]).long()
            p = len(chunk)
            canvases = render(items.repeat(p, 1, 1).to(device), chunk.repeat_interleave(n, 0))
            forward(net, canvases)  # eval_mode: no grad; the hooks fill `captured`
            for name in layers:
                dots = metrics.cosines(captured[name].view(p, n, -1), refs[name])  # [n, p, 2]
                same[name] += float(dots[:, :, 0].mean(0).sum())
                other[name] += float(dots[:, :, 1].mean(0).sum())
    return (
        {name: v / len(places) for name, v in same.items()},
        {name: v / len(places) for name, v in other.items()},
    )
