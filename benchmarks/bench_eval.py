"""Benchmark: the batched grid evaluation against its limit, a bare forward pass over the same
canvases, and against a loop over grid centres.

All three cover the default preset's finetuning evaluation (small_cnn with its glyphs_b head, 64
held-out glyphs_b items, the 13 x 13 test grid of `eval.grid_step` 0.0625 at 64 px, every probe
layer: conv1-4, fc1, logits). The library and the loop compute the accuracy at every centre and
per layer the mean cosine between each item's activations at the trained centre and at the grid
centre, for the same item (I) and for an other-class partner (D):

  library  `transinv.grid.evaluate_grid`: whole centres batched together (`eval_batch`
           canvases per forward pass, in whole centres: at 64 px that is 64 canvases, one
           centre of 64 items), canvases pasted by `Renderer`, activations captured flattened in
           memory order, both cosines of a layer from one batched matmul.
  bare     the limit: the same net's forward passes alone, in eval mode without grad, over the
           canvases `evaluate_grid` makes (rendered beforehand, already channels_last), in the
           same passes (same batch size, same reference pass at the trained centre), with no
           hooks, no metric work and no pasting. Checked to give evaluate_grid's accuracy.
  loop     what a straightforward implementation does: for each centre, paste the 64 items
           there (one slice assignment), forward with forward hooks on the probe layers, and per
           layer `F.cosine_similarity` against the reference activations (same item; partner
           item) and the accuracy, with plain torch ops; batch = the 64 items of one centre.
           Results are kept as tensors and stacked at the end (no `.item()` per centre, which
           would only slow it down on a GPU). Same net, same channels_last input, same items.

The net is the trainer's own (`initial_state`, then `enter_phase`), freshly initialised: the
work per evaluation does not depend on the weights.

Before timing, the library and the loop are checked to give the same numbers on 3 of the 13
grid rows: accuracy and I and D of every layer within 1e-4 at every centre (all 169 are checked
again after timing), and the bare passes' logits to give the library's accuracy there.

Timing goes row by row so that the contenders alternate every second or two, not every 10 s, and
load bursts from other processes hit all alike: each round gives every contender the same grid
row (13 centres: `evaluate_grid` on a one-row `TestGrid`, the bare passes over that row's
canvases, the loop on its 13 centres), the order rotating between rounds; `--passes` passes
cover the whole grid each. The medians of the per-row times give the ratios. Per row, each also
makes its one reference forward pass at the trained centre (1 pass of 64 canvases in 14), so a
row costs about 14/13 of its share of a full-grid evaluation. For reference, one `evaluate_grid`
call on the whole grid is timed at the end (a single figure, not side by side) and its numbers
are checked against the loop's.

The primary figure is evaluate_grid's throughput as a fraction of the bare forward pass (bare
time / library time per row; goal >= 0.8): what the pasting, probes and metrics cost on top of
the network itself. The loop / library ratio is printed as a secondary line.

Run (from the repository root):
    .venv/bin/python benchmarks/bench_eval.py          # ~60 s on 2 idle CPU cores, more if busy
    .venv/bin/python benchmarks/bench_eval.py --quick  # ~8 s, a smoke check (16 items, 4 x 4)
The last line is `bench_eval: <bare forward time / library time, per grid row>x`.
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
from transinv.device import configure_threads, select_device
from transinv.grid import (
    GridResult,
    TestGrid,
    eval_batch,
    eval_mode,
    evaluate_grid,
    other_class_partner,
)
from transinv.trainer import (
    build_setup,
    enter_phase,
    initial_state,
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


def grid_canvases(
    items: torch.Tensor, grid: TestGrid, render: Renderer, per_pass: int, device: torch.device
) -> list[torch.Tensor]:
    """The canvases `evaluate_grid` forwards for `grid`, pass by pass, made here once: the
    reference pass at the trained centre, then `per_pass` centres of all N items each, in the
    same order. items: [N, k, k]; each pass [B, C, S, S], channels_last."""
    items, n = items.to(device), len(items)

    def made(batch: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        return render(batch, centres).contiguous(memory_format=torch.channels_last)

    passes = [made(items, torch.tensor(grid.trained).repeat(n, 1))]
    centres = torch.from_numpy(grid.centres()).long()
    for start in range(0, len(centres), per_pass):
        chunk = centres[start : start + per_pass]
        passes.append(made(items.repeat(len(chunk), 1, 1), chunk.repeat_interleave(n, dim=0)))
    return passes


def bare_forward(net: nn.Module, passes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The limit: the net's forward passes alone, eval mode, no grad, no hooks. Logits per pass."""
    with eval_mode(net):
        return [net(x) for x in passes]


def bare_accuracy(logits: Sequence[torch.Tensor], labels: torch.Tensor) -> np.ndarray:
    """Accuracy per centre [P] from `bare_forward`'s logits, reference pass excluded."""
    n = len(labels)
    predicted = torch.cat(list(logits[1:])).argmax(1).view(-1, n)
    return (predicted == labels.to(predicted.device)).float().mean(1).cpu().numpy()


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
    bare_rows: dict[int, list[torch.Tensor]] = {}
    centres_per_pass = max(1, eval_batch(data.render.size) // len(items))  # as evaluate_grid
    row_passes = [
        grid_canvases(items, row_grids[r], data.render, centres_per_pass, device) for r in range(gy)
    ]
    row = 0

    def library() -> None:
        library_rows[row] = evaluate_grid(
            net, items, labels, row_grids[row], data.render, layers, device=device
        )

    def loop() -> None:
        loop_rows[row] = per_location(
            net, items, labels, row_centres[row], grid.trained, data.render, layers, device
        )

    def bare() -> None:
        bare_rows[row] = bare_forward(net, row_passes[row])

    # Same numbers first, on 3 rows (this also warms both up).
    checked = sorted({0, gy // 2, gy - 1})
    diff = {"acc": 0.0, "I": 0.0, "D": 0.0}
    bare_diff = 0.0
    for row in checked:
        library()
        loop()
        bare()
        d = largest_difference(library_rows[row], np.array([0]), loop_rows[row])
        diff = {k: max(v, d[k]) for k, v in diff.items()}
        bare_diff = max(
            bare_diff,
            float(np.abs(bare_accuracy(bare_rows[row], labels) - library_rows[row].acc[0]).max()),
        )
    if max(diff.values()) > 1e-4:
        raise AssertionError(f"the loop's numbers differ from evaluate_grid's: {diff}")
    if bare_diff > 1e-4:
        raise AssertionError(f"the bare passes' accuracy differs from evaluate_grid's: {bare_diff}")

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
    per_pass = centres_per_pass * len(items)
    print(
        f"canvases per forward pass: library and bare up to {per_pass} (eval_batch, whole "
        f"centres), loop {len(items)} (one centre); each also 1 reference pass of {len(items)} "
        "per row"
    )
    print(
        f"checked before timing on rows {checked} ({len(checked) * gx} centres): max "
        f"|library - loop| acc {diff['acc']:.1e}, I {diff['I']:.1e}, D {diff['D']:.1e} "
        f"(all layers; limit 1e-4); max |library - bare| acc {bare_diff:.1e}"
    )
    print(f"{args.passes} passes x {gy} rounds of one grid row ({gx} centres) each, alternating")
    contenders = {"library": library, "bare": bare, "loop": loop}
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for i in range(args.passes * gy):
        row = i % gy
        # Who goes first rotates each round, so no contender always follows the same one.
        for name in names[i % len(names) :] + names[: i % len(names)]:
            times[name].append(timed(contenders[name], device))

    after = max(
        max(largest_difference(library_rows[r], np.array([0]), loop_rows[r]).values())
        for r in range(gy)
    )
    if after > 1e-4:
        raise AssertionError(f"evaluate_grid's numbers differ from the loop's: {after}")
    bare_after = max(
        float(np.abs(bare_accuracy(bare_rows[r], labels) - library_rows[r].acc[0]).max())
        for r in range(gy)
    )
    if bare_after > 1e-4:
        raise AssertionError(
            f"the bare passes' accuracy differs from evaluate_grid's: {bare_after}"
        )
    median = {name: statistics.median(t) for name, t in times.items()}
    labels_of = {
        "library": "evaluate_grid (batched)",
        "bare": "bare forward (the limit)",
        "loop": "loop over centres",
    }
    for name, label in labels_of.items():
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
        f"all {gy * gx} centres checked after timing: max |library - loop| {after:.1e} (by "
        f"rows), {whole_diff:.1e} (whole grid); max |library - bare| acc {bare_after:.1e}"
    )
    print(
        f"one evaluate_grid call on the whole grid (single, not side by side): {seconds:.2f} s, "
        f"{seconds / (gy * gx) * 1e3:.1f} ms/centre"
    )
    print(
        f"loop over centres / evaluate_grid (secondary): {median['loop'] / median['library']:.2f}x"
    )
    print(
        "evaluate_grid throughput / bare forward pass, the headline (goal >= 0.8): "
        f"{median['bare'] / median['library']:.2f}x"
    )
    print(f"bench_eval: {median['bare'] / median['library']:.2f}x")


if __name__ == "__main__":
    main()
