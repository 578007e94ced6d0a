"""Benchmark: the batched grid evaluation against a loop over grid centres.

Both compute, for the default preset's finetuning evaluation (small_cnn with its glyphs_b head,
64 held-out glyphs_b items, the 13 x 13 test grid of `eval.grid_step` 0.0625 at 64 px, every
probe layer: conv1-4, fc1, logits), the accuracy at every centre and per layer the mean cosine
between each item's activations at the trained centre and at the grid centre, for the same item
(I) and for an other-class partner (D):

  library  `transinv.evaluation.evaluate_grid`: whole centres batched together (512 canvases
           per forward pass), canvases pasted by `Renderer`, activations captured flattened in
           memory order, both cosines of a layer from one batched matmul.
  loop     what a straightforward implementation does: for each centre, paste the 64 items
           there (one slice assignment), forward with forward hooks on the probe layers, and per
           layer `F.cosine_similarity` against the reference activations (same item; partner
           item) and the accuracy, with plain torch ops; batch = the 64 items of one centre.
           Results are kept as tensors and stacked at the end (no `.item()` per centre, which
           would only slow it down on a GPU). Same net, same channels_last input, same items.

The net is the trainer's own (`initial_state`, then `begin_finetune`), freshly initialised: the
work per evaluation does not depend on the weights.

Before timing, both are checked to give the same numbers: accuracy and I and D of every layer
within 1e-4 at every centre the loop covers. A loop over all 169 centres costs as much as the
library's whole grid, so by default the loop runs on 3 of the 13 grid rows (39 centres) and its
time is extrapolated to the full grid per forward pass: full = measured * (169 + 1) / (39 + 1),
the + 1 being the reference forward pass at the trained centre that both make once. The library
always runs the full grid. They alternate in rounds (who goes first alternates too), and the
medians give the ratio, so machine noise hits both alike.

Run (from the repository root):
    .venv/bin/python benchmarks/bench_eval.py            # ~80 s on 2 CPU cores
    .venv/bin/python benchmarks/bench_eval.py --quick    # ~6 s, a smoke check (16 items, 4 x 4)
The last line is `bench_eval: <loop time / library time, full grid>x`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transinv.canvas import Renderer
from transinv.config import from_flat
from transinv.evaluation import GridResult, evaluate_grid, other_class_partner
from transinv.trainer import (
    begin_finetune,
    build_setup,
    configure_threads,
    initial_state,
    select_device,
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_location(
    net: nn.Module,
    items: torch.Tensor,
    labels: torch.Tensor,
    centres: Sequence[tuple[int, int]],
    trained: tuple[int, int],
    render: Renderer,
    layers: Sequence[str],
    device: torch.device,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The straightforward loop over centres: (acc [P], I per layer [P], D per layer [P]) for
    `centres`, P = len(centres). items: [N, k, k]; labels: [N]."""
    items, labels = items.to(device), labels.to(device)
    partner = other_class_partner(labels.cpu()).to(device)
    n, k = len(items), items.shape[-1]
    h = k // 2

    def canvases(x: int, y: int) -> torch.Tensor:
        canvas = torch.zeros(n, render.channels, render.size, render.size, device=device)
        canvas[:, :, y - h : y - h + k, x - h : x - h + k] = items[:, None]
        canvas = (canvas - render.mean) / render.std
        return canvas.contiguous(memory_format=torch.channels_last)

    acts: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def keep(module, inputs, output):
            acts[name] = output.flatten(1)

        return keep

    handles = [net.probe_layers[name].register_forward_hook(hook(name)) for name in layers]
    was_training = net.training
    net.eval()
    acc: list[torch.Tensor] = []
    same: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    other: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    try:
        with torch.no_grad():
            net(canvases(*trained))
            reference = dict(acts)
            for x, y in centres:
                logits = net(canvases(x, y))
                acc.append((logits.argmax(1) == labels).float().mean())
                for name in layers:
                    a, r = acts[name], reference[name]
                    same[name].append(F.cosine_similarity(a, r, dim=1).mean())
                    other[name].append(F.cosine_similarity(a[partner], r, dim=1).mean())
    finally:
        for handle in handles:
            handle.remove()
        net.train(was_training)

    def stack(values: list[torch.Tensor]) -> np.ndarray:
        return torch.stack(values).cpu().numpy()

    return (
        stack(acc),
        {name: stack(v) for name, v in same.items()},
        {name: stack(v) for name, v in other.items()},
    )


def largest_difference(
    library: GridResult,
    rows: np.ndarray,
    loop: tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]],
) -> dict[str, float]:
    """Max |library - loop| of accuracy, I and D (all layers) over the loop's rows."""
    acc, same, other = loop
    width = library.acc.shape[1]

    def picked(grid: np.ndarray) -> np.ndarray:
        return grid[rows].reshape(len(rows) * width)

    return {
        "acc": float(np.abs(picked(library.acc) - acc).max()),
        "I": max(float(np.abs(picked(library.i_grids[k]) - v).max()) for k, v in same.items()),
        "D": max(float(np.abs(picked(library.d_grids[k]) - v).max()) for k, v in other.items()),
    }


def side_by_side(
    contenders: dict[str, Callable[[], object]], rounds: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call of each contender, one call per round; contenders alternate within
    every round, and which goes first alternates between rounds."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    order = list(contenders)
    for r in range(rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            sync(device)
            start = time.perf_counter()
            contenders[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--items", type=int, default=64, help="eval.items")
    parser.add_argument("--grid-step", type=float, default=0.0625, help="eval.grid_step")
    parser.add_argument(
        "--rows", type=int, default=3, help="grid rows the loop runs on (0: all of them)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="16 items, 4 x 4 grid, 2 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.items, args.grid_step, args.rows, args.rounds = 16, 0.25, 0, 2

    config = from_flat(
        {
            "run.device": args.device,
            "run.threads": args.threads,
            "eval.items": args.items,
            "eval.grid_step": args.grid_step,
        }
    )
    threads = configure_threads(config.run.threads)
    device = select_device(config.run.device)
    torch.manual_seed(config.seed)
    setup = build_setup(config, device, threads)
    state = initial_state(setup)
    begin_finetune(state)  # the finetuning head: what evaluate_finetune evaluates
    net, data, grid = state.net, setup.finetune, setup.grid
    layers = list(net.probe_layers)
    items, labels = data.eval_items, data.eval_labels

    gy, gx = len(grid.ys), len(grid.xs)
    n_rows = gy if args.rows <= 0 else min(args.rows, gy)
    rows = np.unique(np.linspace(0, gy - 1, n_rows).round().astype(int))
    centres = [(int(x), int(y)) for y in grid.ys[rows] for x in grid.xs]
    full, part = gy * gx, len(centres)

    def library() -> GridResult:
        return evaluate_grid(net, items, labels, grid, data.render, layers, device=device)

    def loop() -> tuple:
        return per_location(net, items, labels, centres, grid.trained, data.render, layers, device)

    # Same numbers first (this also warms both up).
    diff = largest_difference(library(), rows, loop())
    if max(diff.values()) > 1e-4:
        raise AssertionError(f"the loop's numbers differ from evaluate_grid's: {diff}")

    print(
        f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads "
        f"(CPUs available: {len(os.sched_getaffinity(0))}, load average "
        f"{os.getloadavg()[0]:.2f})"
    )
    print(
        f"setup: {config.model.arch} ({data.items.num_classes}-way {config.finetune.dataset} "
        f"head), {len(items)} items, canvas {data.render.size} px, items "
        f"{config.canvas.item_size} px, grid {gy} x {gx} = {full} centres (step {grid.step} "
        f"px), trained centre {grid.trained}, layers {', '.join(layers)}, channels_last"
    )
    print(
        f"checked on {part} centres (rows {rows.tolist()}): max |library - loop| acc "
        f"{diff['acc']:.1e}, I {diff['I']:.1e}, D {diff['D']:.1e} (all layers; limit 1e-4)"
    )
    print(
        f"{args.rounds} rounds, alternating: library on all {full} centres, loop on {part}"
        + ("" if part == full else f", extrapolated by ({full} + 1) / ({part} + 1)")
    )
    times = side_by_side({"library": library, "loop": loop}, args.rounds, device)
    median = {name: statistics.median(t) for name, t in times.items()}
    scale = (full + 1) / (part + 1)
    loop_full = median["loop"] * scale
    for label, t, scaled, centres_run in (
        ("evaluate_grid (batched)", times["library"], median["library"], full),
        ("loop over centres", times["loop"], loop_full, part),
    ):
        per_centre = scaled / full
        print(
            f"  {label:24s} median {statistics.median(t):7.3f} s for {centres_run} centres "
            f"(min {min(t):.3f}, max {max(t):.3f}); full grid {scaled:7.2f} s, "
            f"{per_centre * 1e3:6.1f} ms/centre, {len(items) / per_centre:6.0f} canvases/s"
        )
    print(f"bench_eval: {loop_full / median['library']:.2f}x")


if __name__ == "__main__":
    main()
