"""Benchmark: the batched grid evaluation against a loop over grid centres.

Both compute, for the default preset's finetuning evaluation (small_cnn with its glyphs_b head,
64 held-out glyphs_b items, the 13 x 13 test grid of `eval.grid_step` 0.0625 at 64 px, every
probe layer: conv1-4, fc1, logits), the accuracy at every centre and per layer the mean cosine
between each item's activations at the trained centre and at the grid centre, for the same item
(I) and for an other-class partner (D):

  library  `transinv.grid.evaluate_grid`: whole centres batched together (`eval_batch`
           canvases per forward pass: 512 at 64 px), canvases pasted by `Renderer`, activations
           captured flattened in memory order, both cosines of a layer from one batched matmul.
  loop     what a straightforward implementation does: for each centre, paste the 64 items
           there (one slice assignment), forward with forward hooks on the probe layers, and per
           layer `F.cosine_similarity` against the reference activations (same item; partner
           item) and the accuracy, with plain torch ops; batch = the 64 items of one centre.
           Results are kept as tensors and stacked at the end (no `.item()` per centre, which
           would only slow it down on a GPU). Same net, same channels_last input, same items.

The net is the trainer's own (`initial_state`, then `enter_phase`), freshly initialised: the
work per evaluation does not depend on the weights.

Before timing, both are checked to give the same numbers on 3 of the 13 grid rows: accuracy
and I and D of every layer within 1e-4 at every centre (all 169 are checked again after timing).

Timing goes row by row so that the contenders alternate every second or two, not every 10 s, and
load bursts from other processes hit both alike: each round gives both contenders the same grid
row (13 centres: `evaluate_grid` on a one-row `TestGrid`, the loop on its 13 centres), who goes
first alternating; `--passes` passes cover the whole grid each. The medians of the per-row times
give the ratio. Per row, both also make their one reference forward pass at the trained centre
(1 pass of 64 canvases in 14 for both), so a row costs each about 14/13 of its share of a
full-grid evaluation. For reference, one `evaluate_grid` call on the whole grid is timed at the
end (a single figure, not side by side) and its numbers are checked against the loop's.

Run (from the repository root):
    .venv/bin/python benchmarks/bench_eval.py          # ~45 s on 2 idle CPU cores, more if busy
    .venv/bin/python benchmarks/bench_eval.py --quick  # ~8 s, a smoke check (16 items, 4 x 4)
The last line is `bench_eval: <loop time / library time, per grid row>x`.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from transinv.grid import (
    GridResult,
    eval_batch,
    evaluate_grid,
    other_class_partner,
)
from transinv.trainer import (
    build_setup,
    configure_threads,
    enter_phase,
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


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of `fn` takes."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--items", type=int, default=64, help="eval.items")
    parser.add_argument("--grid-step", type=float, default=0.0625, help="eval.grid_step")
    parser.add_argument("--passes", type=int, default=2, help="timed passes over the grid")
    parser.add_argument("--quick", action="store_true", help="16 items, 4 x 4 grid, 1 pass")
    args = parser.parse_args(argv)
    if args.quick:
        args.items, args.grid_step, args.passes = 16, 0.25, 1

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
    enter_phase(state, setup.phases["finetune"])  # the finetuning head: what it evaluates
    net, data, grid = state.net, setup.phases["finetune"].data.held_out, setup.grid
    layers = list(net.probe_layers)
    items, labels = data.items, data.labels

    gy, gx = len(grid.ys), len(grid.xs)
    row_grids = [dataclasses.replace(grid, ys=grid.ys[[r]]) for r in range(gy)]
    row_centres = [[(int(x), int(y)) for x in grid.xs] for y in grid.ys]
    library_rows: dict[int, GridResult] = {}
    loop_rows: dict[int, tuple] = {}
    row = 0

    def library() -> None:
        library_rows[row] = evaluate_grid(
            net, items, labels, row_grids[row], data.render, layers, device=device
        )

    def loop() -> None:
        loop_rows[row] = per_location(
            net, items, labels, row_centres[row], grid.trained, data.render, layers, device
        )

    # Same numbers first, on 3 rows (this also warms both up).
    checked = sorted({0, gy // 2, gy - 1})
    diff = {"acc": 0.0, "I": 0.0, "D": 0.0}
    for row in checked:
        library()
        loop()
        d = largest_difference(library_rows[row], np.array([0]), loop_rows[row])
        diff = {k: max(v, d[k]) for k, v in diff.items()}
    if max(diff.values()) > 1e-4:
        raise AssertionError(f"the loop's numbers differ from evaluate_grid's: {diff}")

    print(
        f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads "
        f"(CPUs available: {len(os.sched_getaffinity(0))}, load average "
        f"{os.getloadavg()[0]:.2f})"
    )
    print(
        f"setup: {config.model.arch} ({data.num_classes}-way {config.finetune.dataset} "
        f"head), {len(items)} items, canvas {data.render.size} px, items "
        f"{config.canvas.item_size} px, grid {gy} x {gx} = {gy * gx} centres (step {grid.step} "
        f"px), trained centre {grid.trained}, layers {', '.join(layers)}, channels_last"
    )
    per_pass = max(1, eval_batch(data.render.size) // len(items)) * len(items)
    print(
        f"canvases per forward pass: library up to {per_pass} (eval_batch, whole centres), "
        f"loop {len(items)} (one centre)"
    )
    print(
        f"checked before timing on rows {checked} ({len(checked) * gx} centres): max "
        f"|library - loop| acc {diff['acc']:.1e}, I {diff['I']:.1e}, D {diff['D']:.1e} "
        "(all layers; limit 1e-4)"
    )
    print(f"{args.passes} passes x {gy} rounds of one grid row ({gx} centres) each, alternating")
    times: dict[str, list[float]] = {"library": [], "loop": []}
    contenders = {"library": library, "loop": loop}
    for i in range(args.passes * gy):
        row = i % gy
        # Who goes first alternates each round; with an odd row count, each row gets both orders
        # over two passes.
        for name in list(contenders) if i % 2 == 0 else list(contenders)[::-1]:
            times[name].append(timed(contenders[name], device))

    after = max(
        max(largest_difference(library_rows[r], np.array([0]), loop_rows[r]).values())
        for r in range(gy)
    )
    if after > 1e-4:
        raise AssertionError(f"evaluate_grid's numbers differ from the loop's: {after}")
    median = {name: statistics.median(t) for name, t in times.items()}
    for label, name in (("evaluate_grid (batched)", "library"), ("loop over centres", "loop")):
        t = times[name]
        per_centre = median[name] / gx
        print(
            f"  {label:24s} median {median[name]:6.3f} s/row (min {min(t):.3f}, max "
            f"{max(t):.3f}), {per_centre * 1e3:6.1f} ms/centre, "
            f"{len(items) / per_centre:6.0f} canvases/s; whole grid ~{median[name] * gy:.1f} s"
        )

    # For reference: one call on the whole grid, as the trainer makes it.
    sync(device)
    start = time.perf_counter()
    whole = evaluate_grid(net, items, labels, grid, data.render, layers, device=device)
    sync(device)
    seconds = time.perf_counter() - start
    whole_diff = max(
        max(largest_difference(whole, np.array([r]), loop_rows[r]).values()) for r in range(gy)
    )
    if whole_diff > 1e-4:
        raise AssertionError(f"evaluate_grid on the whole grid differs from the loop: {whole_diff}")
    print(
        f"all {gy * gx} centres checked after timing: max difference {after:.1e} (by rows), "
        f"{whole_diff:.1e} (whole grid)"
    )
    print(
        f"one evaluate_grid call on the whole grid (single, not side by side): {seconds:.2f} s, "
        f"{seconds / (gy * gx) * 1e3:.1f} ms/centre"
    )
    print(f"bench_eval: {median['loop'] / median['library']:.2f}x")


if __name__ == "__main__":
    main()
