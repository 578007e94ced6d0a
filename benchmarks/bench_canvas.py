"""Benchmark: batched canvas generation against a per-item PIL pipeline, under the conditions
trials run in, and the share of a training step that making its canvases takes.

Two ways to make the same training batch (the default preset's pretraining stream: glyphs,
regime `whole`, 64 px canvas, 16 px items, 1 channel, normalised; batch 32, the small budget's
`optim.batch_size` that the studies run):

  library  `CanvasStream.next_batch(32)`: draws classes, exemplars and centres, then pastes the
           whole batch with one indexed assignment on tensors. The stream's generator is reset
           before every call, so each call makes exactly the batch the PIL pipeline makes (the
           reset is timed with it).
  PIL      what a torchvision-style dataset does per sample, as in the authors' framework: the
           item as a PIL image, `Image.resize((k, k), BILINEAR)`, pasted on a black
           `Image.new("L", (S, S))` at (x - h, y - h), `to_tensor`, `normalize`, then
           `torch.stack` of the batch (and `.to(device)`). It gets the items as PIL uint8 images
           made beforehand (a dataset holds them so) and the batch's item indices and centres
           as Python lists for free: it is not charged for drawing them, the library is.

Both are fed the same items at the same centres: the library makes the batch, and which item went
where is read back from its canvases (the item under each returned centre is matched to the
training set), so the baseline does not reimplement the library's sampling. Before timing, the
two batches are checked equal up to the uint8 rounding of the PIL images (half a grey level).

Two more contenders, timed the same way: the library's paste alone (`Renderer`, no drawing), and
one training step of the preset's net (small_cnn at 64 px, batch 32, on the library's batch,
channels_last: forward, cross-entropy, backward, Adam step). The share of a training step that
canvas generation takes is next_batch / (next_batch + that step), the step a trial takes.

Conditions: as in a study, where each trial has one core (`--threads 1`) and two trials run at
once on the 2-core machine. The script starts `--processes` (2) copies of the measurement side
by side (multiprocessing, spawn), each with its own torch on `--threads` threads; they set up,
wait for each other, then time together. Every figure printed is the median over the copies of
each copy's own figure. With more threads than cores free, the library's small multi-threaded
ops stall on descheduled workers (measured at `--threads 2` beside other work: 0.3 ms a batch
became 1-40 ms, the ratio 0.7x against 12.6x at one thread).

Within each copy the contenders alternate in rounds (the order reversing between rounds), each
round calling each one for about `--round-s` seconds; the medians of the per-call times give the
ratios, so machine noise hits all alike.

Run (from the repository root):
    .venv/bin/python benchmarks/bench_canvas.py          # ~40 s on 2 idle CPU cores, more if busy
    .venv/bin/python benchmarks/bench_canvas.py --quick  # ~10 s, a smoke check
The last line is `bench_canvas: <PIL time / library time>x` (median over the copies).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
import traceback
from collections.abc import Callable
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import nn

from transinv.canvas import CanvasStream
from transinv.config import from_flat
from transinv.device import select_device
from transinv.models import build_model
from transinv.trainer import build_setup


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def side_by_side(
    contenders: dict[str, Callable[[], object]],
    rounds: int,
    round_s: float,
    device: torch.device,
) -> dict[str, list[float]]:
    """Seconds per call of each contender, one figure per round in which it is called for about
    `round_s` seconds; the contenders alternate within every round, and which goes first
    alternates between rounds."""
    for fn in contenders.values():  # warm up
        fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    order = list(contenders)
    for r in range(rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            fn, calls = contenders[name], 0
            sync(device)
            start = time.perf_counter()
            while time.perf_counter() - start < round_s:
                fn()
                calls += 1
            sync(device)
            times[name].append((time.perf_counter() - start) / calls)
    return times


def placed_items(stream: CanvasStream, images: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Indices [B] of the training items under each centre of a batch the stream made, found by
    matching each item-sized window of the canvases against the whole training set."""
    k = stream.train.shape[-1]
    h = k // 2
    r = stream.render
    windows = torch.stack(
        [images[b, 0, y - h : y - h + k, x - h : x - h + k] for b, (x, y) in enumerate(centres)]
    )
    windows = windows.cpu() * r.std + r.mean  # back to pixels in [0, 1]
    train = stream.train.cpu()
    distance = torch.cdist(windows.flatten(1), train.flatten(1))  # [B, N]
    best = distance.min(1)
    if float(best.values.max()) > 1e-4:
        raise AssertionError("a window of the library's canvas matches no training item")
    return best.indices


def pil_batch(
    pil_items: list[Image.Image],
    index: list[int],
    centres: list[tuple[int, int]],
    size: int,
    mean: float,
    std: float,
    device: torch.device,
) -> torch.Tensor:
    """The per-sample pipeline: [B, 1, S, S] normalised canvases on `device`."""
    out = []
    for i, (x, y) in zip(index, centres, strict=True):
        item = pil_items[i]
        k = item.size[0]
        h = k // 2
        item = item.resize((k, k), Image.BILINEAR)
        canvas = Image.new("L", (size, size))
        canvas.paste(item, (x - h, y - h))
        out.append(TF.normalize(TF.to_tensor(canvas), [mean], [std]))
    return torch.stack(out).to(device)


def measure(args: argparse.Namespace, barrier: Barrier | None = None) -> dict:
    """One copy's measurement: what it ran on, its checks, and each contender's median seconds
    per call. With `barrier`, waits there for the other copies before timing."""
    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    config = from_flat(
        {"run.device": args.device, "run.threads": args.threads, "optim.batch_size": args.batch}
    )
    setup = build_setup(config, device, args.threads)
    stream = setup.phases["pretrain"].data.stream
    render = stream.render
    k = stream.train.shape[-1]

    # One batch, made by the library; the baseline gets the same items at the same centres.
    start_state = stream.state()
    images, batch_labels, centres = stream.next_batch(args.batch)
    index = placed_items(stream, images, centres)
    pil_items = [
        Image.fromarray(np.asarray((item * 255).round().to(torch.uint8)))
        for item in stream.train.cpu()
    ]
    index_list, centre_list = index.tolist(), [tuple(c) for c in centres.tolist()]

    def library() -> torch.Tensor:
        stream.restore(start_state)
        return stream.next_batch(args.batch)[0]

    def paste_only() -> torch.Tensor:
        return render(stream.train[index.to(device)], centres.to(device))

    def pil() -> torch.Tensor:
        return pil_batch(
            pil_items, index_list, centre_list, render.size, render.mean, render.std, device
        )

    # Same canvases up to the PIL images' uint8 rounding (at most half a grey level).
    reference = library()
    diff = {
        name: float((fn() - reference).abs().max()) * render.std
        for name, fn in (("paste_only", paste_only), ("pil", pil))
    }
    for name, d in diff.items():
        if d > 0.5 / 255 + 1e-6:
            raise AssertionError(f"{name} canvases differ from the library's by {d:.4g} (pixels)")

    c = config.canvas
    classes = stream.items.num_classes
    net = build_model(config.model.arch, classes, c.channels, c.size)
    net = net.to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=config.optim.lr)
    step_images = reference.contiguous(memory_format=torch.channels_last)

    def train_step() -> None:
        loss = nn.functional.cross_entropy(net(step_images), batch_labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    contenders = {"library": library, "paste_only": paste_only, "pil": pil, "step": train_step}
    for fn in contenders.values():  # warm up before waiting, so the copies start timing together
        fn()
    if barrier is not None:
        barrier.wait(timeout=600)
    load = os.getloadavg()[0]
    times = side_by_side(contenders, args.rounds, args.round_s, device)
    return {
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpus": len(os.sched_getaffinity(0)),
        "load": load,
        "setup": (
            f"{config.pretrain.dataset}, regime {config.pretrain.regime}, canvas {render.size} "
            f"px, items {k} px ({len(stream.train)} training items), batch {args.batch}, "
            f"{render.channels} channel, normalised (mean {render.mean:.4f}, std "
            f"{render.std:.4f}); training step: {config.model.arch} ({classes} classes), Adam "
            f"lr {config.optim.lr:g}, channels_last"
        ),
        "diff": diff,
        "median": {name: statistics.median(t) for name, t in times.items()},
        "spread": {name: (min(t), max(t)) for name, t in times.items()},
    }


def copy_of_measure(args: argparse.Namespace, barrier: Barrier, results: Queue) -> None:
    """A side-by-side copy (a spawned process): its result, or its error, goes to `results`."""
    try:
        results.put(("ok", measure(args, barrier)))
    except BaseException:
        barrier.abort()  # the other copies stop waiting
        results.put(("error", traceback.format_exc()))


def side_by_side_copies(args: argparse.Namespace) -> list[dict]:
    """`args.processes` copies of `measure` at once, each in its own process."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(args.processes), context.Queue()
    copies = [
        context.Process(target=copy_of_measure, args=(args, barrier, results))
        for _ in range(args.processes)
    ]
    for p in copies:
        p.start()
    outcomes = [results.get(timeout=1800) for _ in copies]
    for p in copies:
        p.join()
    errors = [text for status, text in outcomes if status == "error"]
    if errors:
        raise RuntimeError("a copy of the measurement failed:\n" + errors[0])
    return [result for _, result in outcomes]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads per copy (1: a trial's)"
    )
    parser.add_argument(
        "--processes", type=int, default=2, help="copies measuring side by side (2: two trials)"
    )
    parser.add_argument("--batch", type=int, default=32, help="optim.batch_size")
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--round-s", type=float, default=0.2, help="seconds per contender/round")
    parser.add_argument("--quick", action="store_true", help="3 short rounds: a smoke check")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.round_s = 3, 0.05

    copies = side_by_side_copies(args)
    first = copies[0]
    print(
        f"torch {first['torch']}, device {first['device']}, {len(copies)} copies side by side, "
        f"{first['threads']} threads each (CPUs available: {first['cpus']}, load average "
        f"{max(c['load'] for c in copies):.2f} when timing began)"
    )
    print(f"setup: {first['setup']}")
    worst = {name: max(c["diff"][name] for c in copies) for name in first["diff"]}
    print(
        f"checked (every copy): max |library - PIL| = {worst['pil']:.2e} (pixel units; uint8 "
        f"rounding bound {0.5 / 255:.2e}), max |library - paste only| = "
        f"{worst['paste_only']:.2e}"
    )
    print(
        f"{args.rounds} rounds per copy, ~{args.round_s} s per contender per round, "
        "alternating; each figure is the median over the copies of the copy's median"
    )

    def over_copies(figure: Callable[[dict[str, float]], float]) -> float:
        return statistics.median(figure(c["median"]) for c in copies)

    labels = {
        "library": "CanvasStream.next_batch (draw + paste)",
        "paste_only": "Renderer alone (paste, no drawing)",
        "pil": "per-item PIL pipeline",
        "step": "training step (fwd, bwd, Adam; no canvases)",
    }
    for name, label in labels.items():
        seconds = over_copies(lambda m, name=name: m[name])
        per_copy = ", ".join(f"{c['median'][name] * 1e3:.3f}" for c in copies)
        print(
            f"  {label:44s} median {seconds * 1e3:8.3f} ms/batch (copies: {per_copy}), "
            f"{args.batch / seconds:8.0f} canvases/s"
        )
    share = over_copies(lambda m: m["library"] / (m["library"] + m["step"]))
    print(
        f"canvas generation's share of a training step (next_batch / (next_batch + step)): "
        f"{share:.1%}"
    )
    print(f"PIL / paste alone: {over_copies(lambda m: m['pil'] / m['paste_only']):.1f}x")
    print(f"bench_canvas: {over_copies(lambda m: m['pil'] / m['library']):.1f}x")


if __name__ == "__main__":
    main()
